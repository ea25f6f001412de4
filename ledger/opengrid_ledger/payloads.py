"""Entry payloads: what an entry says. Today only RECEIPT; HOLD, SETTLE, REFUND, TRANSFER, ADMIT and FRAUD
come later (spec/ledger.md §8).

Each kind is a tagged msgspec Struct, so ``Payload`` can grow into a tagged union without changing how
existing entries encode. Each kind gets a stateless check here (``check_payload``) and a stateful rule in
``state.py``; adding a kind means one struct, one ``case`` in each.

Structs use ``omit_defaults=True``: a field added later with a default leaves old bodies' canonical bytes
unchanged, so old signatures and entry ids stay valid.
"""

from __future__ import annotations

import msgspec

from opengrid.errors import InvalidEntryError

from .attestation import Attestation, verify_attestation
from .ids import HASH_SIZE, JOB_ID_SIZE, KEY_SIZE, require_count, require_size


class Credit(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """Points minted to one account by a receipt."""

    account: bytes
    """32-byte Ed25519 public key of the credited node."""
    points: int
    """Strictly positive."""


class Receipt(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True, tag="receipt"):
    """Mints points for one verified job. Authored (signed) by the coordinator that verified it."""

    job_id: bytes
    """16 bytes; a job is credited at most once on the whole ledger."""
    contract_hash: bytes
    """32-byte digest of the decoding contract the replicas ran under."""
    output_commitment: bytes
    """32-byte commitment to the agreed output tokens."""
    n_tokens: int
    credits: tuple[Credit, ...]
    attestations: tuple[Attestation, ...]
    """One per credited worker (the worker co-signature)."""
    dissenters: tuple[bytes, ...] = ()
    """Keys of workers whose output disagreed (earn nothing)."""
    issued_at_ms: int = 0
    """Wall-clock time (Unix ms) the coordinator accepted the job, as it claims; informational (history
    charts), never used for validation — clocks of volunteers cannot be trusted."""


Payload = Receipt
"""Everything an entry can carry. Becomes ``Receipt | Hold | ...`` (a tagged union) as kinds are added."""


def check_payload(payload: Payload, network: str) -> None:
    """Check everything about ``payload`` that needs no ledger state; raise InvalidEntryError if wrong."""
    if isinstance(payload, Receipt):
        check_receipt(payload, network)
    else:  # pragma: no cover - unreachable until Payload is a union; keeps a new kind from slipping by.
        raise InvalidEntryError(f"unknown payload kind {type(payload).__name__}")


def check_receipt(receipt: Receipt, network: str) -> None:
    """Stateless receipt rules (spec/ledger.md §5): sizes, positive distinct credits, one matching valid
    attestation per credited account and no other, distinct dissenters who are not credited."""
    require_size("receipt job_id", receipt.job_id, JOB_ID_SIZE)
    require_size("receipt contract_hash", receipt.contract_hash, HASH_SIZE)
    require_size("receipt output_commitment", receipt.output_commitment, HASH_SIZE)
    require_count("receipt n_tokens", receipt.n_tokens, minimum=0)
    job = receipt.job_id.hex()
    if not receipt.credits:
        # A receipt that pays nobody would still use up the job id (a job is credited once).
        raise InvalidEntryError(f"receipt for job {job} credits nobody")
    credited: set[bytes] = set()
    for credit in receipt.credits:
        require_size("credit account", credit.account, KEY_SIZE)
        require_count(f"credit points for {credit.account.hex()}", credit.points, minimum=1)
        if credit.account in credited:
            raise InvalidEntryError(f"receipt for job {job} credits account {credit.account.hex()} twice")
        credited.add(credit.account)
    attested: set[bytes] = set()
    for att in receipt.attestations:
        if att.worker not in credited:
            raise InvalidEntryError(
                f"receipt for job {job} carries an attestation by {att.worker.hex()}, who is not credited"
            )
        if att.worker in attested:
            raise InvalidEntryError(f"receipt for job {job} carries two attestations by {att.worker.hex()}")
        if (att.job_id, att.contract_hash, att.output_commitment, att.n_tokens) != (
            receipt.job_id,
            receipt.contract_hash,
            receipt.output_commitment,
            receipt.n_tokens,
        ):
            raise InvalidEntryError(
                f"attestation by {att.worker.hex()} does not match receipt for job {job}: it attests job "
                f"{att.job_id.hex()}, contract {att.contract_hash.hex()}, commitment "
                f"{att.output_commitment.hex()}, {att.n_tokens} tokens"
            )
        verify_attestation(att, network)
        attested.add(att.worker)
    # Sorted so the message (and so any log) is the same on every node.
    unattested = sorted(credited - attested)
    if unattested:
        raise InvalidEntryError(
            f"receipt for job {job} credits {unattested[0].hex()} without that worker's attestation"
        )
    dissenting: set[bytes] = set()
    for key in receipt.dissenters:
        require_size("dissenter key", key, KEY_SIZE)
        if key in credited or key in dissenting:
            raise InvalidEntryError(
                f"receipt for job {job} lists dissenter {key.hex()} twice or also credits it"
            )
        dissenting.add(key)

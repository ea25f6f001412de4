"""Entry payloads: what an entry says (spec/ledger.md §5).

Each kind is a tagged msgspec Struct and ``Payload`` is their tagged union, so old entries keep their bytes
when kinds are added. Each kind gets a stateless check here (``check_payload``) and a stateful rule in
``state.py``; adding a kind means one struct, one branch in each.

Structs use ``omit_defaults=True``: a field added later with a default leaves old bodies' canonical bytes
unchanged, so old signatures and entry ids stay valid.

Kinds (tag, author, effect):

- ``receipt``  coordinator (minter)  mints points for one verified job (with worker attestations)
- ``hold``     a user                reserves points of the author for one job, to be closed by a coordinator
- ``settle``   the hold's coordinator pays workers credited for the job out of the hold; the rest goes back
- ``refund``   the hold's coordinator returns the whole hold
- ``transfer`` any account           gives points to another account
- ``grant``    a new account, seq 1  mints the network's starting grant, vouched for by a coordinator
- ``admit``    anyone                adds a coordinator, co-signed by >= 2/3 of the current coordinators
- ``fraud``    anyone                proves a fork: two entries of one author with one seq
- ``evidence`` coordinator (minter)  reputation evidence: valid / invalid / timeout per worker for a job
"""

from __future__ import annotations

import unicodedata

import msgspec
import nacl.signing

from opengrid.errors import InvalidEntryError

from .attestation import Attestation, verify_attestation
from .ids import (
    HASH_SIZE,
    JOB_ID_SIZE,
    KEY_SIZE,
    MAX_UINT64,
    SIGNATURE_SIZE,
    require_count,
    require_size,
)
from .signatures import ED25519, SignatureScheme

ADMIT_DOMAIN = "opengrid/admit/1"
"""First element of the array a coordinator signs to admit another (see :func:`admit_signing_bytes`)."""
GRANT_DOMAIN = "opengrid/grant/1"
"""First element of the array a coordinator signs to vouch for a starting grant."""
MAX_LIST = 256
"""Most items in any list inside a payload (credits, payouts, co-signatures, evidence keys)."""
MAX_MEMO_CHARS = 256
"""Most characters in a TRANSFER's memo (spec/ledger.md §5.6)."""
MAX_POINTS = MAX_UINT64
"""Most points one entry may move or mint (integers are at most u64 on the wire, spec/ledger.md §2)."""
_BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
"""Characters that reorder the text around them on screen: a memo could make a history line lie."""


class Credit(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """Points moved or minted to one account (by a receipt or a settle)."""

    account: bytes
    """32-byte Ed25519 public key of the credited node."""
    points: int
    """Strictly positive."""


class Cosignature(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A coordinator's signature over a domain-tagged statement (an admission or a grant voucher)."""

    signer: bytes
    """32-byte public key of the coordinator."""
    signature: bytes
    """64 bytes."""


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
    weight: int = 1
    """Points per generated token of the job's model (spec/ledger.md §7: one per started billion
    parameters), so anyone can check the credits: the reference coordinator credits each agreeing worker
    ``max(1, n_tokens) * weight``. Omitted when 1 (receipts from before weights keep their bytes)."""
    members: tuple[bytes, ...] = ()
    """Credited accounts that ran layers of another credited worker's job as members of its split group
    (spec/split.md §8): paid, but no separate verification of the output. Omitted when empty."""


class Hold(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True, tag="hold"):
    """The author (a user) reserves ``amount`` of its points for job ``job_id``; only ``coordinator`` may
    close the hold (SETTLE or REFUND). Waits (is not applied) while the author's balance is too low."""

    job_id: bytes
    """16 bytes."""
    amount: int
    """Strictly positive."""
    coordinator: bytes
    """32-byte key of the coordinator that runs the job and closes the hold."""


class Settle(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True, tag="settle"):
    """The hold's coordinator pays workers out of a hold; what is not paid out goes back to the holder."""

    hold: bytes
    """EntryId (32 bytes) of the HOLD entry it closes."""
    payouts: tuple[Credit, ...]
    """At least one; accounts distinct and all credited by the job's receipt; sum <= the hold's amount."""


class Refund(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True, tag="refund"):
    """The hold's coordinator returns a whole hold to its author (the job failed or was not run)."""

    hold: bytes
    """EntryId (32 bytes) of the HOLD entry it closes."""


class Transfer(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True, tag="transfer"):
    """The author gives ``amount`` of its points to ``to``. Waits while the author's balance is too low."""

    to: bytes
    """32-byte key of the receiving account; not the author."""
    amount: int
    """Strictly positive."""
    memo: str = ""
    """A note for the recipient (what it is for), at most ``MAX_MEMO_CHARS`` characters, no control or
    bidirectional-override characters (it is shown in terminals). Omitted when empty."""


class Grant(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True, tag="grant"):
    """A new account claims the network's starting grant: only as its first entry (seq 1), so once per key,
    and only with a voucher signed by a coordinator (who rate-limits vouchers off-ledger: Sybil control)."""

    points: int
    """Must equal the genesis ``grant_points``."""
    voucher: Cosignature
    """A coordinator's signature over ``[GRANT_DOMAIN, network, account, points]``."""


class Admit(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True, tag="admit"):
    """Admits ``coordinator`` as the ``epoch``-th admission; valid with co-signatures of at least 2/3 of the
    coordinator set before it (genesis coordinators plus admissions 0 .. epoch-1)."""

    coordinator: bytes
    """32-byte key of the new coordinator."""
    epoch: int
    """0 for the first admission after genesis, then 1, 2, ...: fixes which set must co-sign."""
    cosignatures: tuple[Cosignature, ...]
    """Signatures over ``[ADMIT_DOMAIN, network, epoch, coordinator]``; signers distinct."""


class Fraud(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True, tag="fraud"):
    """Proof of a fork: two different, validly signed entries of one author with one seq (encoded entries,
    lower EntryId first). Anyone may author it; every node that sees it freezes the forker."""

    first: bytes
    second: bytes


class Evidence(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True, tag="evidence"):
    """Reputation evidence a coordinator records for one job: which workers were valid, invalid or timed
    out. Keys are distinct across the three lists; at least one key in all."""

    job_id: bytes
    valid: tuple[bytes, ...] = ()
    invalid: tuple[bytes, ...] = ()
    timeout: tuple[bytes, ...] = ()


Payload = Receipt | Hold | Settle | Refund | Transfer | Grant | Admit | Fraud | Evidence
"""Everything an entry can carry: a tagged union (the ``type`` field names the kind)."""


def admit_signing_bytes(network: str, epoch: int, coordinator: bytes) -> bytes:
    """The exact bytes each co-signer of an ADMIT signs (a domain-tagged msgpack array)."""
    return msgspec.msgpack.encode([ADMIT_DOMAIN, network, epoch, coordinator])


def grant_signing_bytes(network: str, account: bytes, points: int) -> bytes:
    """The exact bytes a coordinator signs to vouch for ``account``'s starting grant."""
    return msgspec.msgpack.encode([GRANT_DOMAIN, network, account, points])


def sign_admit(
    key: nacl.signing.SigningKey,
    network: str,
    epoch: int,
    coordinator: bytes,
    *,
    scheme: SignatureScheme = ED25519,
) -> Cosignature:
    """Co-sign, as the coordinator holding ``key``, the admission of ``coordinator`` at ``epoch``."""
    require_count("admit epoch", epoch, minimum=0)
    require_size("admitted coordinator", coordinator, KEY_SIZE)
    message = admit_signing_bytes(network, epoch, coordinator)
    return Cosignature(bytes(key.verify_key), scheme.sign(key, message))


def sign_grant_voucher(
    key: nacl.signing.SigningKey,
    network: str,
    account: bytes,
    points: int,
    *,
    scheme: SignatureScheme = ED25519,
) -> Cosignature:
    """Vouch, as the coordinator holding ``key``, for ``account``'s starting grant of ``points``."""
    require_size("grant account", account, KEY_SIZE)
    require_count("grant points", points, minimum=1)
    return Cosignature(bytes(key.verify_key), scheme.sign(key, grant_signing_bytes(network, account, points)))


def verify_cosignature(
    cosig: Cosignature, message: bytes, what: str, *, scheme: SignatureScheme = ED25519
) -> None:
    """Check a co-signature's sizes and signature over ``message``; InvalidEntryError saying ``what``."""
    require_size(f"{what} signer", cosig.signer, KEY_SIZE)
    require_size(f"{what} signature", cosig.signature, SIGNATURE_SIZE)
    try:
        scheme.verify(cosig.signer, message, cosig.signature)
    except InvalidEntryError as exc:
        raise InvalidEntryError(f"{what} by {cosig.signer.hex()} has a bad signature") from exc


def check_payload(
    payload: Payload, network: str, author: bytes, *, scheme: SignatureScheme = ED25519
) -> None:
    """Check everything about ``payload`` that needs no ledger state; raise InvalidEntryError if wrong.

    FRAUD's inner entries are opened by ``entries.open_entry`` (it needs the entry codec).
    """
    if isinstance(payload, Receipt):
        check_receipt(payload, network, scheme=scheme)
    elif isinstance(payload, Hold):
        require_size("hold job_id", payload.job_id, JOB_ID_SIZE)
        require_count("hold amount", payload.amount, minimum=1)
        require_size("hold coordinator", payload.coordinator, KEY_SIZE)
    elif isinstance(payload, Settle):
        require_size("settle hold", payload.hold, HASH_SIZE)
        if not payload.payouts:
            raise InvalidEntryError(
                f"settle of hold {payload.hold.hex()} pays nobody; use a refund to return a whole hold"
            )
        _check_credits(payload.payouts, f"settle of hold {payload.hold.hex()}")
    elif isinstance(payload, Refund):
        require_size("refund hold", payload.hold, HASH_SIZE)
    elif isinstance(payload, Transfer):
        require_size("transfer recipient", payload.to, KEY_SIZE)
        require_count("transfer amount", payload.amount, minimum=1)
        if payload.to == author:
            raise InvalidEntryError(f"transfer from {author.hex()} to itself")
        problem = memo_problem(payload.memo)
        if problem:
            raise InvalidEntryError(f"transfer from {author.hex()}: {problem}")
    elif isinstance(payload, Grant):
        require_count("grant points", payload.points, minimum=1)
        verify_cosignature(
            payload.voucher,
            grant_signing_bytes(network, author, payload.points),
            "grant voucher",
            scheme=scheme,
        )
    elif isinstance(payload, Admit):
        check_admit(payload, network, scheme=scheme)
    elif isinstance(payload, Fraud):
        if payload.first == payload.second:
            raise InvalidEntryError("fraud proof carries the same entry twice")
    elif isinstance(payload, Evidence):
        check_evidence(payload)
    else:  # pragma: no cover - msgspec only decodes the kinds above; keeps a new kind from slipping by.
        raise InvalidEntryError(f"unknown payload kind {type(payload).__name__}")


def memo_problem(memo: str) -> str:
    """What is wrong with a TRANSFER memo ("" if nothing): too long, or a character that could garble or
    disguise what a terminal shows (control characters, bidirectional overrides)."""
    if len(memo) > MAX_MEMO_CHARS:
        return f"the memo has {len(memo)} characters; at most {MAX_MEMO_CHARS} are allowed"
    for index, char in enumerate(memo):
        if unicodedata.category(char) == "Cc" or char in _BIDI_CONTROLS:
            return (
                f"the memo has a control character (U+{ord(char):04X}) at position {index}; use plain "
                "text on one line"
            )
    return ""


def _check_credits(credits: tuple[Credit, ...], what: str) -> set[bytes]:
    if len(credits) > MAX_LIST:
        raise InvalidEntryError(f"{what} lists {len(credits)} accounts, over the limit of {MAX_LIST}")
    accounts: set[bytes] = set()
    for credit in credits:
        require_size("credit account", credit.account, KEY_SIZE)
        require_count(f"credit points for {credit.account.hex()}", credit.points, minimum=1)
        if credit.account in accounts:
            raise InvalidEntryError(f"{what} credits account {credit.account.hex()} twice")
        accounts.add(credit.account)
    return accounts


def check_admit(admit: Admit, network: str, *, scheme: SignatureScheme = ED25519) -> None:
    """Stateless ADMIT rules: sizes, distinct signers, every co-signature valid."""
    require_size("admitted coordinator", admit.coordinator, KEY_SIZE)
    require_count("admit epoch", admit.epoch, minimum=0)
    if not admit.cosignatures or len(admit.cosignatures) > MAX_LIST:
        raise InvalidEntryError(
            f"admission of {admit.coordinator.hex()} carries {len(admit.cosignatures)} co-signatures; "
            f"it needs 1..{MAX_LIST}"
        )
    signers: set[bytes] = set()
    message = admit_signing_bytes(network, admit.epoch, admit.coordinator)
    for cosig in admit.cosignatures:
        if cosig.signer in signers:
            raise InvalidEntryError(
                f"admission of {admit.coordinator.hex()} is co-signed twice by {cosig.signer.hex()}"
            )
        signers.add(cosig.signer)
        verify_cosignature(
            cosig, message, f"co-signature of the admission of {admit.coordinator.hex()}", scheme=scheme
        )


def check_evidence(evidence: Evidence) -> None:
    """Stateless EVIDENCE rules: sizes, at least one key, keys distinct across all three lists."""
    require_size("evidence job_id", evidence.job_id, JOB_ID_SIZE)
    keys = [*evidence.valid, *evidence.invalid, *evidence.timeout]
    if not keys or len(keys) > MAX_LIST:
        raise InvalidEntryError(
            f"evidence for job {evidence.job_id.hex()} names {len(keys)} workers; it needs 1..{MAX_LIST}"
        )
    for key in keys:
        require_size("evidence worker", key, KEY_SIZE)
    if len(set(keys)) != len(keys):
        raise InvalidEntryError(f"evidence for job {evidence.job_id.hex()} names a worker twice")


def check_receipt(receipt: Receipt, network: str, *, scheme: SignatureScheme = ED25519) -> None:
    """Stateless receipt rules (spec/ledger.md §5): sizes, positive distinct credits, one matching valid
    attestation per credited account and no other, distinct dissenters who are not credited."""
    require_size("receipt job_id", receipt.job_id, JOB_ID_SIZE)
    require_size("receipt contract_hash", receipt.contract_hash, HASH_SIZE)
    require_size("receipt output_commitment", receipt.output_commitment, HASH_SIZE)
    require_count("receipt n_tokens", receipt.n_tokens, minimum=0)
    require_count("receipt weight", receipt.weight, minimum=1)
    job = receipt.job_id.hex()
    if not receipt.credits:
        # A receipt that pays nobody would still use up the job id (a job is credited once).
        raise InvalidEntryError(f"receipt for job {job} credits nobody")
    credited = _check_credits(receipt.credits, f"receipt for job {job}")
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
        verify_attestation(att, network, scheme=scheme)
        attested.add(att.worker)
    # Sorted so the message (and so any log) is the same on every node.
    unattested = sorted(credited - attested)
    if unattested:
        raise InvalidEntryError(
            f"receipt for job {job} credits {unattested[0].hex()} without that worker's attestation"
        )
    if len(receipt.members) > MAX_LIST:
        raise InvalidEntryError(
            f"receipt for job {job} lists {len(receipt.members)} members, over {MAX_LIST}"
        )
    if len(set(receipt.members)) != len(receipt.members) or not set(receipt.members) <= credited:
        raise InvalidEntryError(
            f"receipt for job {job} lists a split-group member twice or one it does not credit"
        )
    dissenting: set[bytes] = set()
    for key in receipt.dissenters:
        require_size("dissenter key", key, KEY_SIZE)
        if key in credited or key in dissenting:
            raise InvalidEntryError(
                f"receipt for job {job} lists dissenter {key.hex()} twice or also credits it"
            )
        dissenting.add(key)

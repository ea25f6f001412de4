"""Worker attestations: a worker's signed statement about the output it produced for a job.

A receipt may credit a worker only when it carries that worker's attestation for exactly the job, contract,
output commitment and token count the receipt states (spec/ledger.md §5). So a coordinator cannot mint
points for a key that did not do the work, nor move a worker's credit to another job.
"""

from __future__ import annotations

import msgspec
import nacl.signing

from opengrid.errors import InvalidEntryError

from .ids import HASH_SIZE, JOB_ID_SIZE, KEY_SIZE, SIGNATURE_SIZE, require_count, require_size
from .signatures import ED25519, SignatureScheme

ATTESTATION_DOMAIN = "opengrid/attestation/1"
"""First element of the signed array: keeps an attestation signature from meaning anything else."""


class Attestation(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A worker's signed statement: 'for job J under contract C my output tokens commit to X, n tokens'."""

    worker: bytes
    """32-byte Ed25519 public key of the worker; also the account it asks to be credited."""
    job_id: bytes
    """16 bytes."""
    contract_hash: bytes
    """32-byte digest of the decoding contract (the numerical class)."""
    output_commitment: bytes
    """32-byte commitment to the output tokens."""
    n_tokens: int
    """Number of output tokens the commitment covers."""
    signature: bytes
    """64 bytes, by ``worker``, over :func:`attestation_signing_bytes`."""


def attestation_signing_bytes(
    network: str,
    worker: bytes,
    job_id: bytes,
    contract_hash: bytes,
    output_commitment: bytes,
    n_tokens: int,
) -> bytes:
    """The exact bytes a worker signs: a msgpack array led by the domain tag and the network id.

    An array (not a map) fixes the order, and msgspec encodes ints and bytes in their shortest form, so
    the encoding is canonical. The domain tag and network keep a signature from being replayed as another
    kind of statement or on another network.
    """
    return msgspec.msgpack.encode(
        [ATTESTATION_DOMAIN, network, worker, job_id, contract_hash, output_commitment, n_tokens]
    )


def sign_attestation(
    key: nacl.signing.SigningKey,
    network: str,
    job_id: bytes,
    contract_hash: bytes,
    output_commitment: bytes,
    n_tokens: int,
    *,
    scheme: SignatureScheme = ED25519,
) -> Attestation:
    """Attest, as the worker holding ``key``, to one job's output; InvalidEntryError on bad fields."""
    worker = bytes(key.verify_key)
    _check_fields(worker, job_id, contract_hash, output_commitment, n_tokens)
    message = attestation_signing_bytes(network, worker, job_id, contract_hash, output_commitment, n_tokens)
    signature = scheme.sign(key, message)
    return Attestation(worker, job_id, contract_hash, output_commitment, n_tokens, signature)


def verify_attestation(att: Attestation, network: str, *, scheme: SignatureScheme = ED25519) -> None:
    """Check field sizes and the worker's signature on ``network``; InvalidEntryError if either fails."""
    _check_fields(att.worker, att.job_id, att.contract_hash, att.output_commitment, att.n_tokens)
    require_size("attestation signature", att.signature, SIGNATURE_SIZE)
    message = attestation_signing_bytes(
        network, att.worker, att.job_id, att.contract_hash, att.output_commitment, att.n_tokens
    )
    try:
        scheme.verify(att.worker, message, att.signature)
    except InvalidEntryError as exc:
        raise InvalidEntryError(
            f"attestation by worker {att.worker.hex()} for job {att.job_id.hex()} has a bad signature "
            f"on network {network!r}"
        ) from exc


def _check_fields(
    worker: bytes, job_id: bytes, contract_hash: bytes, output_commitment: bytes, n_tokens: int
) -> None:
    require_size("attestation worker", worker, KEY_SIZE)
    require_size("attestation job_id", job_id, JOB_ID_SIZE)
    require_size("attestation contract_hash", contract_hash, HASH_SIZE)
    require_size("attestation output_commitment", output_commitment, HASH_SIZE)
    require_count("attestation n_tokens", n_tokens, minimum=0)

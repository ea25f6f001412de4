"""What a signed receipt proves about the answer a client received: the one receipt check, used by the SDK
(``opengrid_sdk.SignedReceipt.verify``) and by a node passing on an answer its coordinator sent
(opengrid/node/api_service.py), so both refuse the same receipts.

A receipt is a ledger entry (spec/ledger.md §5.2) signed by the coordinator; inside it, every credited
worker's attestation commits to the same output. :func:`verify_receipt` checks all of it against the
tokens and text received, so nobody has to take the coordinator's word for what the workers produced.
Pure: no I/O; failures raise ``VerificationError`` saying what does not match.
"""

from __future__ import annotations

from collections.abc import Sequence

from opengrid_ledger import Receipt, decode_entry, open_entry, verify_attestation

from opengrid.errors import InvalidEntryError, VerificationError
from opengrid.wire.commitment import commit_output


def open_receipt(entry: bytes, network: str) -> tuple[bytes, Receipt]:
    """Decode and authenticate an encoded receipt entry of ``network``: (the signer's key, the receipt).

    Raises VerificationError if the signature or format is invalid (spec/ledger.md §3.2) or the entry is
    not a receipt.
    """
    try:
        body = open_entry(decode_entry(entry), network)
    except InvalidEntryError as exc:
        raise VerificationError(f"receipt signature or format is invalid: {exc}") from exc
    if not isinstance(body.payload, Receipt):
        raise VerificationError(f"entry is a {type(body.payload).__name__}, not a receipt")
    return body.author, body.payload


def verify_receipt(
    entry: bytes,
    network: str,
    *,
    tokens: Sequence[int],
    text: str,
    job_id: bytes | None = None,
    coordinator_key: bytes | None = None,
    salt: bytes = b"",
    weight: int | None = None,
) -> tuple[bytes, Receipt]:
    """Return (signer, receipt) if the encoded receipt ``entry`` is authentic and backs this output;
    raise ``VerificationError`` saying what does not match otherwise.

    Checks: the coordinator's signature over the exact bytes; the expected coordinator (when given);
    the job id (when given); the commitment equals ``commit_output(tokens, text, salt)`` (``salt``: a
    sealed job's secret salt) and ``n_tokens`` the number of tokens; every credited worker has a valid
    attestation to this output; no worker is credited more than ``max(1, n_tokens) x`` the receipt's
    weight (spec/ledger.md §7); the weight is the one the client paid for (``weight``: from its quote,
    when given).
    """
    author, receipt = open_receipt(entry, network)
    if coordinator_key is not None and author != coordinator_key:
        raise VerificationError("receipt was signed by another coordinator than the one asked")
    if job_id is not None and receipt.job_id != job_id:
        raise VerificationError("receipt is for another job")
    if commit_output(tokens, text, salt) != receipt.output_commitment or receipt.n_tokens != len(tokens):
        raise VerificationError(
            f"the output received ({len(tokens)} token(s)) does not match the receipt's commitment "
            f"({receipt.n_tokens} token(s))"
        )
    if weight is not None and receipt.weight != weight:
        raise VerificationError(
            f"the receipt prices a token at {receipt.weight} point(s); the coordinator quoted {weight}"
        )
    check_credited_work(receipt, network)
    return author, receipt


def verify_receipt_without_output(entry: bytes, network: str, *, job_id: bytes) -> tuple[bytes, Receipt]:
    """What a receipt proves when its output is not at hand (a receipt looked up by job id later):
    :func:`verify_receipt` without the commitment check. Who did the work is proven only if the signer is
    trusted (the returned key says who signed)."""
    author, receipt = open_receipt(entry, network)
    if receipt.job_id != job_id:
        raise VerificationError(f"the receipt returned is for job {receipt.job_id.hex()}, not {job_id.hex()}")
    check_credited_work(receipt, network)
    return author, receipt


def check_credited_work(receipt: Receipt, network: str) -> None:
    """Every credited worker attested this job's output with a valid signature, and none is credited
    more than ``max(1, n_tokens) x`` the receipt's weight (spec/ledger.md §7)."""
    attested = set()
    for attestation in receipt.attestations:
        try:
            verify_attestation(attestation, network)
        except InvalidEntryError as exc:
            raise VerificationError(f"a worker attestation is invalid: {exc}") from exc
        if (attestation.job_id, attestation.output_commitment) != (receipt.job_id, receipt.output_commitment):
            raise VerificationError("a worker attestation commits to another output")
        attested.add(attestation.worker)
    if not receipt.credits or any(c.account not in attested for c in receipt.credits):
        raise VerificationError("a credited worker has no attestation in the receipt")
    most = max(1, receipt.n_tokens) * receipt.weight
    if any(c.points > most for c in receipt.credits):
        raise VerificationError(
            f"the receipt credits a worker more than {most} points ({receipt.n_tokens} token(s) x "
            f"{receipt.weight}): it mints points no job earned"
        )

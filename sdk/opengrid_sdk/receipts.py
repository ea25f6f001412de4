"""Signed receipts as a client sees them, and their verification.

A receipt is a ledger entry signed by the coordinator; inside it, every credited worker's attestation
(its co-signature) commits to the same output. ``verify`` checks all of it against the text and tokens the
client received, so a client never has to trust the coordinator's word for what the workers produced. The
check itself is ``opengrid.wire.receipts.verify_receipt``, the one a node runs too.
"""

from __future__ import annotations

from dataclasses import dataclass

from opengrid_ledger import Receipt, Transfer, decode_entry, open_entry

from opengrid.errors import InvalidEntryError
from opengrid.wire.receipts import open_receipt, verify_receipt


@dataclass(frozen=True)
class HistoryItem:
    """One ledger receipt as it concerns one account."""

    entry_id: bytes
    job_id: bytes
    coordinator_key: bytes
    outcome: str
    """"paid" (credited), "outvoted" (its output disagreed with the majority), or a transfer: "sent" or
    "received" (``TRANSFER_OUTCOMES``)."""
    points: int
    """Points this entry moved for the account: credited (paid), 0 (outvoted), negative when sent."""
    n_tokens: int
    issued_at_ms: int
    """When the coordinator accepted the job, by its clock (0 if it did not say; 0 for transfers, which
    carry no time)."""
    counterparty: bytes = b""
    """Transfers: the other account (the recipient of a sent one, the sender of a received one)."""
    memo: str = ""
    """Transfers: the sender's note."""

    @property
    def is_transfer(self) -> bool:
        """A TRANSFER sent or received, not a job's receipt."""
        return self.outcome in TRANSFER_OUTCOMES


TRANSFER_OUTCOMES = ("sent", "received")


def history_item(data: bytes, account: bytes, network: str) -> HistoryItem | None:
    """Verify one signed entry and describe it from ``account``'s side; None if invalid or unrelated."""
    try:
        entry = decode_entry(data)
        body = open_entry(entry, network)
    except InvalidEntryError:
        return None
    payload = body.payload
    if isinstance(payload, Transfer):
        if account not in (body.author, payload.to):
            return None
        sent = body.author == account
        return HistoryItem(
            entry_id=entry.id,
            job_id=b"",
            coordinator_key=b"",
            outcome="sent" if sent else "received",
            points=-payload.amount if sent else payload.amount,
            n_tokens=0,
            issued_at_ms=0,
            counterparty=payload.to if sent else body.author,
            memo=payload.memo,
        )
    if not isinstance(payload, Receipt):
        return None
    receipt = payload
    points = sum(c.points for c in receipt.credits if c.account == account)
    if points:
        outcome = "paid"
    elif account in receipt.dissenters:
        outcome = "outvoted"
    else:
        return None
    return HistoryItem(
        entry_id=entry.id,
        job_id=receipt.job_id,
        coordinator_key=body.author,
        outcome=outcome,
        points=points,
        n_tokens=receipt.n_tokens,
        issued_at_ms=receipt.issued_at_ms,
    )


@dataclass(frozen=True)
class SignedReceipt:
    """A coordinator-signed receipt for one job, as received (``entry`` holds the exact signed bytes)."""

    entry: bytes
    network: str
    salt: bytes = b""
    """Sealed jobs: the job's secret commitment salt (only its client has it; needed to verify)."""

    def _open(self) -> tuple[bytes, Receipt]:
        return open_receipt(self.entry, self.network)

    @property
    def coordinator_key(self) -> bytes:
        """The 32-byte key of the coordinator that signed it."""
        return self._open()[0]

    @property
    def receipt(self) -> Receipt:
        """The decoded payload: job id, commitment, credits, attestations, dissenters."""
        return self._open()[1]

    @property
    def credits(self) -> dict[bytes, int]:
        """Points minted per worker key."""
        return {c.account: c.points for c in self.receipt.credits}

    def verify(
        self,
        *,
        tokens: list[int],
        text: str,
        job_id: bytes | None = None,
        coordinator_key: bytes | None = None,
        salt: bytes | None = None,
        weight: int | None = None,
    ) -> None:
        """Raise ``VerificationError`` unless the receipt is authentic and matches this output.

        Checks: the coordinator's signature over the exact bytes; the expected coordinator (when given);
        the job id (when given); the commitment equals ``commit_output(tokens, text, salt)`` (``salt``:
        the sealed-mode job's secret salt); every credited worker has a valid attestation to it; no
        worker is credited more than ``max(1, tokens) x`` the receipt's weight (spec/ledger.md §7); the
        weight is the one the client paid for (``weight``: from its quote, when given).
        """
        verify_receipt(
            self.entry,
            self.network,
            tokens=tokens,
            text=text,
            job_id=job_id,
            coordinator_key=coordinator_key,
            salt=self.salt if salt is None else salt,
            weight=weight,
        )

"""The one writer of a node's own hash chain (spec/ledger.md §4: "an author MUST NOT sign two entries with
one seq").

Every entry a node authors — a coordinator's RECEIPT, EVIDENCE, SETTLE and REFUND, its own GRANT and HOLD,
the node's FRAUD proofs and its ADMIT — is built, signed and applied by one :class:`ChainWriter`, so the
chain's head is known in one place and two parts of a node can never sign two entries with one seq (a fork
of our own, which freezes our account on every node). Sans-IO: the key and the ledger come in; the caller
(the coordinator core, the node's drivers) stores and publishes what :meth:`ChainWriter.write` returns.

One writer per node, shared: the node makes it once its ledger is open and hands the same instance to its
coordinator core, its FRAUD path and its admission (opengrid/node/service.py). The node runs on one trio
thread, and no writer call yields, so calls never interleave; nothing may call a writer from a worker
thread.

The head is the last entry this writer signed, not only the last applied one: an entry that waits in the
ledger (a FRAUD whose author has no standing yet, §5.9; a HOLD above the balance, §6.1) still takes its
seq, and the next entry is chained after it (it parks behind it, §4) instead of reusing the seq. A seq
this writer signed and applied (or handed out to be published) is never signed again, even if the ledger
later drops or evicts the waiting entry: peers may hold it, and a second entry with its seq is a fork. The
cost of that choice is a chain stuck behind an entry that never applies, which is visible (its later
entries wait) and recoverable, where a fork freezes the account for good. Only a refused entry
(:meth:`ChainWriter.write` raised) and entries signed ahead and never applied free their seq.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import msgspec
import nacl.signing

from .entries import Entry, EntryBody, decode_body, encode_entry, sign_entry
from .ids import EntryId
from .payloads import Payload
from .signatures import ED25519, SignatureScheme
from .state import LedgerState


class ChainWriter:
    """Builds, signs and applies the entries of one author's chain (``key``'s) on ``ledger``."""

    def __init__(
        self, ledger: LedgerState, key: nacl.signing.SigningKey, *, scheme: SignatureScheme = ED25519
    ) -> None:
        self.ledger = ledger
        """The ledger every entry is applied to (the node's one ledger)."""
        self.author = bytes(key.verify_key)
        """The chain's author: ``key``'s public key (the node's account)."""
        self._key = key
        self._scheme = scheme
        self._signed: tuple[int, EntryId] | None = None
        """(seq, id) of the last entry :meth:`write` signed (it may still wait in the ledger)."""
        self._log: list[bytes] = []
        self._logged_seq = 0
        self._catch_up()

    def head(self) -> tuple[int, EntryId] | None:
        """(seq, id) of the chain's last entry: the later of the ledger's applied head and the last entry
        this writer signed; None for an empty chain."""
        applied = self.ledger.head(self.author)
        if self._signed is not None and (applied is None or self._signed[0] > applied[0]):
            return self._signed
        return applied

    def next_body(self, payload: Payload) -> EntryBody:
        """The body of the chain's next link carrying ``payload`` (unsigned).

        Raises LedgerError if the ledger froze the author after a fork: extending it would only be refused.
        """
        body = self.ledger.next_body(self.author, payload)  # also the frozen-author check
        head = self.head()
        if head is not None and head[0] >= body.seq:
            body = msgspec.structs.replace(body, seq=head[0] + 1, prev=bytes(head[1]))
        return body

    def write(self, payload: Payload) -> tuple[Entry, list[Entry]]:
        """Sign ``payload`` as the chain's next entry and apply it; return it and every entry the ledger
        newly applied (it, and any entries that waited on it; empty if it waits itself).

        The caller stores the applied entries and publishes the entry. Raises InvalidEntryError if the
        ledger refuses it (then nothing changed: the seq is free again) and LedgerError if the author is
        frozen.
        """
        self._catch_up()
        entry = sign_entry(self._key, self.next_body(payload), scheme=self._scheme)
        applied = self.ledger.apply(entry)
        body = decode_body(entry.body)
        self._signed = (body.seq, entry.id)
        self._log.append(encode_entry(entry))
        self._logged_seq = body.seq
        return entry, applied

    def sign_ahead(self, payloads: Sequence[Payload]) -> list[Entry]:
        """Sign ``payloads`` as the chain's next links, in order, WITHOUT applying them (a coordinator's own
        GRANT and HOLD, sent inside the job they pay for and applied when it is submitted).

        They do not move the head: the caller applies them (then :meth:`entries` adopts them) before
        anything else is written — nothing may yield in between — or drops them, and the seqs are free
        again.
        """
        signed: list[Entry] = []
        head = self.head()
        for payload in payloads:
            body = self.next_body(payload)
            if head is not None and signed:
                body = msgspec.structs.replace(body, seq=head[0] + 1, prev=bytes(head[1]))
            entry = sign_entry(self._key, body, scheme=self._scheme)
            signed.append(entry)
            head = (body.seq, entry.id)
        return signed

    def entries(self) -> list[bytes]:
        """The chain's encoded entries in chain order: those the ledger applied (whoever brought them:
        this writer, a job that carried our signed-ahead HOLD, sync) and those this writer signed that
        still wait. The same list object every call (callers may keep it); it only grows."""
        self._catch_up()
        return self._log

    def adopt(self, applied: Iterable[Entry]) -> None:
        """Take note of entries newly applied by another path (a job carrying our signed-ahead GRANT and
        HOLD): ours among them join :meth:`entries`."""
        if any(decode_body(e.body).author == self.author for e in applied):
            self._catch_up()

    def _catch_up(self) -> None:
        """Append to the log the applied entries of our chain it lacks (applied since, by any path)."""
        head = self.ledger.head(self.author)
        if head is None or head[0] <= self._logged_seq:
            return
        for entry in self.ledger.entries_by_author(self.author, from_seq=self._logged_seq + 1):
            self._log.append(encode_entry(entry))
        self._logged_seq = head[0]

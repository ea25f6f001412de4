"""The ledger state: a deterministic fold over a grow-only set of valid entries (spec/ledger.md §6).

Merge is set union. Entries may arrive in any order and any number of times: an entry whose chain
predecessor is missing waits ("parked") and is applied as soon as the gap closes, so for any set of valid,
non-conflicting entries the resulting state does not depend on arrival order.
"""

from __future__ import annotations

from collections.abc import Iterable

from opengrid.errors import InvalidEntryError, LedgerError

from .entries import Entry, EntryBody, open_entry
from .ids import EntryId
from .payloads import Payload, Receipt


class LedgerState:
    """Deterministic fold over a grow-only set of valid entries (merge = set union)."""

    def __init__(self, network: str, minters: Iterable[bytes] = ()) -> None:
        """Start empty on ``network``; ``minters`` are the keys allowed to author receipts."""
        self.network = network
        self._minters: set[bytes] = set(minters)
        self._applied: list[Entry] = []
        self._applied_ids: set[EntryId] = set()
        # (author, seq) -> entry, for applied entries: the chain links and fork detection.
        self._by_slot: dict[tuple[bytes, int], Entry] = {}
        self._heads: dict[bytes, tuple[int, EntryId]] = {}
        # Verified entries waiting for their predecessor, by (author, seq).
        self._parked: dict[tuple[bytes, int], tuple[Entry, EntryBody]] = {}
        self._balances: dict[bytes, int] = {}
        self._jobs_done: dict[bytes, int] = {}
        self._receipts: dict[bytes, Entry] = {}
        self._forks: dict[bytes, tuple[Entry, Entry]] = {}

    # -- configuration --------------------------------------------------------------------------------

    def add_minter(self, key: bytes) -> None:
        """Allow ``key`` to author receipts from now on (a coordinator admitted by the network)."""
        self._minters.add(key)

    # -- applying -------------------------------------------------------------------------------------

    def apply(self, entry: Entry) -> list[Entry]:
        """Validate and apply ``entry``; return every entry newly applied by this call, in chain order.

        Idempotent: an entry already applied (or already parked) returns ``[]``. An entry whose
        predecessor (author, seq-1) has not arrived is parked and returns ``[]``; it is applied, and
        returned, by the call that brings its predecessor. Invalid entries raise InvalidEntryError and
        change nothing, except a fork: a second, different entry for an (author, seq) already held raises
        InvalidEntryError, records both entries as evidence and freezes the author (its later entries are
        refused and its parked ones dropped). A parked entry that turns out invalid once its predecessor
        arrives is dropped silently: the call that brought the predecessor succeeded.
        """
        entry_id = entry.id
        if entry_id in self._applied_ids:
            return []
        body = open_entry(entry, self.network)
        slot = (body.author, body.seq)
        parked = self._parked.get(slot, (None, None))[0]
        if parked is not None and parked.id == entry_id:
            return []
        if body.author in self._forks:
            raise InvalidEntryError(
                f"author {body.author.hex()} is frozen after a fork; entry seq {body.seq} refused"
            )
        held = self._by_slot.get(slot, parked)
        if held is not None:
            self._freeze(body.author, held, entry)
            raise InvalidEntryError(
                f"fork: author {body.author.hex()} signed two different entries with seq {body.seq} "
                f"({held.id.hex()} and {entry_id.hex()}); the author is now frozen"
            )
        head_seq = self._heads.get(body.author, (0, EntryId(b"")))[0]
        if body.seq > head_seq + 1:
            self._parked[slot] = (entry, body)
            return []
        self._check_links(body)
        self._check_rules(entry, body)
        self._commit(entry, body)
        return [entry, *self._unpark(body.author, body.seq + 1)]

    def _unpark(self, author: bytes, seq: int) -> list[Entry]:
        """Apply the author's parked entries from ``seq`` on while they chain; drop one that fails."""
        applied: list[Entry] = []
        while (parked := self._parked.pop((author, seq), None)) is not None:
            entry, body = parked  # verified by open_entry when it was parked
            try:
                self._check_links(body)
                self._check_rules(entry, body)
            except InvalidEntryError:
                break
            self._commit(entry, body)
            applied.append(entry)
            seq += 1
        return applied

    def _check_links(self, body: EntryBody) -> None:
        """Chain rule: ``prev`` is the id of the author's applied entry seq-1 (spec/ledger.md §4)."""
        if body.seq == 1:
            return  # open_entry already checked that prev is empty
        head = self._heads.get(body.author)
        if head is None or head[0] != body.seq - 1:
            raise InvalidEntryError(f"entry seq {body.seq} of {body.author.hex()} arrived before seq-1")
        if body.prev != head[1]:
            raise InvalidEntryError(
                f"entry seq {body.seq} of {body.author.hex()} has prev {body.prev.hex()}, but the author's "
                f"entry seq {head[0]} is {head[1].hex()}: broken chain"
            )

    def _check_rules(self, entry: Entry, body: EntryBody) -> None:
        """Stateful payload rules; one ``case`` per payload kind."""
        payload: Payload = body.payload
        if isinstance(payload, Receipt):
            if body.author not in self._minters:
                raise InvalidEntryError(
                    f"author {body.author.hex()} is not a minter on {self.network!r}; only admitted "
                    "coordinators may author receipts"
                )
            earlier = self._receipts.get(payload.job_id)
            if earlier is not None:
                raise InvalidEntryError(
                    f"job {payload.job_id.hex()} was already credited by entry {earlier.id.hex()}; "
                    f"entry {entry.id.hex()} refused"
                )

    def _commit(self, entry: Entry, body: EntryBody) -> None:
        entry_id = entry.id
        self._applied.append(entry)
        self._applied_ids.add(entry_id)
        self._by_slot[(body.author, body.seq)] = entry
        self._heads[body.author] = (body.seq, entry_id)
        payload: Payload = body.payload
        if isinstance(payload, Receipt):
            self._receipts[payload.job_id] = entry
            for credit in payload.credits:
                self._balances[credit.account] = self._balances.get(credit.account, 0) + credit.points
                self._jobs_done[credit.account] = self._jobs_done.get(credit.account, 0) + 1

    def _freeze(self, author: bytes, first: Entry, second: Entry) -> None:
        # Evidence in id order so every node records the same pair whichever arrived first.
        self._forks[author] = (first, second) if first.id < second.id else (second, first)
        for slot in [slot for slot in self._parked if slot[0] == author]:
            del self._parked[slot]

    # -- reading --------------------------------------------------------------------------------------

    def balance(self, account: bytes) -> int:
        """Points held by ``account`` (0 if it never earned any)."""
        return self._balances.get(account, 0)

    def balances(self) -> dict[bytes, int]:
        """Every account with a nonzero balance, in key order."""
        return {account: points for account, points in sorted(self._balances.items()) if points}

    def jobs_done(self, account: bytes) -> int:
        """Number of applied receipts that credit ``account``."""
        return self._jobs_done.get(account, 0)

    def head(self, author: bytes) -> tuple[int, EntryId] | None:
        """(seq, id) of the author's last applied entry, or None if none applied."""
        return self._heads.get(author)

    def next_body(self, author: bytes, payload: Payload) -> EntryBody:
        """The next link of ``author``'s chain carrying ``payload``; sign it with :func:`sign_entry`.

        Raises LedgerError if the author is frozen: extending a forked chain would only be refused.
        """
        if author in self._forks:
            raise LedgerError(f"author {author.hex()} is frozen after a fork; it cannot append entries")
        head = self._heads.get(author)
        if head is None:
            return EntryBody(network=self.network, author=author, seq=1, prev=b"", payload=payload)
        return EntryBody(network=self.network, author=author, seq=head[0] + 1, prev=head[1], payload=payload)

    def receipt_for(self, job_id: bytes) -> Entry | None:
        """The applied entry whose receipt credited ``job_id``, if any."""
        return self._receipts.get(job_id)

    def entries(self) -> list[Entry]:
        """Applied entries, in the order they were applied (each author's in chain order)."""
        return list(self._applied)

    def pending(self) -> list[Entry]:
        """Verified entries parked until their chain predecessor arrives, by (author, seq)."""
        return [self._parked[slot][0] for slot in sorted(self._parked)]

    def __len__(self) -> int:
        """Number of applied entries."""
        return len(self._applied)

    def is_frozen(self, author: bytes) -> bool:
        """True once ``author`` has been caught signing two entries with one seq."""
        return author in self._forks

    def fork_evidence(self, author: bytes) -> tuple[Entry, Entry] | None:
        """The two conflicting entries that froze ``author`` (lower id first), or None."""
        return self._forks.get(author)

"""The ledger state: a deterministic fold over a grow-only set of valid entries (spec/ledger.md §6).

Merge is set union. Entries may arrive in any order and any number of times. An entry waits instead of
being refused when what it needs may still arrive:

- *parked*: its chain predecessor (author, seq-1) has not been applied yet;
- *blocked*: it is its author's next entry but depends on something not applied yet: a HOLD or TRANSFER
  on points its author has not received yet, a SETTLE or REFUND on its HOLD or the job's RECEIPT, an ADMIT
  on the admissions before it.

Every such condition is monotone (once met, it stays met as more entries are applied), so without forks
the applied set is the unique fixpoint, whatever the order. A fork is the one non-monotone event: once
two entries of one author with one seq are known (received directly or inside a FRAUD entry) the author
is *cut* at that seq, and the state is rebuilt from the retained entries without the author's entries from
that seq on. Cuts only grow, and the rebuild is again a monotone fixpoint, so balances and reputation
converge regardless of arrival order (spec/ledger.md §6).

Bounds (spec/ledger.md §6.3): keys are free, so nothing an author without *standing* (no credit, no
applied entry, not a coordinator) sends may cost a node without bound. Waiting entries are capped per
author, in total and in bytes, and those of authors without standing get a small share, oldest evicted
first; when the pool is full a newcomer displaces the newest entry of the author holding the most
waiting entries (or is refused if that is its own author). A FRAUD entry waits until its author has
standing, and an author proves a given forker at most once. A fork by an author without standing cuts it
without a rebuild and keeps no evidence (so no FRAUD proof is made for it) until the author gains standing;
such cuts are capped too.
Eviction only forgets what sync can bring again, so it never breaks convergence of what is applied.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from opengrid.errors import InvalidEntryError, LedgerError

from .entries import Entry, EntryBody, decode_body, decode_entry, make_fraud, open_entry
from .genesis import Genesis
from .ids import EntryId
from .payloads import (
    Admit,
    Evidence,
    Fraud,
    Grant,
    Hold,
    Payload,
    Receipt,
    Refund,
    Settle,
    Transfer,
)
from .signatures import ED25519, SignatureScheme

WaitKey = tuple[str, bytes | int]
"""What a blocked entry waits for: ("balance", account), ("hold", entry id), ("job", job id) or
("admit", epoch)."""

MAX_PARKED_PER_AUTHOR = 10_000
"""Most entries of one author parked at once (a peer cannot fill memory with far-future seqs)."""
MAX_WAITING = 16_384
"""Most entries waiting (parked or blocked) at once, all authors together (spec/ledger.md §6.3)."""
MAX_WAITING_BYTES = 32 * 1024 * 1024
"""Most bytes of entries waiting at once, all authors together."""
MAX_UNBACKED_WAITING = 1024
"""Most waiting entries whose authors have no standing (no credit, no applied entry, not a coordinator):
keys are free, so these get a small share of the pool, oldest evicted first."""
MAX_UNBACKED_CUTS = 4096
"""Most cuts remembered for authors that forked with no standing (oldest forgotten first); they carry no
evidence and no FRAUD proof is made for them."""


class TrustedReplayError(LedgerError):
    """An entry applied with ``apply_trusted`` turned out invalid: the state is unreliable; rebuild it
    from scratch with ``apply`` (full verification)."""


class _Wait(Exception):
    """Internal: the entry cannot apply yet; retry when ``key`` is produced."""

    def __init__(self, key: WaitKey, reason: str) -> None:
        super().__init__(reason)
        self.key = key


class HoldInfo(msgspec.Struct):
    """An applied HOLD: who reserved how much for which job, and whether it is closed."""

    holder: bytes
    amount: int
    coordinator: bytes
    job_id: bytes
    closed_by: EntryId | None = None


class HistoryItem(msgspec.Struct, frozen=True):
    """One applied entry as it touched one account."""

    entry_id: EntryId
    author: bytes
    seq: int
    kind: str
    """The payload tag: "receipt", "hold", "settle", ..."""
    delta: int
    """Change of the account's spendable balance (a HOLD moves points from spendable to held)."""
    job_id: bytes = b""
    counterparty: bytes = b""
    """A TRANSFER's other account: the recipient of one the account sent, the sender of one it received."""
    memo: str = ""
    """A TRANSFER's memo."""


def payload_kind(payload: Payload) -> str:
    """The tag of a payload kind ("receipt", "hold", ...)."""
    return str(type(payload).__struct_config__.tag)


class LedgerState:
    """Deterministic fold over a grow-only set of valid entries (merge = set union)."""

    def __init__(
        self,
        network: str,
        minters: Iterable[bytes] = (),
        *,
        genesis: Genesis | None = None,
        max_parked_per_author: int = MAX_PARKED_PER_AUTHOR,
        max_waiting: int = MAX_WAITING,
        max_waiting_bytes: int = MAX_WAITING_BYTES,
        max_unbacked_waiting: int = MAX_UNBACKED_WAITING,
        max_unbacked_cuts: int = MAX_UNBACKED_CUTS,
        scheme: SignatureScheme = ED25519,
        closed: bool = False,
    ) -> None:
        """Start empty on ``network``. ``minters`` (plus ``genesis.coordinators``) are the coordinators
        allowed to mint; ``genesis`` also sets the starting grant (none without it). ``scheme`` checks
        every signature (real Ed25519; only a simulator passes another, see signatures.py). ``closed``:
        the coordinator set is only ``minters``, the genesis coordinators and ADMIT entries — a node's
        local trust (``add_minter``) adds nobody, so every node of a network with a genesis file holds
        the same set (spec/ledger.md §7)."""
        if genesis is not None and genesis.network != network:
            raise LedgerError(f"genesis is for network {genesis.network!r}, this ledger is {network!r}")
        self.network = network
        self.genesis = genesis
        self.scheme = scheme
        self._grant_points = genesis.grant_points if genesis is not None else 0
        self._base_minters: set[bytes] = set(minters) | set(genesis.coordinators if genesis else ())
        self._max_parked = max_parked_per_author
        self._max_waiting = max_waiting
        self._max_waiting_bytes = max_waiting_bytes
        self._max_unbacked = max_unbacked_waiting
        self._max_unbacked_cuts = max_unbacked_cuts
        self.closed = closed
        # Facts about the received set that survive rebuilds: cuts only ever grow.
        self._cuts: dict[bytes, int] = {}
        self._forks: dict[bytes, tuple[Entry, Entry]] = {}
        self._excluded: dict[EntryId, Entry] = {}
        self._unbacked_cuts: dict[bytes, list[EntryId]] = {}
        """Authors cut with no standing, oldest first, with the ids excluded by their cut."""
        self.evicted = 0
        """Waiting entries dropped to keep the pool within its bounds (sync may bring them again)."""
        self._rebuilding = False
        self._generation = 0
        self._reset()

    @classmethod
    def from_genesis(cls, genesis: Genesis) -> LedgerState:
        """An empty ledger for ``genesis.network`` under its rules."""
        return cls(genesis.network, genesis=genesis)

    def _reset(self) -> None:
        self._minters: set[bytes] = set(self._base_minters)
        self._admitted: list[bytes] = []
        self._applied: list[Entry] = []
        self._by_id: dict[EntryId, int] = {}
        self._by_slot: dict[tuple[bytes, int], Entry] = {}
        self._heads: dict[bytes, tuple[int, EntryId]] = {}
        self._parked: dict[tuple[bytes, int], Entry] = {}
        """Parked entries (verified; the body is decoded again when its turn comes, to hold a third of the
        memory)."""
        self._parked_seqs: dict[bytes, dict[int, None]] = {}
        """author -> seqs of its parked entries, in the order they were parked."""
        self._blocked: dict[bytes, tuple[Entry, EntryBody, WaitKey]] = {}
        self._waiting: dict[WaitKey, set[bytes]] = {}
        self._woken: set[bytes] = set()
        self._pending_entries: dict[EntryId, Entry] = {}
        self._pending_slots: dict[EntryId, tuple[bytes, int]] = {}
        self._pending_bytes = 0
        self._unbacked: dict[EntryId, None] = {}
        """Waiting entries whose author had no standing when they came, oldest first."""
        self._fraud_proven: set[tuple[bytes, bytes]] = set()
        """(author, forker) of every applied FRAUD entry."""
        self._balances: dict[bytes, int] = {}
        self._held: dict[bytes, int] = {}
        self._minted = 0
        self._jobs_done: dict[bytes, int] = {}
        self._receipts: dict[bytes, Entry] = {}
        self._holds: dict[EntryId, HoldInfo] = {}
        self._reputation: dict[bytes, list[int]] = {}
        self._evidence_seen: set[tuple[bytes, bytes]] = set()
        self._touches: dict[bytes, list[tuple[int, int]]] = {}

    # -- configuration --------------------------------------------------------------------------------

    def add_minter(self, key: bytes) -> None:
        """Allow ``key`` to mint from now on, as if listed in the genesis (configuration, not an ADMIT).
        Does nothing on a ``closed`` ledger: there only the genesis and ADMIT entries make coordinators."""
        if self.closed:
            return
        self._base_minters.add(key)
        self._minters.add(key)
        if key in self._unbacked_cuts:
            self._keep_evidence(key)

    # -- applying -------------------------------------------------------------------------------------

    def apply(self, entry: Entry) -> list[Entry]:
        """Verify and apply ``entry``; return every entry newly applied by this call.

        Idempotent: an entry already applied, waiting or excluded returns ``[]``. An entry that must wait
        (parked on its chain predecessor, or blocked on a dependency: see the module docstring) returns
        ``[]`` and is applied, and returned, by the call that brings what it waits for. Invalid entries
        raise InvalidEntryError saying what is wrong and change nothing, with one exception: a second,
        different entry for an (author, seq) already held is a fork. It raises InvalidEntryError too, but
        the author is cut at that seq: its entries from there on are excluded everywhere (spec §6). A
        waiting entry that turns out invalid when its turn comes is dropped silently.
        """
        return self._apply(entry, trusted=False)

    def apply_trusted(self, entry: Entry) -> list[Entry]:
        """Like :meth:`apply` for an entry this node verified before (its own store): signatures and
        stateless payload checks are skipped, every stateful rule still runs. Never use on peer data."""
        return self._apply(entry, trusted=True)

    def _apply(self, entry: Entry, *, trusted: bool) -> list[Entry]:
        entry_id = entry.id
        if entry_id in self._by_id or entry_id in self._pending_entries or entry_id in self._excluded:
            return []
        if trusted:
            body = decode_body(entry.body)
            if body.network != self.network:
                raise InvalidEntryError(
                    f"entry is for network {body.network!r}, this ledger is {self.network!r}"
                )
        else:
            body = open_entry(entry, self.network, scheme=self.scheme)
        if isinstance(body.payload, Fraud):
            first, second = decode_entry(body.payload.first), decode_entry(body.payload.second)
            forked = decode_body(first.body)
            self._record_fork(forked.author, forked.seq, first, second)
        return self._place(entry, entry_id, body, trusted)

    def _place(self, entry: Entry, entry_id: EntryId, body: EntryBody, trusted: bool) -> list[Entry]:
        author, seq = body.author, body.seq
        cut = self._cuts.get(author)
        if cut is not None and seq >= cut:
            if self._rebuilding:
                self._excluded[entry_id] = entry
            raise InvalidEntryError(
                f"author {author.hex()} is frozen from seq {cut} on after a fork; entry seq {seq} refused"
            )
        held = self._slot(author, seq)
        if held is not None:
            if trusted and not self._rebuilding:
                # A fork freezes an author: never on the word of unverified bytes (a corrupt store row).
                open_entry(entry, self.network, scheme=self.scheme)
                try:
                    open_entry(held, self.network, scheme=self.scheme)
                except InvalidEntryError as exc:
                    raise TrustedReplayError(
                        f"entry {held.id.hex()} applied without verification is invalid: {exc}"
                    ) from exc
            self._excluded[entry_id] = entry
            self._record_fork(author, seq, held, entry, arrived=entry_id)
            raise InvalidEntryError(
                f"fork: author {author.hex()} signed two different entries with seq {seq} "
                f"({held.id.hex()} and {entry_id.hex()}); the author is now frozen from seq {seq} on"
            )
        head_seq = self._heads.get(author, (0, EntryId(b"")))[0]
        if seq > head_seq + 1:
            count = len(self._parked_seqs.get(author, ()))
            if count >= self._max_parked:
                raise InvalidEntryError(
                    f"author {author.hex()} already has {count} entries waiting for a predecessor; "
                    f"entry seq {seq} refused (fetch seq {head_seq + 1} first)"
                )
            self._make_room(entry, author)
            self._parked[(author, seq)] = entry
            self._parked_seqs.setdefault(author, {})[seq] = None
            self._add_pending(entry, entry_id, author, seq)
            return []
        self._check_links(body)
        applied: list[Entry] = []
        if self._try(entry, entry_id, body, fresh=True):
            applied.append(entry)
            self._cascade(author, applied)
        return applied

    # -- the waiting pool (spec/ledger.md §6.3) -------------------------------------------------------

    def has_standing(self, author: bytes) -> bool:
        """True if ``author`` is a coordinator, has an applied entry or was ever credited: what makes its
        waiting entries and forks worth keeping (keys without standing are free to make)."""
        return author in self._minters or author in self._heads or author in self._touches

    def _add_pending(self, entry: Entry, entry_id: EntryId, author: bytes, seq: int) -> None:
        self._pending_entries[entry_id] = entry
        self._pending_slots[entry_id] = (author, seq)
        self._pending_bytes += _size(entry)
        if not self.has_standing(author):
            self._unbacked[entry_id] = None

    def _drop_pending(self, entry_id: EntryId) -> None:
        """Forget a waiting entry's accounting (the caller removed it from ``_parked``/``_blocked``)."""
        entry = self._pending_entries.pop(entry_id, None)
        if entry is None:
            return
        del self._pending_slots[entry_id]
        self._pending_bytes -= _size(entry)
        self._unbacked.pop(entry_id, None)

    def _make_room(self, entry: Entry, author: bytes) -> None:
        """Evict waiting entries until ``entry`` (by ``author``, about to wait) fits the bounds, or raise
        InvalidEntryError if it may not displace anything (see the module docstring)."""
        if not self.has_standing(author):
            while self._unbacked and len(self._unbacked) >= self._max_unbacked:
                self._evict(next(iter(self._unbacked)))
        size = _size(entry)
        while (
            len(self._pending_entries) >= self._max_waiting
            or self._pending_bytes + size > self._max_waiting_bytes
        ):
            if self._unbacked:
                self._evict(next(iter(self._unbacked)))
                continue
            counts = {a: len(seqs) for a, seqs in self._parked_seqs.items() if seqs}
            for blocked in self._blocked:
                counts[blocked] = counts.get(blocked, 0) + 1
            # The author holding the most (ties: the highest key, so every node picks the same one).
            victim = max(counts, key=lambda a: (counts[a], a), default=None)
            if victim is None or victim == author or counts[victim] <= counts.get(author, 0):
                raise InvalidEntryError(
                    f"the ledger's waiting pool is full ({len(self._pending_entries)} entries, "
                    f"{self._pending_bytes} bytes) and author {author.hex()} holds as many as any; entry "
                    "refused (sync brings it again once its predecessors arrive)"
                )
            seqs = self._parked_seqs.get(victim)
            if seqs:
                newest = next(reversed(seqs))
                self._evict(self._parked[(victim, newest)].id)
            else:
                self._evict(self._blocked[victim][0].id)

    def _evict(self, entry_id: EntryId) -> None:
        """Drop one waiting entry (parked or blocked) to keep the pool within its bounds."""
        author, seq = self._pending_slots[entry_id]
        self._unpark_or_unblock(author, seq, entry_id)
        self.evicted += 1

    def _unpark_or_unblock(self, author: bytes, seq: int, entry_id: EntryId) -> Entry | None:
        parked = self._parked.get((author, seq))
        if parked is not None and parked.id == entry_id:
            del self._parked[(author, seq)]
            self._unpark_seq(author, seq)
        else:
            blocked = self._blocked.get(author)
            if blocked is None or blocked[0].id != entry_id:
                return None
            del self._blocked[author]
            waiters = self._waiting.get(blocked[2])
            if waiters is not None:
                waiters.discard(author)
                if not waiters:
                    del self._waiting[blocked[2]]
        entry = self._pending_entries.get(entry_id)
        self._drop_pending(entry_id)
        return entry

    def _unpark_seq(self, author: bytes, seq: int) -> None:
        seqs = self._parked_seqs.get(author)
        if seqs is not None:
            seqs.pop(seq, None)
            if not seqs:
                del self._parked_seqs[author]

    def waiting_stats(self) -> tuple[int, int, int]:
        """(entries, bytes, entries of authors without standing) waiting now."""
        return len(self._pending_entries), self._pending_bytes, len(self._unbacked)

    def _slot(self, author: bytes, seq: int) -> Entry | None:
        held = self._by_slot.get((author, seq))
        if held is None:
            held = self._parked.get((author, seq))
        if held is None and author in self._blocked and self._blocked[author][1].seq == seq:
            held = self._blocked[author][0]
        return held

    def _try(self, entry: Entry, entry_id: EntryId, body: EntryBody, *, fresh: bool = False) -> bool:
        """Apply if the rules allow; block (return False) on a missing dependency; raise if invalid.
        ``fresh``: the entry just arrived (not already counted in the waiting pool)."""
        try:
            void = self._check_rules(entry, body)
        except _Wait as wait:
            if fresh:
                self._make_room(entry, body.author)
            self._blocked[body.author] = (entry, body, wait.key)
            self._waiting.setdefault(wait.key, set()).add(body.author)
            self._add_pending(entry, entry_id, body.author, body.seq)
            return False
        self._commit(entry, entry_id, body, void)
        return True

    def _cascade(self, author: bytes | None, applied: list[Entry]) -> None:
        """After a commit: apply the author's parked successors and every blocked entry now unblocked."""
        authors = [] if author is None else [author]
        while authors or self._woken:
            if not authors:
                woken = self._woken.pop()
                blocked = self._blocked.pop(woken, None)
                if blocked is None:
                    continue
                entry, body, _ = blocked
                self._drop_pending(entry.id)
                try:
                    if self._try(entry, entry.id, body):
                        applied.append(entry)
                        authors.append(woken)
                except InvalidEntryError:
                    pass  # dropped: its dependency arrived and it still breaks a rule
                continue
            current = authors.pop()
            if current in self._blocked:
                continue
            next_seq = self._heads[current][0] + 1
            parked = self._parked.pop((current, next_seq), None)
            if parked is None:
                continue
            entry, body = parked, decode_body(parked.body)  # verified by open_entry when it was parked
            self._unpark_seq(current, next_seq)
            self._drop_pending(entry.id)
            try:
                self._check_links(body)
                if self._try(entry, entry.id, body):
                    applied.append(entry)
                    authors.append(current)
            except InvalidEntryError:
                pass

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

    def _require_minter(self, key: bytes, what: str) -> None:
        if key not in self._minters:
            raise InvalidEntryError(
                f"{what} {key.hex()} is not a coordinator (minter) on {self.network!r}; only coordinators "
                "of the genesis or admitted by ADMIT may do this"
            )

    def _check_rules(self, entry: Entry, body: EntryBody) -> bool:
        """Stateful payload rules; one branch per kind. Returns True if the entry applies with no effect
        (a SETTLE or REFUND of a hold excluded by a fork). Raises _Wait or InvalidEntryError."""
        payload: Payload = body.payload
        author = body.author
        if isinstance(payload, Receipt):
            if author not in self._minters:
                raise InvalidEntryError(
                    f"author {author.hex()} is not a minter on {self.network!r}; only admitted "
                    "coordinators may author receipts"
                )
            earlier = self._receipts.get(payload.job_id)
            if earlier is not None:
                raise InvalidEntryError(
                    f"job {payload.job_id.hex()} was already credited by entry {earlier.id.hex()}; "
                    f"entry {entry.id.hex()} refused"
                )
        elif isinstance(payload, Hold | Transfer):
            balance = self._balances.get(author, 0)
            if payload.amount > balance:
                raise _Wait(
                    ("balance", author),
                    f"{payload_kind(payload)} of {payload.amount} points by {author.hex()}, who has "
                    f"{balance}",
                )
        elif isinstance(payload, Settle | Refund):
            return self._check_close(payload, author)
        elif isinstance(payload, Grant):
            if body.seq != 1:
                raise InvalidEntryError(
                    f"grant by {author.hex()} at seq {body.seq}: a grant must be the account's first entry"
                )
            if self._grant_points == 0:
                raise InvalidEntryError(f"network {self.network!r} has no starting grant (genesis)")
            if payload.points != self._grant_points:
                raise InvalidEntryError(
                    f"grant of {payload.points} points by {author.hex()}; the genesis grant is "
                    f"{self._grant_points}"
                )
            self._require_minter(payload.voucher.signer, "grant voucher signer")
        elif isinstance(payload, Admit):
            self._check_admit(payload)
        elif isinstance(payload, Fraud):
            if not self.has_standing(author):
                # Keys are free: a proof stored for ever needs an author with something at stake.
                raise _Wait(("balance", author), f"fraud proof by {author.hex()}, who has no standing yet")
            forker = _forker(payload)
            if (author, forker) in self._fraud_proven:
                raise InvalidEntryError(
                    f"{author.hex()} already proved the fork of {forker.hex()}; one proof per author is "
                    "enough"
                )
        elif isinstance(payload, Evidence):
            self._require_minter(author, "evidence author")
            if (author, payload.job_id) in self._evidence_seen:
                raise InvalidEntryError(
                    f"coordinator {author.hex()} already recorded evidence for job {payload.job_id.hex()}"
                )
        return False

    def _check_close(self, payload: Settle | Refund, author: bytes) -> bool:
        kind = payload_kind(payload)
        hold = self._holds.get(EntryId(payload.hold))
        if hold is None:
            if payload.hold in self._excluded:
                return True  # the hold's author forked at or before it: closing it moves nothing
            raise _Wait(("hold", payload.hold), f"{kind} waits for hold {payload.hold.hex()}")
        if hold.coordinator != author:
            raise InvalidEntryError(
                f"{kind} of hold {payload.hold.hex()} by {author.hex()}: the hold names coordinator "
                f"{hold.coordinator.hex()}, only it may close it (no spend without a hold)"
            )
        self._require_minter(author, f"{kind} author")
        if hold.closed_by is not None:
            raise InvalidEntryError(
                f"hold {payload.hold.hex()} was already closed by entry {hold.closed_by.hex()}; "
                f"{kind} refused"
            )
        if isinstance(payload, Settle):
            total = sum(p.points for p in payload.payouts)
            if total > hold.amount:
                raise InvalidEntryError(
                    f"settle pays {total} points out of hold {payload.hold.hex()} of {hold.amount}"
                )
            receipt = self._receipts.get(hold.job_id)
            if receipt is None:
                raise _Wait(("job", hold.job_id), f"settle waits for the receipt of job {hold.job_id.hex()}")
            credited = {c.account for c in _receipt_of(receipt).credits}
            for payout in payload.payouts:
                if payout.account not in credited:
                    raise InvalidEntryError(
                        f"settle of hold {payload.hold.hex()} pays {payout.account.hex()}, who is not "
                        f"credited by the receipt of job {hold.job_id.hex()}"
                    )
        return False

    def _check_admit(self, admit: Admit) -> None:
        taken = len(self._admitted)
        if admit.epoch > taken:
            raise _Wait(("admit", admit.epoch), f"admission epoch {admit.epoch} waits for epoch {taken}")
        if admit.epoch < taken:
            raise InvalidEntryError(
                f"admission epoch {admit.epoch} already admitted {self._admitted[admit.epoch].hex()}; "
                f"admission of {admit.coordinator.hex()} refused"
            )
        if admit.coordinator in self._minters:
            raise InvalidEntryError(f"{admit.coordinator.hex()} is already a coordinator")
        members = self._minters
        for cosig in admit.cosignatures:
            if cosig.signer not in members:
                raise InvalidEntryError(
                    f"admission of {admit.coordinator.hex()} is co-signed by {cosig.signer.hex()}, who is "
                    f"not a coordinator at epoch {admit.epoch}"
                )
        if 3 * len(admit.cosignatures) < 2 * len(members):
            raise InvalidEntryError(
                f"admission of {admit.coordinator.hex()} has {len(admit.cosignatures)} co-signatures; it "
                f"needs at least 2/3 of the {len(members)} coordinators"
            )

    def _credit(self, account: bytes, points: int, index: int) -> None:
        self._balances[account] = self._balances.get(account, 0) + points
        self._touches.setdefault(account, []).append((index, points))
        self._wake(("balance", account))
        if account in self._unbacked_cuts:
            self._keep_evidence(account)

    def _wake(self, key: WaitKey) -> None:
        self._woken.update(self._waiting.pop(key, ()))

    def _commit(self, entry: Entry, entry_id: EntryId, body: EntryBody, void: bool) -> None:
        index = len(self._applied)
        self._applied.append(entry)
        self._by_id[entry_id] = index
        self._by_slot[(body.author, body.seq)] = entry
        self._heads[body.author] = (body.seq, entry_id)
        payload: Payload = body.payload
        author = body.author
        if author in self._unbacked_cuts:
            self._keep_evidence(author)
        if void:
            return
        if isinstance(payload, Receipt):
            self._receipts[payload.job_id] = entry
            for credit in payload.credits:
                self._credit(credit.account, credit.points, index)
                self._minted += credit.points
                self._jobs_done[credit.account] = self._jobs_done.get(credit.account, 0) + 1
            self._wake(("job", payload.job_id))
        elif isinstance(payload, Hold):
            self._balances[author] -= payload.amount
            self._held[author] = self._held.get(author, 0) + payload.amount
            self._touches.setdefault(author, []).append((index, -payload.amount))
            self._holds[entry_id] = HoldInfo(author, payload.amount, payload.coordinator, payload.job_id)
            self._wake(("hold", entry_id))
        elif isinstance(payload, Settle | Refund):
            hold = self._holds[EntryId(payload.hold)]
            hold.closed_by = entry_id
            self._held[hold.holder] -= hold.amount
            rest = hold.amount
            if isinstance(payload, Settle):
                for payout in payload.payouts:
                    self._credit(payout.account, payout.points, index)
                    rest -= payout.points
            if rest:
                self._credit(hold.holder, rest, index)
        elif isinstance(payload, Transfer):
            self._balances[author] -= payload.amount
            self._touches.setdefault(author, []).append((index, -payload.amount))
            self._credit(payload.to, payload.amount, index)
        elif isinstance(payload, Grant):
            self._credit(author, payload.points, index)
            self._minted += payload.points
        elif isinstance(payload, Admit):
            self._admitted.append(payload.coordinator)
            self._minters.add(payload.coordinator)
            if payload.coordinator in self._unbacked_cuts:
                self._keep_evidence(payload.coordinator)
            self._wake(("admit", len(self._admitted)))
        elif isinstance(payload, Fraud):
            self._fraud_proven.add((author, _forker(payload)))
        elif isinstance(payload, Evidence):
            self._evidence_seen.add((author, payload.job_id))
            for slot, keys in enumerate((payload.valid, payload.invalid, payload.timeout)):
                for key in keys:
                    self._reputation.setdefault(key, [0, 0, 0])[slot] += 1

    # -- forks ----------------------------------------------------------------------------------------

    def _record_fork(
        self, author: bytes, seq: int, first: Entry, second: Entry, *, arrived: EntryId | None = None
    ) -> None:
        """Cut ``author`` at ``seq`` (if lower than its cut so far) and rebuild the state without its
        entries from there on. Cuts depend only on which entries are known, never on arrival order.
        ``arrived``: the id of the entry that revealed the fork, already put in ``_excluded``."""
        old = self._cuts.get(author)
        if old is not None and old <= seq:
            return
        self._cuts[author] = seq
        if not self.has_standing(author):
            self._cut_unbacked(author, seq, arrived)
            return
        self._unbacked_cuts.pop(author, None)  # it has standing now: its cut is kept for good
        # Evidence in id order so every node keeps the same pair whichever arrived first.
        self._forks[author] = (first, second) if first.id < second.id else (second, first)
        self._rebuild()

    def _cut_unbacked(self, author: bytes, seq: int, arrived: EntryId | None) -> None:
        """Cut an author without standing: none of its entries is applied and nothing rests on its points,
        so no rebuild is needed; its waiting entries from ``seq`` on are excluded, entries waiting on them
        retried (a SETTLE of an excluded HOLD applies void, as after a rebuild), and no evidence kept."""
        excluded = self._unbacked_cuts.pop(author, [])
        if arrived is not None:
            excluded.append(arrived)
            self._wake(("hold", arrived))
        slots = [(s, self._parked[(author, s)].id) for s in self._parked_seqs.get(author, {}) if s >= seq]
        blocked = self._blocked.get(author)
        if blocked is not None and blocked[1].seq >= seq:
            slots.append((blocked[1].seq, blocked[0].id))
        for slot_seq, slot_id in slots:
            entry = self._unpark_or_unblock(author, slot_seq, slot_id)
            if entry is not None:
                self._excluded[slot_id] = entry
                excluded.append(slot_id)
                self._wake(("hold", slot_id))
        self._unbacked_cuts[author] = excluded
        while len(self._unbacked_cuts) > self._max_unbacked_cuts:
            oldest = next(iter(self._unbacked_cuts))
            excluded_ids = self._unbacked_cuts.pop(oldest)
            if self.has_standing(oldest):
                continue  # it gained standing since: its cut is kept for good, like any other
            for entry_id in excluded_ids:
                self._excluded.pop(entry_id, None)
            self._cuts.pop(oldest, None)
        if self._woken:
            self._cascade(None, [])  # what this applies is found again by sync, as after a rebuild

    def _keep_evidence(self, author: bytes) -> None:
        """``author``, cut while it had no standing, has standing now (an entry of it below the cut
        applied, or a credit): keep its cut for good and its fork evidence — the two lowest-id entries at
        the cut, which the cut excluded and we still hold — as if it had had standing when it forked. The
        cut already excluded what it had to, so nothing is rebuilt. (A fork proof can arrive before the
        chain below it: sync and gossip order nothing.)"""
        excluded = self._unbacked_cuts.pop(author, [])
        cut = self._cuts[author]
        at_cut = sorted(
            entry_id
            for entry_id in excluded
            if (entry := self._excluded.get(entry_id)) is not None and decode_body(entry.body).seq == cut
        )
        if len(at_cut) >= 2 and author not in self._forks:
            self._forks[author] = (self._excluded[at_cut[0]], self._excluded[at_cut[1]])

    def _rebuild(self) -> None:
        """Recompute every fold from the retained entries under the current cuts (a rare event)."""
        retained = [
            *self._applied,
            *self._parked.values(),
            *(blocked[0] for blocked in self._blocked.values()),
        ]
        self._generation += 1
        self._reset()
        self._rebuilding = True
        try:
            for entry in retained:
                try:
                    self._apply(entry, trusted=True)
                except InvalidEntryError:
                    pass  # excluded by a cut (kept in _excluded) or no longer valid
        finally:
            self._rebuilding = False

    def fraud_payload(self, author: bytes) -> Fraud | None:
        """A FRAUD payload proving ``author``'s fork, to publish so others freeze it too; None if none."""
        evidence = self._forks.get(author)
        return None if evidence is None else make_fraud(*evidence)

    # -- reading --------------------------------------------------------------------------------------

    def balance(self, account: bytes) -> int:
        """Spendable points of ``account`` (0 if none); points reserved by open holds are in :meth:`held`."""
        return self._balances.get(account, 0)

    def held(self, account: bytes) -> int:
        """Points ``account`` has reserved in holds not closed yet."""
        return self._held.get(account, 0)

    def balances(self) -> dict[bytes, int]:
        """Every account with a nonzero spendable balance, in key order."""
        return {account: points for account, points in sorted(self._balances.items()) if points}

    def minted(self) -> int:
        """Points ever minted by applied receipts and grants (= sum of balances + held)."""
        return self._minted

    def jobs_done(self, account: bytes) -> int:
        """Number of applied receipts that credit ``account``."""
        return self._jobs_done.get(account, 0)

    def reputation(self, key: bytes) -> tuple[int, int, int]:
        """(valid, invalid, timeout) counts of ``key`` over applied EVIDENCE entries."""
        counts = self._reputation.get(key, (0, 0, 0))
        return counts[0], counts[1], counts[2]

    def head(self, author: bytes) -> tuple[int, EntryId] | None:
        """(seq, id) of the author's last applied entry, or None if none applied."""
        return self._heads.get(author)

    def heads(self) -> dict[bytes, tuple[int, EntryId]]:
        """(seq, id) of every author's last applied entry, in author order."""
        return dict(sorted(self._heads.items()))

    def next_body(self, author: bytes, payload: Payload) -> EntryBody:
        """The next link of ``author``'s chain carrying ``payload``; sign it with :func:`sign_entry`.

        Raises LedgerError if the author is frozen: extending a forked chain would only be refused.
        """
        if author in self._cuts:
            raise LedgerError(f"author {author.hex()} is frozen after a fork; it cannot append entries")
        head = self._heads.get(author)
        if head is None:
            return EntryBody(network=self.network, author=author, seq=1, prev=b"", payload=payload)
        return EntryBody(network=self.network, author=author, seq=head[0] + 1, prev=head[1], payload=payload)

    def receipt_for(self, job_id: bytes) -> Entry | None:
        """The applied entry whose receipt credited ``job_id``, if any."""
        return self._receipts.get(job_id)

    def hold(self, hold_id: bytes) -> HoldInfo | None:
        """The applied HOLD with this entry id (a copy), if any."""
        info = self._holds.get(EntryId(hold_id))
        return None if info is None else msgspec.structs.replace(info)

    def entry(self, entry_id: bytes) -> Entry | None:
        """The applied entry with this id, if any."""
        index = self._by_id.get(EntryId(entry_id))
        return None if index is None else self._applied[index]

    def known(self, entry_id: bytes) -> Entry | None:
        """The applied, waiting or fork-excluded (all verified) entry with this id: what sync may serve."""
        entry_id = EntryId(entry_id)
        return self.entry(entry_id) or self._pending_entries.get(entry_id) or self._excluded.get(entry_id)

    def pending_ids(self) -> list[EntryId]:
        """Ids of the waiting entries (parked or blocked), in id order."""
        return sorted(self._pending_entries)

    def __contains__(self, entry_id: object) -> bool:
        """True if an entry with this id is applied."""
        return entry_id in self._by_id

    def entries_by_author(self, author: bytes, from_seq: int = 1, to_seq: int | None = None) -> list[Entry]:
        """The author's applied entries with ``from_seq <= seq <= to_seq``, in chain order."""
        head = self._heads.get(author)
        if head is None:
            return []
        last = head[0] if to_seq is None else min(to_seq, head[0])
        return [self._by_slot[(author, seq)] for seq in range(max(from_seq, 1), last + 1)]

    def entries(self) -> list[Entry]:
        """Applied entries, in the order they were applied (each author's in chain order)."""
        return list(self._applied)

    def entries_since(self, index: int) -> list[Entry]:
        """Applied entries from position ``index`` of :meth:`entries` on (for incremental indexes; check
        :attr:`generation` first: a rebuild reorders everything)."""
        return self._applied[index:]

    @property
    def generation(self) -> int:
        """Bumped by every rebuild (after a fork); positions in :meth:`entries` are stable within one."""
        return self._generation

    def history(self, account: bytes) -> list[HistoryItem]:
        """Every applied entry that changed ``account``'s spendable balance, in applied order: transfers
        both ways (sent: negative ``delta``, received: positive), each with its counterparty and memo."""
        items = []
        for index, delta in self._touches.get(account, ()):
            entry = self._applied[index]
            body = decode_body(entry.body)
            job = getattr(body.payload, "job_id", b"")
            hold = self._holds.get(EntryId(getattr(body.payload, "hold", b"")))
            if hold is not None:
                job = hold.job_id
            counterparty, memo = b"", ""
            if isinstance(body.payload, Transfer):
                counterparty = body.payload.to if body.author == account else body.author
                memo = body.payload.memo
            items.append(
                HistoryItem(
                    entry.id,
                    body.author,
                    body.seq,
                    payload_kind(body.payload),
                    delta,
                    job,
                    counterparty,
                    memo,
                )
            )
        return items

    def pending(self) -> list[Entry]:
        """Verified entries waiting: parked (by (author, seq)), then blocked on a dependency (by author)."""
        parked = [self._parked[slot] for slot in sorted(self._parked)]
        return parked + [self._blocked[author][0] for author in sorted(self._blocked)]

    def minters(self) -> frozenset[bytes]:
        """The current coordinator set: genesis (and ``add_minter``) plus applied admissions."""
        return frozenset(self._minters)

    def admitted(self) -> list[bytes]:
        """Coordinators admitted by applied ADMIT entries, by epoch."""
        return list(self._admitted)

    def __len__(self) -> int:
        """Number of applied entries."""
        return len(self._applied)

    def is_frozen(self, author: bytes) -> bool:
        """True once ``author`` has been caught signing two entries with one seq."""
        return author in self._cuts

    def frozen(self) -> dict[bytes, int]:
        """Every frozen author and the seq from which its entries are excluded, in author order."""
        return dict(sorted(self._cuts.items()))

    def proven(self) -> list[bytes]:
        """Frozen authors this ledger holds fork evidence for (those with standing), in author order: the
        ones a FRAUD proof can be made for (:meth:`fraud_payload`)."""
        return sorted(self._forks)

    def fork_evidence(self, author: bytes) -> tuple[Entry, Entry] | None:
        """The two conflicting entries that froze ``author`` (lower id first), or None."""
        return self._forks.get(author)


def _size(entry: Entry) -> int:
    return len(entry.body) + len(entry.signature)


def _forker(fraud: Fraud) -> bytes:
    return decode_body(decode_entry(fraud.first).body).author


def _receipt_of(entry: Entry) -> Receipt:
    payload = decode_body(entry.body).payload
    assert isinstance(payload, Receipt)  # only receipts are stored in _receipts
    return payload

"""Ledger sync, sans-IO: the ``/opengrid/ledger-sync/1`` protocol as a state machine (spec/ledger.md §9).

Two peers exchange *turns*. A turn is one frame carrying any of: per-author heads, wanted seq ranges,
entries, range fingerprints (``splits``), id lists and fetch requests. Two ways to find what differs:

- **Heads** (few authors): the initiator sends every author's head (seq, id); the responder pushes what
  the initiator lacks and asks for what it lacks itself, by ranges (author, from_seq, to_seq). Chains make
  a head summarise everything before it.
- **Range reconciliation** (many authors, large sets that differ by a few entries; after Negentropy):
  entry ids are 256-bit numbers; a range is every id with a given prefix of ``bits`` bits. A side sends
  the fingerprints of the 16 sub-ranges of a range; the other compares with its own, answers matching
  sub-ranges with nothing, small differing ones with its (8-byte truncated) ids and large ones with their
  16 fingerprints again. An id list settles its range: the receiver pushes what the peer lacks and fetches
  what it lacks by truncated id.

Nothing a peer sends is trusted: every entry goes through ``LedgerState.apply``; a turn's size is checked
before decoding and its shape after (typed errors: FrameTooLargeError, MalformedMessageError). A side
replies to a turn unless it has nothing to say; a side that has nothing to send ends the exchange (the
driver closes the stream), so ``done`` means "I have nothing more to send".

**Fork proofs** (spec/ledger.md §9.3): a frozen author's two conflicting entries are pushed to a peer that
may not know the fork, so that it freezes the author too before a third node hands it one branch. Each
side makes one *opening push* (the initiator in ``start``, the responder in its first reply) and proves
authors the peer's heads show it holds and ranges it asks for up to the cut; at most ``MAX_FORK_PROOFS``
proofs (``MAX_FORK_PROOF_BYTES``) per session, ranked so that keys forked for free cannot crowd out a
fork that can harm the peer.

Driver: ``session = SyncSession(ledger, index)``; the initiator sends ``session.start()``; both then
loop ``for reply in session.receive(frame): send(reply)`` until ``session.done`` (or the peer closes).
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
from collections import deque
from collections.abc import Iterable

import msgspec

from opengrid.errors import FrameTooLargeError, InvalidEntryError, MalformedMessageError

from .entries import Entry, decode_body, decode_entry, encode_entry
from .ids import HASH_SIZE, KEY_SIZE, MAX_UINT64, EntryId
from .payloads import Grant
from .state import LedgerState

PROTOCOL = "/opengrid/ledger-sync/1"
MAX_TURN_SIZE = 1024 * 1024
"""Largest encoded turn accepted, checked before decoding."""
MAX_HEADS = 4096
"""Most heads in one turn. With more authors than ``HEADS_MODE_MAX`` the initiator reconciles ranges."""
HEADS_MODE_MAX = 512
MAX_WANTS = 256
MAX_BATCH = 512
"""Most entries in one turn (and at most ``MAX_BATCH_BYTES`` of them)."""
MAX_BATCH_BYTES = 768 * 1024
MAX_SERVED = 4 * MAX_BATCH
"""Most entries served for wanted ranges per received turn; the peer asks again for the rest."""
MAX_SPLITS = 4096
MAX_LIST_IDS = 8192
"""Most truncated ids in all id lists (and fetches) of one turn."""
FANOUT = 16
"""Sub-ranges per split: each level adds 4 bits of prefix."""
LEAF = 32
"""A differing range holding at most this many of our ids is answered with the ids themselves."""
SHORT_ID = 8
"""Bytes of an id sent in id lists and fetches (a 64-bit prefix)."""
FINGERPRINT = 8
MAX_BITS = 64
MAX_REFUSED_KEPT = 64
"""Refused entries a session remembers (with why) for the driver's log; the rest are only counted."""
MAX_FORK_PROOFS = 64
"""Most fork proofs (a frozen author's two conflicting entries) one session sends, whatever prompted them:
keys are cheap, so a node frozen on thousands of forkers must not send thousands of proofs each session.
An opening push made before the peer said what it holds takes at most half, leaving the rest for authors
its heads or wants then show it holds (spec/ledger.md §9.3)."""
MAX_FORK_PROOF_BYTES = 1024 * 1024
"""Most encoded bytes of fork proofs one session sends (entries may be 64 KiB each)."""
MAX_PROOF_CURSORS = 1024
"""Peers whose fork-proof rotation an ``IdIndex`` remembers (least recently moved forgotten first)."""
_SPACE = 256


class Head(msgspec.Struct, frozen=True, forbid_unknown_fields=True, array_like=True):
    author: bytes
    seq: int
    id: bytes


class SeqRange(msgspec.Struct, frozen=True, forbid_unknown_fields=True, array_like=True):
    author: bytes
    from_seq: int
    to_seq: int


class Split(msgspec.Struct, frozen=True, forbid_unknown_fields=True, array_like=True):
    """The sender's fingerprints of the 16 sub-ranges of range (bits, prefix), concatenated."""

    bits: int
    prefix: int
    fingerprints: bytes


class IdList(msgspec.Struct, frozen=True, forbid_unknown_fields=True, array_like=True):
    """Every id the sender holds in range (bits, prefix), truncated to 8 bytes, concatenated, sorted."""

    bits: int
    prefix: int
    ids: bytes


class Turn(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True, tag="turn"):
    """Everything one side says in one frame."""

    network: str
    heads: tuple[Head, ...] = ()
    heads_complete: bool = False
    """True when ``heads`` lists every author the sender has (so unlisted authors are missing there)."""
    want: tuple[SeqRange, ...] = ()
    entries: tuple[bytes, ...] = ()
    splits: tuple[Split, ...] = ()
    lists: tuple[IdList, ...] = ()
    fetch: bytes = b""
    """Truncated ids of entries the sender asks for (answers to id lists)."""


_turn_decoder = msgspec.msgpack.Decoder(Turn)


def encode_turn(turn: Turn) -> bytes:
    """Wire form of a turn."""
    return msgspec.msgpack.encode(turn)


def decode_turn(data: bytes, network: str) -> Turn:
    """Parse and check a peer's turn: FrameTooLargeError if too big (before decoding), else
    MalformedMessageError if it does not decode, is for another network or breaks a limit."""
    if len(data) > MAX_TURN_SIZE:
        raise FrameTooLargeError(f"sync turn is {len(data)} bytes, over the {MAX_TURN_SIZE}-byte limit")
    try:
        turn = _turn_decoder.decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise MalformedMessageError(f"sync turn does not decode: {exc}") from exc
    _check_turn(turn, network)
    return turn


def _malformed(message: str) -> MalformedMessageError:
    return MalformedMessageError(f"sync turn: {message}")


def _check_turn(turn: Turn, network: str) -> None:
    if turn.network != network:
        raise _malformed(f"peer syncs network {turn.network!r}, we are on {network!r}")
    if len(turn.heads) > MAX_HEADS:
        raise _malformed(f"{len(turn.heads)} heads, over the limit of {MAX_HEADS}")
    for head in turn.heads:
        if len(head.author) != KEY_SIZE or len(head.id) != HASH_SIZE or not 1 <= head.seq <= MAX_UINT64:
            raise _malformed("a head has a bad author, id or seq")
    if len(turn.want) > MAX_WANTS:
        raise _malformed(f"{len(turn.want)} wanted ranges, over the limit of {MAX_WANTS}")
    for want in turn.want:
        if len(want.author) != KEY_SIZE or not 1 <= want.from_seq <= want.to_seq <= MAX_UINT64:
            raise _malformed("a wanted range has a bad author or seqs")
    if len(turn.entries) > MAX_BATCH:
        raise _malformed(f"{len(turn.entries)} entries, over the limit of {MAX_BATCH}")
    if len(turn.splits) > MAX_SPLITS:
        raise _malformed(f"{len(turn.splits)} splits, over the limit of {MAX_SPLITS}")
    for split in turn.splits:
        _check_range(split.bits, split.prefix, final=False)
        if len(split.fingerprints) != FANOUT * FINGERPRINT:
            raise _malformed(f"a split carries {len(split.fingerprints)} fingerprint bytes")
    ids = len(turn.fetch)
    for id_list in turn.lists:
        _check_range(id_list.bits, id_list.prefix, final=True)
        ids += len(id_list.ids)
        if len(id_list.ids) % SHORT_ID:
            raise _malformed("an id list is not a whole number of truncated ids")
    if len(turn.fetch) % SHORT_ID or ids > MAX_LIST_IDS * SHORT_ID:
        raise _malformed(f"id lists and fetches carry {ids} bytes; limit {MAX_LIST_IDS} truncated ids")


def _check_range(bits: int, prefix: int, *, final: bool) -> None:
    if bits % 4 or not 0 <= bits <= MAX_BITS - (0 if final else 4) or not 0 <= prefix < (1 << bits):
        raise _malformed(f"bad range: {bits} bits, prefix {prefix}")


class IdIndex:
    """The ids of every verified entry a ledger holds (applied or waiting) as sorted 256-bit numbers, with
    prefix sums for fingerprints. ``refresh`` brings it up to date cheaply: new ids are merged in; a
    rebuild after a fork rebuilds it."""

    def __init__(self) -> None:
        self._keys: list[int] = []
        self._sums: list[int] = [0]
        self._applied: list[int] = []
        """Sorted ids of applied entries (they stay until a rebuild)."""
        self._applied_set: set[int] = set()
        self._pending: frozenset[int] = frozenset()
        """Ids of waiting entries at the last refresh: these come and go (applied, evicted), so they are
        taken afresh each time, never accumulated (evicted ids must not stay in the index)."""
        self._seen = 0
        self._generation = -1
        self._proof_cursors: dict[str, bytes] = {}
        """Peer -> the author where our last opening push of fork proofs to it stopped short: the next
        session with that peer goes on after it, so repeated sessions cover every proof (spec §9.3). Per
        peer: one cursor shared by peers taking turns would give each only every other slice."""

    def proof_cursor(self, peer: str) -> bytes:
        """Where the next opening push of fork proofs to ``peer`` starts (after this author key)."""
        return self._proof_cursors.get(peer, b"")

    def move_proof_cursor(self, peer: str, author: bytes) -> None:
        """Record that a push to ``peer`` stopped short after ``author`` (the most recent
        ``MAX_PROOF_CURSORS`` peers are remembered)."""
        self._proof_cursors.pop(peer, None)
        self._proof_cursors[peer] = author
        while len(self._proof_cursors) > MAX_PROOF_CURSORS:
            del self._proof_cursors[next(iter(self._proof_cursors))]

    def refresh(self, ledger: LedgerState) -> IdIndex:
        """Include every entry ``ledger`` holds that is not indexed yet, and drop waiting entries it no
        longer holds; returns self."""
        if ledger.generation != self._generation:
            self._applied, self._applied_set, self._seen = [], set(), 0
            self._pending, self._generation = frozenset(), ledger.generation
            self._keys, self._sums = [], [0]
        fresh = ledger.entries_since(self._seen)
        self._seen += len(fresh)
        new = {int.from_bytes(e.id, "big") for e in fresh} - self._applied_set
        pending = frozenset(int.from_bytes(eid, "big") for eid in ledger.pending_ids()) - self._applied_set
        pending -= new
        if new:
            self._applied_set |= new
            # Timsort merges the two sorted runs in linear time.
            self._applied = sorted(self._applied + sorted(new))
        if new or pending != self._pending:
            self._pending = pending
            self._keys = sorted(self._applied + sorted(pending)) if pending else list(self._applied)
            self._sums = [0, *itertools.accumulate(self._keys)]
        return self

    def __len__(self) -> int:
        return len(self._keys)

    def _bounds(self, bits: int, prefix: int) -> tuple[int, int]:
        shift = _SPACE - bits
        lo = bisect.bisect_left(self._keys, prefix << shift)
        hi = bisect.bisect_left(self._keys, (prefix + 1) << shift, lo)
        return lo, hi

    def count(self, bits: int, prefix: int) -> int:
        lo, hi = self._bounds(bits, prefix)
        return hi - lo

    def fingerprint(self, bits: int, prefix: int) -> bytes:
        """8 bytes naming the set of ids in the range: hash of (count, sum of ids mod 2**256)."""
        lo, hi = self._bounds(bits, prefix)
        total = (self._sums[hi] - self._sums[lo]) % (1 << _SPACE)
        return hashlib.sha256((hi - lo).to_bytes(8, "big") + total.to_bytes(32, "big")).digest()[:FINGERPRINT]

    def children(self, bits: int, prefix: int) -> bytes:
        return b"".join(self.fingerprint(bits + 4, prefix * FANOUT + i) for i in range(FANOUT))

    def short_ids(self, bits: int, prefix: int) -> list[bytes]:
        lo, hi = self._bounds(bits, prefix)
        return [k.to_bytes(32, "big")[:SHORT_ID] for k in self._keys[lo:hi]]

    def ids_with_short(self, short: bytes) -> list[bytes]:
        """Full ids starting with the 8-byte ``short``."""
        return [
            k.to_bytes(32, "big")
            for k in self._keys[slice(*self._bounds(SHORT_ID * 8, int.from_bytes(short, "big")))]
        ]


class SyncStats(msgspec.Struct):
    """What a session did, for logs and benchmarks."""

    turns_sent: int = 0
    turns_received: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    entry_bytes_sent: int = 0
    entry_bytes_received: int = 0
    entries_applied: int = 0
    entries_refused: int = 0
    fork_proofs_sent: int = 0


class SyncSession:
    """One side of one sync exchange over ``ledger`` (see the module docstring)."""

    def __init__(self, ledger: LedgerState, index: IdIndex | None = None, *, peer: str = "") -> None:
        """``index`` (refreshed here) may be shared across sessions to avoid rebuilding it each time; it
        also keeps, per ``peer`` (its id), where the fork proofs sent to it stopped (spec §9.3)."""
        self.ledger = ledger
        self.peer = peer
        self.network = ledger.network
        self.index = (IdIndex() if index is None else index).refresh(ledger)  # an empty one is falsy
        self.stats = SyncStats()
        self.done = False
        self.applied: list[Entry] = []
        """Entries this session applied to the ledger, in order: the driver stores them."""
        self.refused: list[tuple[EntryId, str]] = []
        """Entries the peer sent that ``apply`` refused, with why (the driver may penalise the peer): the
        first ``MAX_REFUSED_KEPT``; ``stats.entries_refused`` counts them all."""
        self._outbox: deque[bytes] = deque()
        self._queued: set[bytes] = set()
        self._targets: dict[bytes, int] = {}
        """Author -> highest seq the peer said it has, for authors we are behind on."""
        self._asked: dict[bytes, int] = {}
        """Author -> from_seq of our last request: ask again only after progress."""
        self._opened = False
        """Whether this side made its opening push of fork proofs."""
        self._proved: set[bytes] = set()
        """Authors whose fork proof this session sent, or the peer sent us: never sent (again)."""
        self._proof_bytes = 0
        self._peer_fork_entries: set[bytes] = set()
        """Ids of our proofs' entries that the peer sent: both halves of a proof among them show the peer
        knows that fork, so it is not sent back."""

    # -- driver API -----------------------------------------------------------------------------------

    def start(self, *, reconcile: bool | None = None) -> list[bytes]:
        """The initiator's first turn: heads, or range fingerprints when there are many authors (or when
        ``reconcile`` says so)."""
        heads = self.ledger.heads()
        self._opened = True
        pushes: list[bytes] = []
        # We know nothing of the peer yet: prove what we can now (half the budget); the rest goes to the
        # authors its reply shows it holds.
        self._push_proofs(pushes, set(), opening=True, limit=MAX_FORK_PROOFS // 2)
        self._queue(pushes)
        entries = self._next_batch()
        if reconcile is None:
            # Heads only describe gap-free chains: with waiting entries, reconcile ranges instead.
            reconcile = len(heads) > HEADS_MODE_MAX or bool(self.ledger.pending_ids())
        if reconcile:
            if len(self.index) > FANOUT * FANOUT * LEAF:
                # Large set: open one level down (256 fingerprints, 2 KiB) to save a round trip.
                splits = tuple(Split(4, i, self.index.children(4, i)) for i in range(FANOUT))
            else:
                splits = (Split(0, 0, self.index.children(0, 0)),)
            turn = Turn(self.network, splits=splits, entries=entries)
        else:
            turn = Turn(
                self.network,
                heads=tuple(Head(a, seq, eid) for a, (seq, eid) in heads.items()),
                heads_complete=True,
                entries=entries,
            )
        return [self._send(turn), *self._drain()]

    def receive(self, data: bytes) -> list[bytes]:
        """Handle one turn from the peer; return the turns to send back (empty: this side is done).

        Raises FrameTooLargeError / MalformedMessageError for a bad turn (drop the peer); entries that
        fail verification are refused one by one (``refused``) without ending the exchange.
        """
        turn = decode_turn(data, self.network)
        self.stats.turns_received += 1
        self.stats.bytes_received += len(data)
        self._take_entries(turn.entries)
        pushes: list[bytes] = []
        wants: list[SeqRange] = []
        heads: list[Head] = []
        splits: list[Split] = []
        lists: list[IdList] = []
        holds: set[bytes] = set()
        if turn.heads or turn.heads_complete:
            holds = self._compare_heads(turn.heads, turn.heads_complete, pushes, wants, heads)
            if self.ledger.pending_ids():
                # We have gaps the heads cannot describe: reconcile ranges as well.
                splits.append(Split(0, 0, self.index.children(0, 0)))
        if not self._opened:
            # The responder's opening push. A complete heads list tells us what the peer holds; without
            # one we know no more than the initiator did, and keep half the budget likewise.
            self._opened = True
            limit = MAX_FORK_PROOFS if turn.heads_complete else MAX_FORK_PROOFS // 2
            self._push_proofs(pushes, holds, opening=True, limit=limit)
        elif holds:
            self._push_proofs(pushes, holds, opening=False, limit=MAX_FORK_PROOFS)
        served = 0
        for want in turn.want:
            ids = self._serve(want, MAX_SERVED - served)
            served += len(ids)
            pushes += ids
        for split in turn.splits:
            self._answer_split(split, splits, lists)
        fetch: list[bytes] = []
        for id_list in turn.lists:
            self._answer_list(id_list, pushes, fetch)
        for short in _chunks(turn.fetch, SHORT_ID):
            for full in self.index.ids_with_short(short):
                pushes.append(full)
        wants += self._rewants(wants)
        for want in wants:
            self._asked[want.author] = want.from_seq
        self._queue(pushes)
        entries = self._next_batch()
        reply = Turn(
            self.network,
            heads=tuple(heads),
            want=tuple(wants[:MAX_WANTS]),
            entries=entries,
            splits=tuple(splits[:MAX_SPLITS]),
            lists=tuple(lists),
            fetch=b"".join(fetch[:MAX_LIST_IDS]),
        )
        if reply == Turn(self.network):
            self.done = True
            return []
        return [self._send(reply), *self._drain()]

    def close(self) -> None:
        """The peer closed the stream: nothing more will come."""
        self.done = True

    # -- internals ------------------------------------------------------------------------------------

    def _drain(self) -> list[bytes]:
        """The rest of what the peer lacks, in bounded entry-only turns."""
        turns = []
        while self._outbox:
            turns.append(self._send(Turn(self.network, entries=self._next_batch())))
        return turns

    def _send(self, turn: Turn) -> bytes:
        data = encode_turn(turn)
        self.stats.turns_sent += 1
        self.stats.bytes_sent += len(data)
        self.stats.entry_bytes_sent += sum(len(e) for e in turn.entries)
        return data

    def _take_entries(self, raw: Iterable[bytes]) -> None:
        generation = self.ledger.generation
        taken: list[Entry] = []
        for data in raw:
            self.stats.entry_bytes_received += len(data)
            try:
                entry = decode_entry(data)
            except InvalidEntryError as exc:
                self._refuse(data, exc)
                continue
            try:
                applied = self.ledger.apply(entry)
                self.applied += applied
            except InvalidEntryError as exc:
                self._refuse(data, exc)
                self._note_fork_entry(entry)
                continue
            if not applied:
                self._note_fork_entry(entry)  # a duplicate, waiting, or excluded by a cut
            taken.append(entry)
            self.stats.entries_applied += len(applied)
        if self.ledger.generation != generation:
            # A fork found in this turn: the half that applied before its twin came is past the cut now.
            for entry in taken:
                self._note_fork_entry(entry)

    def _refuse(self, data: bytes, exc: InvalidEntryError) -> None:
        self.stats.entries_refused += 1
        if len(self.refused) < MAX_REFUSED_KEPT:  # the count is in stats; a few say why
            self.refused.append((EntryId(hashlib.sha256(data).digest()), str(exc)))

    def _note_fork_entry(self, entry: Entry) -> None:
        """Remember ``entry`` if it is half of a fork proof of ours: with its twin it shows the peer knows
        that fork. Only our proofs' entries are kept, so this is bounded by them, not by the peer."""
        try:
            author = decode_body(entry.body).author
        except InvalidEntryError:
            return
        evidence = self.ledger.fork_evidence(author)
        if evidence is not None and entry.id in (evidence[0].id, evidence[1].id):
            self._peer_fork_entries.add(entry.id)

    def _compare_heads(
        self,
        theirs: tuple[Head, ...],
        complete: bool,
        pushes: list[bytes],
        wants: list[SeqRange],
        heads: list[Head],
    ) -> set[bytes]:
        """Compare the peer's heads with ours; returns the frozen authors it lists (it holds part of their
        chains, a branch past the cut perhaps: they need the proof first)."""
        mine = self.ledger.heads()
        frozen = self.ledger.frozen()
        listed = set()
        holds = set()
        for head in theirs:
            listed.add(head.author)
            cut = frozen.get(head.author)
            their_seq = head.seq if cut is None else min(head.seq, cut - 1)
            if cut is not None:
                holds.add(head.author)
            my_seq, my_id = mine.get(head.author, (0, b""))
            if my_seq < their_seq:
                self._targets[head.author] = max(self._targets.get(head.author, 0), their_seq)
                wants.append(SeqRange(head.author, my_seq + 1, their_seq))
            elif my_seq > head.seq:
                pushes += self._serve(SeqRange(head.author, head.seq + 1, my_seq), MAX_BATCH, prove=False)
                heads.append(Head(head.author, my_seq, my_id))
            elif my_seq == head.seq and my_id != head.id and cut is None:
                # A fork: send ours (the peer detects it) and fetch theirs (so do we).
                pushes.append(my_id)
                wants.append(SeqRange(head.author, head.seq, head.seq))
        if complete:
            for author, (seq, eid) in mine.items():
                if author not in listed:
                    pushes += self._serve(SeqRange(author, 1, seq), MAX_BATCH, prove=False)
                    heads.append(Head(author, seq, eid))
        return holds

    def _serve(self, want: SeqRange, limit: int, *, prove: bool = True) -> list[bytes]:
        """Ids of our entries in ``want`` (at most ``limit``), with the fork proof if it reaches the cut
        (``prove=False``: pushes made while comparing heads, whose proofs the ranked push makes)."""
        last = min(want.to_seq, want.from_seq + min(limit, MAX_BATCH) - 1)
        ids: list[bytes] = [e.id for e in self.ledger.entries_by_author(want.author, want.from_seq, last)]
        if prove and self.ledger.is_frozen(want.author):
            head = self.ledger.head(want.author)
            if want.to_seq >= (0 if head is None else head[0]):
                # The peer catches up to our last entry before the cut: it would stop there unaware of
                # the fork, and accept a branch from a node that holds one. Prove it.
                self._prove(want.author, ids, limit=MAX_FORK_PROOFS)
        return ids

    # -- fork proofs (spec/ledger.md §9.3) -------------------------------------------------------------

    def _push_proofs(self, pushes: list[bytes], holds: set[bytes], *, opening: bool, limit: int) -> None:
        """Prove forks to the peer, best first, until ``limit`` proofs were sent this session.

        Rank: first authors *at stake*: coordinators (they mint without a balance), authors with points
        (spendable or held) and forks of a starting grant (one branch's grant would be spendable); then
        the rest, whose branches move no points until someone pays them — and where cheap keys land: one
        point passed along a chain of fresh keys gives each standing and leaves it nothing. Within each,
        first the authors the peer holds part of (``holds``: listed in its heads) or will once it has
        what we hold of them (entries below the cut): it is one entry away from taking a branch. Then in
        key order starting after the peer's ``index.proof_cursor``, which moves on when a push stops
        short, so repeated sessions with a peer cover all. ``opening``: consider every proven author,
        else only ``holds``."""
        candidates = self.ledger.proven() if opening else sorted(holds & set(self.ledger.proven()))
        if not candidates:
            return
        mine = self.ledger.heads()
        minters = self.ledger.minters()
        cursor = self.index.proof_cursor(self.peer)

        def rank(author: bytes) -> tuple[bool, bool, bool, bytes]:
            held = author in holds or author in mine
            return (not self._at_stake(author, minters), not held, author <= cursor, author)

        last = b""
        ranked = sorted((a for a in candidates if a not in self._proved), key=rank)
        for author in ranked:
            if self.stats.fork_proofs_sent >= limit:
                break
            if self._prove(author, pushes, limit=limit):
                last = author
        if opening and last and any(a not in self._proved for a in ranked):
            self.index.move_proof_cursor(self.peer, last)  # stopped short: the next goes on after it

    def _at_stake(self, author: bytes, minters: frozenset[bytes]) -> bool:
        if author in minters or self.ledger.balance(author) or self.ledger.held(author):
            return True
        evidence = self.ledger.fork_evidence(author)
        return evidence is not None and any(isinstance(decode_body(e.body).payload, Grant) for e in evidence)

    def _prove(self, author: bytes, pushes: list[bytes], *, limit: int) -> bool:
        """Add ``author``'s fork proof to ``pushes`` unless sent already this session, sent to us by the
        peer, or over the session's bounds; True if it was added."""
        evidence = self.ledger.fork_evidence(author)
        if evidence is None or author in self._proved:
            return False
        if all(e.id in self._peer_fork_entries for e in evidence):
            self._proved.add(author)  # the peer proved it to us: it knows
            return False
        if self.stats.fork_proofs_sent >= min(limit, MAX_FORK_PROOFS):
            return False
        size = sum(len(encode_entry(e)) for e in evidence)
        if self._proof_bytes + size > MAX_FORK_PROOF_BYTES:
            return False  # a smaller proof may still fit
        self._proved.add(author)
        self._proof_bytes += size
        self.stats.fork_proofs_sent += 1
        pushes += [e.id for e in evidence]
        return True

    def _rewants(self, already: list[SeqRange]) -> list[SeqRange]:
        """Ask again for the rest of ranges a peer truncated to its batch size."""
        asked = {w.author for w in already}
        more = []
        for author, target in sorted(self._targets.items()):
            head = self.ledger.head(author)
            seq = 0 if head is None else head[0]
            if seq >= target or self.ledger.is_frozen(author):
                del self._targets[author]
            elif author not in asked and self._asked.get(author, 0) < seq + 1:
                more.append(SeqRange(author, seq + 1, target))
            elif author not in asked:
                del self._targets[author]  # no progress since we last asked: waiting entries, stop
        return more

    def _answer_split(self, split: Split, splits: list[Split], lists: list[IdList]) -> None:
        bits = split.bits + 4
        listed = sum(len(id_list.ids) for id_list in lists) // SHORT_ID
        for i, theirs in enumerate(_chunks(split.fingerprints, FINGERPRINT)):
            prefix = split.prefix * FANOUT + i
            if self.index.fingerprint(bits, prefix) == theirs:
                continue
            count = self.index.count(bits, prefix)
            if (count <= LEAF and listed + count <= MAX_LIST_IDS) or bits >= MAX_BITS:
                ids = self.index.short_ids(bits, prefix)[: MAX_LIST_IDS - listed]
                lists.append(IdList(bits, prefix, b"".join(ids)))
                listed += len(ids)
            elif len(splits) < MAX_SPLITS:
                splits.append(Split(bits, prefix, self.index.children(bits, prefix)))
            # else: over this turn's limits; what is left is found by the next session.

    def _answer_list(self, id_list: IdList, pushes: list[bytes], fetch: list[bytes]) -> None:
        theirs = set(_chunks(id_list.ids, SHORT_ID))
        mine = self.index.short_ids(id_list.bits, id_list.prefix)
        mine_set = set(mine)
        for short in mine:
            if short not in theirs:
                pushes += self.index.ids_with_short(short)
        fetch += sorted(theirs - mine_set)

    def _queue(self, ids: list[bytes]) -> None:
        for entry_id in ids:
            if entry_id not in self._queued:
                self._queued.add(entry_id)
                self._outbox.append(entry_id)

    def _next_batch(self) -> tuple[bytes, ...]:
        batch: list[bytes] = []
        size = 0
        while self._outbox and len(batch) < MAX_BATCH:
            entry = self.ledger.known(self._outbox[0])
            if entry is None:
                self._outbox.popleft()
                continue
            data = encode_entry(entry)
            if batch and size + len(data) > MAX_BATCH_BYTES:
                break
            self._outbox.popleft()
            batch.append(data)
            size += len(data)
        return tuple(batch)


def _chunks(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def entries_of(turn: Turn) -> list[Entry]:
    """Decode a turn's entries without applying them (debugging)."""
    return [decode_entry(data) for data in turn.entries]

"""Ledger sync (spec/ledger.md §9): two sans-IO sessions back to back converge; bounded; typed errors."""

from __future__ import annotations

import functools
import random

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ledger_factory import (
    COORDINATOR,
    GENESIS,
    MINTERS,
    NETWORK,
    OTHER_COORDINATOR,
    WORKERS,
    Author,
    grant,
    job_id,
    key,
    pub,
)
from opengrid_ledger import Entry, Evidence, LedgerState, encode_entry
from opengrid_ledger.sync import (
    HEADS_MODE_MAX,
    MAX_BATCH,
    MAX_TURN_SIZE,
    Head,
    IdIndex,
    SeqRange,
    Split,
    SyncSession,
    Turn,
    decode_turn,
    encode_turn,
)

from opengrid.errors import FrameTooLargeError, InvalidEntryError, MalformedMessageError, RemoteProtocolError

COORDINATORS = [COORDINATOR, OTHER_COORDINATOR]


@functools.cache
def evidence_chains(n: int, authors: int = 2) -> tuple[Entry, ...]:
    """``n`` valid evidence entries (one signature each), round-robin over coordinator chains."""
    chains = [Author(k) for k in COORDINATORS[:authors]]
    return tuple(
        chains[i % authors].append(Evidence(job_id(i), valid=(pub(WORKERS[i % 5]),))) for i in range(n)
    )


def ledger_of(entries: list[Entry] | tuple[Entry, ...]) -> LedgerState:
    ledger = LedgerState(NETWORK, MINTERS)
    for entry in entries:
        ledger.apply_trusted(entry)  # built from our own signed entries; sync itself verifies
    return ledger


def exchange(left: LedgerState, right: LedgerState, *, reconcile: bool | None = None) -> tuple[int, int]:
    """Run a session between two ledgers; return (round trips, bytes on the wire)."""
    a, b = SyncSession(left), SyncSession(right)
    flight, receiver, flights, sent = a.start(reconcile=reconcile), b, 0, 0
    while flight:
        flights += 1
        sent += sum(map(len, flight))
        replies: list[bytes] = []
        for frame in flight:
            replies += receiver.receive(frame)
        flight, receiver = replies, (a if receiver is b else b)
        assert flights < 100, "sync does not terminate"
    assert not a.refused and not b.refused
    return (flights + 1) // 2, sent


def same(left: LedgerState, right: LedgerState) -> bool:
    return (
        {e.id for e in left.entries()} == {e.id for e in right.entries()}
        and left.heads() == right.heads()
        and [left.reputation(pub(w)) for w in WORKERS] == [right.reputation(pub(w)) for w in WORKERS]
        and not left.pending()
        and not right.pending()
    )


def test_10k_ledgers_differing_by_100_anywhere_converge_by_ranges() -> None:
    entries = evidence_chains(10_000)
    rng = random.Random(5)
    missing = set(rng.sample(range(len(entries)), 100))
    left_only = {i for i in missing if i % 3 == 0}  # differences on both sides, mid-chain
    left = ledger_of([e for i, e in enumerate(entries) if i not in missing - left_only])
    right = ledger_of([e for i, e in enumerate(entries) if i not in left_only])
    round_trips, sent = exchange(left, right, reconcile=True)
    assert same(left, right) and len(left) == 10_000
    assert round_trips <= 4, round_trips
    assert sent <= 64 * 1024, sent


def test_10k_ledgers_differing_by_100_at_chain_ends_converge_by_heads() -> None:
    entries = evidence_chains(10_000, authors=2)
    # Chains are round-robin: the last 100 entries are the last 50 of each author's chain.
    left = ledger_of(entries[:-100] + entries[-100::2])  # has 50 more of author 0
    right = ledger_of(entries[:-100] + entries[-99::2])  # has 50 more of author 1
    round_trips, sent = exchange(left, right, reconcile=False)
    assert same(left, right) and len(left) == 10_000
    assert round_trips <= 2, round_trips
    assert sent <= 64 * 1024, sent


def test_many_authors_use_range_reconciliation() -> None:
    grants = [grant(Author(key(1000 + i))) for i in range(HEADS_MODE_MAX + 88)]
    left, right = LedgerState.from_genesis(GENESIS), LedgerState.from_genesis(GENESIS)
    for i, entry in enumerate(grants):
        left.apply_trusted(entry)
        if i % 60:
            right.apply_trusted(entry)
    session = SyncSession(left)
    assert "splits" in msgspec.msgpack.decode(session.start()[0])  # too many authors for heads
    round_trips, _ = exchange(left, right)
    assert same(left, right) and left.balances() == right.balances() and round_trips <= 4


def test_catch_up_from_nothing_in_bounded_batches() -> None:
    entries = evidence_chains(3 * MAX_BATCH, authors=1)
    full, empty = ledger_of(entries), LedgerState(NETWORK, MINTERS)
    a, b = SyncSession(empty), SyncSession(full)
    flight, receiver, flights = a.start(), b, 0
    while flight:
        flights += 1
        replies: list[bytes] = []
        for frame in flight:
            replies += receiver.receive(frame)
        flight, receiver = replies, (a if receiver is b else b)
    assert same(full, empty) and (flights + 1) // 2 == 3  # three batches of MAX_BATCH
    assert a.applied == list(entries)  # what the driver must store


def test_fork_travels_and_freezes_on_both_sides() -> None:
    base = Author(COORDINATOR)
    e1 = base.append(Evidence(job_id(1), valid=(pub(WORKERS[0]),)))
    twin = Author(COORDINATOR)
    twin.seq, twin.prev = base.seq, base.prev
    e2 = base.append(Evidence(job_id(2), valid=(pub(WORKERS[1]),)))
    f2 = twin.append(Evidence(job_id(3), valid=(pub(WORKERS[2]),)))
    left, right = ledger_of([e1, e2]), ledger_of([e1, f2])
    a, b = SyncSession(left), SyncSession(right)
    flight, receiver = a.start(), b
    while flight:
        replies: list[bytes] = []
        for frame in flight:
            replies += receiver.receive(frame)
        flight, receiver = replies, (a if receiver is b else b)
    assert left.frozen() == right.frozen() == {pub(COORDINATOR): 2}
    assert [e.id for e in left.entries()] == [e.id for e in right.entries()] == [e1.id]
    assert any("fork" in why for _, why in a.refused + b.refused)


def test_invalid_entries_from_a_peer_are_refused_one_by_one() -> None:
    entries = evidence_chains(4, authors=1)
    forged = Entry(entries[2].body, bytes(64))
    ledger = ledger_of(entries[:2])
    session = SyncSession(ledger)
    turn = Turn(NETWORK, entries=(encode_entry(forged), encode_entry(entries[3]), b"junk"))
    session.receive(encode_turn(turn))
    reasons = [why for _, why in session.refused]
    assert len(reasons) == 2 and "bad signature" in reasons[0] and "decode" in reasons[1]
    assert ledger.pending() == [entries[3]]


def test_oversized_turn_is_refused_before_decoding() -> None:
    with pytest.raises(FrameTooLargeError, match="limit"):
        decode_turn(b"\x00" * (MAX_TURN_SIZE + 1), NETWORK)


@pytest.mark.parametrize(
    ("turn", "match"),
    [
        (Turn("othernet"), "network"),
        (Turn(NETWORK, heads=(Head(b"x", 1, b"y" * 32),)), "head"),
        (Turn(NETWORK, want=(SeqRange(b"a" * 32, 5, 2),)), "wanted range"),
        (Turn(NETWORK, want=(SeqRange(b"a" * 32, 1, 2),) * 300), "limit"),
        (Turn(NETWORK, splits=(Split(3, 0, b"\x00" * 128),)), "bad range"),
        (Turn(NETWORK, splits=(Split(4, 99, b"\x00" * 128),)), "bad range"),
        (Turn(NETWORK, splits=(Split(0, 0, b"\x00" * 12),)), "fingerprint"),
        (Turn(NETWORK, fetch=b"\x00" * 7), "truncated ids"),
        (Turn(NETWORK, entries=(b"",) * (MAX_BATCH + 1)), "entries"),
    ],
)
def test_malformed_turns_raise_typed_errors(turn: Turn, match: str) -> None:
    with pytest.raises(MalformedMessageError, match=match):
        decode_turn(encode_turn(turn), NETWORK)


def test_undecodable_turn_is_malformed() -> None:
    with pytest.raises(MalformedMessageError, match="does not decode"):
        decode_turn(msgspec.msgpack.encode({"type": "turn", "network": NETWORK, "extra": 1}), NETWORK)


@settings(max_examples=300, derandomize=True, database=None, deadline=None)
@given(st.binary(max_size=256))
def test_arbitrary_bytes_give_a_turn_or_a_remote_protocol_error(data: bytes) -> None:
    session = SyncSession(ledger_of(evidence_chains(40)))
    try:
        session.receive(data)
    except RemoteProtocolError:
        pass


def test_id_index_follows_the_ledger() -> None:
    entries = evidence_chains(50)
    ledger = ledger_of(entries[:20])
    index = IdIndex().refresh(ledger)
    assert len(index) == 20
    for entry in entries[20:]:
        ledger.apply_trusted(entry)
    assert len(index.refresh(ledger)) == 50
    assert index.fingerprint(0, 0) == IdIndex().refresh(ledger_of(list(reversed(entries)))).fingerprint(0, 0)
    assert index.count(0, 0) == 50 and sum(index.count(4, i) for i in range(16)) == 50


def test_a_peer_that_missed_the_fork_gets_the_proof() -> None:
    base = Author(COORDINATOR)
    e1 = base.append(Evidence(job_id(1), valid=(pub(WORKERS[0]),)))
    twin = Author(COORDINATOR)
    twin.seq, twin.prev = base.seq, base.prev
    e2 = base.append(Evidence(job_id(2), valid=(pub(WORKERS[1]),)))
    e3 = base.append(Evidence(job_id(3), valid=(pub(WORKERS[1]),)))
    f2 = twin.append(Evidence(job_id(4), valid=(pub(WORKERS[2]),)))
    witness = ledger_of([e1, e2])
    with pytest.raises(InvalidEntryError, match="fork"):
        witness.apply(f2)
    unaware = ledger_of([e1, e2, e3])
    a, b = SyncSession(unaware), SyncSession(witness)
    flight, receiver = a.start(), b
    while flight:
        replies: list[bytes] = []
        for frame in flight:
            replies += receiver.receive(frame)
        flight, receiver = replies, (a if receiver is b else b)
    assert unaware.frozen() == witness.frozen() == {pub(COORDINATOR): 2}
    assert unaware.heads() == witness.heads()

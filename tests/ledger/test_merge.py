"""Merging two ledgers is what sync does (spec/ledger.md §6, §9): two nodes holding any parts of one set of
entries, each applied in any order, end with the same state as one node that applied them all, whichever
side starts, and a second exchange moves nothing.

The merge laws over ``LedgerState`` itself (any order, any duplicates, any split, forks included) are in
test_properties.py; here the merge is the product's: two real ``SyncSession``s back to back, the entries
crossing as encoded turns and every one checked by ``LedgerState.apply`` on arrival.
"""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st
from ledger_factory import (
    COORDINATOR,
    GENESIS,
    OTHER_COORDINATOR,
    THIRD_COORDINATOR,
    USERS,
    WORKERS,
    Author,
    grant,
    job_id,
    make_receipt,
    pub,
)
from opengrid_ledger import Entry, Grant, LedgerState, Receipt, Transfer, decode_body
from opengrid_ledger.sync import SyncSession

PROPERTY = settings(max_examples=60, derandomize=True, database=None, deadline=None)
COORDINATORS = [COORDINATOR, OTHER_COORDINATOR, THIRD_COORDINATOR]
MAX_FLIGHTS = 100


@st.composite
def ledgers(draw: st.DrawFn) -> list[Entry]:
    """Receipts from 2-3 coordinators (every job distinct) and users' grants and transfers; a transfer
    depends on its sender's grant and on the transfers it received (entries of other chains)."""
    entries: list[Entry] = []
    coordinators = [Author(k) for k in COORDINATORS[: draw(st.integers(2, 3))]]
    users = [Author(k) for k in USERS[: draw(st.integers(0, 3))]]
    entries += [grant(user) for user in users]
    balance = {pub(user.key): 100 for user in users}
    for job in range(draw(st.integers(0, 10))):
        if users and draw(st.booleans()):
            source, target = (
                draw(st.sampled_from(users)),
                draw(st.sampled_from([*users, *map(Author, WORKERS)])),
            )
            amount = draw(st.integers(1, 50))
            if source.key is not target.key and balance[pub(source.key)] >= amount:
                entries.append(source.append(Transfer(pub(target.key), amount)))
                balance[pub(source.key)] -= amount
                balance[pub(target.key)] = balance.get(pub(target.key), 0) + amount
            continue
        workers = draw(st.lists(st.sampled_from(WORKERS), min_size=1, max_size=3, unique_by=pub))
        points = draw(st.lists(st.integers(1, 10**6), min_size=len(workers), max_size=len(workers)))
        receipt = make_receipt(job_id(job + 1), list(zip(workers, points, strict=True)))
        entries.append(draw(st.sampled_from(coordinators)).append(receipt))
    return entries


def expected_balances(entries: list[Entry]) -> dict[bytes, int]:
    """Balances computed straight from the entries, independently of LedgerState."""
    totals: Counter[bytes] = Counter()
    for entry in entries:
        body = decode_body(entry.body)
        if isinstance(body.payload, Receipt):
            for credit in body.payload.credits:
                totals[credit.account] += credit.points
        elif isinstance(body.payload, Grant):
            totals[body.author] += body.payload.points
        elif isinstance(body.payload, Transfer):
            totals[body.author] -= body.payload.amount
            totals[body.payload.to] += body.payload.amount
    return {account: points for account, points in sorted(totals.items()) if points}


def node_holding(entries: list[Entry]) -> LedgerState:
    """A node that received ``entries`` in this order (an entry whose dependency is missing waits)."""
    ledger = LedgerState.from_genesis(GENESIS)
    for entry in entries:
        ledger.apply(entry)
    return ledger


def sync(initiator: LedgerState, responder: LedgerState) -> int:
    """One exchange between two real sync sessions; returns how many entries the two sides applied."""
    a, b = SyncSession(initiator), SyncSession(responder)
    flight, receiver, flights = a.start(), b, 0
    while flight:
        flights += 1
        assert flights < MAX_FLIGHTS, "sync does not terminate"
        replies: list[bytes] = []
        for frame in flight:
            replies += receiver.receive(frame)
        flight, receiver = replies, (a if receiver is b else b)
    assert not a.refused and not b.refused, (a.refused, b.refused)
    return len(a.applied) + len(b.applied)


def state(ledger: LedgerState) -> tuple[object, ...]:
    return (
        ledger.balances(),
        ledger.heads(),
        sorted(e.id for e in ledger.entries()),
        sorted(e.id for e in ledger.pending()),
        {pub(w): ledger.jobs_done(pub(w)) for w in WORKERS},
    )


@PROPERTY
@given(st.data())
def test_syncing_two_partial_ledgers_gives_both_the_whole(data: st.DataObject) -> None:
    entries = data.draw(ledgers())
    # Each entry reached one node or both (some twice); each node got its part in its own order.
    sides = data.draw(st.lists(st.sampled_from("ab+"), min_size=len(entries), max_size=len(entries)))
    duplicates = data.draw(st.lists(st.sampled_from(entries), max_size=3)) if entries else []
    left_part = [e for e, s in zip(entries, sides, strict=True) if s in "a+"] + duplicates
    right_part = [e for e, s in zip(entries, sides, strict=True) if s in "b+"]
    left = node_holding(data.draw(st.permutations(left_part)))
    right = node_holding(data.draw(st.permutations(right_part)))
    whole = node_holding(entries)
    assert whole.pending() == [] and whole.balances() == expected_balances(entries)

    first, second = (left, right) if data.draw(st.booleans()) else (right, left)
    sync(first, second)
    assert state(left) == state(right) == state(whole)
    assert sync(second, first) == 0  # merging again changes nothing
    assert state(left) == state(whole)

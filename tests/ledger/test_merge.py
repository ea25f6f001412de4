"""Merge is set union: any order, any duplicates, any split gives the same state (spec/ledger.md §6)."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st
from ledger_factory import (
    COORDINATOR,
    MINTERS,
    NETWORK,
    OTHER_COORDINATOR,
    THIRD_COORDINATOR,
    WORKERS,
    Author,
    job_id,
    make_receipt,
    pub,
)
from opengrid_ledger import Entry, LedgerState, Receipt, decode_body

PROPERTY = settings(max_examples=60, derandomize=True, database=None, deadline=None)
COORDINATORS = [COORDINATOR, OTHER_COORDINATOR, THIRD_COORDINATOR]


@st.composite
def ledgers(draw: st.DrawFn) -> list[Entry]:
    """Valid chains of receipts from 2-3 coordinators, every job distinct."""
    entries: list[Entry] = []
    job = 0
    for coordinator in COORDINATORS[: draw(st.integers(2, 3))]:
        author = Author(coordinator)
        for _ in range(draw(st.integers(0, 4))):
            workers = draw(st.lists(st.sampled_from(WORKERS), min_size=1, max_size=3, unique_by=pub))
            points = draw(st.lists(st.integers(1, 10**6), min_size=len(workers), max_size=len(workers)))
            job += 1
            entries.append(author.append(make_receipt(job_id(job), list(zip(workers, points, strict=True)))))
    return entries


def expected_balances(entries: list[Entry]) -> dict[bytes, int]:
    """Balances computed straight from the receipts, independently of LedgerState."""
    totals: Counter[bytes] = Counter()
    for entry in entries:
        payload = decode_body(entry.body).payload
        assert isinstance(payload, Receipt)
        for credit in payload.credits:
            totals[credit.account] += credit.points
    return dict(sorted(totals.items()))


def fold(entries: list[Entry]) -> LedgerState:
    ledger = LedgerState(NETWORK, MINTERS)
    for entry in entries:
        ledger.apply(entry)
    return ledger


def ids(ledger: LedgerState) -> set[bytes]:
    return {entry.id for entry in ledger.entries()}


@PROPERTY
@given(st.data())
def test_any_order_with_duplicates_gives_the_same_state(data: st.DataObject) -> None:
    entries = data.draw(ledgers())
    duplicates = data.draw(st.lists(st.sampled_from(entries), max_size=5)) if entries else []
    shuffled = data.draw(st.permutations(entries + duplicates))
    reference = fold(entries)
    ledger = fold(shuffled)
    assert ledger.balances() == reference.balances() == expected_balances(entries)
    assert ids(ledger) == ids(reference) == {entry.id for entry in entries}
    assert ledger.pending() == [] and len(ledger) == len(entries)
    for coordinator in COORDINATORS:
        assert ledger.head(pub(coordinator)) == reference.head(pub(coordinator))
    for worker in WORKERS:
        assert ledger.jobs_done(pub(worker)) == reference.jobs_done(pub(worker))


@PROPERTY
@given(st.data())
def test_merging_partial_states_gives_the_whole(data: st.DataObject) -> None:
    entries = data.draw(ledgers())
    # Each entry goes to one side or both; together the sides hold everything.
    sides = data.draw(st.lists(st.sampled_from("ab+"), min_size=len(entries), max_size=len(entries)))
    left = fold(data.draw(st.permutations([e for e, s in zip(entries, sides, strict=True) if s in "a+"])))
    right = fold(data.draw(st.permutations([e for e, s in zip(entries, sides, strict=True) if s in "b+"])))
    whole = fold(entries)

    def merge(into: LedgerState, other: LedgerState) -> LedgerState:
        merged = fold(into.entries() + into.pending())
        for entry in data.draw(st.permutations(other.entries() + other.pending())):
            merged.apply(entry)
        return merged

    left_right, right_left = merge(left, right), merge(right, left)
    for merged in (left_right, right_left):
        assert merged.balances() == whole.balances()
        assert ids(merged) == ids(whole)
        assert merged.pending() == []
    # Merging again changes nothing (idempotent).
    again = merge(left_right, right)
    assert again.balances() == whole.balances() and ids(again) == ids(whole)

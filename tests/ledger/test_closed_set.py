"""A closed ledger (a network with a genesis file): only the genesis and ADMIT entries make coordinators
(spec/ledger.md §7.1), whatever a node trusts locally — so a locally trusted candidate can be admitted
and every node ends with the same coordinator set."""

from __future__ import annotations

import pytest
from opengrid_ledger import Genesis, LedgerState

from opengrid.errors import InvalidEntryError
from tests.ledger.ledger_factory import (
    COORDINATOR,
    MINTERS,
    NETWORK,
    OTHER_COORDINATOR,
    WORKERS,
    Author,
    admit,
    job_id,
    key,
    make_receipt,
    pub,
)

CANDIDATE = key(50)
GENESIS = Genesis(NETWORK, tuple(MINTERS))


def test_local_trust_adds_no_minter_to_a_closed_ledger() -> None:
    ledger = LedgerState(NETWORK, genesis=GENESIS, closed=True)
    ledger.add_minter(pub(CANDIDATE))  # what a coordinator core and a worker's registration do
    assert ledger.minters() == frozenset(MINTERS)
    candidate = Author(CANDIDATE)
    with pytest.raises(InvalidEntryError, match="not a minter"):
        ledger.apply(candidate.append(make_receipt(job_id(1), [(WORKERS[0], 5)])))


def test_a_candidate_mints_on_every_closed_ledger_once_admitted_even_where_it_was_trusted() -> None:
    trusting = LedgerState(NETWORK, genesis=GENESIS, closed=True)
    trusting.add_minter(pub(CANDIDATE))  # e.g. the candidate's own ledger, or a worker registered with it
    other = LedgerState(NETWORK, genesis=GENESIS, closed=True)
    candidate = Author(CANDIDATE)
    entries = [
        admit(candidate, pub(CANDIDATE), 0, [COORDINATOR, OTHER_COORDINATOR]),
        candidate.append(make_receipt(job_id(1), [(WORKERS[0], 5)])),
    ]
    for ledger in (trusting, other):
        for entry in entries:
            ledger.apply(entry)
        assert ledger.admitted() == [pub(CANDIDATE)] and ledger.balance(pub(WORKERS[0])) == 5


def test_an_open_ledger_still_takes_local_trust() -> None:
    ledger = LedgerState(NETWORK, genesis=GENESIS)
    ledger.add_minter(pub(CANDIDATE))
    assert pub(CANDIDATE) in ledger.minters()

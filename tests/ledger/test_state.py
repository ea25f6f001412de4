"""LedgerState rules: receipts, chains, parking, forks (spec/ledger.md §4-6)."""

from __future__ import annotations

import msgspec
import pytest
from ledger_factory import (
    COMMITMENT,
    CONTRACT,
    COORDINATOR,
    MINTERS,
    N_TOKENS,
    NETWORK,
    OTHER_COORDINATOR,
    WORKERS,
    Author,
    job_id,
    make_receipt,
    pub,
)
from opengrid_ledger import Credit, Entry, LedgerState, Receipt, sign_attestation, sign_entry

from opengrid.errors import InvalidEntryError, LedgerError


def state() -> LedgerState:
    return LedgerState(NETWORK, MINTERS)


def refused(ledger: LedgerState, entry: Entry, match: str) -> None:
    """Assert ``entry`` is refused with ``match`` and the state is unchanged."""
    before = (ledger.entries(), ledger.balances(), ledger.pending())
    with pytest.raises(InvalidEntryError, match=match):
        ledger.apply(entry)
    assert (ledger.entries(), ledger.balances(), ledger.pending()) == before


def test_receipt_credits_workers() -> None:
    ledger = state()
    entry = Author(COORDINATOR).append(make_receipt(job_id(1), [(WORKERS[0], 5), (WORKERS[1], 7)]))
    assert ledger.apply(entry) == [entry]
    assert ledger.balance(pub(WORKERS[0])) == 5 and ledger.balance(pub(WORKERS[1])) == 7
    assert ledger.balance(pub(WORKERS[2])) == 0
    assert ledger.receipt_for(job_id(1)) == entry and ledger.receipt_for(job_id(2)) is None
    assert ledger.head(pub(COORDINATOR)) == (1, entry.id)
    assert ledger.head(pub(OTHER_COORDINATOR)) is None
    assert len(ledger) == 1


def test_apply_is_idempotent() -> None:
    ledger = state()
    entry = Author(COORDINATOR).append(make_receipt(job_id(1), [(WORKERS[0], 5)]))
    assert ledger.apply(entry) == [entry]
    assert ledger.apply(entry) == []
    assert ledger.balance(pub(WORKERS[0])) == 5 and len(ledger) == 1


def test_balances_and_jobs_done_add_up() -> None:
    ledger = state()
    first, second = Author(COORDINATOR), Author(OTHER_COORDINATOR)
    ledger.apply(first.append(make_receipt(job_id(1), [(WORKERS[0], 5), (WORKERS[1], 7)])))
    ledger.apply(second.append(make_receipt(job_id(2), [(WORKERS[0], 3)])))
    ledger.apply(first.append(make_receipt(job_id(3), [(WORKERS[1], 1), (WORKERS[2], 10)])))
    assert ledger.balances() == {pub(WORKERS[0]): 8, pub(WORKERS[1]): 8, pub(WORKERS[2]): 10}
    assert [ledger.jobs_done(pub(w)) for w in WORKERS[:4]] == [2, 2, 1, 0]
    assert len(ledger) == 3 and ledger.head(pub(COORDINATOR))[0] == 2  # type: ignore[index]


def test_non_minter_author_is_refused() -> None:
    ledger = LedgerState(NETWORK, [pub(OTHER_COORDINATOR)])
    entry = Author(COORDINATOR).append(make_receipt(job_id(1), [(WORKERS[0], 5)]))
    refused(ledger, entry, "not a minter")
    ledger.add_minter(pub(COORDINATOR))
    assert ledger.apply(entry) == [entry]


def test_credit_without_attestation_is_refused() -> None:
    receipt = make_receipt(job_id(1), [(WORKERS[0], 5), (WORKERS[1], 5)])
    receipt = msgspec.structs.replace(receipt, attestations=receipt.attestations[:1])
    refused(state(), Author(COORDINATOR).append(receipt, checked=False), "without that worker's attestation")
    with pytest.raises(InvalidEntryError, match="attestation"):
        Author(COORDINATOR).append(receipt)  # sign_entry refuses to sign it in the first place


def test_attestation_by_another_key_is_refused() -> None:
    receipt = make_receipt(job_id(1), [(WORKERS[0], 5)])
    forged = sign_attestation(WORKERS[1], NETWORK, job_id(1), CONTRACT, COMMITMENT, N_TOKENS)
    # Claims to be WORKERS[0]'s but was signed by WORKERS[1].
    forged = msgspec.structs.replace(forged, worker=pub(WORKERS[0]))
    receipt = msgspec.structs.replace(receipt, attestations=(forged,))
    refused(state(), Author(COORDINATOR).append(receipt, checked=False), "bad signature")


def test_attestation_by_uncredited_worker_is_refused() -> None:
    receipt = make_receipt(job_id(1), [(WORKERS[0], 5)])
    other = make_receipt(job_id(1), [(WORKERS[1], 5)])
    receipt = msgspec.structs.replace(receipt, attestations=other.attestations)
    refused(state(), Author(COORDINATOR).append(receipt, checked=False), "not credited")


@pytest.mark.parametrize(
    "field", ["job_id", "contract_hash", "output_commitment", "n_tokens"], ids=lambda field: field
)
def test_attestation_for_something_else_is_refused(field: str) -> None:
    receipt = make_receipt(job_id(1), [(WORKERS[0], 5)])
    other = {
        "job_id": job_id(2),
        "contract_hash": b"\x01" * 32,
        "output_commitment": b"\x02" * 32,
        "n_tokens": N_TOKENS + 1,
    }
    mismatched = msgspec.structs.replace(receipt, **{field: other[field]})
    refused(state(), Author(COORDINATOR).append(mismatched, checked=False), "does not match")


@pytest.mark.parametrize("points", [0, -5])
def test_non_positive_points_are_refused(points: int) -> None:
    receipt = make_receipt(job_id(1), [(WORKERS[0], 5)])
    receipt = msgspec.structs.replace(receipt, credits=(Credit(pub(WORKERS[0]), points),))
    refused(state(), Author(COORDINATOR).append(receipt, checked=False), "points")


def test_duplicate_credit_and_empty_receipt_are_refused() -> None:
    receipt = make_receipt(job_id(1), [(WORKERS[0], 5)])
    twice = msgspec.structs.replace(receipt, credits=receipt.credits * 2)
    refused(state(), Author(COORDINATOR).append(twice, checked=False), "twice")
    empty = msgspec.structs.replace(receipt, credits=(), attestations=())
    refused(state(), Author(COORDINATOR).append(empty, checked=False), "credits nobody")


def test_credited_dissenter_is_refused() -> None:
    receipt = make_receipt(job_id(1), [(WORKERS[0], 5)], dissenters=(pub(WORKERS[0]),))
    refused(state(), Author(COORDINATOR).append(receipt, checked=False), "dissenter")
    fine = make_receipt(job_id(1), [(WORKERS[0], 5)], dissenters=(pub(WORKERS[1]),))
    assert len(state().apply(Author(COORDINATOR).append(fine))) == 1


def test_same_job_twice_is_refused() -> None:
    ledger = state()
    first, second = Author(COORDINATOR), Author(OTHER_COORDINATOR)
    ledger.apply(first.append(make_receipt(job_id(1), [(WORKERS[0], 5)])))
    refused(ledger, second.append(make_receipt(job_id(1), [(WORKERS[1], 5)])), "already credited")
    refused(ledger, first.append(make_receipt(job_id(1), [(WORKERS[0], 5)])), "already credited")
    assert ledger.balances() == {pub(WORKERS[0]): 5}


def test_out_of_order_entries_park_then_apply_in_chain_order() -> None:
    ledger = state()
    author = Author(COORDINATOR)
    chain = [author.append(make_receipt(job_id(n), [(WORKERS[n % 3], n)])) for n in range(1, 5)]
    assert ledger.apply(chain[3]) == []
    assert ledger.apply(chain[1]) == []
    assert ledger.apply(chain[3]) == []  # parked twice is still parked once
    assert ledger.pending() == [chain[1], chain[3]] and len(ledger) == 0
    assert ledger.apply(chain[0]) == [chain[0], chain[1]]
    assert ledger.apply(chain[2]) == [chain[2], chain[3]]
    assert ledger.entries() == chain and ledger.pending() == []
    assert ledger.head(pub(COORDINATOR)) == (4, chain[3].id)


def test_broken_chain_is_refused() -> None:
    ledger = state()
    author = Author(COORDINATOR)
    ledger.apply(author.append(make_receipt(job_id(1), [(WORKERS[0], 5)])))
    author.prev = b"\x00" * 32
    refused(ledger, author.append(make_receipt(job_id(2), [(WORKERS[0], 5)])), "broken chain")


def test_parked_entry_that_turns_out_invalid_is_dropped() -> None:
    ledger = state()
    author = Author(COORDINATOR)
    first = author.append(make_receipt(job_id(1), [(WORKERS[0], 5)]))
    again = author.append(make_receipt(job_id(1), [(WORKERS[1], 5)]))  # double-credits job 1
    assert ledger.apply(again) == []
    assert ledger.apply(first) == [first]
    assert ledger.pending() == [] and ledger.balances() == {pub(WORKERS[0]): 5}


def test_fork_freezes_the_author() -> None:
    ledger = state()
    honest = Author(COORDINATOR)
    e1 = honest.append(make_receipt(job_id(1), [(WORKERS[0], 5)]))
    fork = Author(COORDINATOR)
    f1 = fork.append(make_receipt(job_id(2), [(WORKERS[1], 5)]))
    e2 = honest.append(make_receipt(job_id(3), [(WORKERS[0], 5)]))
    ledger.apply(e1)
    with pytest.raises(InvalidEntryError, match="fork"):
        ledger.apply(f1)
    assert ledger.is_frozen(pub(COORDINATOR)) and not ledger.is_frozen(pub(OTHER_COORDINATOR))
    assert ledger.fork_evidence(pub(COORDINATOR)) == tuple(sorted([e1, f1], key=lambda e: e.id))
    with pytest.raises(InvalidEntryError, match="frozen"):
        ledger.apply(e2)
    assert ledger.apply(e1) == []  # already known (now excluded): idempotent
    # Entries from the fork seq on are excluded on every node, whichever branch came first (spec §6).
    assert ledger.balances() == {} and ledger.entries() == [] and ledger.frozen() == {pub(COORDINATOR): 1}
    with pytest.raises(LedgerError, match="frozen"):
        ledger.next_body(pub(COORDINATOR), make_receipt(job_id(9), [(WORKERS[0], 1)]))
    # Other authors are unaffected.
    assert (
        len(ledger.apply(Author(OTHER_COORDINATOR).append(make_receipt(job_id(4), [(WORKERS[2], 1)])))) == 1
    )


def test_fork_between_parked_entries_is_detected() -> None:
    ledger = state()
    a, b = Author(COORDINATOR), Author(COORDINATOR)
    a.append(make_receipt(job_id(1), [(WORKERS[0], 5)]))
    b.append(make_receipt(job_id(2), [(WORKERS[0], 5)]))
    a2 = a.append(make_receipt(job_id(3), [(WORKERS[0], 5)]))
    b2 = b.append(make_receipt(job_id(4), [(WORKERS[0], 5)]))
    assert ledger.apply(a2) == []
    with pytest.raises(InvalidEntryError, match="fork"):
        ledger.apply(b2)
    assert ledger.is_frozen(pub(COORDINATOR)) and ledger.pending() == []


def test_next_body_extends_the_chain() -> None:
    ledger = state()
    receipt = make_receipt(job_id(1), [(WORKERS[0], 5)])
    body = ledger.next_body(pub(COORDINATOR), receipt)
    assert (body.network, body.seq, body.prev) == (NETWORK, 1, b"")
    first = sign_entry(COORDINATOR, body)
    ledger.apply(first)
    body = ledger.next_body(pub(COORDINATOR), make_receipt(job_id(2), [(WORKERS[0], 5)]))
    assert (body.seq, body.prev) == (2, first.id)
    assert ledger.apply(sign_entry(COORDINATOR, body))[0].id == ledger.head(pub(COORDINATOR))[1]  # type: ignore[index]


def test_wrong_network_entry_is_refused_by_state() -> None:
    entry = Author(COORDINATOR, network="othernet").append(
        Receipt(
            job_id=job_id(1),
            contract_hash=CONTRACT,
            output_commitment=COMMITMENT,
            n_tokens=N_TOKENS,
            credits=(Credit(pub(WORKERS[0]), 1),),
            attestations=(
                sign_attestation(WORKERS[0], "othernet", job_id(1), CONTRACT, COMMITMENT, N_TOKENS),
            ),
        )
    )
    refused(state(), entry, "network")

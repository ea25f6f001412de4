"""Every payload kind's rules, and every forgery refused with a message saying what is wrong (spec §5)."""

from __future__ import annotations

import pytest
from ledger_factory import (
    COORDINATOR,
    GENESIS,
    GRANT,
    MINTERS,
    NETWORK,
    OTHER_COORDINATOR,
    THIRD_COORDINATOR,
    USERS,
    WORKERS,
    Author,
    admit,
    grant,
    job_id,
    key,
    make_receipt,
    pub,
    raw_sign,
)
from opengrid_ledger import (
    Credit,
    Entry,
    Evidence,
    Fraud,
    Genesis,
    Hold,
    LedgerState,
    Refund,
    Settle,
    Transfer,
    decode_body,
    decode_genesis,
    encode_entry,
    encode_genesis,
    genesis_id,
    make_fraud,
    sign_entry,
)

from opengrid.errors import InvalidEntryError, LedgerError


def state() -> LedgerState:
    return LedgerState.from_genesis(GENESIS)


def refused(ledger: LedgerState, entry: Entry, match: str) -> None:
    before = (ledger.entries(), ledger.balances(), ledger.pending())
    with pytest.raises(InvalidEntryError, match=match):
        ledger.apply(entry)
    assert (ledger.entries(), ledger.balances(), ledger.pending()) == before


def funded_user(ledger: LedgerState, n: int = 0) -> Author:
    user = Author(USERS[n])
    assert ledger.apply(grant(user)) != []
    return user


def test_grant_once_per_key_with_a_coordinator_voucher() -> None:
    ledger = state()
    user = funded_user(ledger)
    assert ledger.balance(pub(USERS[0])) == GRANT and ledger.minted() == GRANT
    refused(ledger, grant(user), "first entry")
    other = Author(USERS[1])
    refused(ledger, grant(other, voucher_key=USERS[0]), "not a coordinator")
    other = Author(USERS[1])
    refused(ledger, grant(other, points=GRANT + 1), "genesis grant is 100")
    no_grant = LedgerState(NETWORK, MINTERS)
    refused(no_grant, grant(Author(USERS[2])), "no starting grant")


def test_grant_voucher_is_bound_to_the_account() -> None:
    user, thief = Author(USERS[0]), Author(USERS[1])
    stolen = grant(user)  # thief re-signs the user's voucher for itself
    voucher = decode_body(stolen.body).payload
    refused(state(), thief.append(voucher, checked=False), "grant voucher .* bad signature")


def test_hold_settle_pays_workers_and_returns_the_rest() -> None:
    ledger = state()
    user = funded_user(ledger)
    coordinator = Author(COORDINATOR)
    hold = user.append(Hold(job_id(1), 60, pub(COORDINATOR)))
    assert ledger.apply(hold) == [hold]
    assert ledger.balance(pub(USERS[0])) == 40 and ledger.held(pub(USERS[0])) == 60
    # The settle waits for the job's receipt, then pays only credited workers.
    settle = Settle(hold.id, (Credit(pub(WORKERS[0]), 20), Credit(pub(WORKERS[1]), 15)))
    receipt = coordinator.append(make_receipt(job_id(1), [(WORKERS[0], 5), (WORKERS[1], 5)]))
    settled = coordinator.append(settle)
    assert ledger.apply(settled) == []
    assert ledger.apply(receipt) == [receipt, settled]
    assert ledger.balances() == {pub(USERS[0]): 65, pub(WORKERS[0]): 25, pub(WORKERS[1]): 20}
    assert ledger.held(pub(USERS[0])) == 0 and ledger.minted() == GRANT + 10
    assert [(h.kind, h.delta) for h in ledger.history(pub(USERS[0]))] == [
        ("grant", 100),
        ("hold", -60),
        ("settle", 25),
    ]
    refused(ledger, coordinator.append(Refund(hold.id)), "already closed")


def test_refund_returns_the_whole_hold() -> None:
    ledger = state()
    user = funded_user(ledger)
    hold = user.append(Hold(job_id(1), 30, pub(COORDINATOR)))
    ledger.apply(hold)
    ledger.apply(Author(COORDINATOR).append(Refund(hold.id)))
    assert ledger.balance(pub(USERS[0])) == GRANT and ledger.held(pub(USERS[0])) == 0


def test_spend_without_hold_is_refused() -> None:
    ledger = state()
    user = funded_user(ledger)
    hold = user.append(Hold(job_id(1), 30, pub(COORDINATOR)))
    ledger.apply(hold)
    # Only the coordinator the hold names may close it.
    refused(ledger, Author(OTHER_COORDINATOR).append(Refund(hold.id)), "only it may close it")
    # A settle may not pay more than the hold, nor anyone the job's receipt does not credit.
    coordinator = Author(COORDINATOR)
    ledger.apply(coordinator.append(make_receipt(job_id(1), [(WORKERS[0], 5)])))
    over = Settle(hold.id, (Credit(pub(WORKERS[0]), 31),))
    refused(ledger, _next(ledger, coordinator, over), "31 points out of hold")
    stranger = Settle(hold.id, (Credit(pub(WORKERS[3]), 1),))
    refused(ledger, _next(ledger, coordinator, stranger), "not credited by the receipt")
    # A settle of a hold nobody has seen waits (the hold may still arrive); it never pays by itself.
    ghost = _next(ledger, coordinator, Settle(b"\x07" * 32, (Credit(pub(WORKERS[0]), 1),)))
    assert ledger.apply(ghost) == [] and ledger.pending() == [ghost]
    assert ledger.balance(pub(WORKERS[0])) == 5


def _next(ledger: LedgerState, author: Author, payload: object) -> Entry:
    body = ledger.next_body(pub(author.key), payload)  # type: ignore[arg-type]
    return raw_sign(author.key, body)


def test_spend_above_balance_waits_for_credits() -> None:
    ledger = state()
    user = funded_user(ledger)
    big = user.append(Transfer(pub(USERS[1]), 150))
    assert ledger.apply(big) == [] and ledger.pending() == [big]
    assert ledger.balance(pub(USERS[0])) == GRANT
    # Credits arrive: the waiting transfer applies in the same call.
    receipt = Author(COORDINATOR).append(make_receipt(job_id(1), [(USERS[0], 50)]))
    assert ledger.apply(receipt) == [receipt, big]
    assert ledger.balances() == {pub(USERS[1]): 150}


def test_transfer_to_self_and_zero_amounts_are_refused() -> None:
    ledger = state()
    user = funded_user(ledger)
    refused(ledger, user.append(Transfer(pub(USERS[0]), 1), checked=False), "to itself")
    user.seq -= 1
    user.prev = ledger.head(pub(USERS[0]))[1]  # type: ignore[index]
    refused(ledger, user.append(Transfer(pub(USERS[1]), 0), checked=False), "amount")


def test_admit_needs_two_thirds_of_the_current_set() -> None:
    ledger = state()
    newcomer, fifth = key(50), key(51)
    publisher = Author(key(60))
    refused(ledger, admit(publisher, pub(newcomer), 0, [COORDINATOR]), "at least 2/3 of the 3")
    publisher = Author(key(60))
    refused(ledger, admit(publisher, pub(newcomer), 0, [COORDINATOR, WORKERS[0]]), "not a coordinator")
    publisher = Author(key(60))
    first = admit(publisher, pub(newcomer), 0, [COORDINATOR, OTHER_COORDINATOR])
    assert ledger.apply(first) == [first]
    assert pub(newcomer) in ledger.minters() and ledger.admitted() == [pub(newcomer)]
    # Epoch 1 is against 4 coordinators: 2 is not enough, 3 is.
    refused(ledger, admit(publisher, pub(fifth), 1, [COORDINATOR, newcomer]), "2/3 of the 4")
    publisher.seq -= 1
    publisher.prev = first.id
    second = admit(publisher, pub(fifth), 1, [COORDINATOR, newcomer, THIRD_COORDINATOR])
    assert ledger.apply(second) == [second]
    # The admitted coordinator may mint.
    minted = Author(fifth).append(make_receipt(job_id(9), [(WORKERS[0], 3)]))
    assert ledger.apply(minted) == [minted]
    replay = admit(Author(key(61)), pub(key(52)), 0, [COORDINATOR, OTHER_COORDINATOR])
    refused(ledger, replay, "epoch 0 already admitted")


def test_admit_for_a_later_epoch_waits() -> None:
    ledger = state()
    a, b = Author(key(60)), Author(key(61))
    first = admit(a, pub(key(50)), 0, [COORDINATOR, OTHER_COORDINATOR])
    second = admit(b, pub(key(51)), 1, [COORDINATOR, OTHER_COORDINATOR, key(50)])
    assert ledger.apply(second) == []
    assert ledger.apply(first) == [first, second]
    assert ledger.admitted() == [pub(key(50)), pub(key(51))]


def test_evidence_counts_reputation_once_per_coordinator_and_job() -> None:
    ledger = state()
    coordinator = Author(COORDINATOR)
    evidence = Evidence(
        job_id(1), valid=(pub(WORKERS[0]),), invalid=(pub(WORKERS[1]),), timeout=(pub(WORKERS[2]),)
    )
    ledger.apply(coordinator.append(evidence))
    ledger.apply(Author(OTHER_COORDINATOR).append(Evidence(job_id(1), valid=(pub(WORKERS[0]),))))
    assert ledger.reputation(pub(WORKERS[0])) == (2, 0, 0)
    assert ledger.reputation(pub(WORKERS[1])) == (0, 1, 0)
    assert ledger.reputation(pub(WORKERS[2])) == (0, 0, 1)
    refused(ledger, coordinator.append(evidence), "already recorded evidence")
    refused(ledger, Author(USERS[0]).append(evidence), "not a coordinator")
    twice = Evidence(job_id(2), valid=(pub(WORKERS[0]),), invalid=(pub(WORKERS[0]),))
    with pytest.raises(InvalidEntryError, match="twice"):
        Author(COORDINATOR).append(twice)


def test_fraud_entry_freezes_the_forker_everywhere() -> None:
    forker_a, forker_b = Author(USERS[0]), Author(USERS[0])
    g = grant(forker_a)
    forker_b.seq, forker_b.prev = forker_a.seq, forker_a.prev
    spend_a = forker_a.append(Transfer(pub(USERS[1]), 100))
    spend_b = forker_b.append(Transfer(pub(USERS[2]), 100))  # double spend at seq 2
    witness = state()
    witness.apply(g)
    witness.apply(spend_a)
    with pytest.raises(InvalidEntryError, match="fork"):
        witness.apply(spend_b)
    fraud = witness.fraud_payload(pub(USERS[0]))
    assert fraud == make_fraud(spend_b, spend_a)
    prover = Author(OTHER_COORDINATOR)
    proof = prover.append(fraud)  # type: ignore[arg-type]
    # Another node saw only one branch; the FRAUD entry alone freezes the forker and undoes the spend.
    other = state()
    other.apply(g)
    other.apply(spend_a)
    assert other.balance(pub(USERS[1])) == 100
    assert other.apply(proof) == [proof]
    assert other.is_frozen(pub(USERS[0])) and other.frozen() == {pub(USERS[0]): 2}
    assert other.balances() == witness.balances() == {pub(USERS[0]): GRANT}
    # One proof per author is enough: the same author proving the same forker again is refused.
    refused(other, prover.append(fraud), "one proof per author")  # type: ignore[arg-type]


def test_a_fraud_proof_by_a_key_without_standing_freezes_but_waits() -> None:
    """Keys are free: a proof by one with no credit, entry or coordinator role is not stored (it waits
    in the bounded pool until its author has standing), yet receiving it still freezes the forker."""
    forker_a, forker_b = Author(USERS[0]), Author(USERS[0])
    g = grant(forker_a)
    forker_b.seq, forker_b.prev = forker_a.seq, forker_a.prev
    spend_a = forker_a.append(Transfer(pub(USERS[1]), 100))
    spend_b = forker_b.append(Transfer(pub(USERS[2]), 100))
    proof = Author(WORKERS[4]).append(make_fraud(spend_a, spend_b))
    other = state()
    other.apply(g)
    other.apply(spend_a)
    assert other.apply(proof) == []
    assert other.is_frozen(pub(USERS[0])) and other.balances() == {pub(USERS[0]): GRANT}
    assert proof not in other and other.pending_ids() == [proof.id]


def test_bad_fraud_proofs_are_refused() -> None:
    a = Author(USERS[0])
    g1 = grant(a)
    g2 = a.append(Transfer(pub(USERS[1]), 1))
    with pytest.raises(InvalidEntryError, match="not a fork"):
        Author(WORKERS[4]).append(make_fraud(g1, g2))
    with pytest.raises(InvalidEntryError, match="same entry"):
        Author(WORKERS[4]).append(Fraud(encode_entry(g1), encode_entry(g1)))
    forged = Entry(g2.body, bytes(64))
    low, high = sorted([g2, forged], key=lambda e: e.id)
    with pytest.raises(InvalidEntryError, match="bad signature"):
        Author(WORKERS[4]).append(Fraud(encode_entry(low), encode_entry(high)))


def test_settle_of_a_hold_excluded_by_a_fork_moves_nothing() -> None:
    user_a, user_b = Author(USERS[0]), Author(USERS[0])
    g = grant(user_a)
    user_b.seq, user_b.prev = user_a.seq, user_a.prev
    hold = user_a.append(Hold(job_id(1), 50, pub(COORDINATOR)))
    fork = user_b.append(Transfer(pub(USERS[1]), 100))
    coordinator = Author(COORDINATOR)
    refund = coordinator.append(Refund(hold.id))
    later = coordinator.append(make_receipt(job_id(2), [(WORKERS[0], 7)]))
    for order in (
        [g, hold, refund, later, fork],
        [g, fork, hold, refund, later],
        [fork, later, refund, hold, g],
    ):
        ledger = state()
        for entry in order:
            try:
                ledger.apply(entry)
            except InvalidEntryError:
                pass
        # The coordinator's chain goes on; the forker keeps only its pre-fork grant.
        assert ledger.head(pub(COORDINATOR)) == (2, later.id), order
        assert ledger.balances() == {pub(USERS[0]): GRANT, pub(WORKERS[0]): 7}


def test_genesis_file_round_trip_and_checks() -> None:
    assert decode_genesis(encode_genesis(GENESIS)) == GENESIS
    assert genesis_id(GENESIS) != genesis_id(Genesis(NETWORK, GENESIS.coordinators, grant_points=1))
    with pytest.raises(LedgerError, match="twice"):
        decode_genesis(encode_genesis(Genesis(NETWORK, (pub(COORDINATOR),) * 2)))
    with pytest.raises(LedgerError, match="does not decode"):
        decode_genesis(b"{")
    with pytest.raises(LedgerError, match="network"):
        LedgerState("othernet", genesis=GENESIS)


def test_sign_entry_refuses_what_receivers_refuse() -> None:
    with pytest.raises(InvalidEntryError, match="amount"):
        sign_entry(USERS[0], Author(USERS[0]).body(Hold(job_id(1), 0, pub(COORDINATOR))))
    with pytest.raises(InvalidEntryError, match="pays nobody"):
        sign_entry(COORDINATOR, Author(COORDINATOR).body(Settle(b"\x01" * 32, ())))

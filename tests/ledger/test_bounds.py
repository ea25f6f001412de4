"""The waiting pool and fork bookkeeping are bounded (spec/ledger.md §6.3): keys are free, so what authors
without standing send costs a bounded amount, and authors with standing keep their place."""

from __future__ import annotations

import pytest
from ledger_factory import COORDINATOR, GENESIS, USERS, Author, grant, job_id, key, pub
from opengrid_ledger import Entry, Hold, LedgerState, Transfer, make_fraud

from opengrid.errors import InvalidEntryError


def small(**caps: int) -> LedgerState:
    return LedgerState(GENESIS.network, genesis=GENESIS, **caps)


def chain(author: Author, n: int) -> list[Entry]:
    return [author.append(Transfer(pub(USERS[3]), 1)) for _ in range(n)]


def test_authors_without_standing_share_a_small_part_of_the_pool_oldest_evicted_first() -> None:
    ledger = small(max_unbacked_waiting=50)
    for n in range(3):  # three fresh keys, seq 1 withheld, 100 parked entries each
        author = Author(key(1000 + n))
        author.append(Transfer(pub(USERS[1]), 1))
        for entry in chain(author, 100):
            assert ledger.apply(entry) == []
    waiting, _, unbacked = ledger.waiting_stats()
    assert waiting == unbacked == 50 and ledger.evicted == 250
    # An author with standing is not pushed out by them.
    user = Author(USERS[0])
    g = grant(user)
    later = chain(user, 2)
    ledger.apply(g)
    assert ledger.apply(later[1]) == []  # parked: seq 2 missing
    for entry in chain(Author(key(2000)), 60):
        try:
            ledger.apply(entry)
        except InvalidEntryError:
            pass
    assert later[1].id in ledger.pending_ids()
    assert ledger.apply(later[0]) == later


def test_a_full_pool_evicts_from_the_author_holding_the_most() -> None:
    ledger = small(max_waiting=10)
    big, few = Author(USERS[0]), Author(USERS[1])
    ledger.apply(grant(big))
    ledger.apply(grant(few))
    big_chain, few_chain = chain(big, 10), chain(few, 3)  # seq 2.. of each
    for entry in big_chain[1:9]:  # 8 parked behind big's missing seq 2
        ledger.apply(entry)
    for entry in few_chain[1:]:  # 2 parked behind few's: the pool is full
        ledger.apply(entry)
    assert ledger.waiting_stats()[0] == 10
    # The author holding the most cannot displace anyone: its newcomer is refused.
    with pytest.raises(InvalidEntryError, match="waiting pool is full"):
        ledger.apply(big_chain[9])
    # Another author's newcomer displaces big's most recently parked entry.
    extra = chain(few, 1)[0]
    assert ledger.apply(extra) == []
    assert big_chain[8].id not in ledger.pending_ids() and extra.id in ledger.pending_ids()
    assert ledger.evicted == 1
    # Nothing is lost for good: delivered again once its turn comes, it applies.
    assert ledger.apply(big_chain[0]) == big_chain[:8]
    assert ledger.apply(big_chain[8]) == [big_chain[8]]
    assert ledger.apply(few_chain[0]) == [*few_chain, extra]


def test_forks_of_free_keys_keep_no_evidence_and_make_no_proof() -> None:
    ledger = small()
    generation = ledger.generation
    for n in range(20):
        free = key(3000 + n)
        one = Author(free).append(Hold(job_id(1), 5, pub(COORDINATOR)))
        two = Author(free).append(Hold(job_id(2), 5, pub(COORDINATOR)))
        ledger.apply(one)
        with pytest.raises(InvalidEntryError, match="fork"):
            ledger.apply(two)
        assert ledger.is_frozen(pub(free)) and ledger.fraud_payload(pub(free)) is None
    assert ledger.proven() == [] and ledger.generation == generation  # no rebuild, no evidence
    assert ledger.waiting_stats()[0] == 0
    # A fork by an author with standing is proven as before.
    user_a, user_b = Author(USERS[0]), Author(USERS[0])
    ledger.apply(grant(user_a))
    user_b.seq, user_b.prev = user_a.seq, user_a.prev
    spend_a, spend_b = user_a.append(Transfer(pub(USERS[1]), 5)), user_b.append(Transfer(pub(USERS[2]), 5))
    ledger.apply(spend_a)
    with pytest.raises(InvalidEntryError, match="fork"):
        ledger.apply(spend_b)
    assert ledger.proven() == [pub(USERS[0])]
    assert ledger.fraud_payload(pub(USERS[0])) == make_fraud(spend_a, spend_b)


def test_unbacked_cuts_are_capped() -> None:
    ledger = small(max_unbacked_cuts=5)
    for n in range(12):
        free = key(4000 + n)
        ledger.apply(Author(free).append(Hold(job_id(1), 5, pub(COORDINATOR))))
        with pytest.raises(InvalidEntryError):
            ledger.apply(Author(free).append(Hold(job_id(2), 5, pub(COORDINATOR))))
    assert len(ledger.frozen()) == 5


def test_a_cut_without_standing_keeps_its_evidence_once_the_author_gains_standing() -> None:
    """A fork proof can come before the chain below it (sync pushes proofs first): the author is cut with
    no evidence, then its seq 1 arrives and gives it standing; from then on the node holds the proof (to
    pass on, and for a FRAUD entry), as if the chain had come first."""
    user, twin = Author(USERS[0]), Author(USERS[0])
    first = grant(user)
    twin.seq, twin.prev = user.seq, user.prev
    spend, other = user.append(Transfer(pub(USERS[1]), 100)), twin.append(Transfer(pub(USERS[2]), 100))
    ledger = small()
    assert ledger.apply(spend) == []  # parked: seq 1 is missing
    with pytest.raises(InvalidEntryError, match="fork"):
        ledger.apply(other)
    assert ledger.frozen() == {pub(USERS[0]): 2} and ledger.proven() == []  # no standing: no evidence
    assert ledger.apply(first) == [first]
    assert ledger.proven() == [pub(USERS[0])]
    assert ledger.fork_evidence(pub(USERS[0])) == tuple(sorted((spend, other), key=lambda e: e.id))
    assert ledger.fraud_payload(pub(USERS[0])) is not None
    assert ledger.balance(pub(USERS[0])) == 100 and ledger.balance(pub(USERS[1])) == 0


def test_a_cut_without_standing_keeps_its_evidence_once_the_author_is_credited() -> None:
    free = key(4100)
    a, b = (
        Author(free).append(Hold(job_id(1), 5, pub(COORDINATOR))),
        Author(free).append(Hold(job_id(2), 5, pub(COORDINATOR))),
    )
    payer = Author(USERS[0])
    ledger = small()
    assert ledger.apply(a) == []  # blocked: no points
    with pytest.raises(InvalidEntryError, match="fork"):
        ledger.apply(b)
    assert ledger.proven() == []
    ledger.apply(grant(payer))
    ledger.apply(payer.append(Transfer(pub(free), 10)))
    assert ledger.proven() == [pub(free)] and ledger.balance(pub(free)) == 10  # the holds stay excluded
    assert ledger.fork_evidence(pub(free)) == tuple(sorted((a, b), key=lambda e: e.id))

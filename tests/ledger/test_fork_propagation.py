"""A fork's proof reaches every peer one of its branches could harm (spec/ledger.md §9.3).

A node that saw a fork (the *witness*) freezes the forker. A peer whose copy of the forker's chain ends
before the fork (or that holds none of it) must learn the fork from the witness whichever side starts the
sync, or a third node holding one branch could later hand it that branch (half of a double spend or of a
double grant). The proofs a session sends are bounded (keys are cheap), ranked, and rotate so repeated
sessions cover them all. Real ``SyncSession`` pairs over real signed entries; nothing is faked.
"""

from __future__ import annotations

from collections.abc import Callable

import nacl.signing
import pytest
from ledger_factory import (
    COORDINATOR,
    GENESIS,
    MINTERS,
    NETWORK,
    OTHER_COORDINATOR,
    USERS,
    WORKERS,
    Author,
    grant,
    job_id,
    key,
    pub,
)
from opengrid_ledger import Entry, Evidence, LedgerState, Transfer, encode_entry
from opengrid_ledger.sync import (
    MAX_FORK_PROOF_BYTES,
    MAX_FORK_PROOFS,
    IdIndex,
    SyncSession,
    decode_turn,
    entries_of,
)

from opengrid.errors import InvalidEntryError


def run(initiator: SyncSession, responder: SyncSession, *, reconcile: bool | None = None) -> list[bytes]:
    """Run one exchange to its end; returns every turn either side sent."""
    flight, receiver, flights, sent = initiator.start(reconcile=reconcile), responder, 0, []
    while flight:
        sent += flight
        flights += 1
        assert flights < 100, "sync does not terminate"
        replies: list[bytes] = []
        for frame in flight:
            replies += receiver.receive(frame)
        flight, receiver = replies, (initiator if receiver is responder else responder)
    return sent


def sync(
    left: LedgerState,
    right: LedgerState,
    *,
    left_index: IdIndex | None = None,
    right_index: IdIndex | None = None,
    reconcile: bool | None = None,
) -> tuple[SyncSession, SyncSession]:
    """``left`` initiates a session with ``right``; returns both sessions."""
    a, b = SyncSession(left, left_index), SyncSession(right, right_index)
    run(a, b, reconcile=reconcile)
    return a, b


def forked_chain(k: nacl.signing.SigningKey, fork_at: int) -> tuple[list[Entry], Entry, Entry]:
    """``fork_at - 1`` evidence entries by ``k``, then two different entries at seq ``fork_at``."""
    base = Author(k)
    chain = [base.append(Evidence(job_id(i), valid=(pub(WORKERS[0]),))) for i in range(1, fork_at)]
    twin = Author(k)
    twin.seq, twin.prev = base.seq, base.prev
    a = base.append(Evidence(job_id(100), valid=(pub(WORKERS[1]),)))
    b = twin.append(Evidence(job_id(101), valid=(pub(WORKERS[2]),)))
    return chain, a, b


def witness_of(entries: list[Entry], a: Entry, b: Entry, ledger: LedgerState | None = None) -> LedgerState:
    """A ledger that holds ``entries`` and saw the fork ``a``/``b``."""
    witness = LedgerState(NETWORK, MINTERS) if ledger is None else ledger
    for entry in [*entries, a]:
        witness.apply(entry)
    with pytest.raises(InvalidEntryError, match="fork"):
        witness.apply(b)
    return witness


def ledger_of(entries: list[Entry], minters: list[bytes] = MINTERS) -> LedgerState:
    ledger = LedgerState(NETWORK, minters)
    for entry in entries:
        ledger.apply(entry)
    return ledger


CASES = [
    (fork_at, held)
    for fork_at in (1, 2, 5)
    for held in sorted({0, fork_at // 2, fork_at - 1})  # nothing, part of the prefix, all of it
]


@pytest.mark.parametrize("reconcile", [None, True], ids=["heads", "ranges"])
@pytest.mark.parametrize("peer_starts", [True, False], ids=["peer-starts", "witness-starts"])
@pytest.mark.parametrize(("fork_at", "held"), CASES, ids=[f"fork@{f}-peer-holds-{h}" for f, h in CASES])
def test_a_peer_behind_the_fork_learns_it(
    fork_at: int, held: int, peer_starts: bool, reconcile: bool
) -> None:
    chain, a, b = forked_chain(COORDINATOR, fork_at)
    witness = witness_of(chain, a, b)
    peer = ledger_of(chain[:held])
    assert witness.frozen() == {pub(COORDINATOR): fork_at} and not peer.frozen()
    if peer_starts:
        sync(peer, witness, reconcile=reconcile)
    else:
        sync(witness, peer, reconcile=reconcile)
    assert peer.frozen() == witness.frozen() == {pub(COORDINATOR): fork_at}
    assert peer.fork_evidence(pub(COORDINATOR)) == witness.fork_evidence(pub(COORDINATOR))
    assert peer.heads() == witness.heads()
    assert [e.id for e in peer.entries()] == [e.id for e in chain]


def double_spend() -> tuple[list[Entry], Entry, Entry]:
    """A user's starting grant, then two transfers of all of it to two workers at seq 2 (a fork)."""
    user = Author(USERS[0])
    first = grant(user)
    twin = Author(USERS[0])
    twin.seq, twin.prev = user.seq, user.prev
    to_w0 = user.append(Transfer(pub(WORKERS[0]), 100))
    to_w1 = twin.append(Transfer(pub(WORKERS[1]), 100))
    return [first], to_w0, to_w1


def double_grant() -> tuple[list[Entry], Entry, Entry]:
    """A user's two starting grants at seq 1, vouched for by two coordinators (a fork at seq 1)."""
    return (
        [],
        grant(Author(USERS[1]), voucher_key=COORDINATOR),
        grant(Author(USERS[1]), voucher_key=OTHER_COORDINATOR),
    )


@pytest.mark.parametrize("third_starts", [True, False], ids=["third-starts", "peer-starts-with-third"])
@pytest.mark.parametrize("peer_starts", [True, False], ids=["peer-starts-with-witness", "witness-starts"])
@pytest.mark.parametrize("fork", [double_spend, double_grant], ids=["double-spend@2", "double-grant@1"])
def test_a_peer_that_synced_with_a_witness_refuses_one_branch_from_a_third_node(
    fork: Callable[[], tuple[list[Entry], Entry, Entry]], peer_starts: bool, third_starts: bool
) -> None:
    prefix, branch_a, branch_b = fork()
    author = pub(USERS[0]) if fork is double_spend else pub(USERS[1])
    witness = witness_of(prefix, branch_a, branch_b, LedgerState.from_genesis(GENESIS))
    third = LedgerState.from_genesis(GENESIS)  # saw branch A only
    for entry in [*prefix, branch_a]:
        third.apply(entry)
    assert not third.frozen()

    # The harm, shown on a peer that never met the witness: it takes branch A from the third node.
    unaware = LedgerState.from_genesis(GENESIS)
    for entry in prefix:
        unaware.apply(entry)
    sync(third, unaware)
    assert branch_a.id in unaware and not unaware.is_frozen(author)

    peer = LedgerState.from_genesis(GENESIS)
    for entry in prefix:
        peer.apply(entry)
    if peer_starts:
        sync(peer, witness)
    else:
        sync(witness, peer)
    assert peer.is_frozen(author)
    before = (peer.balances(), peer.heads())
    if third_starts:
        sync(third, peer)
    else:
        sync(peer, third)
    assert branch_a.id not in peer, "the peer accepted one branch of a fork it had been told of"
    assert (peer.balances(), peer.heads()) == before
    assert peer.balance(pub(WORKERS[0])) == 0 and peer.frozen() == witness.frozen()
    assert unaware.balance(pub(WORKERS[0])) == (100 if fork is double_spend else 0)
    # ...and the third node learned the fork from the peer.
    assert third.frozen() == witness.frozen() and branch_a.id not in third


def keys_below(n: int, first: int, below: bytes = b"\xff" * 32) -> list[nacl.signing.SigningKey]:
    """``n`` test keys whose public keys sort below ``below``."""
    keys = [k for k in map(key, range(first, first + 2 * n + 100)) if pub(k) < below][:n]
    assert len(keys) == n
    return keys


@pytest.mark.parametrize("peer_starts", [True, False], ids=["peer-starts", "witness-starts"])
@pytest.mark.parametrize("held", [0, 1])
def test_a_peer_keeps_the_proof_of_a_user_it_held_nothing_of(peer_starts: bool, held: int) -> None:
    """A user (no minting right) forked at seq 2: a peer that holds nothing of it may get the proof before
    the grant below it; it must end frozen *and* holding the proof, to pass it on in its own syncs."""
    prefix, a, b = double_spend()
    witness = witness_of(prefix, a, b, LedgerState.from_genesis(GENESIS))
    peer = LedgerState.from_genesis(GENESIS)
    for entry in prefix[:held]:
        peer.apply(entry)
    if peer_starts:
        sync(peer, witness)
    else:
        sync(witness, peer)
    user = pub(USERS[0])
    assert peer.frozen() == witness.frozen() == {user: 2}
    assert peer.fork_evidence(user) == witness.fork_evidence(user) is not None
    onward = LedgerState.from_genesis(GENESIS)  # the peer passes it on
    sync(onward, peer)
    assert onward.frozen() == {user: 2} and onward.fork_evidence(user) == witness.fork_evidence(user)


def many_forkers(
    n: int, first: int = 1000, below: bytes = b"\xff" * 32
) -> tuple[list[bytes], list[tuple[Entry, Entry]]]:
    """``n`` coordinators that each forked at seq 1 (minters, so each fork keeps its proof)."""
    keys = keys_below(n, first, below)
    forks = []
    for k in keys:
        _, a, b = forked_chain(k, 1)
        forks.append((a, b))
    return [pub(k) for k in keys], forks


def proofs_in(turns: list[bytes]) -> list[bytes]:
    return [e.id for turn in turns for e in entries_of(decode_turn(turn, NETWORK))]


@pytest.mark.parametrize("peer_starts", [True, False], ids=["peer-starts", "witness-starts"])
def test_proofs_per_session_are_bounded_and_repeated_sessions_cover_them_all(peer_starts: bool) -> None:
    n = 2 * MAX_FORK_PROOFS + 10
    keys, forks = many_forkers(n)
    minters = [*MINTERS, *keys]
    witness = LedgerState(NETWORK, minters)
    for a, b in forks:
        witness_of([], a, b, witness)
    assert len(witness.proven()) == n
    peer = LedgerState(NETWORK, minters)
    witness_index, peer_index = IdIndex(), IdIndex()  # kept across sessions, as the node keeps its own
    sessions = 0
    while len(peer.frozen()) < n:
        sessions += 1
        assert sessions <= 2 * n // MAX_FORK_PROOFS + 2, (
            f"{len(peer.frozen())} of {n} proofs after {sessions}"
        )
        before = len(peer.frozen())
        if peer_starts:
            p, w = SyncSession(peer, peer_index), SyncSession(witness, witness_index)
            turns = run(p, w)
        else:
            w, p = SyncSession(witness, witness_index), SyncSession(peer, peer_index)
            turns = run(w, p)
        sent = [i for i in proofs_in(turns) if witness.known(i) is not None and peer.known(i) is not None]
        assert w.stats.fork_proofs_sent <= MAX_FORK_PROOFS and p.stats.fork_proofs_sent <= MAX_FORK_PROOFS
        assert len(sent) == len(set(sent)), "an entry was sent twice in one session"
        assert len(peer.frozen()) > before, "a session taught the peer nothing: the rotation is stuck"
    assert peer.frozen() == witness.frozen()
    assert sessions >= n // MAX_FORK_PROOFS, "more proofs went in one session than the bound allows"


@pytest.mark.parametrize("peer_starts", [True, False], ids=["peer-starts", "witness-starts"])
def test_a_fork_the_peer_partly_holds_goes_before_the_crowd(peer_starts: bool) -> None:
    # The fork that can harm the peer now: a coordinator whose seq 1 the peer holds, forked at seq 2,
    # with a larger key than any of the crowd's (key order alone would send it last).
    victim_key = max((key(5000 + i) for i in range(100)), key=pub)
    keys, forks = many_forkers(2 * MAX_FORK_PROOFS, below=pub(victim_key))
    chain, a, b = forked_chain(victim_key, 2)
    minters = [*MINTERS, *keys, pub(victim_key)]
    witness = LedgerState(NETWORK, minters)
    for x, y in forks:
        witness_of([], x, y, witness)
    witness_of(chain, a, b, witness)
    peer = ledger_of(chain, minters)
    if peer_starts:
        sync(peer, witness)
    else:
        sync(witness, peer)
    assert peer.is_frozen(pub(victim_key))
    assert len(peer.frozen()) <= MAX_FORK_PROOFS


def test_forkers_with_nothing_at_stake_come_after_those_with_stake() -> None:
    """Free-ish keys (a grant spent at once, then a fork of transfers they cannot pay) must not crowd out
    a coordinator's fork: a coordinator mints without a balance."""
    coordinator = max((key(6000 + i) for i in range(100)), key=pub)
    poor_keys = keys_below(MAX_FORK_PROOFS + 8, 2000, pub(coordinator))
    poor = []
    for k in poor_keys:
        user = Author(k)
        entries = [grant(user), user.append(Transfer(pub(WORKERS[0]), 100))]  # spent: balance 0
        twin = Author(k)
        twin.seq, twin.prev = user.seq, user.prev
        poor.append(
            (entries, user.append(Transfer(pub(WORKERS[1]), 1)), twin.append(Transfer(pub(WORKERS[2]), 1)))
        )
    chain, a, b = forked_chain(coordinator, 2)
    genesis = GENESIS.__class__(NETWORK, (*GENESIS.coordinators, pub(coordinator)), grant_points=100)
    witness = LedgerState.from_genesis(genesis)
    for entries, x, y in poor:
        for entry in entries:
            witness.apply(entry)
        assert witness.apply(x) == []  # waits for points it will never get
        with pytest.raises(InvalidEntryError, match="fork"):
            witness.apply(y)
    witness_of(chain, a, b, witness)
    assert len(witness.proven()) == len(poor) + 1
    assert all(witness.balance(pub(k)) == 0 and witness.is_frozen(pub(k)) for k in poor_keys)
    peer = LedgerState.from_genesis(genesis)
    sync(peer, witness)
    assert peer.is_frozen(pub(coordinator))
    assert len(peer.proven()) <= MAX_FORK_PROOFS


@pytest.mark.parametrize("peer_starts", [True, False], ids=["aware-starts", "witness-starts"])
def test_a_proof_the_peer_sent_is_not_sent_back(peer_starts: bool) -> None:
    chain, a, b = forked_chain(COORDINATOR, 1)
    witness = witness_of(chain, a, b)
    aware = witness_of(chain, a, b)
    if peer_starts:
        first, second = sync(aware, witness)
    else:
        first, second = sync(witness, aware)
    assert first.stats.fork_proofs_sent == 1  # the initiator cannot know the peer knows
    assert second.stats.fork_proofs_sent == 0


def test_proof_bytes_per_session_are_bounded_too() -> None:
    """Proofs of large entries (evidence naming 256 workers, about 9 KB each) stop at 1 MiB a session,
    before the count bound, and the rotation still covers them all."""
    workers = tuple(pub(key(20_000 + i)) for i in range(256))
    keys = keys_below(MAX_FORK_PROOFS + 6, 3000)
    witness = LedgerState(NETWORK, [*MINTERS, *map(pub, keys)])
    peer = LedgerState(NETWORK, [*MINTERS, *map(pub, keys)])
    for k in keys:
        a, b = (
            Author(k).append(Evidence(job_id(1), valid=workers)),
            Author(k).append(Evidence(job_id(2), timeout=workers)),
        )
        witness_of([], a, b, witness)
    proofs = [witness.fork_evidence(author) or () for author in witness.proven()]
    assert sum(len(encode_entry(e)) for proof in proofs for e in proof) > MAX_FORK_PROOF_BYTES
    index = IdIndex()
    sessions = 0
    while len(peer.frozen()) < len(keys):
        sessions += 1
        assert sessions <= 4, f"{len(peer.frozen())} of {len(keys)} proofs after {sessions} sessions"
        p, w = SyncSession(peer), SyncSession(witness, index)
        run(p, w)
        # What the witness sent: the stats count its bytes of entries, proofs being all it had to send.
        assert 0 < w.stats.entry_bytes_sent <= MAX_FORK_PROOF_BYTES
        assert 0 < w.stats.fork_proofs_sent < MAX_FORK_PROOFS
    assert peer.frozen() == witness.frozen() and sessions == 2


@pytest.mark.parametrize("peer_starts", [True, False], ids=["peer-starts", "witness-starts"])
def test_one_point_passed_along_many_keys_does_not_hide_a_coordinators_fork(peer_starts: bool) -> None:
    """The cheap crowd: one grant passed along a chain of fresh keys gives each standing and an entry every
    peer holds, and leaves each nothing; each then forks. A coordinator that forked at seq 1 (no peer
    holds any of its chain) with the largest key must still get its proof through in one session."""
    coordinator = max((key(7000 + i) for i in range(100)), key=pub)
    crowd = keys_below(MAX_FORK_PROOFS + 8, 4000, pub(coordinator))
    genesis = GENESIS.__class__(NETWORK, (*GENESIS.coordinators, pub(coordinator)), grant_points=100)
    first = Author(crowd[0])
    chain = [grant(first), first.append(Transfer(pub(crowd[1]), 100))]
    forks = []
    for i, k in enumerate(crowd[1:], start=1):
        holder, twin = Author(k), Author(k)
        payment = holder.append(Transfer(pub(crowd[(i + 1) % len(crowd)]), 100))
        twin.seq, twin.prev = holder.seq, holder.prev
        chain.append(payment)
        forks.append((holder.append(Transfer(pub(WORKERS[0]), 1)), twin.append(Transfer(pub(WORKERS[1]), 1))))
    _, a, b = forked_chain(coordinator, 1)
    witness = LedgerState.from_genesis(genesis)
    peer = LedgerState.from_genesis(genesis)
    for entry in chain:
        witness.apply(entry)
        peer.apply(entry)
    for x, y in forks:
        witness.apply(x)
        with pytest.raises(InvalidEntryError, match="fork"):
            witness.apply(y)
    witness_of([], a, b, witness)
    poor = [pub(k) for k in crowd[1:-1]]  # the last one holds the point when the chain ends
    assert all(witness.is_frozen(k) and witness.balance(k) == 0 and k in peer.heads() for k in poor)
    assert len(poor) > MAX_FORK_PROOFS and pub(coordinator) in witness.proven()
    if peer_starts:
        sync(peer, witness)
    else:
        sync(witness, peer)
    assert peer.is_frozen(pub(coordinator))


def test_peers_taking_turns_each_get_every_proof() -> None:
    """The rotation is per peer: one cursor shared by two peers taking turns would give each only every
    other slice of the proofs (with an even number of slices, never the rest)."""
    n = 8 * (MAX_FORK_PROOFS // 2)  # 8 slices of the witness's opening push: an even number
    keys, forks = many_forkers(n)
    minters = [*MINTERS, *keys]
    witness = LedgerState(NETWORK, minters)
    for a, b in forks:
        witness_of([], a, b, witness)
    peers = {"peer-1": LedgerState(NETWORK, minters), "peer-2": LedgerState(NETWORK, minters)}
    index = IdIndex()  # the witness's, shared by all its sessions as a node shares it
    for _ in range(n // (MAX_FORK_PROOFS // 2)):
        for name, ledger in peers.items():
            run(SyncSession(witness, index, peer=name), SyncSession(ledger))
    assert all(ledger.frozen() == witness.frozen() for ledger in peers.values())

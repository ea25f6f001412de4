"""The coordinator machine fed scripted events, with real keys, real WorkerLogic and explicit time."""

from __future__ import annotations

from collections.abc import Callable

import msgspec
import pytest
from grid_harness import (
    CONTRACT,
    HONEST,
    NETWORK,
    OFFERS,
    Grid,
    cheat,
    dispatches,
    finished,
    job_id,
    of_type,
    open_receipt,
    replace_result,
    signing_key,
)
from opengrid_ledger import Evidence, LedgerState, decode_entry, encode_entry, open_entry, sign_attestation

from opengrid.core.effects import (
    AppendEntry,
    CancelReplica,
    DispatchReplica,
    Effect,
    FinishJob,
    Penalize,
    SendReceipt,
)
from opengrid.core.events import WorkerRegistered
from opengrid.core.worker import WorkerLogic
from opengrid.errors import InvalidEntryError
from opengrid.wire.commitment import commit_output
from opengrid.wire.contract import DecodingContract
from opengrid.wire.messages import ErrorReply, JobAccepted, ModelOffer, ReplicaResult

# ── the happy path ──────────────────────────────────────────────────────────────────────────────────


def test_submit_dispatches_the_job_to_distinct_workers_under_the_pinned_contract() -> None:
    grid = Grid(n=4)
    grid.register()
    effects = grid.submit(replicas=3, max_tokens=16)

    sent = dispatches(effects)
    assert effects == sent  # nothing else happens yet
    assert len({d.peer for d in sent}) == 3
    assert {d.peer for d in sent} <= set(grid.workers)
    for dispatch in sent:
        assert dispatch.run.job_id == job_id(1)
        assert dispatch.run.contract == CONTRACT
        assert (dispatch.run.prompt, dispatch.run.max_tokens) == ("Once upon a time", 16)


def test_two_honest_workers_are_accepted_and_credited_in_a_signed_receipt() -> None:
    grid = Grid(n=2)
    grid.register()
    first, second = dispatches(grid.submit(replicas=2))

    assert grid.answer(first, HONEST) == []  # one result of two: keep waiting
    effects = grid.answer(second, HONEST)

    assert [type(e) for e in effects] == [AppendEntry, SendReceipt, SendReceipt, FinishJob]
    reply = finished(effects)
    assert isinstance(reply, JobAccepted)
    assert (reply.tokens, reply.text, reply.finish_reason) == (list(HONEST.tokens), HONEST.text, "length")
    assert reply.workers == ["w0", "w1"]
    assert (reply.dissenters, reply.failed) == ([], [])

    author, receipt = open_receipt(reply.receipt)
    assert author == grid.coordinator.public_key
    assert receipt.job_id == job_id(1)
    assert receipt.contract_hash == CONTRACT.digest()
    assert receipt.output_commitment == commit_output(HONEST.tokens, HONEST.text)
    assert receipt.n_tokens == len(HONEST.tokens)
    assert {c.account: c.points for c in receipt.credits} == {grid.key("w0"): 5, grid.key("w1"): 5}
    assert {a.worker for a in receipt.attestations} == {grid.key("w0"), grid.key("w1")}
    assert receipt.dissenters == ()

    (append,) = of_type(effects, AppendEntry)
    assert append.entry == decode_entry(reply.receipt)
    assert sorted(s.peer for s in of_type(effects, SendReceipt)) == ["w0", "w1"]
    assert grid.coordinator.ledger.balance(grid.key("w0")) == 5
    assert grid.coordinator.ledger.balance(grid.key("w1")) == 5
    assert grid.coordinator.active_jobs == 0


def test_a_credited_worker_stores_its_receipt_and_sees_the_same_balance() -> None:
    grid = Grid(n=2)
    grid.register()
    first, second = dispatches(grid.submit())
    grid.answer(first, HONEST)
    effects = grid.answer(second, HONEST)

    for notice in of_type(effects, SendReceipt):
        worker = grid.workers[notice.peer]
        applied = worker.receive_entries(notice.notice.entries)
        assert [e.id for e in applied] == [e.id for e in grid.coordinator.ledger.entries()]
        assert worker.ledger.balance(worker.public_key) == 5
        assert worker.ledger.balances() == grid.coordinator.ledger.balances()


def test_a_worker_that_does_not_trust_the_coordinator_refuses_its_receipts() -> None:
    grid = Grid(n=2)
    grid.register()
    first, second = dispatches(grid.submit())
    grid.answer(first, HONEST)
    notice = of_type(grid.answer(second, HONEST), SendReceipt)[0].notice
    stranger = WorkerLogic(
        network=NETWORK, signing_key=signing_key("x"), offers=OFFERS, ledger=LedgerState(NETWORK)
    )

    with pytest.raises(InvalidEntryError):
        stranger.receive_entries(notice.entries)
    assert stranger.ledger.balances() == {}


def test_receipt_notices_fill_the_gap_in_each_workers_copy_of_the_chain() -> None:
    grid = Grid(n=3)
    grid.register()
    sent_so_far: dict[str, int] = {}
    sizes = []
    for job in (1, 2, 3):
        effects = grid.submit(job)
        effects += grid.play(effects, [HONEST, HONEST])
        chain = [encode_entry(e) for e in grid.coordinator.ledger.entries()]
        for send in of_type(effects, SendReceipt):
            # Exactly the coordinator's entries this worker has not been sent yet, oldest first.
            assert send.notice.entries == chain[sent_so_far.get(send.peer, 0) :]
            sent_so_far[send.peer] = len(chain)
            sizes.append(len(send.notice.entries))
            grid.workers[send.peer].receive_entries(send.notice.entries)

    assert max(sizes) > 1  # this seed credits some worker after it missed a job: the gap case ran
    for peer, worker in grid.workers.items():
        assert len(worker.ledger) == sent_so_far.get(peer, 0)
        assert worker.ledger.pending() == []
        assert worker.ledger.balance(worker.public_key) == grid.coordinator.ledger.balance(worker.public_key)


def test_three_replicas_accept_on_two_agreeing_and_cancel_the_third() -> None:
    grid = Grid(n=3)
    grid.register()
    first, second, third = dispatches(grid.submit(replicas=3))
    grid.answer(first, HONEST)
    effects = grid.answer(second, HONEST)

    assert of_type(effects, CancelReplica) == [CancelReplica(peer=third.peer, job_id=job_id(1))]
    reply = finished(effects)
    assert isinstance(reply, JobAccepted)
    assert reply.workers == sorted([first.peer, second.peer])
    assert grid.answer(third, HONEST, now=2.0) == []  # late answer to a settled job
    assert grid.coordinator.ledger.balance(grid.key(third.peer)) == 0


def test_zero_tokens_still_earn_one_point() -> None:
    grid = Grid(n=2)
    grid.register()
    first, second = dispatches(grid.submit())
    empty = type(HONEST)(tokens=(), text="", finish_reason="stop")
    grid.answer(first, empty)
    reply = finished(grid.answer(second, empty))
    assert isinstance(reply, JobAccepted)
    _, receipt = open_receipt(reply.receipt)
    assert receipt.n_tokens == 0
    assert {c.points for c in receipt.credits} == {1}


# ── cheaters, failures and forged results ──────────────────────────────────────────────────────────


def test_a_cheater_is_outvoted_penalized_and_credited_nothing() -> None:
    grid = Grid(n=3)
    grid.register()
    honest, cheater = dispatches(grid.submit())
    assert grid.answer(honest, HONEST) == []
    effects = grid.answer(cheater, cheat())

    (extra,) = dispatches(effects)
    assert effects == [extra]
    assert extra.peer not in {honest.peer, cheater.peer}

    effects = grid.answer(extra, HONEST)
    reply = finished(effects)
    assert isinstance(reply, JobAccepted)
    assert reply.workers == sorted([honest.peer, extra.peer])
    assert reply.dissenters == [cheater.peer]
    assert reply.tokens == list(HONEST.tokens)
    assert Penalize(peer=cheater.peer, why="output disagreed with the majority") in effects
    assert cheater.peer not in {s.peer for s in of_type(effects, SendReceipt)}

    _, receipt = open_receipt(reply.receipt)
    assert {c.account for c in receipt.credits} == {grid.key(honest.peer), grid.key(extra.peer)}
    assert receipt.dissenters == (grid.key(cheater.peer),)
    assert grid.coordinator.ledger.balance(grid.key(cheater.peer)) == 0
    assert grid.coordinator.ledger.balance(grid.key(honest.peer)) == 5


def test_a_failed_replica_is_replaced_and_listed_as_failed() -> None:
    grid = Grid(n=3)
    grid.register()
    broken, healthy = dispatches(grid.submit())
    effects = grid.fail(broken)

    (replacement,) = dispatches(effects)
    assert effects == [replacement]
    assert replacement.peer not in {broken.peer, healthy.peer}
    grid.answer(healthy, HONEST)
    reply = finished(grid.answer(replacement, HONEST))

    assert isinstance(reply, JobAccepted)
    assert reply.failed == [broken.peer]
    assert reply.workers == sorted([healthy.peer, replacement.peer])
    assert grid.coordinator.ledger.balance(grid.key(broken.peer)) == 0


def test_a_failed_worker_gets_no_new_work_until_it_registers_again() -> None:
    grid = Grid(n=3, slots=8)  # room for every job at once: no queueing here
    grid.register()
    broken, _ = dispatches(grid.submit(1))
    grid.fail(broken)

    for job in (2, 3, 4, 5):
        assert broken.peer not in {d.peer for d in dispatches(grid.submit(job, now=2.0))}
    reply = finished(grid.submit(6, replicas=3, now=2.0))
    assert isinstance(reply, ErrorReply)
    assert reply.code == "no_capacity"

    grid.register(broken.peer, now=3.0)
    assert len(dispatches(grid.submit(7, replicas=3, now=3.0))) == 3


def _other_key(grid: Grid, dispatch: DispatchReplica, result: ReplicaResult) -> ReplicaResult:
    """A correct answer, attested by a key that is not the registered worker's."""
    forger = WorkerLogic(
        network=NETWORK, signing_key=signing_key("forger"), offers=OFFERS, ledger=LedgerState(NETWORK)
    )
    return forger.attest(dispatch.run, HONEST)


def _signature_by_other_key(grid: Grid, dispatch: DispatchReplica, result: ReplicaResult) -> ReplicaResult:
    """Claims to be the worker's attestation but is signed by someone else."""
    forged = sign_attestation(
        signing_key("forger"),
        NETWORK,
        dispatch.run.job_id,
        CONTRACT.digest(),
        commit_output(HONEST.tokens, HONEST.text),
        len(HONEST.tokens),
    )
    forged = msgspec.structs.replace(forged, worker=grid.key(dispatch.peer))
    return replace_result(result, attestation=msgspec.msgpack.encode(forged))


def _attestation_for_another_job(
    grid: Grid, dispatch: DispatchReplica, result: ReplicaResult
) -> ReplicaResult:
    """The worker's genuine attestation of the same output, but for another job id."""
    other = DispatchReplica(dispatch.peer, msgspec.structs.replace(dispatch.run, job_id=job_id(9)))
    return replace_result(result, attestation=grid.result(other, HONEST).attestation)


Tampering = Callable[[Grid, DispatchReplica, ReplicaResult], ReplicaResult]

TAMPERINGS: dict[str, Tampering] = {
    "attested by another key": _other_key,
    "signature by another key": _signature_by_other_key,
    "tokens differ from the commitment": lambda g, d, r: replace_result(r, tokens=[7, 7, 7, 7, 7]),
    "text differs from the commitment": lambda g, d, r: replace_result(r, text=" the quick brown wolf"),
    "token count differs": lambda g, d, r: replace_result(r, tokens=[*r.tokens, 1]),
    "attestation is garbage": lambda g, d, r: replace_result(r, attestation=b"\x93\x01\x02"),
    "attestation for another job": _attestation_for_another_job,
}


@pytest.mark.parametrize("tamper", TAMPERINGS.values(), ids=TAMPERINGS.keys())
def test_a_result_that_fails_its_checks_is_penalized_replaced_and_never_credited(tamper: Tampering) -> None:
    grid = Grid(n=3)
    grid.register()
    honest, forger = dispatches(grid.submit())
    grid.answer(honest, HONEST)
    effects = grid.deliver(forger, tamper(grid, forger, grid.result(forger, HONEST)))

    assert [type(e) for e in effects] == [Penalize, DispatchReplica]
    assert [p.peer for p in of_type(effects, Penalize)] == [forger.peer]
    (replacement,) = dispatches(effects)
    assert replacement.peer not in {honest.peer, forger.peer}

    reply = finished(grid.answer(replacement, HONEST))
    assert isinstance(reply, JobAccepted)
    assert reply.workers == sorted([honest.peer, replacement.peer])
    assert (reply.tokens, reply.text) == (list(HONEST.tokens), HONEST.text)
    assert reply.failed == [forger.peer]
    assert grid.coordinator.ledger.balance(grid.key(forger.peer)) == 0
    assert grid.coordinator.ledger.balance(bytes(signing_key("forger").verify_key)) == 0


def test_two_workers_agreeing_on_tokens_their_attestations_do_not_cover_are_never_accepted() -> None:
    grid = Grid(n=2)
    grid.register()
    first, second = dispatches(grid.submit())
    effects: list[Effect] = []
    for dispatch in (first, second):
        effects += grid.deliver(
            dispatch, replace_result(grid.result(dispatch, HONEST), tokens=[6, 6, 6, 6, 6])
        )

    assert [p.peer for p in of_type(effects, Penalize)] == [first.peer, second.peer]
    reply = finished(effects)
    assert isinstance(reply, ErrorReply)
    # no receipt: the only entry is the evidence that both failed their checks (persisted reputation)
    [appended] = of_type(effects, AppendEntry)
    evidence = open_entry(appended.entry, NETWORK).payload
    assert isinstance(evidence, Evidence)
    assert set(evidence.invalid) == {grid.key(first.peer), grid.key(second.peer)} and not evidence.timeout
    assert len(grid.coordinator.ledger) == 1 and grid.coordinator.ledger.minted() == 0


# ── typed errors for requests that cannot run ──────────────────────────────────────────────────────


def test_unknown_model_is_refused_with_the_models_served() -> None:
    grid = Grid(n=2)
    grid.register()
    effects = grid.submit(model="llama-70b")

    assert len(effects) == 1 and isinstance(effects[0], FinishJob)
    reply = effects[0].reply
    assert isinstance(reply, ErrorReply)
    assert (reply.code, reply.job_id) == ("unknown_model", job_id(1))
    assert "llama-70b" in reply.message and "tiny" in reply.message
    assert grid.coordinator.active_jobs == 0


def test_model_can_be_named_by_its_sha256_in_any_case() -> None:
    grid = Grid(n=2)
    grid.register()
    assert len(dispatches(grid.submit(model="AB" * 32))) == 2


def test_more_replicas_than_workers_is_no_capacity() -> None:
    grid = Grid(n=2)
    grid.register()
    reply = finished(grid.submit(replicas=3))
    assert isinstance(reply, ErrorReply)
    assert reply.code == "no_capacity"
    assert "3" in reply.message and "2" in reply.message
    assert grid.coordinator.active_jobs == 0


def test_a_job_id_in_flight_or_already_credited_cannot_be_reused() -> None:
    grid = Grid(n=2)
    grid.register()
    first, second = dispatches(grid.submit(1))

    again = grid.submit(1)
    assert [type(e) for e in again] == [FinishJob]
    assert isinstance(finished(again), ErrorReply)

    grid.answer(first, HONEST)
    assert isinstance(finished(grid.answer(second, HONEST)), JobAccepted)  # the first job is undisturbed
    after = finished(grid.submit(1, now=2.0))
    assert isinstance(after, ErrorReply)
    assert after.job_id == job_id(1)


def test_one_worker_announcing_a_model_twice_is_still_one_worker() -> None:
    grid = Grid(n=1)
    worker = grid.workers["w0"]
    twice = (ModelOffer(name="tiny", contract=CONTRACT), ModelOffer(name="tiny", contract=CONTRACT))
    grid.coordinator.handle(WorkerRegistered("w0", worker.public_key, twice), 0.0)

    reply = finished(grid.submit(replicas=2))
    assert isinstance(reply, ErrorReply)
    assert reply.code == "no_capacity"


def test_workers_of_another_numerical_class_are_never_mixed_into_a_job() -> None:
    grid = Grid(n=5)
    other = (ModelOffer(name="tiny", contract=DecodingContract(model_sha256="ab" * 32, flash_attn=True)),)
    for peer in ("w0", "w1"):
        grid.coordinator.handle(WorkerRegistered(peer, grid.key(peer), other), 0.0)
    grid.register("w2", "w3", "w4")

    effects = grid.submit(replicas=2)
    sent = dispatches(effects)
    assert {d.peer for d in sent} <= {"w2", "w3", "w4"}
    effects += grid.play(effects, [HONEST, cheat(1), cheat(2)])
    assert {d.peer for d in dispatches(effects)} == {"w2", "w3", "w4"}
    assert isinstance(finished(effects), ErrorReply)

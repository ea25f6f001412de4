"""Failover beyond timeouts: client cancel, restart with persisted jobs, operators, measured speed."""

from __future__ import annotations

import random

from grid_harness import HONEST, NETWORK, Grid, dispatches, finished, honest, job_id, of_type, signing_key

from opengrid.core.coordinator import Coordinator, CoordinatorConfig
from opengrid.core.effects import AppendEntry, CancelReplica, FinishJob
from opengrid.core.events import JobCancelled, JobSubmitted
from opengrid.wire.messages import ErrorReply, JobAccepted, SubmitJob

CONFIG = CoordinatorConfig(verify="replicate", canary_rate=0.0, heartbeat_s=5.0)

# ── cancel ──────────────────────────────────────────────────────────────────────────────────────────


def test_cancel_stops_the_work_answers_once_and_credits_nobody() -> None:
    grid = Grid(n=3, config=CONFIG)
    grid.register()
    first, second, third = dispatches(grid.submit(replicas=3))
    grid.answer(first, HONEST)

    effects = grid.coordinator.handle(JobCancelled(job_id(1), client="client"), 2.0)

    assert sorted(of_type(effects, CancelReplica), key=lambda c: c.peer) == sorted(
        [CancelReplica(second.peer, job_id(1)), CancelReplica(third.peer, job_id(1))], key=lambda c: c.peer
    )
    reply = finished(effects)
    assert isinstance(reply, ErrorReply)
    assert (reply.code, reply.job_id) == ("malformed", job_id(1))
    assert "cancelled" in reply.message
    assert grid.answer(second, HONEST, now=3.0) == []  # late: nothing happens
    assert grid.coordinator.handle(JobCancelled(job_id(1), client="client"), 3.0) == []  # once only
    assert len(grid.coordinator.ledger) == 0
    assert grid.coordinator.active_jobs == 0


def test_only_the_submitter_may_cancel_and_unknown_ids_are_ignored() -> None:
    grid = Grid(n=2, config=CONFIG)
    grid.register()
    first, second = dispatches(grid.submit())
    assert grid.coordinator.handle(JobCancelled(job_id(1), client="someone else"), 1.0) == []
    assert grid.coordinator.handle(JobCancelled(job_id(7)), 1.0) == []
    grid.answer(first, HONEST)
    assert isinstance(finished(grid.answer(second, HONEST)), JobAccepted)
    assert grid.coordinator.handle(JobCancelled(job_id(1)), 2.0) == []  # settled


# ── restart: snapshot and resume ────────────────────────────────────────────────────────────────────


def test_jobs_in_flight_survive_a_coordinator_restart() -> None:
    grid = Grid(n=3, config=CONFIG)
    grid.register()
    done = grid.run_job(1, honest)
    assert isinstance(finished(done), JobAccepted)
    grid.submit(2, now=2.0)
    grid.submit(3, now=2.0, replicas=3)
    saved = grid.coordinator.snapshot()
    assert [event.request.job_id for event in saved] == [job_id(2), job_id(3)]
    assert all(event.client == "client" for event in saved)

    restarted = Coordinator(
        network=NETWORK,
        signing_key=signing_key("coordinator"),
        ledger=grid.coordinator.ledger,
        rng=random.Random(3),
        config=CONFIG,
    )
    grid.coordinator = restarted
    credited = SubmitJob(job_id=job_id(1), model="tiny", prompt="prompt 1", max_tokens=16)
    already = JobSubmitted("client", credited)
    assert restarted.resume([*saved, already], now=100.0) == []  # waits a heartbeat for workers
    assert restarted.next_deadline() == 105.0
    assert [e.request.job_id for e in restarted.snapshot()] == [job_id(2), job_id(3)]  # job 1 has a receipt
    grid.register(now=101.0)

    effects = restarted.on_timer(105.0)
    assert sorted({d.run.job_id for d in dispatches(effects)}) == [job_id(2), job_id(3)]
    effects += grid.drive(effects, honest, now=106.0)
    replies = {e.job_id: e.reply for e in of_type(effects, FinishJob)}
    assert set(replies) == {job_id(2), job_id(3)}
    assert all(isinstance(reply, JobAccepted) for reply in replies.values())
    assert len(of_type(effects, AppendEntry)) == 2
    assert restarted.snapshot() == []


def test_resume_at_once_and_cancel_of_a_resumed_job() -> None:
    grid = Grid(n=2, config=CONFIG)
    grid.register()
    grid.submit(1)
    grid.submit(2)
    saved = grid.coordinator.snapshot()
    fresh = Grid(n=2, config=CONFIG)
    fresh.register()
    assert fresh.coordinator.resume(saved[1:], now=1.0) == []
    effects = fresh.coordinator.handle(JobCancelled(job_id(2)), 2.0)
    assert [type(e) for e in effects] == [FinishJob]
    assert fresh.coordinator.snapshot() == []
    now = fresh.coordinator.resume(saved[:1], now=3.0, delay_s=0)
    assert {d.run.job_id for d in dispatches(now)} == {job_id(1)}
    assert fresh.coordinator.resume(saved[:1], now=4.0, delay_s=0) == []  # in flight already


# ── operators and measured speed ────────────────────────────────────────────────────────────────────


def test_replicas_and_their_replacements_go_to_distinct_operators() -> None:
    operators = {"w0": "10.0.0.1", "w1": "10.0.0.1", "w2": "10.0.0.2", "w3": "10.0.0.3", "w4": ""}
    grid = Grid(n=5, config=CONFIG, operators=operators)
    grid.register()
    for job in range(1, 60):
        effects = grid.submit(job, replicas=3, now=float(job))
        first = dispatches(effects)
        effects += grid.fail(first[0], now=job + 0.1)
        grid.register(now=job + 0.2)
        peers = [d.peer for d in dispatches(effects)]
        named = [operators[p] for p in peers if operators[p]]
        assert len(named) == len(set(named)), peers
        effects += grid.drive(effects[len(first) :], honest, now=job + 0.3)
        effects += grid.drive(first[1:], honest, now=job + 0.3)
    shared = Grid(n=2, config=CONFIG, operators={"w0": "x", "w1": "x"})
    shared.register()
    refused = finished(shared.submit(replicas=2))
    assert isinstance(refused, ErrorReply) and refused.code == "no_capacity"
    assert "distinct operators" in refused.message


def test_speed_is_measured_on_verified_results_only() -> None:
    grid = Grid(n=3, config=CONFIG)
    grid.register()
    first, second = dispatches(grid.submit(now=0.0))
    grid.answer(first, HONEST, now=0.5)
    grid.answer(second, HONEST, now=2.5)
    speeds = {p: r.tokens_per_s for p, r in grid.coordinator.workers.items()}
    assert speeds[first.peer] == 10.0 and speeds[second.peer] == 2.0
    grid.register(now=3.0)  # a heartbeat keeps what was measured
    assert grid.coordinator.workers[first.peer].tokens_per_s == 10.0

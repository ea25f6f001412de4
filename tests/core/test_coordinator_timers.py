"""Time and termination: timeouts, silent workers, next_deadline, unresolvable disagreement, determinism."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest
from grid_harness import HONEST, Grid, cheat, dispatches, finished, job_id, of_type, scripted_run

from opengrid.core.coordinator import CoordinatorConfig
from opengrid.core.effects import AppendEntry, CancelReplica, DispatchReplica, Effect, FinishJob
from opengrid.core.worker import Output
from opengrid.wire.messages import ErrorReply, JobAccepted

ROOT = pathlib.Path(__file__).resolve().parents[2]
CONFIG = CoordinatorConfig(
    verify="replicate", heartbeat_s=5.0, replica_timeout_s=10.0, job_timeout_s=30.0, max_extra_replicas=2
)


def test_an_overdue_replica_is_cancelled_and_replaced() -> None:
    grid = Grid(n=3, config=CONFIG)
    grid.register()
    quick, slow = dispatches(grid.submit(now=0.0))
    assert grid.answer(quick, HONEST, now=1.0) == []

    assert grid.coordinator.on_timer(9.999) == []
    effects = grid.coordinator.on_timer(10.0)

    assert [type(e) for e in effects] == [CancelReplica, DispatchReplica]
    assert effects[0] == CancelReplica(peer=slow.peer, job_id=job_id(1))
    (replacement,) = dispatches(effects)
    assert replacement.peer not in {quick.peer, slow.peer}
    assert grid.answer(slow, HONEST, now=10.5) == []  # too late: it was given up on

    reply = finished(grid.answer(replacement, HONEST, now=11.0))
    assert isinstance(reply, JobAccepted)
    assert reply.workers == sorted([quick.peer, replacement.peer])
    assert reply.failed == [slow.peer]


def test_a_job_not_verified_in_time_fails_with_verification_failed() -> None:
    config = CoordinatorConfig(
        verify="replicate", heartbeat_s=100.0, replica_timeout_s=60.0, job_timeout_s=30.0
    )
    grid = Grid(n=2, config=config)
    grid.register()
    first, second = dispatches(grid.submit(now=0.0))
    grid.answer(first, HONEST, now=1.0)

    assert grid.coordinator.on_timer(29.9) == []
    effects = grid.coordinator.on_timer(30.0)

    assert effects[:-1] == [CancelReplica(peer=second.peer, job_id=job_id(1))]
    reply = finished(effects)
    assert isinstance(reply, ErrorReply)
    assert (reply.code, reply.job_id) == ("verification_failed", job_id(1))
    assert grid.coordinator.active_jobs == 0
    assert grid.answer(second, HONEST, now=31.0) == []
    assert len(grid.coordinator.ledger) == 0


def test_a_worker_silent_for_three_heartbeats_gets_no_new_work() -> None:
    grid = Grid(n=3, config=CONFIG, slots=8)  # room for every job at once: no queueing here
    grid.register(now=0.0)
    grid.register("w1", "w2", now=10.0)  # w0 never beats again

    grid.coordinator.on_timer(14.9)
    assert grid.coordinator.workers["w0"].online  # under three heartbeats: not yet silent
    grid.coordinator.on_timer(15.0)  # three heartbeats missed: offline exactly at its deadline
    assert not grid.coordinator.workers["w0"].online
    assert grid.coordinator.workers["w1"].online

    for job in range(1, 6):
        assert {d.peer for d in dispatches(grid.submit(job, now=15.5))} == {"w1", "w2"}
    reply = finished(grid.submit(9, replicas=3, now=15.5))
    assert isinstance(reply, ErrorReply)
    assert reply.code == "no_capacity"

    grid.register("w0", now=16.0)  # back from the dead
    assert len(dispatches(grid.submit(10, replicas=3, now=16.0))) == 3


def test_next_deadline_is_the_earliest_timer() -> None:
    grid = Grid(n=2, config=CONFIG)
    assert grid.coordinator.next_deadline() is None

    grid.register(now=0.0)
    assert grid.coordinator.next_deadline() == 15.0  # worker silence

    grid.submit(now=2.0)
    assert grid.coordinator.next_deadline() == 12.0  # replica timeout (job deadline is 32)

    grid.register(now=8.0)
    grid.coordinator.on_timer(12.0)  # both replicas time out; no worker is left to replace them
    assert grid.coordinator.active_jobs == 0
    assert grid.coordinator.next_deadline() is None  # failed workers are offline until they beat


def test_next_deadline_includes_the_job_deadline() -> None:
    config = CoordinatorConfig(
        verify="replicate", heartbeat_s=100.0, replica_timeout_s=60.0, job_timeout_s=30.0
    )
    grid = Grid(n=2, config=config)
    grid.register(now=0.0)
    grid.submit(now=5.0)
    assert grid.coordinator.next_deadline() == 35.0


def test_on_timer_at_next_deadline_always_makes_progress() -> None:
    grid = Grid(n=1, config=CONFIG)
    grid.register(now=0.0)
    deadline = grid.coordinator.next_deadline()
    assert deadline is not None
    grid.coordinator.on_timer(deadline)
    after = grid.coordinator.next_deadline()
    assert after is None or after > deadline


# ── disagreement that never resolves ────────────────────────────────────────────────────────────────


def run_until_finished(grid: Grid, effects: list[Effect], outputs: list[Output]) -> tuple[list[Effect], int]:
    """Answer every dispatch, then let time pass deadline by deadline until the job is finished."""
    effects = effects + grid.play(effects, outputs, now=1.0)
    timer_calls = 0
    while finished(effects) is None:
        deadline = grid.coordinator.next_deadline()
        assert deadline is not None, "job neither finished nor scheduled to time out"
        grid.register(now=deadline)  # workers keep beating while we wait
        effects += grid.coordinator.on_timer(deadline + 0.001)
        timer_calls += 1
        assert timer_calls < 50
    return effects, timer_calls


@pytest.mark.parametrize("n", [3, 4, 6])
def test_endless_disagreement_fails_without_a_receipt_after_bounded_dispatches(n: int) -> None:
    grid = Grid(n=n, config=CONFIG)
    grid.register()
    effects, _ = run_until_finished(grid, grid.submit(replicas=2), [cheat(i) for i in range(n)])

    assert len(dispatches(effects)) <= 2 + CONFIG.max_extra_replicas
    assert len({d.peer for d in dispatches(effects)}) == len(dispatches(effects))
    reply = finished(effects)
    assert isinstance(reply, ErrorReply)
    assert reply.code == "verification_failed"
    assert of_type(effects, AppendEntry) == []
    assert len(grid.coordinator.ledger) == 0
    assert grid.coordinator.active_jobs == 0


def test_disagreement_fails_at_once_when_workers_run_out() -> None:
    grid = Grid(n=3, config=CONFIG)
    grid.register()
    effects = grid.submit(replicas=2)
    effects += grid.play(effects, [cheat(1), cheat(2), cheat(3)])
    reply = finished(effects)
    assert isinstance(reply, ErrorReply)
    assert reply.code == "verification_failed"


@pytest.mark.parametrize(
    "outputs",
    [[cheat(1), cheat(2), cheat(3), cheat(4)], [HONEST, cheat(1), cheat(2), HONEST]],
    ids=["all-different", "two-of-four"],
)
def test_disagreement_fails_as_soon_as_the_extra_replicas_are_spent(outputs: list[Output]) -> None:
    grid = Grid(n=6, config=CONFIG)
    grid.register()
    effects = grid.submit(replicas=2)
    effects += grid.play(effects, outputs)
    assert len(dispatches(effects)) == 4
    reply = finished(effects)
    assert isinstance(reply, ErrorReply)
    assert reply.code == "verification_failed"


def test_too_many_failures_end_the_job() -> None:
    config = CoordinatorConfig(verify="replicate", heartbeat_s=5.0, max_failovers=2)
    grid = Grid(n=6, config=config)
    grid.register()
    effects = grid.submit(replicas=2)
    queue = dispatches(effects)
    while queue and finished(effects) is None:
        more = grid.fail(queue.pop(0))
        effects += more
        queue += dispatches(more)

    reply = finished(effects)
    assert isinstance(reply, ErrorReply)
    assert reply.code == "verification_failed"
    assert len(dispatches(effects)) == 2 + config.max_failovers
    assert grid.coordinator.active_jobs == 0


# ── determinism ─────────────────────────────────────────────────────────────────────────────────────


def test_same_seed_same_script_gives_identical_effects() -> None:
    first, second = scripted_run(seed=3, config=CONFIG), scripted_run(seed=3, config=CONFIG)
    assert first == second
    assert repr(first) == repr(second)  # receipts included: Ed25519 signatures are deterministic
    outcomes = [e.reply for e in first if isinstance(e, FinishJob)]
    assert len(outcomes) == 5
    assert all(isinstance(reply, JobAccepted) for reply in outcomes)


def test_the_seed_decides_which_workers_are_chosen() -> None:
    def peers(seed: int) -> list[str]:
        return [d.peer for d in dispatches(scripted_run(seed, config=CONFIG))]

    assert len({tuple(peers(seed)) for seed in range(6)}) > 1


def test_effects_do_not_depend_on_the_interpreters_hash_seed() -> None:
    """Set iteration order changes with PYTHONHASHSEED; a machine that iterates a set unsorted shows it."""
    script = (
        "import sys; sys.path.insert(0, 'tests/core'); from grid_harness import scripted_run; "
        "print(repr(scripted_run(seed=3)))"
    )
    outputs = {
        subprocess.run(
            [sys.executable, "-c", script],
            cwd=ROOT,
            env={**os.environ, "PYTHONHASHSEED": hash_seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for hash_seed in ("1", "2", "3")
    }
    assert len(outputs) == 1
    assert "JobAccepted" in outputs.pop()

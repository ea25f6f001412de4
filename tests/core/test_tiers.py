"""Tiers in scheduling: a worker's start-up speed is a bounded prior until verified results are measured,
and a worker that takes only short jobs (an edge node) never gets a longer one. Events in, effects out."""

from __future__ import annotations

from collections import Counter

from grid_harness import HONEST, Grid, dispatches, finished

from opengrid.core.coordinator import CoordinatorConfig
from opengrid.core.effects import DispatchReplica
from opengrid.core.events import WorkerRegistered
from opengrid.wire.messages import ErrorReply, JobAccepted

UNWEIGHTED_EXTRAS = CoordinatorConfig(adaptive=False, canary_rate=0.0)
"""Weighted selection on, adaptive replication and canaries off: one dispatch per job."""


def _register(grid: Grid, peer: str, *, probed: float = 0.0, max_job_tokens: int = 0) -> None:
    worker = grid.workers[peer]
    event = WorkerRegistered(
        peer, worker.public_key, worker.offers, probed_tokens_per_s=probed, max_job_tokens=max_job_tokens
    )
    grid.coordinator.handle(event, 0.0)


def test_a_worker_slower_by_its_own_start_up_measure_is_drawn_less_a_faster_claim_gains_nothing() -> None:
    grid = Grid(n=3, config=UNWEIGHTED_EXTRAS)
    _register(grid, "w0", probed=10_000.0)  # claims 100x the others: a cheater would
    _register(grid, "w1", probed=100.0)
    _register(grid, "w2", probed=10.0)  # an honest slow machine
    drawn: Counter[str] = Counter()
    for job in range(1, 401):
        (dispatch,) = dispatches(grid.submit(job, replicas=1))
        drawn[dispatch.peer] += 1
        assert isinstance(finished(grid.answer(dispatch, HONEST)), JobAccepted)
    # weights 1 : 1 : 1/2 against the median claim (100): 40 / 40 / 20 %; the fast claim counts as median
    assert 130 < drawn["w0"] < 190 and 130 < drawn["w1"] < 190, drawn
    assert 40 < drawn["w2"] < 110, drawn  # drawn less, never starved


def test_without_weighting_the_start_up_claim_changes_nothing() -> None:
    grid = Grid(n=3, config=CoordinatorConfig.plain())
    _register(grid, "w0", probed=100.0)
    _register(grid, "w1", probed=10.0)
    _register(grid, "w2", probed=10.0)
    drawn: Counter[str] = Counter()
    for job in range(1, 301):
        (dispatch,) = dispatches(grid.submit(job, replicas=1))
        drawn[dispatch.peer] += 1
        grid.answer(dispatch, HONEST)
    assert all(70 < drawn[p] < 130 for p in ("w0", "w1", "w2")), drawn


def test_an_edge_worker_gets_short_jobs_only() -> None:
    grid = Grid(n=3, config=CoordinatorConfig.plain())
    _register(grid, "w0", max_job_tokens=128)
    _register(grid, "w1")
    _register(grid, "w2")
    for job in range(1, 41):
        effects = grid.submit(job, replicas=2, max_tokens=512)
        sent = dispatches(effects)
        assert {d.peer for d in sent} == {"w1", "w2"}
        for dispatch in sent:
            grid.answer(dispatch, HONEST)
    short = Counter(d.peer for job in range(41, 81) for d in _run(grid, job, max_tokens=64))
    assert short["w0"] > 0  # short jobs still go to the edge worker


def test_a_long_job_only_edge_workers_could_run_is_refused_with_the_limit_to_use() -> None:
    grid = Grid(n=2, config=CoordinatorConfig.plain())
    _register(grid, "w0", max_job_tokens=128)
    _register(grid, "w1", max_job_tokens=96)
    reply = finished(grid.submit(1, replicas=1, max_tokens=512))
    assert isinstance(reply, ErrorReply) and reply.code == "no_capacity"
    assert "at most 128 tokens" in reply.message and "max_tokens <= 128" in reply.message
    assert dispatches(grid.submit(2, replicas=1, max_tokens=128))  # within the limit: it runs


def _run(grid: Grid, job: int, *, max_tokens: int) -> list[DispatchReplica]:
    sent = dispatches(grid.submit(job, replicas=2, max_tokens=max_tokens))
    for dispatch in sent:
        grid.answer(dispatch, HONEST)
    return sent

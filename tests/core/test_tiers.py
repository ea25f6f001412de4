"""Tiers in scheduling: a worker's start-up speed is a bounded prior until verified results are measured,
and a worker that takes only short jobs (an edge node) never gets a longer one. Events in, effects out."""

from __future__ import annotations

from collections import Counter

from grid_harness import HONEST, Grid, dispatches, finished

from opengrid.core.coordinator import CoordinatorConfig
from opengrid.core.effects import DispatchReplica
from opengrid.core.events import WorkerRegistered
from opengrid.wire.messages import ErrorReply, JobAccepted

UNWEIGHTED_EXTRAS = CoordinatorConfig(verify="replicate", adaptive=False, canary_rate=0.0)
"""Weighted selection on, adaptive replication and canaries off: one dispatch per job."""


def _register(grid: Grid, peer: str, *, probed: float = 0.0, max_job_tokens: int = 0) -> None:
    worker = grid.workers[peer]
    event = WorkerRegistered(
        peer, worker.public_key, worker.offers, probed_tokens_per_s=probed, max_job_tokens=max_job_tokens
    )
    grid.coordinator.handle(event, 0.0)


def test_a_worker_slower_by_its_own_start_up_measure_is_drawn_less_a_faster_claim_gains_nothing() -> None:
    grid = Grid(n=4, config=UNWEIGHTED_EXTRAS)
    _register(grid, "w0")
    _register(grid, "w1")
    # w0 and w1 are measured: one job each way, answered 1 s after dispatch
    for dispatch in dispatches(grid.submit(1, replicas=2, now=0.0)):
        grid.answer(dispatch, HONEST, now=1.0)
    measured = len(HONEST.tokens) / 1.0
    _register(grid, "w2", probed=measured / 10)  # an honest slow machine, by its own start-up measure
    _register(grid, "w3", probed=10_000.0)  # claims far more than anyone measured: a cheater would
    drawn: Counter[str] = Counter()
    for job in range(2, 702):
        (dispatch,) = dispatches(grid.submit(job, replicas=1, now=2.0))
        drawn[dispatch.peer] += 1
        assert isinstance(finished(grid.answer(dispatch, HONEST, now=2.0)), JobAccepted)
    # against the MEASURED median, w2's claim counts 1/2 and w3's at most 1: w3 is drawn ~2x as often as
    # w2, and no more than the workers measured at that speed (who also have a head start in reputation)
    assert drawn["w3"] > 1.4 * drawn["w2"], drawn
    assert drawn["w3"] <= 1.2 * max(drawn["w0"], drawn["w1"]), drawn
    assert drawn["w2"] > 40, drawn  # drawn less, never starved


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

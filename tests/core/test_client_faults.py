"""A client's fault is charged to the client, never to the workers (issue 15, item 4).

A prompt too long for the model's context used to come back from every worker as ``engine_error``; the
coordinator took both workers offline and wrote a permanent EVIDENCE "timeout" entry against them, so one
such job every 2 s failed most legitimate jobs. Now a worker answers ``malformed`` (the engine's
``BadRequestError``), the coordinator does not blame it, and the job fails with the client's error once two
workers agree (or none other is left), while a lone refusal by a lazy worker only sends the job elsewhere.
"""

from __future__ import annotations

from grid_harness import HONEST, Grid, dispatches, finished, honest, of_type

from opengrid.core.coordinator import CoordinatorConfig
from opengrid.core.effects import AppendEntry
from opengrid.core.events import ReplicaFailed
from opengrid.wire.messages import MAX_PROMPT_CHARS, ErrorReply, JobAccepted

TOO_LONG = "malformed: prompt (4000 tokens) + max_tokens (16) = 4016 exceeds the context window of 2048"


def refuse(grid: Grid, dispatch: object, *, now: float = 1.0) -> list[object]:
    run = dispatch.run  # type: ignore[attr-defined]
    peer = dispatch.peer  # type: ignore[attr-defined]
    return grid.coordinator.handle(ReplicaFailed(run.job_id, peer, TOO_LONG, client_fault=True), now)


def test_two_workers_refusing_the_input_fail_the_job_without_blaming_either() -> None:
    grid = Grid(n=3, config=CoordinatorConfig.plain())
    grid.register()
    sent = dispatches(grid.submit(1, replicas=2))
    effects = refuse(grid, sent[0]) + refuse(grid, sent[1])
    reply = finished(effects)
    assert isinstance(reply, ErrorReply) and reply.code == "malformed"
    assert "2 worker(s) refused the job's input" in reply.message and "context window" in reply.message
    for dispatch in sent:
        assert grid.coordinator.workers[dispatch.peer].online
        record = grid.coordinator.reputation.get(grid.key(dispatch.peer))
        assert record is None or (record.timeouts, record.invalid) == (0, 0)
    assert not of_type(effects, AppendEntry)  # no EVIDENCE entry against anyone


def test_one_refusal_sends_the_job_to_another_worker_and_it_completes() -> None:
    grid = Grid(n=3, config=CoordinatorConfig.plain())
    grid.register()
    sent = dispatches(grid.submit(1, replicas=2))
    lazy, other = sent
    effects = refuse(grid, lazy)
    fresh = dispatches(effects)
    assert [d.peer for d in fresh] != [lazy.peer] and len(fresh) == 1  # the third worker, not the refuser
    produced = grid.answer(other, HONEST) + grid.answer(fresh[0], HONEST)
    reply = finished(produced)
    assert isinstance(reply, JobAccepted) and sorted(reply.workers) == sorted([other.peer, fresh[0].peer])
    assert grid.coordinator.workers[lazy.peer].online


def test_a_lone_worker_refusing_the_input_fails_it_at_once() -> None:
    grid = Grid(n=1, config=CoordinatorConfig.plain())
    grid.register()
    (sent,) = dispatches(grid.submit(1, replicas=1))
    reply = finished(refuse(grid, sent))
    assert isinstance(reply, ErrorReply) and reply.code == "malformed"
    assert grid.coordinator.workers[sent.peer].online


def test_honest_jobs_keep_running_while_a_client_sends_overlong_prompts() -> None:
    grid = Grid(n=2, config=CoordinatorConfig.plain())
    grid.register()
    served = 0
    for n in range(1, 21):
        if n % 2:  # the attacker's job: both workers refuse it
            for dispatch in dispatches(grid.submit(n, replicas=2, now=float(n))):
                refuse(grid, dispatch, now=float(n))
        else:
            effects = grid.run_job(n, honest, now=float(n))
            served += isinstance(finished(effects), JobAccepted)
    assert served == 10
    assert all(record.online for record in grid.coordinator.workers.values())


def test_empty_and_oversized_prompts_are_refused_before_any_worker_sees_them() -> None:
    grid = Grid(n=2, config=CoordinatorConfig.plain())
    grid.register()
    for prompt, expected in (("", "the prompt is empty"), ("x" * (MAX_PROMPT_CHARS + 1), "over the limit")):
        effects = grid.submit(1, prompt=prompt)
        reply = finished(effects)
        assert not dispatches(effects)
        assert isinstance(reply, ErrorReply) and reply.code == "malformed" and expected in reply.message

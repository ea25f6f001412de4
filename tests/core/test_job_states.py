"""The job lifecycle table (opengrid/core/coordinator/state.py): every allowed transition works, every other
one raises ``JobStateError``, and real jobs on a real coordinator go through the states the table draws —
replicated, disagreeing, audited, rejected by an audit, failed, waiting for a slot, cancelled. A seeded
random run checks after every event that each job's explicit state agrees with the fields the coordinator
used to infer it from (what is running, whether a claim is out)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from grid_harness import CHEAT_GAP, HONEST, Grid, audits, cheat, dispatches, finished, job_id, of_type

from opengrid.core.coordinator import Coordinator, CoordinatorConfig, JobEvent, JobState
from opengrid.core.coordinator import state as job_states
from opengrid.core.coordinator.state import TERMINAL, TRANSITIONS, move, next_state
from opengrid.core.effects import DispatchAudit, DispatchReplica, Effect, FinishJob
from opengrid.core.events import JobCancelled
from opengrid.errors import JobStateError, LocalProtocolError
from opengrid.wire.messages import ErrorReply, JobAccepted

Q, R, A = JobState.QUEUED, JobState.RUNNING, JobState.AUDITING
AUDIT = CoordinatorConfig(verify="audit", canary_rate=0.0, adaptive=False)

Step = tuple[JobState, JobEvent, JobState]


@dataclass
class FakeJob:
    state: JobState
    job_id: bytes = b"\x01" * 16


# ── the table ───────────────────────────────────────────────────────────────────────────────────────
def every_pair() -> Iterator[tuple[JobState, JobEvent]]:
    for state in JobState:
        for event in JobEvent:
            yield state, event


@pytest.mark.parametrize(("state", "event"), [(s, e) for s, e in every_pair() if e in TRANSITIONS[s]])
def test_every_allowed_transition_moves_the_job(state: JobState, event: JobEvent) -> None:
    job = FakeJob(state)
    assert move(job, event) is TRANSITIONS[state][event]
    assert job.state is TRANSITIONS[state][event]


@pytest.mark.parametrize(("state", "event"), [(s, e) for s, e in every_pair() if e not in TRANSITIONS[s]])
def test_every_other_transition_raises_and_leaves_the_job_as_it_was(state: JobState, event: JobEvent) -> None:
    job = FakeJob(state)
    with pytest.raises(JobStateError) as raised:
        move(job, event)
    assert job.state is state
    message = str(raised.value)
    assert job.job_id.hex() in message and state.value in message and event.value in message
    assert isinstance(raised.value, LocalProtocolError), "an illegal move is our bug, never a peer's"


def test_the_table_covers_every_state_and_ends_only_in_terminal_states() -> None:
    assert set(TRANSITIONS) == set(JobState)
    assert {s for s in JobState if not TRANSITIONS[s]} == TERMINAL
    # From the submission every state can be reached, and from every state an end.
    reached, frontier = {Q}, [Q]
    while frontier:
        for target in TRANSITIONS[frontier.pop()].values():
            if target not in reached:
                reached.add(target)
                frontier.append(target)
    assert reached == set(JobState)
    for state in set(JobState) - TERMINAL:
        assert {JobState.FAILED, JobState.CANCELLED} <= set(TRANSITIONS[state].values())


# ── real jobs ───────────────────────────────────────────────────────────────────────────────────────
@pytest.fixture
def trail(monkeypatch: pytest.MonkeyPatch) -> list[Step]:
    """Every transition the coordinator makes, in order (``move`` goes through ``next_state``)."""
    steps: list[Step] = []

    def recording(state: JobState, event: JobEvent) -> JobState:
        new = next_state(state, event)
        steps.append((state, event, new))
        return new

    monkeypatch.setattr(job_states, "next_state", recording)
    return steps


def test_a_replicated_job_runs_then_is_accepted(trail: list[Step]) -> None:
    grid = Grid(n=3, config=CoordinatorConfig.plain())
    grid.register()
    first = grid.submit(1, replicas=2)
    assert grid.coordinator.job_state(job_id(1)) is R
    runs = dispatches(first)
    assert grid.answer(runs[0], HONEST) == [] and grid.coordinator.job_state(job_id(1)) is R
    assert isinstance(finished(grid.answer(runs[1], HONEST)), JobAccepted)
    assert grid.coordinator.job_state(job_id(1)) is None
    assert trail == [(Q, JobEvent.DISPATCHED, R), (R, JobEvent.ACCEPTED, JobState.ACCEPTED)]


def test_a_disagreement_drains_the_job_and_one_more_replica_settles_it(trail: list[Step]) -> None:
    grid = Grid(n=3, config=CoordinatorConfig.plain())
    grid.register()
    first = grid.submit(1, replicas=2)
    assert isinstance(finished(grid.play(first, [HONEST, cheat(1), HONEST])), JobAccepted)
    assert trail == [
        (Q, JobEvent.DISPATCHED, R),
        (R, JobEvent.DRAINED, Q),  # both answered, no quorum: nothing runs until a third is sent
        (Q, JobEvent.DISPATCHED, R),
        (R, JobEvent.ACCEPTED, JobState.ACCEPTED),
    ]


def test_an_audited_job_is_claimed_audited_and_accepted(trail: list[Step]) -> None:
    grid = Grid(n=3, config=AUDIT)
    grid.register()
    first = grid.submit(1)
    sent = audits(grid.answer(dispatches(first)[0], HONEST))
    assert grid.coordinator.job_state(job_id(1)) is A
    assert isinstance(finished(grid.audit(sent[0], gap=CHEAT_GAP)), JobAccepted)
    assert trail == [
        (Q, JobEvent.DISPATCHED, R),
        (R, JobEvent.CLAIMED, A),
        (A, JobEvent.ACCEPTED, JobState.ACCEPTED),
    ]


def test_a_claim_that_fails_its_audit_sends_the_job_back_to_another_prover(trail: list[Step]) -> None:
    grid = Grid(n=4, config=AUDIT)
    grid.register()
    first = grid.submit(1)
    sent = audits(grid.answer(dispatches(first)[0], cheat(1)))
    rerun = dispatches(grid.audit(sent[0], gap=CHEAT_GAP))
    assert len(rerun) == 1 and grid.coordinator.job_state(job_id(1)) is R
    again = audits(grid.answer(rerun[0], HONEST))
    assert isinstance(finished(grid.audit(again[0], gap=CHEAT_GAP)), JobAccepted)
    assert trail == [
        (Q, JobEvent.DISPATCHED, R),
        (R, JobEvent.CLAIMED, A),
        (A, JobEvent.CLAIM_REJECTED, Q),
        (Q, JobEvent.DISPATCHED, R),
        (R, JobEvent.CLAIMED, A),
        (A, JobEvent.ACCEPTED, JobState.ACCEPTED),
    ]


def test_a_job_whose_workers_all_fail_ends_failed(trail: list[Step]) -> None:
    grid = Grid(n=2, config=CoordinatorConfig.plain())
    grid.register()
    runs = dispatches(grid.submit(1, replicas=2))
    assert grid.fail(runs[0]) == [] and grid.coordinator.job_state(job_id(1)) is R  # one still runs
    reply = finished(grid.fail(runs[1]))
    assert isinstance(reply, ErrorReply) and reply.code == "no_capacity"
    assert trail == [
        (Q, JobEvent.DISPATCHED, R),
        (R, JobEvent.DRAINED, Q),
        (Q, JobEvent.FAILED, JobState.FAILED),
    ]


def test_a_job_waits_queued_for_a_slot_and_runs_when_one_frees(trail: list[Step]) -> None:
    grid = Grid(n=2, config=CoordinatorConfig.plain())
    grid.register()
    runs = dispatches(grid.submit(1, replicas=2))
    assert dispatches(grid.submit(2, replicas=2)) == []
    assert grid.coordinator.job_state(job_id(2)) is Q and grid.coordinator.is_queued(job_id(2))
    assert len(dispatches(grid.answer(runs[0], HONEST))) == 1  # one slot freed: one replica of job 2
    assert grid.coordinator.job_state(job_id(2)) is R and grid.coordinator.is_queued(job_id(2))
    freed = grid.answer(runs[1], HONEST)
    assert isinstance(finished(freed), JobAccepted) and len(dispatches(freed)) == 1
    assert grid.coordinator.job_state(job_id(2)) is R and not grid.coordinator.is_queued(job_id(2))
    assert [step for step in trail if step[1] is JobEvent.DISPATCHED] == [
        (Q, JobEvent.DISPATCHED, R),  # job 1: both replicas at once
        (Q, JobEvent.DISPATCHED, R),  # job 2: its first replica in the first slot freed...
        (R, JobEvent.DISPATCHED, R),  # ...its second in the next one
    ]


def test_a_cancelled_job_ends_cancelled_and_its_replicas_are_stopped(trail: list[Step]) -> None:
    grid = Grid(n=3, config=CoordinatorConfig.plain())
    grid.register()
    grid.submit(1, replicas=2)
    effects = grid.coordinator.handle(JobCancelled(job_id(1), "client"), 1.0)
    reply = finished(effects)
    assert isinstance(reply, ErrorReply) and "cancelled" in reply.message
    assert grid.coordinator.job_state(job_id(1)) is None and grid.coordinator.free_slots() == 3
    assert trail[-1] == (R, JobEvent.CANCELLED, JobState.CANCELLED)


# ── the explicit state agrees with the fields it replaced ──────────────────────────────────────────
def implied(coordinator: Coordinator, job: bytes) -> JobState:
    """What the coordinator inferred from a job's fields before the state was explicit."""
    record = coordinator._jobs[job]
    if record.prover:
        return A
    return R if record.pending else Q


@pytest.mark.parametrize(
    "config",
    [CoordinatorConfig.plain(), CoordinatorConfig(verify="replicate"), AUDIT],
    ids=["plain", "adaptive", "audit"],
)
@pytest.mark.parametrize("seed", range(3))
def test_the_state_always_agrees_with_the_fields(
    config: CoordinatorConfig, seed: int, trail: list[Step]
) -> None:
    rng = random.Random(seed)
    grid = Grid(n=5, seed=seed, config=config)
    grid.register()
    work: list[Effect] = []
    for n in range(1, 9):
        work += grid.submit(n, replicas=2, prompt=f"prompt {n}")
    ended: list[bytes] = []
    for _ in range(200):  # bounded: each job settles within a few dozen dispatches
        for job in list(grid.coordinator._jobs):
            assert grid.coordinator.job_state(job) is implied(grid.coordinator, job)
        items = [e for e in work if isinstance(e, DispatchReplica | DispatchAudit)]
        if not items:
            break
        item = items[0]
        work.remove(item)
        roll = rng.random()
        if isinstance(item, DispatchReplica):
            if roll < 0.15:
                effects = grid.fail(item)
            else:
                effects = grid.answer(item, cheat(rng.randrange(3)) if roll < 0.35 else HONEST)
        else:
            effects = grid.fail_audit(item) if roll < 0.15 else grid.audit(item, gap=CHEAT_GAP)
        ended += [f.job_id for f in of_type(effects, FinishJob)]
        work += effects
    assert not grid.coordinator._jobs, "every job ended"
    assert sorted(ended) == [job_id(j) for j in range(1, 9)]
    seen = {event for _, event, _ in trail}
    assert {JobEvent.DISPATCHED, JobEvent.DRAINED, JobEvent.ACCEPTED} <= seen, "the run exercised the table"
    if config.verify == "audit":
        assert {JobEvent.CLAIMED, JobEvent.CLAIM_REJECTED} <= seen

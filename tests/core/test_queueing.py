"""Worker slots and the job queue: jobs wait for a free slot, interactive before batch, clients in turn,
bounded, and a job that waits too long fails (spec/job-protocol.md §8.1). Events in, effects out."""

from __future__ import annotations

from grid_harness import HONEST, Grid, dispatches, finished, job_id, of_type
from hypothesis import given
from hypothesis import strategies as st

from opengrid.core.coordinator import CoordinatorConfig
from opengrid.core.effects import DispatchReplica, Effect, FinishJob
from opengrid.core.events import JobCancelled
from opengrid.core.queueing import PRIORITIES, FairQueue
from opengrid.wire.messages import ErrorReply, JobAccepted, Priority

PLAIN = CoordinatorConfig.plain()


def _jobs_of(effects: list[Effect]) -> list[int]:
    """The client jobs dispatched by ``effects``, as job numbers, in dispatch order (one per job)."""
    numbers: list[int] = []
    for d in dispatches(effects):
        n = int.from_bytes(d.run.job_id, "big")
        if n not in numbers:
            numbers.append(n)
    return numbers


def _finish(grid: Grid, sent: list[DispatchReplica], *, now: float = 1.0) -> list[Effect]:
    """Every dispatch in ``sent`` answers honestly; every effect that follows."""
    effects: list[Effect] = []
    for dispatch in sent:
        effects += grid.answer(dispatch, HONEST, now=now)
    return effects


# ── capacity ─────────────────────────────────────────────────────────────────────────────────────────


def test_a_job_waits_while_every_worker_is_busy_and_runs_when_one_frees() -> None:
    grid = Grid(n=2, config=PLAIN)
    grid.register()
    running = dispatches(grid.submit(1, replicas=2))
    assert len(running) == 2

    assert grid.submit(2, replicas=2) == []  # no slot: no dispatch, no error, no answer yet
    assert grid.coordinator.is_queued(job_id(2))
    coordinator = grid.coordinator
    assert (coordinator.queued_jobs, coordinator.active_jobs, coordinator.free_slots()) == (1, 2, 0)

    effects = _finish(grid, running)
    assert isinstance(finished(effects), JobAccepted)
    second = dispatches(effects)
    assert {d.peer for d in second} == {"w0", "w1"} and _jobs_of(effects) == [2]
    assert grid.coordinator.queued_jobs == 0
    assert isinstance(finished(_finish(grid, second)), JobAccepted)
    assert grid.coordinator.free_slots() == 2


def test_a_worker_with_more_slots_runs_that_many_replicas_at_once() -> None:
    grid = Grid(n=1, config=PLAIN, slots=2)
    grid.register()
    assert len(dispatches(grid.submit(1, replicas=1))) == 1
    assert len(dispatches(grid.submit(2, replicas=1))) == 1
    assert grid.submit(3, replicas=1) == []
    assert grid.coordinator.is_queued(job_id(3))


def test_a_job_short_of_slots_starts_what_it_can_and_waits_for_the_rest() -> None:
    grid = Grid(n=3, config=PLAIN)
    grid.register()
    (busy,) = dispatches(grid.submit(1, replicas=1))
    partial = dispatches(grid.submit(2, replicas=3))
    assert len(partial) == 2 and busy.peer not in {d.peer for d in partial}
    assert grid.coordinator.is_queued(job_id(2))

    # Its first two results agree, which is a quorum of three: accepted without the third replica.
    assert grid.answer(partial[0], HONEST) == []  # one result and a missing replica is no disagreement
    effects = grid.answer(partial[1], HONEST)
    reply = finished(effects)
    assert isinstance(reply, JobAccepted) and len(reply.workers) == 2
    assert not grid.coordinator.is_queued(job_id(2))


def test_a_one_replica_answer_waits_for_the_replica_still_queued() -> None:
    grid = Grid(n=2, config=PLAIN)
    grid.register()
    (busy,) = dispatches(grid.submit(1, replicas=1))
    (first,) = dispatches(grid.submit(2, replicas=2))
    assert grid.answer(first, HONEST) == []  # not a disagreement: the second replica never ran

    effects = grid.answer(busy, HONEST)
    assert isinstance(finished(effects), JobAccepted)  # job 1 is done...
    (second,) = dispatches(effects)  # ... and its worker runs job 2's missing replica
    assert (second.peer, second.run.job_id) == (busy.peer, job_id(2))
    reply = finished(grid.answer(second, HONEST))
    assert isinstance(reply, JobAccepted) and sorted(reply.workers) == ["w0", "w1"]


def test_a_worker_that_registers_takes_a_waiting_job() -> None:
    grid = Grid(n=2, config=PLAIN)
    grid.register("w0")
    dispatches(grid.submit(1, replicas=1))
    assert grid.submit(2, replicas=1) == []

    (dispatch,) = dispatches(grid.register("w1"))
    assert (dispatch.peer, dispatch.run.job_id) == ("w1", job_id(2))
    assert grid.register("w1") == []  # a heartbeat that changes nothing looks at nothing


def test_canaries_take_a_slot_and_wait_for_one() -> None:
    grid = Grid(n=3, config=CoordinatorConfig(verify="replicate", adaptive=False, canary_rate=1.0))
    grid.register()
    grid.coordinator.add_known_answer("known", grid.workers["w0"].offers[0].contract, 16, b"\0" * 32)
    effects = grid.submit(1, replicas=2)
    sent = dispatches(effects)
    assert len(sent) == 3  # the job's two replicas, and a canary on the third worker
    assert grid.coordinator.active_canaries == 1 and grid.coordinator.free_slots() == 0
    assert dispatches(grid.submit(2, replicas=2)) == []  # every slot taken: no second canary either
    assert grid.coordinator.active_canaries == 1


# ── order: classes and clients ───────────────────────────────────────────────────────────────────────


def test_interactive_jobs_go_before_batch_jobs() -> None:
    grid = Grid(n=1, config=PLAIN)
    grid.register()
    (running,) = dispatches(grid.submit(1, replicas=1))
    grid.submit(2, replicas=1, priority="batch")
    grid.submit(3, replicas=1, priority="batch")
    grid.submit(4, replicas=1)  # interactive, submitted last

    order = []
    current = running
    for _ in range(3):
        effects = grid.answer(current, HONEST)
        (current,) = dispatches(effects)
        order.append(int.from_bytes(current.run.job_id, "big"))
    assert order == [4, 2, 3]


def test_one_client_with_many_jobs_does_not_starve_another_clients_single_job() -> None:
    grid = Grid(n=1, config=PLAIN)
    grid.register()
    (current,) = dispatches(grid.submit(1, replicas=1, client="alice"))
    for n in range(2, 12):
        assert grid.submit(n, replicas=1, client="alice") == []
    assert grid.submit(99, replicas=1, client="bob") == []

    order = []
    while True:
        sent = dispatches(grid.answer(current, HONEST))
        if not sent:
            break
        (current,) = sent
        order.append(int.from_bytes(current.run.job_id, "big"))
    assert order.index(99) <= 1  # behind at most one of alice's jobs, not behind all ten
    assert [n for n in order if n != 99] == list(range(2, 12))  # alice's own jobs stay in order


def test_clients_take_turns_within_a_class() -> None:
    grid = Grid(n=1, config=PLAIN)
    grid.register()
    (current,) = dispatches(grid.submit(1, replicas=1, client="a"))
    for n, client in [(2, "a"), (3, "a"), (4, "a"), (5, "b"), (6, "b"), (7, "c")]:
        grid.submit(n, replicas=1, client=client)
    order = []
    for _ in range(6):
        (current,) = dispatches(grid.answer(current, HONEST))
        order.append(int.from_bytes(current.run.job_id, "big"))
    assert order == [2, 5, 7, 3, 6, 4]


# ── bounds and deadlines ─────────────────────────────────────────────────────────────────────────────


def test_a_full_queue_refuses_jobs_with_busy_and_keeps_no_state() -> None:
    grid = Grid(n=1, config=CoordinatorConfig.plain(max_queued=3, max_queued_per_client=2))
    grid.register()
    dispatches(grid.submit(1, replicas=1, client="a"))  # running: not counted against the queue
    assert grid.submit(2, replicas=1, client="a") == []
    assert grid.submit(3, replicas=1, client="a") == []

    reply = finished(grid.submit(4, replicas=1, client="a"))
    assert isinstance(reply, ErrorReply) and reply.code == "busy" and reply.job_id == job_id(4)
    assert "2 jobs waiting" in reply.message and "retry later" in reply.message
    assert not grid.coordinator.is_running(job_id(4))

    assert grid.submit(5, replicas=1, client="b") == []  # another client still has room...
    reply = finished(grid.submit(6, replicas=1, client="c"))  # ... until the whole queue is full
    assert isinstance(reply, ErrorReply) and reply.code == "busy"
    assert "3 jobs are already waiting" in reply.message
    assert (grid.coordinator.queued_jobs, grid.coordinator.active_jobs) == (3, 4)


def test_a_job_that_waits_past_its_deadline_fails_with_busy() -> None:
    config = CoordinatorConfig.plain(job_timeout_s=30.0, replica_timeout_s=100.0, heartbeat_s=100.0)
    grid = Grid(n=1, config=config)
    grid.register()
    grid.submit(2, replicas=1, now=0.0)  # running (job 2 sorts after job 1, the one that waits)
    assert grid.submit(1, replicas=1, now=0.0) == []
    assert grid.coordinator.next_deadline() == 30.0

    effects = grid.coordinator.on_timer(30.0)
    replies = {e.job_id: e.reply for e in of_type(effects, FinishJob)}
    waited = replies[job_id(1)]
    assert isinstance(waited, ErrorReply) and waited.code == "busy"
    assert "waited 30 s" in waited.message and "'tiny'" in waited.message
    assert grid.coordinator.queued_jobs == 0 and grid.coordinator.active_jobs == 0


def test_a_cancelled_job_leaves_the_queue() -> None:
    grid = Grid(n=1, config=PLAIN)
    grid.register()
    (running,) = dispatches(grid.submit(1, replicas=1))
    grid.submit(2, replicas=1)
    grid.submit(3, replicas=1)
    reply = finished(grid.coordinator.handle(JobCancelled(job_id(2), client="client"), 0.5))
    assert isinstance(reply, ErrorReply) and not grid.coordinator.is_queued(job_id(2))
    assert _jobs_of(grid.answer(running, HONEST)) == [3]


def test_a_restarted_coordinator_takes_back_waiting_jobs_beyond_the_bounds() -> None:
    grid = Grid(n=1, config=CoordinatorConfig.plain(max_queued=2, max_queued_per_client=1))
    grid.register()
    grid.submit(1, replicas=1)
    grid.submit(2, replicas=1)
    saved = grid.coordinator.snapshot()

    fresh = Grid(n=1, config=CoordinatorConfig.plain(max_queued=1, max_queued_per_client=1))
    fresh.register()
    effects = fresh.coordinator.resume([*saved, *saved], 0.0, delay_s=0)
    assert _jobs_of(effects) == [1] and fresh.coordinator.is_queued(job_id(2))  # not refused: accepted once


# ── the queue policy alone ───────────────────────────────────────────────────────────────────────────

pushes = st.lists(
    st.tuples(st.sampled_from(["a", "b", "c", "d"]), st.sampled_from(list(PRIORITIES))), max_size=60
)


@given(pushes)
def test_the_order_is_by_class_then_clients_in_turn_then_first_in_first_out(
    items: list[tuple[str, Priority]],
) -> None:
    queue: FairQueue[int] = FairQueue(max_total=1000, max_per_client=1000)
    for key, (client, priority) in enumerate(items):
        queue.push(key, client, priority)
    order = queue.order()
    assert sorted(order) == list(range(len(items)))
    classes = [PRIORITIES.index(items[key][1]) for key in order]
    assert classes == sorted(classes)  # every interactive job before any batch job
    for priority in PRIORITIES:
        mine = [key for key in order if items[key][1] == priority]
        for client in {items[k][0] for k in mine}:
            theirs = [k for k in mine if items[k][0] == client]
            assert theirs == sorted(theirs)  # first in, first out within a client
            for j, key in enumerate(theirs):  # fairness: nobody gets two turns ahead of client's j-th job
                before = mine[: mine.index(key)]
                assert all(before.count(k) <= 1 for k in before)
                others = {items[k][0] for k in before} - {client}
                assert all(sum(1 for k in before if items[k][0] == o) <= j + 1 for o in others)


@given(pushes)
def test_serving_jobs_one_by_one_gives_every_waiting_client_a_turn_each_round(
    items: list[tuple[str, Priority]],
) -> None:
    queue: FairQueue[int] = FairQueue(max_total=1000, max_per_client=1000)
    for key, (client, _) in enumerate(items):
        queue.push(key, client, "interactive")
    served: list[str] = []
    while len(queue):
        key = queue.order()[0]
        served.append(items[key][0])
        queue.served(key, done=True)
    # Between two turns of one client, every other client that still had jobs waiting got one turn.
    for i, client in enumerate(served):
        later = served[i + 1 :]
        if client in later:
            gap = later[: later.index(client)]
            assert len(gap) == len(set(gap))
    assert len(queue) == 0 and queue.waiting("a") == 0

"""Priority in a busy coordinator's queue (spec/job-protocol.md §8.1): paid jobs and the jobs of
volunteers in good standing go ahead of open (free) ones, and open jobs still get one turn in every
``PREFERRED_RUN + 1`` while both wait. Events in, effects out; no network."""

from __future__ import annotations

from grid_harness import HONEST, Grid, dispatches, finished, honest, job_id, signing_key
from hypothesis import given
from hypothesis import strategies as st
from opengrid_ledger import EntryBody, Hold, encode_entry, sign_entry

from opengrid.core.coordinator import CoordinatorConfig
from opengrid.core.effects import DispatchReplica
from opengrid.core.events import JobSubmitted
from opengrid.core.queueing import PREFERRED_RUN, FairQueue, in_good_standing
from opengrid.core.reputation import Reputation
from opengrid.wire.messages import JobAccepted, SubmitJob, job_cost

PLAIN = CoordinatorConfig.plain(verify="replicate", min_trust_streak=3)


def _number(dispatch: DispatchReplica) -> int:
    return int.from_bytes(dispatch.run.job_id, "big")


def _serve_all(grid: Grid, current: DispatchReplica, *, limit: int = 40) -> list[int]:
    """Answer ``current`` and every job a freed slot takes after it, one at a time (one worker, one
    slot); the job numbers in the order they were dispatched."""
    order: list[int] = []
    for _ in range(limit):
        sent = dispatches(grid.answer(current, HONEST))
        if not sent:
            return order
        (current,) = sent
        order.append(_number(current))
    raise AssertionError(f"more than {limit} jobs: the queue does not drain")


def _one_slot_left(grid: Grid) -> None:
    """Keep every worker but one busy with a job that never answers: one free slot in the grid."""
    assert len(dispatches(grid.submit(999, replicas=len(grid.workers) - 1, client="blocker"))) == 2


def _earn(grid: Grid, jobs: int) -> None:
    """Every worker earns points (and a streak) by running ``jobs`` ordinary jobs on all of them."""
    for n in range(1000, 1000 + jobs):
        reply = finished(grid.run_job(n, honest, replicas=len(grid.workers)))
        assert isinstance(reply, JobAccepted)


def _paid(grid: Grid, n: int, payer: str) -> SubmitJob:
    """Job ``n``: one replica, five tokens (what an honest worker returns), paid by ``payer``'s key
    with a HOLD as the next link of its chain."""
    key = signing_key(payer)
    head = grid.coordinator.ledger.head(bytes(key.verify_key))
    hold = Hold(job_id=job_id(n), amount=job_cost(5, 1), coordinator=grid.coordinator.public_key)
    body = EntryBody(
        network=grid.coordinator.network,
        author=bytes(key.verify_key),
        seq=head[0] + 1 if head is not None else 1,
        prev=bytes(head[1]) if head is not None else b"",
        payload=hold,
    )
    entry = encode_entry(sign_entry(key, body))
    return SubmitJob(job_id=job_id(n), model="tiny", prompt="paid", max_tokens=5, replicas=1, hold=entry)


def test_a_paid_job_submitted_after_free_ones_runs_first_and_the_free_ones_still_finish() -> None:
    grid = Grid(n=3, config=PLAIN)
    grid.register()
    _earn(grid, 4)  # w1 has points to pay with
    _one_slot_left(grid)
    (current,) = dispatches(grid.submit(1, replicas=1, client="alice"))
    assert grid.submit(2, replicas=1, client="alice") == []
    assert grid.submit(3, replicas=1, client="bob") == []
    paid = _paid(grid, 4, "w1")
    effects = grid.coordinator.handle(JobSubmitted(client="carol", request=paid), 0.5)
    assert dispatches(effects) == [] and finished(effects) is None
    assert grid.coordinator.ledger.held(grid.key("w1")) == job_cost(5, 1)  # waiting, paid for

    assert _serve_all(grid, current) == [4, 2, 3]  # the paid job first, then the free ones in turn
    assert grid.coordinator.queued_jobs == 0 and grid.coordinator.active_jobs == 1  # the blocker
    assert grid.coordinator.ledger.held(grid.key("w1")) == 0  # settled


def test_a_volunteer_in_good_standing_goes_first_and_one_on_probation_does_not() -> None:
    grid = Grid(n=3, config=PLAIN)
    grid.register()
    _earn(grid, 6)  # every worker: a streak of at least 3, the trust PLAIN asks for
    assert in_good_standing(grid.coordinator.reputation[grid.key("w2")], min_trust_streak=3)
    grid.coordinator.reputation[grid.key("w1")] = Reputation(streak=5, invalid=1, probation=2)
    _one_slot_left(grid)
    (current,) = dispatches(grid.submit(1, replicas=1, client="alice"))
    grid.submit(2, replicas=1, client="alice")
    grid.submit(3, replicas=1, client="w1")  # a volunteer on probation: an open job like alice's
    grid.submit(4, replicas=1, client="w2/api-user")  # through w2's own API: w2's standing counts
    grid.submit(5, replicas=1, client="stranger")
    assert _serve_all(grid, current) == [4, 2, 3, 5]


def test_open_jobs_get_a_turn_after_every_run_of_preferred_ones() -> None:
    grid = Grid(n=3, config=PLAIN)
    grid.register()
    _earn(grid, 10)
    _one_slot_left(grid)
    (current,) = dispatches(grid.submit(1, replicas=1, client="alice"))
    grid.submit(2, replicas=1, client="alice")
    grid.submit(3, replicas=1, client="alice")
    paid = list(range(10, 18))
    for n in paid:  # eight paid jobs queued behind two free ones
        request = _paid(grid, n, f"w{n % 3}")
        effects = grid.coordinator.handle(JobSubmitted(client=f"payer{n}", request=request), 0.5)
        assert dispatches(effects) == [] and finished(effects) is None  # paid for, waiting

    order = _serve_all(grid, current)
    run = PREFERRED_RUN
    assert order == [*paid[:run], 2, *paid[run : 2 * run], 3, *paid[2 * run :]]


@given(
    st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.booleans()), min_size=1, max_size=40),
    st.integers(min_value=0, max_value=40),
)
def test_while_open_jobs_wait_no_more_than_the_preferred_run_goes_ahead_of_them(
    items: list[tuple[str, bool]], served_before: int
) -> None:
    queue: FairQueue[int] = FairQueue(max_total=1000, max_per_client=1000)
    for key, (client, preferred) in enumerate(items):
        queue.push(key, client, "interactive", preferred=preferred)
    turns: list[bool] = []  # each turn: was it a preferred job's?
    for _ in range(min(served_before, len(items))):
        key = queue.order()[0]
        turns.append(queue.standing(key) == "preferred")
        queue.served(key, done=True)
    while len(queue):
        key = queue.order()[0]
        turns.append(queue.standing(key) == "preferred")
        queue.served(key, done=True)
    assert sorted(turns) == sorted(p for _, p in items)
    open_left = sum(1 for _, p in items if not p)
    streak = 0
    for preferred in turns:  # preferred turns in a row while an open job still waited: bounded
        if preferred and open_left:
            streak += 1
            assert streak <= PREFERRED_RUN
        elif not preferred:
            streak, open_left = 0, open_left - 1
    # Preferred jobs first otherwise: none waits behind an open job except to end a full run.
    if False in turns:
        assert turns.index(False) == min(PREFERRED_RUN, sum(1 for _, p in items if p))


def test_standing_outranks_class_and_class_orders_each_standing() -> None:
    queue: FairQueue[str] = FairQueue()
    queue.push("free-interactive", "a", "interactive")
    queue.push("free-batch", "b", "batch")
    queue.push("paid-batch", "c", "batch", preferred=True)
    queue.push("paid-interactive", "d", "interactive", preferred=True)
    assert queue.order() == ["paid-interactive", "paid-batch", "free-interactive", "free-batch"]
    assert (queue.standing("paid-batch"), queue.standing("free-batch"), queue.standing("gone")) == (
        "preferred",
        "open",
        None,
    )


def test_the_run_of_preferred_turns_ends_when_no_open_job_waits() -> None:
    queue: FairQueue[int] = FairQueue()
    for key in range(5):
        queue.push(key, "payer", "interactive", preferred=True)
    for key in range(3):
        queue.served(key, done=True)  # nobody waited meanwhile: no run is counted
    queue.push(10, "free", "interactive")
    assert queue.order() == [3, 4, 10]  # the full run is still ahead of the newcomer
    queue.served(3, done=True)
    queue.served(4, done=True)
    queue.push(5, "payer", "interactive", preferred=True)
    queue.push(6, "payer", "interactive", preferred=True)
    assert queue.order() == [5, 10, 6]  # two preferred turns taken while 10 waited: one more, then 10

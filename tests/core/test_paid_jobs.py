"""Paid jobs: the client's HOLD is taken at submission, settled to the agreeing workers on acceptance
(the rest returns to the client), and refunded in full when the job fails."""

from __future__ import annotations

from grid_harness import HONEST, Grid, dispatches, finished, honest, job_id, signing_key
from opengrid_ledger import EntryBody, Hold, encode_entry, sign_entry

from opengrid.core.coordinator import CoordinatorConfig
from opengrid.core.effects import FinishJob
from opengrid.core.events import JobSubmitted, ReplicaFailed
from opengrid.wire.messages import ErrorReply, JobAccepted, SubmitJob, job_cost


def _earn(grid: Grid) -> None:
    """w0 earns points by running four ordinary jobs (5 tokens each, on all three workers)."""
    for n in (1, 2, 3, 4):
        reply = finished(grid.run_job(n, honest, replicas=3))
        assert isinstance(reply, JobAccepted)


def _paid_request(
    grid: Grid, n: int, *, amount: int | None = None, seq: int = 1, prev: bytes = b""
) -> SubmitJob:
    payer = signing_key("w0")
    cost = job_cost(8, 2)
    hold = Hold(
        job_id=job_id(n),
        amount=amount if amount is not None else cost,
        coordinator=grid.coordinator.public_key,
    )
    body = EntryBody(
        network=grid.coordinator.network, author=bytes(payer.verify_key), seq=seq, prev=prev, payload=hold
    )
    entry = encode_entry(sign_entry(payer, body))
    return SubmitJob(job_id=job_id(n), model="tiny", prompt="paid", max_tokens=8, replicas=2, hold=entry)


def test_a_paid_job_settles_to_the_agreeing_workers_and_returns_the_rest() -> None:
    grid = Grid(n=3, config=CoordinatorConfig.plain())
    grid.register()
    _earn(grid)
    ledger, payer = grid.coordinator.ledger, grid.key("w0")
    before = {peer: ledger.balance(grid.key(peer)) for peer in grid.workers}
    assert before["w0"] >= job_cost(8, 2)

    first = grid.coordinator.handle(JobSubmitted(client="client", request=_paid_request(grid, 10)), 0.0)
    assert ledger.held(payer) == job_cost(8, 2)
    reply = finished([*first, *grid.drive(first, honest)])
    assert isinstance(reply, JobAccepted) and len(reply.workers) == 2

    n = len(HONEST.tokens)
    after = {peer: ledger.balance(grid.key(peer)) for peer in grid.workers}
    paid_to = set(reply.workers)
    for peer in grid.workers:
        expected = before[peer] + (2 * n if peer in paid_to else 0)  # minted by the receipt + paid by w0
        if peer == "w0":
            expected -= n * len(paid_to)  # w0 paid n to each agreeing worker (itself included)
        assert after[peer] == expected, peer
    assert ledger.held(payer) == 0


def test_a_failed_paid_job_is_refunded_in_full() -> None:
    grid = Grid(n=3, config=CoordinatorConfig.plain(max_failovers=1))
    grid.register()
    _earn(grid)
    ledger, payer = grid.coordinator.ledger, grid.key("w0")
    before = ledger.balance(payer)
    effects = grid.coordinator.handle(JobSubmitted(client="client", request=_paid_request(grid, 11)), 0.0)
    assert ledger.held(payer) == job_cost(8, 2)
    reply = None
    for _ in range(6):  # every worker fails until the failovers run out
        sent = dispatches(effects)
        if not sent:
            break
        effects = grid.coordinator.handle(ReplicaFailed(sent[0].run.job_id, sent[0].peer, "crashed"), 1.0)
        reply = finished(effects) or reply
    assert isinstance(reply, ErrorReply)
    assert (ledger.balance(payer), ledger.held(payer)) == (before, 0)


def test_a_hold_too_small_or_unbacked_is_refused_before_any_work() -> None:
    grid = Grid(n=3, config=CoordinatorConfig.plain())
    grid.register()
    small = _paid_request(grid, 12, amount=3)
    reply = finished(grid.coordinator.handle(JobSubmitted(client="c", request=small), 0.0))
    assert isinstance(reply, ErrorReply) and "costs up to 16" in reply.message
    broke = _paid_request(grid, 13)  # w0 has earned nothing in this grid
    reply = finished(grid.coordinator.handle(JobSubmitted(client="c", request=broke), 0.0))
    assert isinstance(reply, ErrorReply) and "balance" in reply.message
    assert reply.code == "payment_required"  # the SDK's PaymentError: the account cannot pay


def test_a_paid_job_that_waits_past_its_deadline_is_refunded() -> None:
    grid = Grid(n=3, config=CoordinatorConfig.plain())
    grid.register()
    _earn(grid)
    ledger, payer = grid.coordinator.ledger, grid.key("w0")
    before = ledger.balance(payer)
    assert len(dispatches(grid.submit(20, replicas=3, now=0.0))) == 3  # every worker busy (a later id)

    waiting = grid.coordinator.handle(JobSubmitted(client="client", request=_paid_request(grid, 10)), 0.0)
    assert dispatches(waiting) == [] and finished(waiting) is None
    assert grid.coordinator.is_queued(job_id(10)) and ledger.held(payer) == job_cost(8, 2)

    effects = grid.coordinator.on_timer(grid.coordinator.config.job_timeout_s)
    replies = {e.job_id: e.reply for e in effects if isinstance(e, FinishJob)}
    reply = replies[job_id(10)]
    assert isinstance(reply, ErrorReply) and reply.code == "busy"
    assert (ledger.balance(payer), ledger.held(payer)) == (before, 0)

"""A job survives worker deaths (issue 16): what the coordinator does when workers die under a job.

A sealed job may only run on the workers its prompt was sealed to. When they fail or go offline, the
coordinator ends the job with ``no_capacity`` and names them, which tells the client to quote and seal
afresh (the SDK does; tests/e2e/test_worker_deaths.py); a disagreement alone stays
``verification_failed``. A quote draws first from the workers heard from lately, so a worker that died
a moment ago is less likely to be sealed to. An open job simply fails over to the other online workers.

Real keys, real WorkerLogic sealing and attesting; the client side uses the SDK's sealing helpers.
"""

from __future__ import annotations

import msgspec
from grid_harness import Grid, dispatches, finished, honest, of_type, signing_key
from opengrid_ledger import EntryBody, Hold, encode_entry, sign_entry
from opengrid_sdk.sealed import SealedJob, seal_job

from opengrid.core.coordinator import QUOTE_FRESH_BEATS, CoordinatorConfig
from opengrid.core.effects import DispatchReplica, Effect, FinishJob
from opengrid.core.events import JobSubmitted, ReplicaFailed, ReplicaReturned
from opengrid.core.worker import Output
from opengrid.net.keys import peer_id_of
from opengrid.wire.messages import ErrorReply, JobAccepted, SubmitJob, job_cost

OUTPUT = Output(tokens=(7, 8, 9), text="xyz", finish_reason="length")
OTHER = Output(tokens=(1, 2), text="ab", finish_reason="length")


def _sealed_grid(n: int = 6, **config: float) -> tuple[Grid, dict[str, str]]:
    """A grid whose worker names are their real peer ids (sealing derives keys from peer ids)."""
    grid = Grid(n=n, config=CoordinatorConfig.plain(**config))
    names = {peer: peer_id_of(grid.key(peer)) for peer in grid.workers}
    grid.workers = {names[p]: w for p, w in grid.workers.items()}
    grid.register()
    return grid, names


def _answer(grid: Grid, dispatch: DispatchReplica, output: Output, now: float = 1.0) -> list[Effect]:
    worker = grid.workers[dispatch.peer]
    result = worker.attest(dispatch.run, output, salt=worker.open_sealed(dispatch.run).salt)
    return grid.coordinator.handle(ReplicaReturned(dispatch.run.job_id, dispatch.peer, result), now)


def _run(
    grid: Grid, job: SealedJob, dead: set[str], output: Output = OUTPUT
) -> tuple[list[Effect], list[str]]:
    """Submit ``job``; workers in ``dead`` fail every replica they get (their stream breaks), the others
    answer ``output``. Every effect, and the peers dispatched to, in order."""
    effects = grid.coordinator.handle(JobSubmitted(client="client", request=job.request), 0.0)
    produced, sent = list(effects), []
    queue = dispatches(effects)
    for _ in range(32):  # bounded: a job has at most replicas + extras + failovers dispatches
        if not queue:
            break
        dispatch = queue.pop(0)
        sent.append(dispatch.peer)
        if dispatch.peer in dead:
            effects = grid.coordinator.handle(
                ReplicaFailed(dispatch.run.job_id, dispatch.peer, "connection refused"), 1.0
            )
        else:
            effects = _answer(grid, dispatch, output)
        produced += effects
        queue += dispatches(effects)
    return produced, sent


def test_a_sealed_job_whose_sealed_to_workers_die_fails_no_capacity_naming_them() -> None:
    """The issue's case: sealed to 4 workers, 3 of them dead but not yet known to be; 1 result without
    quorum. Before: ``verification_failed`` ("ran out of workers"), which the client could not act on."""
    grid, names = _sealed_grid()
    sealed_to = [names[f"w{i}"] for i in range(4)]
    dead = set(sealed_to[:3])
    job = seal_job("secret", peers=sealed_to, model="tiny", max_tokens=8, replicas=2)
    effects, sent = _run(grid, job, dead)
    reply = finished(effects)
    assert isinstance(reply, ErrorReply) and reply.code == "no_capacity", reply
    assert reply.job_id == job.request.job_id
    assert "sealed to are used up: 3 of 4 failed" in reply.message
    assert "1 result(s) without quorum" in reply.message and "quote again" in reply.message
    for peer in dead:
        assert peer in reply.message  # named in full: the client can see whom to avoid
        assert not grid.coordinator.workers[peer].online  # offline until their next heartbeat
    assert set(sent) == set(sealed_to)  # never anyone the prompt was not sealed to
    assert names["w4"] not in sent and names["w5"] not in sent
    # The next quote offers only the live workers: what the SDK seals to on its retry.
    quoted = {c.peer for c in grid.coordinator.quote("tiny", exposure=4, now=1.0)}
    assert quoted == {sealed_to[3], names["w4"], names["w5"]}
    retry = seal_job("secret", peers=sorted(quoted), model="tiny", max_tokens=8, replicas=2)
    reply = finished(_run(grid, retry, dead)[0])
    assert isinstance(reply, JobAccepted) and len(reply.workers) == 2 and reply.sealed_outputs


def test_a_sealed_job_out_of_failovers_fails_no_capacity_too() -> None:
    """Sealed to more workers than the failover budget: the 5th failure ends the job, with the code
    that makes the client seal afresh (an open job gets ``verification_failed`` there)."""
    grid, names = _sealed_grid(n=8)
    sealed_to = [names[f"w{i}"] for i in range(7)]
    job = seal_job("x", peers=sealed_to, model="tiny", max_tokens=8, replicas=2)
    effects, sent = _run(grid, job, dead=set(sealed_to))
    reply = finished(effects)
    assert isinstance(reply, ErrorReply) and reply.code == "no_capacity", reply
    assert reply.message.startswith("5 workers failed on this sealed job")
    # 2 replicas + 4 replacements sent; the 5th failure ends it while the 6th still runs (cancelled).
    assert len(set(sent)) == 6 and sum(peer in reply.message for peer in sent) == 5


def test_sealed_to_workers_that_answer_and_disagree_still_fail_verification() -> None:
    """``no_capacity`` means "workers failed": a disagreement among live workers keeps its own code."""
    grid, names = _sealed_grid(n=3)
    sealed_to = [names["w0"], names["w1"]]
    job = seal_job("x", peers=sealed_to, model="tiny", max_tokens=8, replicas=2)
    effects = grid.coordinator.handle(JobSubmitted(client="c", request=job.request), 0.0)
    first, second = dispatches(effects)
    _answer(grid, first, OUTPUT)
    reply = finished(_answer(grid, second, OTHER))
    assert isinstance(reply, ErrorReply) and reply.code == "verification_failed", reply


def test_a_sealed_job_whose_workers_went_silent_is_refused_with_no_capacity() -> None:
    """Sealed to workers the coordinator has since marked offline: refused at once, naming them, with
    the code that tells the client to quote again (the model is served, by others)."""
    grid, names = _sealed_grid(n=4)
    silent = [names["w0"], names["w1"]]
    grid.register(names["w2"], names["w3"], now=20.0)
    grid.coordinator.on_timer(20.0)  # w0, w1 silent for 3 heartbeats
    assert not any(grid.coordinator.workers[p].online for p in silent)
    job = seal_job("x", peers=[*silent, names["w2"]], model="tiny", max_tokens=8, replicas=2)
    reply = finished(grid.coordinator.handle(JobSubmitted(client="c", request=job.request), 20.0))
    assert isinstance(reply, ErrorReply) and reply.code == "no_capacity", reply
    assert "only 1 of the 3 workers" in reply.message and all(p in reply.message for p in silent)
    # Nobody at all serves it: still unknown_model.
    grid.coordinator.on_timer(60.0)
    reply = finished(
        grid.coordinator.handle(
            JobSubmitted(
                client="c",
                request=seal_job(
                    "x", peers=[names["w2"], names["w3"]], model="tiny", max_tokens=8, replicas=2
                ).request,
            ),
            60.0,
        )
    )
    assert isinstance(reply, ErrorReply) and reply.code == "unknown_model", reply


def test_a_sealed_job_waiting_for_its_workers_fails_at_once_when_they_die() -> None:
    """Job B waits in the queue for the two workers it was sealed to, busy with job A; both die under A.
    B fails ``no_capacity`` there and then (before: it waited for its 300 s deadline)."""
    grid, names = _sealed_grid(n=4)
    sealed_to = [names["w0"], names["w1"]]
    first = seal_job("a", peers=sealed_to, model="tiny", max_tokens=8, replicas=2)
    second = seal_job("b", peers=sealed_to, model="tiny", max_tokens=8, replicas=2)
    running = dispatches(grid.coordinator.handle(JobSubmitted(client="c", request=first.request), 0.0))
    assert not dispatches(grid.coordinator.handle(JobSubmitted(client="c", request=second.request), 0.0))
    assert grid.coordinator.is_queued(second.request.job_id)
    effects: list[Effect] = []
    for dispatch in running:
        effects += grid.coordinator.handle(ReplicaFailed(dispatch.run.job_id, dispatch.peer, "reset"), 1.0)
    replies = {e.job_id: e.reply for e in of_type(effects, FinishJob)}
    assert set(replies) == {first.request.job_id, second.request.job_id}
    for reply in replies.values():
        assert isinstance(reply, ErrorReply) and reply.code == "no_capacity", reply
    second_reply = replies[second.request.job_id]
    assert isinstance(second_reply, ErrorReply) and "2 offline" in second_reply.message
    assert grid.coordinator.active_jobs == 0 and not dispatches(effects)


def test_a_quote_draws_from_workers_heard_from_lately_first() -> None:
    grid = Grid(n=6, config=CoordinatorConfig.plain())
    grid.register()
    now = QUOTE_FRESH_BEATS * grid.coordinator.config.heartbeat_s + 1.0  # all online, w0-w2 stale
    grid.register("w3", "w4", "w5", now=now)
    for _ in range(20):  # random draws: the fresh three are always taken first
        assert {c.peer for c in grid.coordinator.quote("tiny", exposure=3, now=now)} == {"w3", "w4", "w5"}
        wider = {c.peer for c in grid.coordinator.quote("tiny", exposure=4, now=now)}
        assert len(wider) == 4 and {"w3", "w4", "w5"} < wider  # one stale worker fills the fourth place
    # Without a time (the old call) every online worker is as good as any other.
    seen: set[str] = set()
    for _ in range(40):
        seen |= {c.peer for c in grid.coordinator.quote("tiny", exposure=3)}
    assert seen & {"w0", "w1", "w2"}


def test_an_open_job_whose_workers_die_is_refilled_from_the_other_online_workers() -> None:
    grid = Grid(n=6, config=CoordinatorConfig.plain())
    grid.register()
    first = dispatches(grid.submit(1, replicas=2))
    dead = {d.peer for d in first}
    effects: list[Effect] = []
    for dispatch in first:  # both replicas' workers die
        effects += grid.fail(dispatch)
    replacements = dispatches(effects)
    assert len(replacements) == 2 and not dead & {d.peer for d in replacements}
    effects = grid.fail(replacements[0])  # and a replacement dies too
    (third,) = dispatches(effects)
    grid.answer(replacements[1], OUTPUT)
    reply = finished(grid.answer(third, OUTPUT))
    assert isinstance(reply, JobAccepted)
    assert sorted(reply.failed) == sorted([*dead, replacements[0].peer])
    assert sorted(reply.workers) == sorted([replacements[1].peer, third.peer])


def _hold(grid: Grid, job: SealedJob, *, seq: int, prev: bytes) -> tuple[SubmitJob, bytes]:
    """``job`` paid by w0 with a HOLD at ``seq`` after ``prev``; the request and the HOLD's entry id."""
    payer = signing_key("w0")
    body = EntryBody(
        network=grid.coordinator.network,
        author=bytes(payer.verify_key),
        seq=seq,
        prev=prev,
        payload=Hold(
            job_id=job.request.job_id, amount=job_cost(8, 2), coordinator=grid.coordinator.public_key
        ),
    )
    entry = sign_entry(payer, body)
    return msgspec.structs.replace(job.request, hold=encode_entry(entry)), bytes(entry.id)


def test_a_paid_sealed_job_that_lost_its_workers_is_refunded_and_the_retry_holds_the_next_link() -> None:
    """What the SDK's re-seal relies on for a paid job: the failed job's HOLD is refunded, and the retry's
    HOLD, the next entry of the payer's chain, is taken and settled."""
    grid, names = _sealed_grid()
    ledger, payer = grid.coordinator.ledger, grid.key(names["w0"])
    for n in range(1, 21):  # w0 earns points on open jobs (bounded)
        if ledger.balance(payer) >= job_cost(8, 2):
            break
        reply = finished(grid.run_job(n, honest, replicas=6))
        assert isinstance(reply, JobAccepted)
    before = ledger.balance(payer)
    assert before >= job_cost(8, 2)
    sealed_to = [names[f"w{i}"] for i in (1, 2, 3, 4)]
    job = seal_job("paid secret", peers=sealed_to, model="tiny", max_tokens=8, replicas=2)
    request, hold_id = _hold(grid, job, seq=1, prev=b"")
    reply = finished(_run(grid, SealedJob(request, job.ephemeral, job.salt), set(sealed_to[:3]))[0])
    assert isinstance(reply, ErrorReply) and reply.code == "no_capacity", reply
    assert (ledger.balance(payer), ledger.held(payer)) == (before, 0)  # refunded in full

    retry = seal_job("paid secret", peers=[names["w4"], names["w5"]], model="tiny", max_tokens=8, replicas=2)
    assert retry.request.job_id != job.request.job_id
    request, _ = _hold(grid, retry, seq=2, prev=hold_id)
    reply = finished(_run(grid, SealedJob(request, retry.ephemeral, retry.salt), set())[0])
    assert isinstance(reply, JobAccepted), reply
    assert ledger.held(payer) == 0
    assert ledger.balance(payer) == before - len(OUTPUT.tokens) * 2  # paid each agreeing worker

"""Audit mode (``CoordinatorConfig.verify = "audit"``, spec/verification.md §13): one prover generates,
an auditor holding the same weights re-scores its claim, the receipt credits both; a claim that fails its
audit costs its prover its reputation and its pay, and the job runs again on another prover."""

from __future__ import annotations

import msgspec
from grid_harness import (
    CHEAT_GAP,
    HONEST,
    Grid,
    audits,
    cheat,
    dispatches,
    evidence_for,
    finished,
    honest,
    job_id,
    of_type,
    open_receipt,
    scores,
    signing_key,
)
from opengrid_ledger import EntryBody, Evidence, Hold, decode_body, encode_entry, sign_entry

from opengrid.core.audit import DEFAULT_GAP_TOLERANCE
from opengrid.core.coordinator import CoordinatorConfig
from opengrid.core.effects import AppendEntry, CancelReplica, Penalize
from opengrid.core.events import JobSubmitted
from opengrid.core.refusal import Refusal
from opengrid.core.reputation import Reputation
from opengrid.wire.messages import ErrorReply, JobAccepted, QuoteRequest, SubmitJob, job_cost

AUDIT = CoordinatorConfig(verify="audit", canary_rate=0.0, adaptive=False)


def _credits(reply: JobAccepted) -> dict[bytes, int]:
    _, receipt = open_receipt(reply.receipt)
    return {c.account: c.points for c in receipt.credits}


def test_an_honest_claim_is_accepted_after_one_audit_and_both_are_credited() -> None:
    grid = Grid(n=3, config=AUDIT)
    grid.register()
    first = grid.submit(1, replicas=2)
    runs = dispatches(first)
    assert len(runs) == 1, "audit mode generates once, whatever replicas the client asked for"
    prover = runs[0].peer
    after_claim = grid.answer(runs[0], HONEST)
    sent = audits(after_claim)
    assert len(sent) == 1 and not dispatches(after_claim) and finished(after_claim) is None
    auditor = sent[0].peer
    assert auditor != prover
    assert sent[0].audit.tokens == list(HONEST.tokens) and sent[0].audit.prompt == "Once upon a time"
    assert sent[0].audit.contract == runs[0].run.contract and sent[0].audit.tolerance == DEFAULT_GAP_TOLERANCE

    done = grid.audit(sent[0], gap=CHEAT_GAP)  # every position honest: 0.05 everywhere
    reply = finished(done)
    assert isinstance(reply, JobAccepted)
    assert reply.text == HONEST.text and reply.workers == [prover, auditor] and reply.failed == []
    n = len(HONEST.tokens)
    assert _credits(reply) == {grid.key(prover): n, grid.key(auditor): -(-n // 2)}  # 5 and 3 points
    _, receipt = open_receipt(reply.receipt)
    assert {a.worker for a in receipt.attestations} == {grid.key(prover), grid.key(auditor)}
    assert grid.streak(prover) == 1 and grid.streak(auditor) == 1
    assert not of_type(done, Penalize)
    assert grid.coordinator.active_jobs == 0 and grid.coordinator.free_slots() == 3


def test_a_cheating_claim_is_rejected_and_the_job_reruns_on_another_prover() -> None:
    grid = Grid(n=4, config=AUDIT)
    grid.register()
    first = grid.submit(1)
    cheater = dispatches(first)[0].peer
    sent = audits(grid.answer(dispatches(first)[0], cheat(1)))
    rejected = grid.audit(sent[0], gap=CHEAT_GAP)
    assert [p.peer for p in of_type(rejected, Penalize)] == [cheater]
    assert "failed the audit" in of_type(rejected, Penalize)[0].why
    assert finished(rejected) is None, "the client is not answered with the cheat"
    rerun = dispatches(rejected)
    assert len(rerun) == 1 and rerun[0].peer != cheater
    second = audits(grid.answer(rerun[0], HONEST))
    assert len(second) == 1 and second[0].peer not in (cheater, rerun[0].peer)
    done = grid.audit(second[0])
    reply = finished(done)
    assert isinstance(reply, JobAccepted) and reply.text == HONEST.text
    assert grid.key(cheater) not in _credits(reply), "a cheater earns nothing"
    assert set(_credits(reply)) == {grid.key(rerun[0].peer), grid.key(second[0].peer)}
    assert reply.failed == [cheater]
    rep = grid.coordinator.reputation[grid.key(cheater)]
    assert rep.invalid == 1 and rep.streak == 0
    evidence = [decode_body(e.entry.body).payload for e in of_type(done, AppendEntry)]
    assert any(isinstance(p, Evidence) and p.invalid == (grid.key(cheater),) for p in evidence)


def test_compute_is_one_generation_and_one_audit_per_honest_job() -> None:
    grid = Grid(n=3, config=AUDIT)
    grid.register()
    generations = scored = 0
    for job in range(1, 11):
        effects = grid.submit(job, replicas=2, now=float(job))
        effects += grid.drive_audited(effects, honest, scores(), now=job + 0.5)
        generations += len(dispatches(effects))
        scored += len(audits(effects))
        assert isinstance(finished(effects), JobAccepted)
    assert (generations, scored) == (10, 10), "replication would have run 20 generations"


def test_a_failing_auditor_is_replaced_and_only_the_one_that_audited_is_credited() -> None:
    grid = Grid(n=4, config=AUDIT)
    grid.register()
    first = grid.submit(1)
    prover = dispatches(first)[0].peer
    sent = audits(grid.answer(dispatches(first)[0], HONEST))
    broken = sent[0].peer
    replaced = grid.fail_audit(sent[0])
    again = audits(replaced)
    assert len(again) == 1 and again[0].peer not in (prover, broken)
    assert finished(replaced) is None and not of_type(replaced, Penalize)
    reply = finished(grid.audit(again[0]))
    assert isinstance(reply, JobAccepted)
    assert set(_credits(reply)) == {grid.key(prover), grid.key(again[0].peer)}
    assert broken in reply.failed
    assert grid.coordinator.reputation[grid.key(broken)].timeouts == 1


def test_an_audit_that_times_out_is_replaced() -> None:
    grid = Grid(n=3, config=AUDIT)
    grid.register()
    first = grid.submit(1)
    sent = audits(grid.answer(dispatches(first)[0], HONEST, now=1.0))
    grid.register(now=AUDIT.replica_timeout_s)  # heartbeats kept them online
    late = grid.coordinator.on_timer(1.0 + AUDIT.replica_timeout_s + 1.0)
    assert CancelReplica(peer=sent[0].peer, job_id=sent[0].audit.job_id) in late
    again = audits(late)
    assert len(again) == 1 and again[0].peer != sent[0].peer
    assert isinstance(finished(grid.audit(again[0], now=130.0)), JobAccepted)


def test_a_report_that_contradicts_itself_costs_the_auditor_not_the_prover() -> None:
    grid = Grid(n=4, config=AUDIT)
    grid.register()
    first = grid.submit(1)
    prover = dispatches(first)[0].peer
    sent = audits(grid.answer(dispatches(first)[0], HONEST))
    honest_report = grid.audit_report(sent[0], CHEAT_GAP)
    forged = msgspec.structs.replace(honest_report, max_gap=3.0)  # "pass", with a gap over tolerance
    effects = grid.deliver_report(sent[0], forged)
    assert [p.peer for p in of_type(effects, Penalize)] == [sent[0].peer]
    again = audits(effects)
    assert len(again) == 1 and again[0].peer not in (prover, sent[0].peer)
    reply = finished(grid.audit(again[0]))
    assert isinstance(reply, JobAccepted) and grid.key(sent[0].peer) not in _credits(reply)
    assert grid.coordinator.reputation.get(grid.key(prover), Reputation()).invalid == 0


def test_a_stolen_attestation_does_not_credit_an_auditor() -> None:
    grid = Grid(n=4, config=AUDIT)
    grid.register()
    first = grid.submit(1)
    result = grid.result(dispatches(first)[0], HONEST)
    sent = audits(grid.deliver(dispatches(first)[0], result))
    report = msgspec.structs.replace(grid.audit_report(sent[0], CHEAT_GAP), attestation=result.attestation)
    effects = grid.deliver_report(sent[0], report)  # the prover's own co-signature, not the auditor's
    assert [p.peer for p in of_type(effects, Penalize)] == [sent[0].peer]
    assert finished(effects) is None and len(audits(effects)) == 1


def test_the_auditor_is_on_another_operator_when_one_is_free() -> None:
    grid = Grid(n=3, config=AUDIT, operators={"w0": "10.0.0.1", "w1": "10.0.0.1", "w2": "10.0.0.2"})
    grid.register()
    for job in range(1, 7):
        first = grid.submit(job, now=float(job))
        run = dispatches(first)[0]
        sent = audits(grid.answer(run, HONEST, now=job + 0.1))
        if run.peer in ("w0", "w1"):
            assert sent[0].peer == "w2"
        else:
            assert sent[0].peer in ("w0", "w1")
        assert isinstance(finished(grid.audit(sent[0], now=job + 0.2)), JobAccepted)


def test_out_of_failovers_the_job_fails_and_nobody_is_paid() -> None:
    config = CoordinatorConfig(verify="audit", canary_rate=0.0, adaptive=False, max_failovers=1)
    grid = Grid(n=4, config=config)
    grid.register()
    first = grid.submit(1)
    effects = [*first, *grid.drive_audited(first, lambda peer, run: cheat(2), scores())]
    reply = finished(effects)
    assert isinstance(reply, ErrorReply) and reply.code == "verification_failed"
    assert "failed their audits" in reply.message
    assert len(of_type(effects, Penalize)) == 2
    assert all(grid.coordinator.ledger.balance(grid.key(p)) == 0 for p in grid.workers)


def test_audit_mode_needs_a_second_worker_holding_the_weights() -> None:
    grid = Grid(n=1, config=AUDIT)
    grid.register()
    reply = finished(grid.submit(1, replicas=1))
    assert isinstance(reply, ErrorReply) and reply.code == "no_capacity" and "audit" in reply.message
    assert "add a worker" in reply.message and "--verify replicate" in reply.message
    # The quote (before a sealed or paid job) says so too, so no prompt is sealed in vain.
    quote = grid.coordinator.answer_quote(QuoteRequest(model="tiny", replicas=1, exposure=4))
    assert (
        isinstance(quote, Refusal) and quote.code == "no_capacity" and "--verify replicate" in quote.message
    )
    # In replicate mode the same lone worker runs a one-replica job.
    alone = Grid(n=1, config=CoordinatorConfig(verify="replicate", canary_rate=0.0, adaptive=False))
    alone.register()
    assert len(dispatches(alone.submit(1, replicas=1))) == 1


def test_a_claim_waits_for_a_busy_auditor_then_is_audited() -> None:
    grid = Grid(n=2, config=AUDIT)
    grid.register()
    one = grid.submit(1)
    two = grid.submit(2)
    first, second = dispatches(one)[0], dispatches(two)[0]
    assert {first.peer, second.peer} == {"w0", "w1"}
    waiting = grid.answer(first, HONEST)
    assert not audits(waiting), "the only other worker is busy generating"
    freed = grid.answer(second, HONEST)  # each prover's slot is free now: each audits the other's claim
    assert sorted(a.audit.job_id[-1] for a in audits(freed)) == [1, 2]
    for sent in audits(freed):
        assert isinstance(finished(grid.audit(sent)), JobAccepted)


def test_audit_is_the_default_and_replicate_stays_an_explicit_mode() -> None:
    assert CoordinatorConfig().verify == "audit"
    assert CoordinatorConfig.plain().verify == "replicate", "the experiments' baseline replicates"
    grid = Grid(n=3, config=CoordinatorConfig(verify="replicate"))
    grid.register()
    first = grid.submit(1, replicas=2)
    assert len(dispatches(first)) == 2 and not audits(first)


def test_a_prover_that_fails_is_replaced_before_any_audit() -> None:
    grid = Grid(n=3, config=AUDIT)
    grid.register()
    first = grid.submit(1)
    crashed = dispatches(first)[0]
    after = grid.fail(crashed)
    rerun = dispatches(after)
    assert len(rerun) == 1 and rerun[0].peer != crashed.peer and not audits(after)
    sent = audits(grid.answer(rerun[0], HONEST))
    assert sent[0].peer != crashed.peer  # offline until its next heartbeat
    reply = finished(grid.audit(sent[0]))
    assert isinstance(reply, JobAccepted) and crashed.peer in reply.failed


def test_a_paid_audited_job_pays_the_prover_first_then_the_auditor() -> None:
    grid = Grid(n=3, config=AUDIT)
    grid.register()
    ledger = grid.coordinator.ledger
    cost = job_cost(6, 1)  # a hold for one replica of 6 tokens: less than prover + auditor earn (5 + 3)
    for n in range(1, 20):  # w0 earns points to pay with, proving and auditing
        if ledger.balance(grid.key("w0")) >= cost:
            break
        grid.register(now=float(n))
        first = grid.submit(n, now=float(n))
        assert isinstance(finished(grid.drive_audited(first, honest, scores(), now=n + 0.5)), JobAccepted)
    assert ledger.balance(grid.key("w0")) >= cost
    payer = signing_key("w0")
    hold = Hold(job_id=job_id(20), amount=cost, coordinator=grid.coordinator.public_key)
    body = EntryBody(
        network=grid.coordinator.network,
        author=bytes(payer.verify_key),
        seq=1,
        prev=b"",
        payload=hold,
    )
    request = SubmitJob(
        job_id=job_id(20),
        model="tiny",
        prompt="paid",
        max_tokens=6,
        replicas=1,
        hold=encode_entry(sign_entry(payer, body)),
    )
    grid.register(now=20.0)
    first = grid.coordinator.handle(JobSubmitted(client="client", request=request), 20.0)
    assert ledger.held(grid.key("w0")) == cost
    effects = [*first, *grid.drive_audited(first, lambda peer, run: HONEST, scores(), now=20.5)]
    reply = finished(effects)
    assert isinstance(reply, JobAccepted)
    settle = [decode_body(e.entry.body).payload for e in of_type(effects, AppendEntry)][-1]
    n = len(HONEST.tokens)
    prover, auditor = reply.workers
    assert [(c.account, c.points) for c in settle.payouts] == [  # type: ignore[union-attr]
        (grid.key(prover), n),
        (grid.key(auditor), cost - n),  # what is left: 1 of its 3 points
    ]
    assert ledger.held(grid.key("w0")) == 0


def test_two_auditors_must_both_pass_and_both_are_credited() -> None:
    config = CoordinatorConfig(verify="audit", canary_rate=0.0, adaptive=False, auditors=2)
    grid = Grid(n=3, config=config)
    grid.register()
    first = grid.submit(1)
    sent = audits(grid.answer(dispatches(first)[0], HONEST))
    assert len(sent) == 2 and len({a.peer for a in sent}) == 2
    assert finished(grid.audit(sent[0])) is None, "one pass is not enough"
    reply = finished(grid.audit(sent[1]))
    assert isinstance(reply, JobAccepted) and len(_credits(reply)) == 3


def test_zero_auditors_still_audits_once() -> None:
    config = CoordinatorConfig(verify="audit", canary_rate=0.0, adaptive=False, auditors=0)
    grid = Grid(n=2, config=config)
    grid.register()
    first = grid.submit(1)
    assert len(audits(grid.answer(dispatches(first)[0], HONEST))) == 1


# ── adaptive audits (spec/verification.md §13.5) ──────────────────────────────────────────────────────
WINDOWS = CoordinatorConfig(
    verify="audit",
    canary_rate=0.0,
    adaptive=False,
    audit_full_rate=0.0,
    audit_second_rate=0.0,
    audit_min_positions=2,
    audit_window_skew=1.0,
)
"""Every trusted prover's claim on a window of at least 2 of HONEST's 5 positions."""


def _trust_everyone(grid: Grid) -> None:
    for peer in grid.workers:
        grid.coordinator.reputation[grid.key(peer)] = Reputation(streak=50, valid=50)


def test_a_trusted_provers_claim_is_scored_on_a_window_and_its_auditor_paid_for_the_window() -> None:
    grid = Grid(n=3, config=WINDOWS)
    grid.register()
    _trust_everyone(grid)
    n = len(HONEST.tokens)
    ends, full = set(), 0
    for job in range(1, 41):
        [sent] = audits(grid.answer(dispatches(grid.submit(job))[0], HONEST))
        end = sent.audit.score_end or n
        assert 2 <= end <= n
        ends.add(end)
        report = grid.audit_report(sent, CHEAT_GAP)
        assert report.verdict == "pass" and report.n_scored == end
        reply = finished(grid.deliver_report(sent, report))
        assert isinstance(reply, JobAccepted)
        assert _credits(reply)[grid.key(sent.peer)] == -(-end // 2)  # paid for the tokens it scored
        full += end == n
    assert ends == {2, 3, 4, 5}
    # Only answers audited in full become canaries' known answers: a window leaves the tail unchecked.
    assert len(grid.coordinator._known) == full


def test_a_new_provers_claim_is_scored_in_full_and_a_report_of_another_window_is_refused() -> None:
    grid = Grid(n=3, config=WINDOWS)
    grid.register()
    [sent] = audits(grid.answer(dispatches(grid.submit(1))[0], HONEST))
    assert sent.audit.score_end == 0, "no streak yet: every position is scored"
    short = msgspec.structs.replace(sent.audit, score_end=2)
    report = grid.workers[sent.peer].report(short, evidence_for(short, CHEAT_GAP))
    effects = grid.deliver_report(sent, report)
    assert finished(effects) is None
    assert [p.peer for p in of_type(effects, Penalize)] == [sent.peer]  # the auditor's fault


def test_a_cheat_in_the_first_positions_is_caught_by_every_window() -> None:
    for seed in range(12):
        grid = Grid(n=3, seed=seed, config=WINDOWS)
        grid.register()
        _trust_everyone(grid)
        run = dispatches(grid.submit(1))[0]
        [sent] = audits(grid.answer(run, cheat(1)))  # departs from the model at position 0
        effects = grid.audit(sent)
        assert finished(effects) is None and [p.peer for p in of_type(effects, Penalize)] == [run.peer]
        assert grid.coordinator.reputation[grid.key(run.peer)].invalid == 1


def test_a_second_audit_adds_a_full_auditor_when_one_is_left() -> None:
    config = CoordinatorConfig(verify="audit", canary_rate=0.0, adaptive=False, audit_second_rate=1.0)
    grid = Grid(n=3, config=config)
    grid.register()
    sent = audits(grid.answer(dispatches(grid.submit(1))[0], HONEST))
    assert len(sent) == 2 and all(a.audit.score_end == 0 for a in sent)
    assert finished(grid.audit(sent[0])) is None
    assert isinstance(finished(grid.audit(sent[1])), JobAccepted)
    alone = Grid(n=2, config=config)  # nobody is left for a second audit: one auditor, never a failure
    alone.register()
    [only] = audits(alone.answer(dispatches(alone.submit(1))[0], HONEST))
    assert isinstance(finished(alone.audit(only)), JobAccepted)


def test_a_disputed_audit_is_settled_by_an_exact_regeneration_and_the_lying_auditor_pays() -> None:
    """Exact replication as the tie-breaker (spec/verification.md §13.7): an auditor fails an honest claim;
    the job runs again on another prover of the same class, whose claim is bit-identical and passes another
    auditor: the first auditor lied, and it, not the framed prover, is blamed on the ledger."""
    grid = Grid(n=4, config=AUDIT)
    grid.register()
    first = dispatches(grid.submit(1))[0]
    sent = audits(grid.answer(first, HONEST))
    liar = sent[0].peer
    # A lying auditor: it fails the honest claim (a "problem" fails it whatever the evidence says).
    report = grid.workers[liar].report(sent[0].audit, evidence_for(sent[0].audit, 0.0), problem="framed")
    rejected = grid.deliver_report(sent[0], report)
    assert [p.peer for p in of_type(rejected, Penalize)] == [first.peer]
    rerun = dispatches(rejected)[0]
    second = audits(grid.answer(rerun, HONEST))  # the same output, bit for bit
    assert second[0].peer not in (liar, first.peer, rerun.peer)
    done = grid.audit(second[0])
    reply = finished(done)
    assert isinstance(reply, JobAccepted) and reply.text == HONEST.text
    assert [p.peer for p in of_type(done, Penalize)] == [liar]
    assert reply.failed == [liar], "the framed prover is not listed as failed"
    evidence = [decode_body(e.entry.body).payload for e in of_type(done, AppendEntry)]
    blamed = [p for p in evidence if isinstance(p, Evidence)]
    assert len(blamed) == 1 and blamed[0].invalid == (grid.key(liar),)
    assert grid.coordinator.reputation[grid.key(liar)].invalid == 1

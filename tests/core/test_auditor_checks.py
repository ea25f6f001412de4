"""Auditors are checked too (issue 14; spec/verification.md §13.6): canary audits whose verdict the
coordinator knows, split verdicts settled by a tie-break audit, and the auditor draw that skips an auditor
once it is caught. The coordinator and real WorkerLogic instances are wired back to back (grid_harness);
each auditor's engine is played by evidence that depends on what the model would say about the claim."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import pytest
from grid_harness import NETWORK, Grid, finished, of_type, open_receipt
from opengrid_ledger import Evidence, Receipt, open_entry

from opengrid.core.audit import PositionEvidence
from opengrid.core.coordinator import CoordinatorConfig
from opengrid.core.effects import AppendEntry, DispatchAudit, DispatchReplica, Effect, Penalize
from opengrid.core.events import AuditReturned
from opengrid.core.reputation import Reputation
from opengrid.core.worker import Output
from opengrid.errors import ConfigError
from opengrid.wire.messages import AuditJob, JobAccepted, RunJob

# Every audit full and no random second audit unless a test asks (the coordinator's defaults draw windows
# and 2 % second audits, which would change the draws these tests count on).
_FULL: dict[str, object] = {"audit_full_rate": 1.0, "audit_second_rate": 0.0}
AUDIT = CoordinatorConfig(verify="audit", canary_rate=0.0, adaptive=False, weighted=False, **_FULL)
CANARIES = CoordinatorConfig(
    verify="audit", canary_rate=0.0, adaptive=False, weighted=False, audit_canary_rate=1.0, **_FULL
)
SECOND = CoordinatorConfig(
    verify="audit",
    canary_rate=0.0,
    adaptive=False,
    weighted=False,
    audit_full_rate=1.0,
    audit_second_rate=1.0,
)
HONEST_GAP, CHEAT_GAP = 0.05, 12.0


def truth(prompt: str) -> Output:
    """What the model answers to ``prompt``: five tokens derived from it (distinct first tokens)."""
    digest = hashlib.sha256(prompt.encode()).digest()
    return Output(
        tokens=tuple(1000 + b for b in digest[:5]), text=f" the answer to {prompt}", finish_reason="length"
    )


def wrong(prompt: str) -> Output:
    return Output(tokens=(7, 8, 9), text=f" not the answer to {prompt}", finish_reason="length")


Prover = Callable[[str, RunJob], Output]
Auditor = Callable[[str, AuditJob], str]
"""An auditor's engine: "honest" (scores the claim against ``truth``), "pass" or "fail" (whatever the
claim is)."""


def honest_prover(peer: str, run: RunJob) -> Output:
    return truth(run.prompt)


def honest_auditor(peer: str, audit: AuditJob) -> str:
    return "honest"


def evidence(audit: AuditJob, how: str) -> list[PositionEvidence]:
    right = truth(audit.prompt)
    out: list[PositionEvidence] = []
    for i, token in enumerate(audit.tokens):
        ok = how == "pass" or (
            how == "honest"
            and i < len(right.tokens)
            and right.tokens[i] == token
            and audit.text == right.text
        )
        gap = HONEST_GAP if ok else CHEAT_GAP
        out.append(PositionEvidence(token=token, logprob=-gap, gap=gap, rank=0 if ok else 3, mask_margin=0.0))
    return out


def report(grid: Grid, dispatch: DispatchAudit, how: str, now: float = 2.0) -> list[Effect]:
    worker = grid.workers[dispatch.peer]
    assert worker.accept_audit(dispatch.audit) is None
    rep = worker.report(dispatch.audit, evidence(dispatch.audit, how))
    return grid.coordinator.handle(AuditReturned(dispatch.audit.job_id, dispatch.peer, rep), now)


def drive(
    grid: Grid, first: list[Effect], prover: Prover = honest_prover, auditor: Auditor = honest_auditor
) -> list[Effect]:
    """Answer every dispatch (canaries included: the workers cannot tell) until none is left; bounded."""
    queue = [e for e in first if isinstance(e, DispatchReplica | DispatchAudit)]
    produced: list[Effect] = []
    for _ in range(64):
        if not queue:
            break
        item = queue.pop(0)
        if isinstance(item, DispatchReplica):
            effects = grid.answer(item, prover(item.peer, item.run))
        else:
            effects = report(grid, item, auditor(item.peer, item.audit))
        produced += effects
        queue += [e for e in effects if isinstance(e, DispatchReplica | DispatchAudit)]
    assert not queue, "more than 64 dispatches: the job does not settle"
    return produced


def run(
    grid: Grid, job: int, prover: Prover = honest_prover, auditor: Auditor = honest_auditor
) -> list[Effect]:
    first = grid.submit(job, prompt=f"prompt {job}", now=float(job))
    return [*first, *drive(grid, first, prover, auditor)]


def payloads(effects: list[Effect]) -> list[object]:
    return [open_entry(e.entry, NETWORK).payload for e in of_type(effects, AppendEntry)]


def credits(reply: JobAccepted) -> dict[bytes, int]:
    _, receipt = open_receipt(reply.receipt)
    return {c.account: c.points for c in receipt.credits}


def test_a_canary_audit_is_an_ordinary_audit_job_whose_verdict_the_coordinator_knows() -> None:
    grid = Grid(n=6, config=CANARIES)
    grid.register()
    for job in (1, 2, 3):  # verified answers to keep (no canary audit can go out before there are two)
        assert isinstance(finished(run(grid, job)), JobAccepted)
    canaries: list[DispatchAudit] = []
    for job in range(4, 24):
        effects = run(grid, job)
        reply = finished(effects)
        assert isinstance(reply, JobAccepted) and reply.text == truth(f"prompt {job}").text
        real = {f"prompt {job}"}
        for sent in of_type(effects, DispatchAudit):
            if sent.audit.prompt not in real:
                canaries.append(sent)
    # One per claim whose audits start (rate 1), unless every free worker already saw the answers drawn.
    assert len(canaries) >= 12
    client_ids = {(j).to_bytes(16, "big") for j in range(1, 24)}
    expect_fail = 0
    for sent in canaries:
        audit = sent.audit
        assert audit.job_id not in client_ids and len(audit.job_id) == 16
        assert audit.tolerance == AUDIT.audit_tolerance and audit.temperature == 0.0
        known = truth(audit.prompt)
        if tuple(audit.tokens) != known.tokens:  # another verified answer's output: must fail
            expect_fail += 1
            assert audit.tokens[0] != known.tokens[0], "it departs from the model at position 0"
            assert any(tuple(audit.tokens) == truth(f"prompt {j}").tokens for j in range(1, 24))
    assert 0 < expect_fail < len(canaries), "both kinds are sent"
    # Honest auditors gave every canary its known verdict: nobody was penalised, everyone's record is clean.
    assert all(r.invalid == 0 for r in grid.coordinator.audit_reputation.values())
    assert sum(r.valid for r in grid.coordinator.audit_reputation.values()) >= 20 + len(canaries)


def test_a_right_pass_is_paid_like_an_audit_and_a_right_failure_is_not() -> None:
    grid = Grid(n=4, config=CANARIES)
    grid.register()
    for job in (1, 2, 3):
        run(grid, job)
    paid = unpaid = 0
    for job in range(4, 20):
        effects = run(grid, job)
        for sent in of_type(effects, DispatchAudit):
            if sent.audit.job_id == job.to_bytes(16, "big"):
                continue  # the client's claim
            receipts = [
                p for p in payloads(effects) if isinstance(p, Receipt) and p.job_id == sent.audit.job_id
            ]
            if tuple(sent.audit.tokens) == truth(sent.audit.prompt).tokens:  # must pass: paid as an audit
                assert [(c.account, c.points) for r in receipts for c in r.credits] == [
                    (grid.key(sent.peer), -(-len(sent.audit.tokens) // 2))
                ]
                assert [a.worker for r in receipts for a in r.attestations] == [grid.key(sent.peer)]
                paid += 1
            else:  # must fail: unpaid, as any failing audit
                assert receipts == []
                unpaid += 1
    assert paid > 0 and unpaid > 0


def test_an_auditor_that_always_passes_is_caught_by_a_canary_and_never_drawn_again() -> None:
    grid = Grid(n=5, config=CANARIES)
    grid.register()
    for job in (1, 2, 3):
        run(grid, job)
    liar = "w4"

    def stamps(peer: str, audit: AuditJob) -> str:
        return "pass" if peer == liar else "honest"

    caught_at = None
    for job in range(4, 40):
        effects = run(grid, job, auditor=stamps)
        assert isinstance(finished(effects), JobAccepted)
        penalised = [p for p in of_type(effects, Penalize) if p.peer == liar]
        if penalised:
            assert "canary audit" in penalised[0].why
            evidence = [p for p in payloads(effects) if isinstance(p, Evidence)]
            assert any(e.invalid == (grid.key(liar),) for e in evidence), "an EVIDENCE entry names it"
            caught_at = job
            break
    assert caught_at is not None, "caught within 36 jobs"
    assert grid.coordinator.audit_reputation[grid.key(liar)].invalid == 1
    assert grid.coordinator.reputation[grid.key(liar)].invalid == 1
    balance = grid.coordinator.ledger.balance(grid.key(liar))
    for job in range(caught_at + 1, caught_at + 21):
        effects = run(grid, job, auditor=stamps)
        assert isinstance(finished(effects), JobAccepted)
        assert all(a.peer != liar for a in of_type(effects, DispatchAudit)), "never drawn to audit again"
        for receipt in (p for p in payloads(effects) if isinstance(p, Receipt)):
            for attestation in receipt.attestations:  # paid as a prover only, never for an audit
                if attestation.worker == grid.key(liar):
                    assert receipt.credits[0].account == grid.key(liar)
    assert grid.coordinator.ledger.balance(grid.key(liar)) >= balance


def test_a_cartel_pass_is_contradicted_by_the_second_audit_and_the_tie_break_catches_both() -> None:
    grid = Grid(n=5, config=SECOND)
    grid.register()
    first = grid.submit(1, prompt="prompt 1")
    [claim] = [e for e in first if isinstance(e, DispatchReplica)]
    prover = claim.peer
    sent = of_type(grid.answer(claim, wrong("prompt 1")), DispatchAudit)
    assert len(sent) == 2 and all(a.audit.score_end == 0 for a in sent)
    partner, honest = sent
    assert finished(report(grid, partner, "pass")) is None  # the cartel's auditor passes the cheat
    split = report(grid, honest, "honest")
    assert finished(split) is None and not of_type(split, Penalize), "a split: nobody is judged yet"
    [tiebreak] = of_type(split, DispatchAudit)
    assert tiebreak.peer not in {prover, partner.peer, honest.peer}
    assert tiebreak.audit == sent[0].audit, "the tie-break scores the same claim and window"
    settled = report(grid, tiebreak, "honest")
    assert sorted(p.peer for p in of_type(settled, Penalize)) == sorted([prover, partner.peer])
    evidence = [p for p in payloads(settled) if isinstance(p, Evidence)]
    assert evidence == [], "the EVIDENCE entry comes with the job's end"
    rest = drive(grid, settled)
    reply = finished(rest)
    assert isinstance(reply, JobAccepted) and reply.text == truth("prompt 1").text
    assert grid.key(prover) not in credits(reply) and grid.key(partner.peer) not in credits(reply)
    [entry] = [p for p in payloads(rest) if isinstance(p, Evidence)]
    assert set(entry.invalid) == {grid.key(prover), grid.key(partner.peer)}
    assert grid.coordinator.audit_reputation[grid.key(partner.peer)].invalid == 1
    assert grid.coordinator.audit_reputation[grid.key(honest.peer)].valid >= 1
    for job in range(2, 12):  # the caught auditor is never drawn to audit again
        assert all(a.peer != partner.peer for a in of_type(run(grid, job), DispatchAudit))


def test_a_split_the_tie_break_passes_is_never_accepted_and_blames_nobody() -> None:
    grid = Grid(n=5, config=SECOND)
    grid.register()
    first = grid.submit(1, prompt="prompt 1")
    [claim] = [e for e in first if isinstance(e, DispatchReplica)]
    framer, honest = of_type(grid.answer(claim, truth("prompt 1")), DispatchAudit)
    assert finished(report(grid, framer, "fail")) is None
    [tiebreak] = of_type(report(grid, honest, "honest"), DispatchAudit)
    dropped = report(grid, tiebreak, "honest")
    # Two passes and a failure: a framer, or a prover with a colluding auditor and tie-breaker? The claim
    # is dropped and re-run (never accepted over a failure), and nobody is penalised for it.
    assert finished(dropped) is None and not of_type(dropped, Penalize)
    assert of_type(dropped, DispatchReplica), "the job runs again"
    reply = finished(drive(grid, dropped))
    assert isinstance(reply, JobAccepted) and reply.text == truth("prompt 1").text
    assert grid.coordinator.reputation[grid.key(claim.peer)].invalid == 0
    assert grid.key(framer.peer) not in grid.coordinator.audit_reputation or (
        grid.coordinator.audit_reputation[grid.key(framer.peer)].invalid == 0
    )


def test_an_auditor_that_fails_every_claim_is_caught_by_a_must_pass_canary() -> None:
    grid = Grid(n=5, config=CANARIES)
    grid.register()
    for job in (1, 2, 3):
        run(grid, job)
    framer = "w4"

    def frames(peer: str, audit: AuditJob) -> str:
        return "fail" if peer == framer else "honest"

    for job in range(4, 60):
        effects = run(grid, job, auditor=frames)
        reply = finished(effects)
        assert isinstance(reply, JobAccepted) and reply.text == truth(f"prompt {job}").text
        if grid.coordinator.audit_reputation.get(grid.key(framer), Reputation()).invalid:
            break
    assert grid.coordinator.audit_reputation[grid.key(framer)].invalid == 1
    for job in range(100, 110):
        assert all(a.peer != framer for a in of_type(run(grid, job), DispatchAudit))


def test_a_lone_auditor_failure_still_rejects_at_once() -> None:
    grid = Grid(n=4, config=AUDIT)
    grid.register()
    first = grid.submit(1, prompt="prompt 1")
    [claim] = [e for e in first if isinstance(e, DispatchReplica)]
    [sent] = of_type(grid.answer(claim, wrong("prompt 1")), DispatchAudit)
    rejected = report(grid, sent, "honest")
    assert [p.peer for p in of_type(rejected, Penalize)] == [claim.peer]
    assert of_type(rejected, DispatchReplica), "re-run on another prover, no tie-break"


def test_the_draw_weighs_auditors_by_their_record_as_auditors() -> None:
    def audits_of(peer: str, record: Reputation | None) -> int:
        config = CoordinatorConfig(verify="audit", canary_rate=0.0, adaptive=False)  # weighted draw
        grid = Grid(n=6, config=config)
        grid.register()
        if record is not None:
            grid.coordinator.audit_reputation[grid.key(peer)] = record
        return sum(a.peer == peer for job in range(1, 81) for a in of_type(run(grid, job), DispatchAudit))

    # The same seed and jobs, with and without a record as an auditor: a long one weighs up to 4x (the
    # others' records grow as they audit, so the gap narrows), a flaky one (timeouts unpaid) less.
    unknown = audits_of("w5", None)
    assert audits_of("w5", Reputation(streak=200, valid=200)) > 1.3 * unknown
    assert audits_of("w5", Reputation(timeouts=8, flaky=8)) < 0.5 * unknown


def test_a_canary_rate_outside_zero_to_one_is_refused() -> None:
    with pytest.raises(ConfigError, match="audit_canary_rate"):
        Grid(n=2, config=CoordinatorConfig(verify="audit", audit_canary_rate=1.5))

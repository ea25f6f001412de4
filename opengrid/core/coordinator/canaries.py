"""Canaries (spec/verification-adaptive.md): verified answers kept and now and then re-sent under a fresh
job id to one worker that never saw them; a different answer costs the worker its reputation. Canaries
never reach a client or the ledger.

Canary audits (audit mode, spec/verification.md §13.6): a known answer sent as an auditor's claim, whose
verdict the coordinator knows (the answer passes; another answer's output under its prompt fails); a wrong
verdict costs the auditor its reputation and its audits, and is recorded (EVIDENCE); a right pass is paid as
an audit is."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import replace

import msgspec
from opengrid_ledger import Attestation, Credit, Evidence, Receipt, verify_attestation

from opengrid.core.audit_policy import plan as plan_audit
from opengrid.core.audit_policy import scored_positions
from opengrid.core.coordinator.records import Canary, JobRecord, KnownAnswer
from opengrid.core.coordinator.shared import CoordinatorParts
from opengrid.core.effects import DispatchAudit, DispatchReplica, Effect, Penalize, SendReceipt
from opengrid.core.events import AuditReturned, ReplicaReturned
from opengrid.core.reputation import Reputation, agreed_prefix
from opengrid.core.scheduler import choose_class, pick_workers
from opengrid.errors import InvalidEntryError
from opengrid.wire.commitment import commit_output
from opengrid.wire.contract import DecodingContract
from opengrid.wire.messages import AuditJob, AuditReport, PromptFormat, RunJob

CANARY_AUDIT_PASS_SHARE = 0.5
"""Share of canary audits whose claim is a verified answer (must pass); the rest carry another verified
answer's output (must fail). Even odds: an auditor that always passes and one that always fails are each
caught by half of their canary audits."""


class CanariesPart(CoordinatorParts):
    """Known answers kept, canaries sent, their answers compared.

    A mixin of ``Coordinator`` over ``CoordinatorParts``.
    """

    def _keep_answer(self, job: JobRecord, commitment: bytes) -> None:
        """Keep ``job``'s verified answer for canaries; the workers it went to already know the prompt.
        The answer's tokens and text are kept too (from the result that carries ``commitment``), so it
        can also be sent as a canary audit's claim (spec/verification.md §13.6)."""
        results = job.results.values()
        claim = next((r for r, a in results if a.output_commitment == commitment and r.tokens), None)
        self.add_known_answer(
            job.request.prompt,
            job.contract,
            job.request.max_tokens,
            commitment,
            seen={self.workers[p].key for p in job.tried() if p in self.workers},
            format=job.request.format,
            claim=(tuple(claim.tokens), claim.text, claim.finish_reason) if claim is not None else None,
        )

    def add_known_answer(
        self,
        prompt: str,
        contract: DecodingContract,
        max_tokens: int,
        commitment: bytes,
        *,
        seen: Iterable[bytes] = (),
        format: PromptFormat = "text",
        claim: tuple[tuple[int, ...], str, str] | None = None,
    ) -> None:
        """Keep a verified answer for canaries (the coordinator does this for every job two or more
        workers agreed on, or one auditor passed in full; a driver may add answers a trusted node
        computed). ``seen``: worker keys that already know this prompt, never canaried with it.
        ``claim``: the answer's (tokens, text, finish reason), which canary audits need. The pool keeps
        the newest answers."""
        if self.config.canary_pool_size <= 0 or not contract.greedy:
            return  # a sampled answer is fixed by its own job id: a canary (a new job id) would differ
        tokens, text, finish = claim if claim is not None else ((), "", "")
        self._known.append(
            KnownAnswer(prompt, contract, max_tokens, commitment, set(seen), format, tokens, text, finish)
        )
        del self._known[: -self.config.canary_pool_size]

    def _maybe_canary_audit(self, job: JobRecord, now: float) -> list[Effect]:
        """With probability ``audit_canary_rate`` (drawn once per claim whose audits start), send one
        canary audit (spec/verification.md §13.6): a known answer of the same weights as ``job``, as an
        AuditJob under a fresh job id, to one worker drawn as auditors are (``_draw_auditors``) among the
        free ones that never saw some answer; the answer is drawn among those it never saw. With
        probability one half its claim is the answer itself (an honest auditor passes it); otherwise it is
        **another** unseen answer's output under this prompt, one that departs from the answer within the
        first ``audit_min_positions`` positions (an honest auditor fails it there, inside every window),
        or the answer itself when there is none. Its window is drawn as the claim's own would be, from
        ``job``'s prover's record."""
        rate = self.config.audit_canary_rate
        if rate <= 0 or self._rng.random() >= rate:
            return []
        sha = job.contract.model_sha256.lower()
        answers = [a for a in self._known if a.tokens and a.contract.model_sha256.lower() == sha]

        def fresh(key: bytes, peer: str) -> list[KnownAnswer]:
            """The answers this worker never saw and may take (its registered length limit)."""
            limit = self.workers[peer].max_job_tokens
            return [a for a in answers if key not in a.seen and (limit <= 0 or len(a.tokens) <= limit)]

        # The target first, drawn as an auditor is, among free workers with an answer they never saw;
        # then the answer (and for a must-fail canary, the other answer) among those.
        busy = {canary.peer for canary in self._canaries.values()}
        free = [
            c
            for c in self._candidates(sha)
            if c.peer not in busy and self._has_slot(c.peer) and fresh(c.key, c.peer)
        ]
        chosen = self._draw_auditors(free, 1, exclude=job.tried(), prover=job.prover)
        if not chosen:
            return []
        worker = chosen[0]
        unseen = fresh(worker.key, worker.peer)
        answer = self._rng.sample(unseen, 1)[0]
        source = answer
        if self._rng.random() >= CANARY_AUDIT_PASS_SHARE:
            # It must depart from the answer inside every window: within the first min_positions.
            reach = self._audit_plans.min_positions
            others = [
                b
                for b in unseen
                if b.prompt != answer.prompt
                and agreed_prefix(answer.tokens, b.tokens) < min(reach, len(b.tokens))
            ]
            if others:
                source = self._rng.sample(others, 1)[0]
        positions = len(source.tokens) + (1 if source.finish_reason == "stop" else 0)
        record = self.workers.get(job.prover)
        standing = self.reputation.get(record.key, Reputation()) if record is not None else Reputation()
        window = plan_audit(replace(self._audit_plans, second_rate=0.0), positions, standing, self._rng)
        greedy = answer.contract.greedy
        audit = AuditJob(
            job_id=self._fresh_canary_id(),
            contract=answer.contract,
            prompt=answer.prompt,
            tokens=list(source.tokens),
            text=source.text,
            finish_reason=source.finish_reason,
            format=answer.format,
            temperature=0.0 if greedy else answer.contract.temperature,
            top_k=0 if greedy else max(0, answer.contract.top_k),
            top_p=1.0 if greedy else answer.contract.top_p_value,
            seed=0 if greedy else answer.contract.seed,
            tolerance=self.config.audit_tolerance,
            score_end=window.score_end,
        )
        answer.seen.add(worker.key)
        source.seen.add(worker.key)
        self._occupy(worker.peer)
        self._canaries[audit.job_id] = Canary(
            peer=worker.peer,
            key=worker.key,
            answer=answer,
            sent_at=now,
            deadline=now + self.config.replica_timeout_s,
            audit=audit,
            expect_pass=source is answer,
            wall_ms=job.wall_ms,
        )
        return [DispatchAudit(peer=worker.peer, audit=audit)]

    def _on_canary_audit_returned(self, event: AuditReturned, now: float) -> list[Effect]:
        """A canary audit's report: the right verdict is paid as the same verdict on a client's claim
        would be (a pass: a receipt crediting the auditor for the positions it scored; a failure:
        nothing) and counts as a valid audit; a wrong one, or an inconsistent report, is the auditor's
        fault: ``invalid`` (as an auditor, so it is never drawn to audit again, and in general), an
        EVIDENCE entry, no pay (spec/verification.md §13.6)."""
        canary = self._canaries.get(event.job_id)
        if canary is None or canary.peer != event.peer or canary.audit is None:
            return []
        del self._canaries[event.job_id]
        self._release(event.peer)
        audit = canary.audit
        verdict = self._judge_canary_report(canary, audit, event.report)
        if isinstance(verdict, str) or (verdict is not None) != canary.expect_pass:
            why = (
                verdict
                if isinstance(verdict, str)
                else (
                    f"its audit {event.report.verdict}ed a claim whose verdict is known to be "
                    f"{'pass' if canary.expect_pass else 'fail'} (max gap {event.report.max_gap:.3f} logits)"
                )
            )
            self._record_auditor(event.peer, "invalid")
            return [
                *self._author(Evidence(job_id=audit.job_id, invalid=(canary.key,))),
                Penalize(peer=event.peer, why=f"canary audit: {why}"),
            ]
        self._record_auditor(event.peer, "valid")
        self._record(canary.key, "valid")
        if verdict is None:
            return []  # a right failure: unpaid, as an auditor that fails a client's claim is
        positions = len(audit.tokens) + (1 if audit.finish_reason == "stop" else 0)
        scored = min(len(audit.tokens), scored_positions(positions, audit.score_end))
        weight = self.class_weight(audit.contract)
        points = -(-max(1, scored) // max(1, self.config.audit_credit_divisor)) * weight
        receipt = Receipt(
            job_id=audit.job_id,
            contract_hash=audit.contract.digest(),
            output_commitment=verdict.output_commitment,
            n_tokens=len(audit.tokens),
            credits=(Credit(account=canary.key, points=points),),
            attestations=(verdict,),
            issued_at_ms=canary.wall_ms,
            weight=weight,
        )
        return [*self._author(receipt), SendReceipt(peer=event.peer, notice=self._notice_for(event.peer))]

    def _judge_canary_report(
        self, canary: Canary, audit: AuditJob, report: AuditReport
    ) -> Attestation | str | None:
        """As ``_check_report`` judges a client claim's report: the auditor's attestation of the claim on
        a consistent pass, None on a consistent failure, or why the report is inconsistent."""
        positions = len(audit.tokens) + (1 if audit.finish_reason == "stop" else 0)
        expected = scored_positions(positions, audit.score_end)
        if report.job_id != audit.job_id:
            return "audit report names another job"
        if report.verdict == "fail":
            if report.n_scored > expected or not report.reason or report.first_failure >= expected:
                return f"inconsistent failing report ({report.n_scored} of {expected} positions scored)"
            return None
        if report.n_scored != expected:
            return f"audit report scored {report.n_scored} positions; the claim has {expected}"
        if report.first_failure != -1 or report.max_gap > self.config.audit_tolerance:
            return f"audit report passes a claim with a gap of {report.max_gap:.3f} logits"
        try:
            attestation = msgspec.msgpack.decode(report.attestation, type=Attestation)
            verify_attestation(attestation, self.network, scheme=self._scheme)
        except (msgspec.DecodeError, UnicodeDecodeError, InvalidEntryError) as exc:
            return f"bad auditor attestation: {exc}"
        claim = (
            canary.key,
            audit.job_id,
            audit.contract.digest(),
            commit_output(audit.tokens, audit.text),
            len(audit.tokens),
        )
        signed = (
            attestation.worker,
            attestation.job_id,
            attestation.contract_hash,
            attestation.output_commitment,
            attestation.n_tokens,
        )
        if signed != claim:
            return "auditor attestation does not match the claim it audited"
        return attestation

    def _maybe_canary(self, now: float) -> list[Effect]:
        """With probability ``canary_rate``, re-send a known answer's prompt to one worker, as a new job.
        Replication only: in audit mode every claim is re-scored already, and a canary is judged by exact
        match within a decoding contract that does not name the CPU's instruction set, so an honest
        worker on another build would fail it (spec/verification.md §12.3, §13.7)."""
        if self.config.verify == "audit":
            return []
        if self.config.canary_rate <= 0 or not self._known or self._rng.random() >= self.config.canary_rate:
            return []
        answer = self._rng.sample(self._known, 1)[0]
        busy = {canary.peer for canary in self._canaries.values()}
        pool = [
            self._candidate(r, o)
            for r in self.workers.values()
            if r.online and r.key not in answer.seen and r.peer not in busy and self._has_slot(r.peer)
            for o in r.offers
            if o.contract == answer.contract
        ]
        chosen = pick_workers(choose_class(pool), 1, exclude=(), rng=self._rng)
        if not chosen:
            return []
        worker = chosen[0]
        canary_id = self._fresh_canary_id()
        answer.seen.add(worker.key)
        self._occupy(worker.peer)
        self._canaries[canary_id] = Canary(
            peer=worker.peer,
            key=worker.key,
            answer=answer,
            sent_at=now,
            deadline=now + self.config.replica_timeout_s,
        )
        run = RunJob(
            job_id=canary_id,
            contract=answer.contract,
            prompt=answer.prompt,
            max_tokens=answer.max_tokens,
            format=answer.format,
        )
        return [DispatchReplica(peer=worker.peer, run=run)]

    def _fresh_canary_id(self) -> bytes:
        while True:
            self._canary_count += 1
            candidate = hashlib.blake2b(
                self._canary_count.to_bytes(8, "big"), key=self._canary_secret, digest_size=16
            ).digest()
            if candidate not in self._jobs and candidate not in self._canaries:
                if self.ledger.receipt_for(candidate) is None:
                    return candidate

    def _on_canary_returned(self, event: ReplicaReturned, now: float) -> list[Effect]:
        canary = self._canaries.get(event.job_id)
        if canary is None or canary.peer != event.peer:
            return []
        answer = canary.answer
        problem = self._check_result(
            event.peer, event.job_id, answer.contract, answer.max_tokens, event.result
        )
        if isinstance(problem, str):
            return self._on_canary_failed(event.job_id, event.peer, problem, penalize=True)
        del self._canaries[event.job_id]
        self._release(event.peer)
        if problem.output_commitment != answer.commitment:
            self._record(canary.key, "invalid")
            return [
                Penalize(peer=event.peer, why="canary: output differs from a verified answer to the same job")
            ]
        self._record(canary.key, "valid")
        self._measure(event.peer, len(event.result.tokens), now - canary.sent_at)
        return []

    def _on_canary_failed(self, canary_id: bytes, peer: str, reason: str, *, penalize: bool) -> list[Effect]:
        canary = self._canaries.get(canary_id)
        if canary is None or canary.peer != peer:
            return []
        del self._canaries[canary_id]
        self._release(peer)
        self._record(canary.key, "invalid" if penalize else "timeout")
        if penalize:
            return [Penalize(peer=peer, why=f"canary: {reason}")]
        record = self.workers.get(peer)
        if record is not None:
            record.online = False  # as for any failed replica: no new work until it beats again
        return []

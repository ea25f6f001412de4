"""Audit mode (spec/verification.md §13): the prover's claim sent to auditors holding the same weights,
their reports checked, a failing claim rejected (the prover penalised, the job re-run), a silent auditor
replaced, and a claim every auditor passed accepted with a receipt crediting prover and auditors.
Auditors are checked too (§13.6): they are drawn by their record as auditors (``_draw_auditors``, never one
caught), and a split between a claim's auditors is settled by a tie-break audit (``_settle_verdicts``);
canary audits are in canaries.py."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import msgspec
from opengrid_ledger import Attestation, Credit, Receipt, Refund, Settle, verify_attestation

from opengrid.core.audit_policy import AuditPlan, scored_positions
from opengrid.core.audit_policy import plan as plan_audit
from opengrid.core.coordinator.group_credit import member_keys, merged, worker_credits
from opengrid.core.coordinator.payments import payouts_in_order
from opengrid.core.coordinator.records import JobRecord, audit_job_for
from opengrid.core.coordinator.shared import CoordinatorParts
from opengrid.core.coordinator.state import JobEvent, JobState, move
from opengrid.core.effects import (
    AppendEntry,
    CancelReplica,
    DispatchAudit,
    Effect,
    FinishJob,
    Penalize,
    SendReceipt,
)
from opengrid.core.events import AuditReturned
from opengrid.core.reputation import Outcome, Reputation
from opengrid.core.scheduler import Candidate, pick_workers
from opengrid.errors import InvalidEntryError
from opengrid.wire.messages import AuditJob, AuditReport, JobAccepted, ReplicaResult, Sealed


class AuditsPart(CoordinatorParts):
    """Audit mode: claims sent to auditors, reports checked, claims rejected, replaced or accepted.

    A mixin of ``Coordinator`` over ``CoordinatorParts``.
    """

    def _start_audits(self, job: JobRecord, now: float) -> list[Effect]:
        """Send the prover's claim to as many auditors as it still needs: online workers holding the same
        weights (any numerical class), not the prover nor any worker already on the job, on another
        operator than the prover's when one is free. With none free now the claim waits for a slot
        (``_drain``); with none left at all the job fails, since it could not be checked."""
        job_id = job.request.job_id
        tried = job.tried()
        pool = [
            c
            for c in self._candidates(
                job.contract.model_sha256, allowed=job.sealed or None, max_tokens=job.request.max_tokens
            )
            if c.peer not in tried
        ]
        pool = [c for c in pool if not self._barred_auditor(c.key)]  # caught auditors audit no more
        if not job.contract.greedy:  # a sampled claim is scored by workers that run its sampler (§11)
            pool = [c for c in pool if c.contract.runs_seeded_sampler]
        if job.sealed:  # only workers the prover sealed its claim to (all the sealed-to ones it was told of)
            readers = set(job.readers.get(job.prover, ()))
            pool = [c for c in pool if c.key in readers]
        new_claim = job.plan is None
        if job.plan is None:
            job.plan = self._plan_audit(job, len(pool))
        # A split verdict gets one tie-break auditor on top of the plan's (§13.6).
        needed = (
            job.plan.auditors
            + (1 if job.tiebreak else 0)
            - len(job.audited)
            - len(job.audits)
            - len(job.audit_fails)
        )
        if needed <= 0:
            self._audit_wait.pop(job_id, None)
            return []
        free = [c for c in pool if self._has_slot(c.peer)]
        chosen = self._draw_auditors(free, needed, exclude=tried, prover=job.prover)

        def canaries() -> list[Effect]:
            """Once per claim, after its own auditors took their slots (a canary never delays a claim)."""
            return self._maybe_canary_audit(job, now) if new_claim else []

        if chosen:
            effects: list[Effect] = []
            audit = self._chunked_audit_job(job) or self._audit_job(job)  # streaming.py: chunked claims
            for candidate in chosen:
                job.audits[candidate.peer] = now + self.config.replica_timeout_s
                self._occupy(candidate.peer)
                personal = self._sealed_audit_job(job, audit, candidate.peer) if job.sealed else audit
                effects.append(DispatchAudit(peer=candidate.peer, audit=personal))
                effects += self._chunks_for(job, candidate.peer)  # a chunked claim so far
            if len(chosen) >= needed:
                self._audit_wait.pop(job_id, None)
            else:
                self._audit_wait[job_id] = None
            return effects + canaries()
        if job.audits:
            return canaries()  # the pending audits may still pass it; a later failure looks again
        if any(c.peer not in tried for c in pool):
            self._audit_wait[job_id] = None  # auditors exist but are busy: wait for a slot
            return canaries()
        if job.sealed:  # only the sealed-to workers can audit it: a fresh seal can reach others (§5)
            return self._fail(
                job_id,
                "no_capacity",
                f"no worker this sealed job was sealed to is left to audit the answer of {job.prover} "
                f"({len(job.failed)} failed, {len(job.invalid)} invalid, of {len(job.sealed)}); quote again "
                "and seal the prompt to other workers under a fresh job id (the SDK does)",
            )
        return self._fail(
            job_id,
            "verification_failed",
            f"no worker is left to audit the answer of {job.prover} (the job's output is never accepted "
            f"unchecked; {len(job.failed)} worker(s) failed on it); add workers serving {job.model_name!r}",
        )

    def _barred_auditor(self, key: bytes) -> bool:
        """An auditor caught once (a wrong canary verdict, or the losing side of a split settled by a
        tie-break: §13.6) is never drawn to audit again, as a prover caught once is audited in full for
        good (§13.5): one lie proves what its passes are worth."""
        return self.audit_reputation.get(key, Reputation()).invalid > 0

    def _draw_auditors(
        self, pool: Sequence[Candidate], needed: int, *, exclude: set[str], prover: str
    ) -> list[Candidate]:
        """Draw ``needed`` auditors from ``pool`` (free workers holding the weights), none in ``exclude``
        and none caught lying (``_barred_auditor``), weighted by their record **as auditors**
        (``audit_reputation``; uniform without ``config.weighted``), on another operator than the prover's
        when one is free (preferred, not required). The one place auditors (and canary audits' targets)
        are chosen (spec/verification.md §13.1, §13.6)."""
        eligible = [
            replace(c, reputation=self.audit_reputation.get(c.key, Reputation()).score)
            if self.config.weighted
            else c
            for c in pool
            if not self._barred_auditor(c.key)
        ]
        chosen = pick_workers(
            eligible, needed, exclude=exclude, rng=self._rng, exclude_operators=self._operators([prover])
        )
        if len(chosen) < needed:  # another operator is preferred, not required
            taken = exclude | {c.peer for c in chosen}
            chosen += pick_workers(
                eligible,
                needed - len(chosen),
                exclude=taken,
                rng=self._rng,
                exclude_operators=self._operators(taken),
            )
        return chosen

    def _record_auditor(self, peer: str, outcome: Outcome) -> None:
        """Fold an audit outcome into the auditor's record as an auditor (and, for an offence, into its
        general reputation too: a worker that lies as an auditor is a suspect as a prover)."""
        record = self.workers.get(peer)
        if record is None:
            return
        self._update_auditor(record.key, outcome)
        if outcome == "invalid":
            self._record(record.key, "invalid")

    def _update_auditor(self, key: bytes, outcome: Outcome) -> None:
        """The one writer of ``audit_reputation``: fold ``outcome`` into ``key``'s record as an auditor and
        journal it (``audit_journal``), so a restart keeps a caught auditor barred."""
        updated = self.audit_reputation.get(key, Reputation()).update(outcome)
        self.audit_reputation[key] = updated
        if self.audit_journal is not None:
            self.audit_journal.record(key, updated)

    def _plan_audit(self, job: JobRecord, available: int) -> AuditPlan:
        """Draw the current claim's audit plan (``audit_policy.plan``, spec/verification.md §13.5), now
        that the prover is committed to it. A second audit's extra auditor is dropped when no worker is
        left to take it: a claim is never failed for want of the extra check."""
        _result, _ = job.results[job.prover]
        record = self.workers.get(job.prover)
        # A split group is audited as its weakest participant (spec/split.md §6).
        standing = self._standing(record) if record is not None else Reputation()
        positions = _claim_positions(job)[0]
        planned = plan_audit(self._audit_plans, positions, standing, self._rng)
        if planned.auditors > self._auditors and available < planned.auditors:
            planned = replace(planned, auditors=self._auditors)
        return planned

    def _drain_audits(self, now: float) -> list[Effect]:
        """Offer free slots to claims waiting for auditors, oldest first."""
        effects: list[Effect] = []
        for job_id in list(self._audit_wait):
            job = self._jobs.get(job_id)
            if job is None or (job.state is not JobState.AUDITING and job.chunked is None):
                self._audit_wait.pop(job_id, None)
                continue
            effects += self._start_audits(job, now)
        return effects

    def _audit_job(self, job: JobRecord) -> AuditJob:
        """The AuditJob for the job's current claim: the prover's tokens under its contract's sampler."""
        result, _ = job.results[job.prover]
        return audit_job_for(
            job,
            tolerance=self.config.audit_tolerance,
            tokens=list(result.tokens),
            text=result.text,
            finish_reason=result.finish_reason,
            score_end=job.plan.score_end if job.plan is not None else 0,
        )

    def _sealed_audit_job(self, job: JobRecord, audit: AuditJob, auditor: str) -> AuditJob:
        """A sealed job's AuditJob for one auditor (spec/sealed-mode.md §11): the client's prompt
        ciphertext made for it, the prover's claim sealed to it and the prover's attestation; no
        plaintext (we hold none). A chunked audit (spec/verification.md §14.3) gets the prover's key instead
        of its claim: the claim follows in sealed chunks, and the whole of it in the final chunk."""
        if audit.chunked:
            return msgspec.structs.replace(
                audit,
                sealed_prompt=job.sealed[auditor],
                client_box_key=job.request.client_box_key,
                prover_key=self.workers[job.prover].key,
            )
        result, _ = job.results[job.prover]
        key = self.workers[auditor].key
        claim = next(c.ciphertext for c in result.sealed_claims if c.reader == key)  # checked on arrival
        return msgspec.structs.replace(
            audit,
            sealed_prompt=job.sealed[auditor],
            client_box_key=job.request.client_box_key,
            sealed_claim=claim,
            claim_attestation=result.attestation,
        )

    def _sealed_claims_problem(self, job: JobRecord, peer: str, result: ReplicaResult) -> str | None:
        """Why a sealed prover's result cannot be audited (its fault: penalised, replaced), or None: it must
        carry its claim sealed to exactly the keys it was given (``RunJob.readers``), once each."""
        wanted = set(job.readers.get(peer, ()))
        keys = [c.reader for c in result.sealed_claims]
        if len(set(keys)) != len(keys) or set(keys) != wanted:
            return (
                f"a sealed, audited result must carry its claim sealed to each of the {len(wanted)} other "
                f"worker(s) the job was sealed to; it carried {len(keys)} ({len(set(keys) & wanted)} of them)"
            )
        return None

    def _check_report(self, job: JobRecord, peer: str, report: AuditReport) -> Attestation | str | None:
        """A passing report's attestation, None for a well-formed failing report, or why the report is
        unacceptable (the auditor's fault). The coordinator cannot re-score (it holds no model); it checks
        that the report is consistent with the claim and the tolerance it sent."""
        record = self.workers.get(peer)
        if record is None:
            return "audit report from an unregistered worker"
        _, prover_att = job.results[job.prover]
        # A sealed claim's finish reason is sealed too: it scored n or n + 1 positions (n + 1 if it stopped).
        counts = _claim_positions(job)
        if job.plan is not None:  # a partial audit scores its window only (§13.5)
            counts = tuple(sorted({scored_positions(c, job.plan.score_end) for c in counts}))
        expected = counts[-1]
        if report.job_id != job.request.job_id:
            return "audit report names another job"
        if (
            report.verdict == "fail"
        ):  # it may stop at a position it cannot score (a token outside its vocabulary)
            if report.n_scored > expected:
                return f"audit report scored {report.n_scored} positions; the claim has {expected}"
            if not report.reason:
                return "a failing audit report must say why"
            if report.first_failure >= expected:
                return f"audit report fails position {report.first_failure} of {expected}"
            return None
        if report.n_scored not in counts:
            return f"audit report scored {report.n_scored} positions; the claim has {expected}"
        if report.first_failure != -1 or report.max_gap > self.config.audit_tolerance:
            return (
                f"audit report passes a claim with a gap of {report.max_gap:.3f} logits (tolerance "
                f"{self.config.audit_tolerance}) or a failing position ({report.first_failure})"
            )
        try:
            attestation = msgspec.msgpack.decode(report.attestation, type=Attestation)
            verify_attestation(attestation, self.network, scheme=self._scheme)
        except (msgspec.DecodeError, UnicodeDecodeError, InvalidEntryError) as exc:
            return f"bad auditor attestation: {exc}"
        claim = (record.key, job.request.job_id, job.contract.digest(), prover_att.output_commitment)
        signed = (
            attestation.worker,
            attestation.job_id,
            attestation.contract_hash,
            attestation.output_commitment,
        )
        if signed != claim or attestation.n_tokens != prover_att.n_tokens:
            return "auditor attestation does not match the claim it audited"
        if job.sealed and not report.sealed_output:
            return "a passing sealed audit must seal the claim it checked to the client"
        return attestation

    def _on_audit_returned(self, event: AuditReturned, now: float) -> list[Effect]:
        if event.job_id in self._canaries:
            return self._on_canary_audit_returned(event, now)
        job = self._jobs.get(event.job_id)
        if job is None or event.peer not in job.audits:
            return []  # late or unsolicited
        del job.audits[event.peer]
        self._release(event.peer)
        checked = self._check_report(job, event.peer, event.report)
        if isinstance(checked, str):  # a broken or lying report: the auditor's fault, and it is replaced
            job.invalid.append(event.peer)
            if event.peer in self.workers:
                self._record(self.workers[event.peer].key, "invalid")
            effects: list[Effect] = [Penalize(peer=event.peer, why=f"audit report: {checked}")]
            return effects + self._replace_auditor(job, now)
        if checked is not None:
            job.audited[event.peer] = checked
            if job.sealed:
                job.sealed_copies[event.peer] = event.report.sealed_output
        else:
            job.audit_fails[event.peer] = event.report
        return self._settle_verdicts(job, now)

    def _settle_verdicts(self, job: JobRecord, now: float) -> list[Effect]:
        """Decide the claim from the verdicts in (spec/verification.md §13.2, §13.6). A claim is accepted
        only when every auditor passed it (and enough did). Only failures: rejected, once no pending audit
        could contradict them (a lone auditor's failure rejects at once). Passes and failures (a *split*):
        one more auditor, on another operator, scores the same window (the tie-break). If failures then
        outnumber passes, the prover and every auditor that passed are caught (``invalid``, an EVIDENCE
        entry, unpaid; the auditors never drawn to audit again). Otherwise the claim is dropped and the
        job re-run, and nobody is blamed: two passes against a failure may be a framer's lie or a pair of
        colluders' — the client is never given a claim an auditor failed, and a framer is left to canary
        audits, which it cannot tell from claims."""
        passes, fails = job.audited, job.audit_fails
        target = job.plan.auditors if job.plan is not None else self._auditors
        if not fails:
            return self._accept_audited(job) if len(passes) >= target else self._start_audits(job, now)
        if job.audits:
            return []  # a pending verdict may contradict the ones in: wait for it
        if not passes:
            first = min(fails)
            return self._reject_claim(job, first, fails[first], now)
        if not job.tiebreak:
            job.tiebreak = True
            return self._start_audits(job, now)
        blame = len(fails) > len(passes)
        effects: list[Effect] = []
        if blame:
            effects = self._catch_auditors(job, sorted(passes), "passed a claim the tie-break audit failed")
            for peer in sorted(fails):  # confirmed: right verdicts (unpaid, as any failure)
                self._record_auditor(peer, "valid")
        first = min(fails)
        return effects + self._reject_claim(job, first, fails[first], now, blame_prover=blame)

    def _catch_auditors(self, job: JobRecord, peers: Sequence[str], why: str) -> list[Effect]:
        """Auditors on the losing side of a settled split: ``invalid`` (as auditors and in general),
        named in the job's EVIDENCE entry, uncredited, never drawn to audit again."""
        effects: list[Effect] = []
        for peer in peers:
            job.audited.pop(peer, None)
            job.audit_fails.pop(peer, None)
            job.sealed_copies.pop(peer, None)
            job.invalid.append(peer)
            self._record_auditor(peer, "invalid")
            effects.append(Penalize(peer=peer, why=f"as an auditor it {why}"))
        return effects

    def _reject_claim(
        self, job: JobRecord, auditor: str, report: AuditReport, now: float, *, blame_prover: bool = True
    ) -> list[Effect]:
        """An auditor failed the prover's claim: the prover is penalised (like an outvoted replica) and
        earns nothing; the job runs again on another prover, within ``max_failovers``. Without
        ``blame_prover`` (a split left tied) the claim is dropped and re-run, and nobody is penalised."""
        prover = job.prover
        claimed = job.results.pop(prover, None)
        if claimed is not None:  # kept for the tie-break (``_vindicate``)
            job.rejected.append((prover, auditor, claimed[1].output_commitment))
        job.prover = ""
        move(job, JobEvent.CLAIM_REJECTED)
        effects: list[Effect] = []
        if blame_prover:
            job.invalid.append(prover)
            record = self.workers.get(prover)
            if record is not None:
                self._record(record.key, "invalid")
            # A split group's members co-signed this output: they fail with their head (spec/split.md §6).
            members = tuple(member_keys(claimed[0])) if claimed is not None else ()
            job.rejected_members[prover] = members
            for member in members:
                job.invalid_members.append(member)
                self._record(member, "invalid")
            effects.append(
                Penalize(
                    peer=prover,
                    why=f"its output failed the audit by {auditor} (max gap {report.max_gap:.3f} logits, "
                    f"tolerance {self.config.audit_tolerance}): {report.reason}",
                )
            )
        effects += self._cancel_audits(job)
        job.audited.clear()
        job.audit_fails.clear()
        job.tiebreak = False
        job.sealed_copies.clear()
        job.plan = None  # the next prover's claim gets its own plan
        self._audit_wait.pop(job.request.job_id, None)
        if job.failovers >= self.config.max_failovers:
            return effects + self._fail(
                job.request.job_id,
                "verification_failed",
                f"the outputs of {len(job.invalid)} worker(s) failed their audits and {job.failovers} "
                "replacement(s) were used up; retry later",
            )
        job.failovers += 1
        return effects + self._refill(job, now)

    def _on_audit_failed(self, job_id: bytes, peer: str, reason: str, now: float) -> list[Effect]:
        """An auditor erred, vanished or timed out: like a failed replica, it goes offline until its next
        heartbeat, and another auditor takes its place (within ``max_failovers``)."""
        if job_id in self._canaries:
            return self._on_canary_failed(job_id, peer, reason, penalize=False)
        job = self._jobs.get(job_id)
        if job is None or peer not in job.audits:
            return []
        del job.audits[peer]
        self._release(peer)
        job.failed.append(peer)
        record = self.workers.get(peer)
        if record is not None:
            record.online = False
            self._record(record.key, "timeout")
        return self._replace_auditor(job, now)

    def _replace_auditor(self, job: JobRecord, now: float) -> list[Effect]:
        if job.failovers >= self.config.max_failovers:
            return self._fail(
                job.request.job_id,
                "verification_failed",
                f"{job.failovers} replacement(s) used up and the answer was not audited; retry later",
            )
        job.failovers += 1
        return self._start_audits(job, now)

    def _cancel_audits(self, job: JobRecord) -> list[Effect]:
        """Stop the job's pending audits and free their slots."""
        for peer in job.audits:
            self._release(peer)
        effects: list[Effect] = [
            CancelReplica(peer=peer, job_id=job.request.job_id) for peer in sorted(job.audits)
        ]
        job.audits.clear()
        return effects

    def _vindicate(self, job: JobRecord, accepted: bytes) -> list[Effect]:
        """The tie-break of a disputed audit (spec/verification.md §13.7): a claim that was rejected and
        that the accepted prover, of the same numerical class, reproduced exactly (same commitment), and
        another auditor passed, was honest. Its auditor failed an honest claim: it is penalised and goes
        into the job's EVIDENCE entry as invalid in place of the prover it framed, who is credited a valid
        outcome (its earlier ``invalid`` stays in memory until a restart rebuilds reputations from the
        ledger)."""
        effects: list[Effect] = []
        for framed, liar, commitment in job.rejected:
            if commitment != accepted or liar == job.prover or liar in job.audited:
                continue  # (a failing auditor may prove next: then it is paid for its own claim, not blamed)
            if framed in job.invalid:
                job.invalid.remove(framed)
            job.invalid.append(liar)
            if liar in self.workers:
                self._record(self.workers[liar].key, "invalid")
            if framed in self.workers:
                self._record(self.workers[framed].key, "valid")
            for member in job.rejected_members.pop(framed, ()):  # framed with their head
                if member in job.invalid_members:
                    job.invalid_members.remove(member)
                self._record(member, "valid")
            effects.append(
                Penalize(
                    peer=liar,
                    why=f"its audit failed the claim of {framed}, which another prover reproduced exactly "
                    "and another auditor passed",
                )
            )
        return effects

    def _accept_audited(self, job: JobRecord) -> list[Effect]:
        """Every auditor passed the claim: sign a receipt crediting the prover ``max(1, n) * weight`` and
        each auditor ``ceil(max(1, s) / audit_credit_divisor) * weight`` for the ``s`` tokens it scored
        (``n`` unless its window was partial), and answer the client."""
        job_id = job.request.job_id
        prover = job.prover
        result, prover_att = job.results[prover]
        auditors = sorted(job.audited)
        n_tokens = prover_att.n_tokens
        vindicated = self._vindicate(job, prover_att.output_commitment)
        for peer in (prover, *auditors):
            self._record(self.workers[peer].key, "valid")
        for peer in auditors:
            self._update_auditor(self.workers[peer].key, "valid")
        self._measure(prover, n_tokens, job.elapsed.get(prover, 0.0))
        # An answer audited in full is a verified one: good for canaries. A window leaves its tail unchecked
        # (§13.5), and a canary with a wrong known answer would punish the honest workers it is sent to.
        if job.request.prompt and (job.plan is None or job.plan.full):
            self._keep_answer(job, prover_att.output_commitment)
        evidence = self._evidence(job)
        points = max(1, n_tokens) * job.weight
        # Auditors are paid for the tokens they scored: a partial audit's window (§13.5), else all of them.
        scored = n_tokens if job.plan is None or job.plan.full else min(n_tokens, job.plan.end)
        audit_points = -(-max(1, scored) // max(1, self.config.audit_credit_divisor)) * job.weight
        keys = {peer: self.workers[peer].key for peer in (prover, *auditors)}
        # A split group's head shares the prover's points with its members, by layers (spec/split.md §8).
        credits, attestations, members = merged(
            [
                *worker_credits(result, prover_att, points),
                *((Credit(account=keys[a], points=audit_points), job.audited[a], False) for a in auditors),
            ]
        )
        for member in member_keys(result):  # audited with the prover: as reputation_from_ledger rebuilds it
            self._record(member, "valid")
        receipt = Receipt(
            job_id=job_id,
            contract_hash=job.contract.digest(),
            output_commitment=prover_att.output_commitment,
            n_tokens=n_tokens,
            credits=credits,
            attestations=attestations,
            members=members,
            issued_at_ms=job.wall_ms,
            weight=job.weight,
        )
        entry = self._sign_own(receipt)
        encoded = self._own_entries[-1]
        effects: list[Effect] = [*vindicated, *evidence, AppendEntry(entry)]
        if job.hold:  # the prover is paid first, then the auditors, out of the hold; the rest goes back
            payouts = payouts_in_order(receipt.credits, job.hold_amount)
            effects += self._author(
                Settle(hold=job.hold, payouts=payouts) if payouts else Refund(hold=job.hold)
            )
        effects += self._cancel_pending(job)
        effects += [SendReceipt(peer=p, notice=self._notice_for(p)) for p in (prover, *auditors)]
        reply = JobAccepted(
            job_id=job_id,
            text=result.text,  # empty for a sealed job: its answer is the prover's sealed output
            tokens=list(result.tokens),
            finish_reason=result.finish_reason,
            receipt=encoded,
            workers=[prover, *auditors],
            failed=sorted(set(job.failed) | set(job.invalid)),
            # The prover's sealed output, then each auditor's copy of the claim it passed: the client opens
            # the first that matches the receipt, as it does among agreeing replicas.
            sealed_outputs=[
                Sealed(peer_id=prover, ciphertext=result.sealed_output),
                *(Sealed(peer_id=a, ciphertext=job.sealed_copies[a]) for a in auditors),
            ]
            if job.sealed
            else [],
        )
        move(job, JobEvent.ACCEPTED)
        del self._jobs[job_id]
        effects.append(FinishJob(job_id, reply))
        return effects


def _claim_positions(job: JobRecord) -> tuple[int, ...]:
    """The positions the current claim has (§12.1: its tokens, plus one if it stopped), smallest first. A
    sealed claim's tokens and finish reason are sealed: its attested count ``n`` gives ``(n, n + 1)``."""
    result, attestation = job.results[job.prover]
    if job.sealed:
        return (attestation.n_tokens, attestation.n_tokens + 1)
    return (len(result.tokens) + (1 if result.finish_reason == "stop" else 0),)

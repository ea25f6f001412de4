"""What comes back from replicas: a result checked against its attestation, agreement judged and the
job accepted with a signed receipt (``_accept``), a failed or refused replica replaced, and reputations
learned from the verdict (spec/verification.md §5, §9; spec/job-protocol.md §6.4)."""

from __future__ import annotations

import msgspec
from opengrid_ledger import Attestation, Credit, Receipt, Refund, Settle, verify_attestation

from opengrid.core.coordinator.group_credit import group_problem, member_keys, merged, worker_credits
from opengrid.core.coordinator.payments import payouts
from opengrid.core.coordinator.records import JobRecord
from opengrid.core.coordinator.shared import CoordinatorParts
from opengrid.core.coordinator.state import JobEvent, move
from opengrid.core.effects import AppendEntry, Effect, FinishJob, Penalize, SendReceipt
from opengrid.core.events import ReplicaFailed, ReplicaReturned
from opengrid.core.reputation import Outcome, Reputation, affords_divergence, looks_like_honest_divergence
from opengrid.core.verifier import Agreement, judge
from opengrid.errors import InvalidEntryError
from opengrid.wire.commitment import commit_output
from opengrid.wire.contract import DecodingContract
from opengrid.wire.messages import JobAccepted, ReplicaResult, Sealed


class ResultsPart(CoordinatorParts):
    """Replica results checked and judged; failures and refusals; acceptance and what it teaches.

    A mixin of ``Coordinator`` over ``CoordinatorParts``.
    """

    def _on_returned(self, event: ReplicaReturned, now: float) -> list[Effect]:
        if event.job_id in self._canaries:
            return self._on_canary_returned(event, now)
        job = self._jobs.get(event.job_id)
        if job is None or event.peer not in job.pending:
            return []  # late or unsolicited: the job is settled, or this peer was never asked
        problem = self._check_result(
            event.peer,
            job.request.job_id,
            job.contract,
            job.request.max_tokens,
            event.result,
            sealed=bool(job.sealed),
        )
        if isinstance(problem, str):
            return self._on_failed(event.job_id, event.peer, problem, now, penalize=True)
        if job.audit and job.sealed:  # a sealed claim must reach every possible auditor (sealed-mode.md §11)
            missing = self._sealed_claims_problem(job, event.peer, event.result)
            if missing is not None:
                return self._on_failed(event.job_id, event.peer, missing, now, penalize=True)
        lied = self.progress_contradiction(event.job_id, event.peer, event.result.tokens)
        lied = lied or self.sealed_chunks_contradiction(event.job_id, event.peer, problem.n_tokens)
        if lied is not None:  # its frames said one thing, its result another (spec/verification.md §14)
            return self._on_failed(event.job_id, event.peer, lied, now, penalize=True)
        sent_at = job.pending.pop(event.peer) - self.config.replica_timeout_s
        self._release(event.peer)
        job.elapsed[event.peer] = now - sent_at
        job.results[event.peer] = (event.result, problem)
        if job.audit:
            job.prover = event.peer
            move(job, JobEvent.CLAIMED)
            return self._audit_claim(job, now)  # streaming.py: a chunked claim's audit ends, or one starts
        commitments = {peer: att.output_commitment for peer, (_, att) in job.results.items()}
        agreement = judge(commitments, job.replicas)
        if agreement is not None:
            contradiction = self.stream_contradiction(job, agreement)
            if contradiction is not None:  # verified chunks are never taken back: no answer instead
                return self._fail(event.job_id, "verification_failed", contradiction)
            return self._accept(job, agreement)
        if not job.pending:
            move(job, JobEvent.DRAINED)
        if not job.pending and len(job.results) >= job.target:  # every replica answered: disagreement
            if job.target >= job.replicas + self.config.max_extra_replicas:
                return self._fail(
                    event.job_id,
                    "verification_failed",
                    f"{len(job.results)} workers returned {len(set(commitments.values()))} different outputs "
                    "and no majority reached quorum; the model may not be deterministic across these workers",
                )
            job.target += 1  # disagreement: ask one more worker, majority decides
        return self._refill(job, now)

    def _check_result(
        self,
        peer: str,
        job_id: bytes,
        contract: DecodingContract,
        max_tokens: int,
        result: ReplicaResult,
        *,
        sealed: bool = False,
    ) -> Attestation | str:
        """Return the result's verified attestation, or a reason to reject it.

        In sealed mode the coordinator sees no tokens: it checks the attestation and its claimed length,
        and compares commitments; the client checks the output against the commitment it receives.
        """
        record = self.workers.get(peer)
        if record is None:
            return "result from an unregistered worker"
        if result.job_id != job_id:
            return "result names another job"
        if len(result.tokens) > max_tokens:
            return f"{len(result.tokens)} tokens returned, limit was {max_tokens}"
        try:
            attestation = msgspec.msgpack.decode(result.attestation, type=Attestation)
            verify_attestation(attestation, self.network, scheme=self._scheme)
        except (msgspec.DecodeError, UnicodeDecodeError, InvalidEntryError) as exc:
            return f"bad attestation: {exc}"
        if sealed:
            if result.tokens or result.text or not result.sealed_output:
                return "a sealed job's result must carry only a sealed output"
            if attestation.n_tokens > max_tokens:
                return f"{attestation.n_tokens} tokens attested, limit was {max_tokens}"
            commitment = attestation.output_commitment  # salted: only the client can check it
            n_tokens = attestation.n_tokens
        else:
            commitment = commit_output(result.tokens, result.text)
            n_tokens = len(result.tokens)
        expected = (
            record.key,
            job_id,
            contract.digest(),
            commitment,
        )
        actual = (
            attestation.worker,
            attestation.job_id,
            attestation.contract_hash,
            attestation.output_commitment,
        )
        if actual != expected or attestation.n_tokens != n_tokens:
            return "attestation does not match the result or the job"
        group = group_problem(result, attestation, self.network, self._scheme)  # a split group's members
        return group if group is not None else attestation

    def _on_failed(
        self, job_id: bytes, peer: str, reason: str, now: float, *, penalize: bool
    ) -> list[Effect]:
        if job_id in self._canaries:
            return self._on_canary_failed(job_id, peer, reason, penalize=penalize)
        job = self._jobs.get(job_id)
        if job is None or peer not in job.pending:
            return []
        del job.pending[peer]
        self._release(peer)
        if not job.pending:
            move(job, JobEvent.DRAINED)
        effects: list[Effect] = self._drop_chunked(job, peer)  # a streaming prover's auditors stop too
        record = self.workers.get(peer)
        if penalize:
            job.invalid.append(peer)
            effects.append(Penalize(peer=peer, why=reason))
        else:
            job.failed.append(peer)
            if record is not None:
                record.online = False  # no new work until its next heartbeat shows it alive
        if record is not None:
            self._record(record.key, "invalid" if penalize else "timeout")
        if job.single:  # the trusted worker let us down: the job falls back to the client's replicas
            job.single, job.replicas, job.target = False, job.request.replicas, job.request.replicas
        if job.failovers >= self.config.max_failovers:
            if job.sealed:  # as when its workers are used up: the client seals afresh to others
                failed = ", ".join(sorted({*job.failed, *job.invalid}))
                return effects + self._fail(
                    job_id,
                    "no_capacity",
                    f"{job.failovers + 1} workers failed on this sealed job ({failed}); quote again and "
                    "seal the prompt to other workers under a fresh job id (the SDK does)",
                )
            return effects + self._fail(
                job_id, "verification_failed", f"{job.failovers} workers failed on this job; retry later"
            )
        job.failovers += 1
        return effects + self._refill(job, now)

    def _on_client_fault(self, event: ReplicaFailed, now: float) -> list[Effect]:
        """A worker refused the client's input (its prompt and max_tokens exceed the context, the prompt
        is empty, a sealed prompt does not open for it). The worker is not blamed: it stays online, earns
        no EVIDENCE entry and frees its slot. One refusal could be a lazy worker's excuse, so the job fails
        with the client's error only once ``client_fault_quorum`` workers refused it, or when no other
        worker is left to ask or still running; until then it goes to another worker
        (spec/job-protocol.md §6.4)."""
        if event.job_id in self._canaries:  # we wrote the canary's input: a refusal is the worker's fault
            return self._on_failed(event.job_id, event.peer, event.reason, now, penalize=False)
        job = self._jobs.get(event.job_id)
        if job is None or event.peer not in job.pending:
            return []
        del job.pending[event.peer]
        self._release(event.peer)
        if not job.pending:
            move(job, JobEvent.DRAINED)
        job.refused[event.peer] = event.reason
        untried = [
            c
            for c in self._candidates(
                job.request.model, allowed=job.sealed or None, max_tokens=job.request.max_tokens
            )
            if c.contract == job.contract.numerical_class() and c.peer not in job.tried()
        ]
        if len(job.refused) >= self.config.client_fault_quorum or not (untried or job.pending):
            return self._fail(
                event.job_id,
                "malformed",
                f"{len(job.refused)} worker(s) refused the job's input: {event.reason}",
            )
        if job.single:  # as after any failure: the job falls back to the client's replicas
            job.single, job.replicas, job.target = False, job.request.replicas, job.request.replicas
        if not untried:
            return []  # a replica still running confirms the refusal (no replica is cut off), or answers
        return self._refill(job, now)

    def _accept(self, job: JobRecord, agreement: Agreement) -> list[Effect]:
        job_id = job.request.job_id
        winning = [job.results[peer] for peer in agreement.peers]
        tokens = winning[0][0].tokens  # empty in sealed mode
        n_tokens = winning[0][1].n_tokens
        divergent = self._learn(job, agreement, n_tokens)
        evidence = self._evidence(job)  # before the receipt: those outcomes came first
        points = max(1, n_tokens) * job.weight  # proportional to compute (spec/ledger.md §7)
        keys = {peer: self.workers[peer].key for peer in job.results}
        # A split group's head shares its points with its members, by layers (spec/split.md §8).
        credits, attestations, members = merged(
            [pair for r, att in winning for pair in worker_credits(r, att, points)]
        )
        receipt = Receipt(
            job_id=job_id,
            contract_hash=job.contract.digest(),
            output_commitment=agreement.commitment,
            n_tokens=n_tokens,
            credits=credits,
            attestations=attestations,
            members=members,
            dissenters=_dissenters(job, agreement, keys, credits),
            issued_at_ms=job.wall_ms,
            weight=job.weight,
        )
        entry = self._sign_own(receipt)
        encoded = self._own_entries[-1]
        effects: list[Effect] = [*evidence, AppendEntry(entry)]
        if job.hold:  # the client pays the agreeing workers out of its hold; the rest returns to it
            shares = payouts(receipt.credits, job.hold_amount)
            effects += self._author(
                Settle(hold=job.hold, payouts=shares) if shares else Refund(hold=job.hold)
            )
        effects += self._cancel_pending(job)
        effects += [
            Penalize(
                peer=p,
                why="diverged from the majority after the first half (looks like honest rounding: no credit, "
                "replicated again, no offence)"
                if p in divergent
                else "output disagreed with the majority",
            )
            for p in agreement.dissenters
        ]
        effects += [SendReceipt(peer=p, notice=self._notice_for(p)) for p in agreement.peers]
        first = winning[0][0]
        reply = JobAccepted(
            job_id=job_id,
            text=first.text,
            tokens=list(tokens),
            finish_reason=first.finish_reason,
            receipt=encoded,
            workers=list(agreement.peers),
            dissenters=list(agreement.dissenters),
            failed=sorted(set(job.failed) | set(job.invalid)),
            sealed_outputs=[
                Sealed(peer_id=p, ciphertext=job.results[p][0].sealed_output) for p in agreement.peers
            ]
            if job.sealed
            else [],
        )
        move(job, JobEvent.ACCEPTED)
        del self._jobs[job_id]
        effects.append(FinishJob(job_id, reply))
        return effects

    def _dissent_outcome(self, job: JobRecord, agreement: Agreement, peer: str) -> Outcome:
        """``divergent`` for an outvoted result that looks like honest rounding (open mode only: the
        coordinator must see both token lists) from a worker whose record affords it, else ``invalid``
        (spec/verification.md §9)."""
        if job.sealed:
            return "invalid"
        winner = job.results[agreement.peers[0]][0].tokens
        dissent = job.results[peer][0].tokens
        reputation = self.reputation.get(self.workers[peer].key, Reputation())
        if looks_like_honest_divergence(winner, dissent) and affords_divergence(reputation):
            return "divergent"
        return "invalid"

    def _learn(self, job: JobRecord, agreement: Agreement, n_tokens: int) -> set[str]:
        """Update reputations from a settled job, and keep its answer for canaries if it was verified.
        Return the dissenters whose outputs looked like honest divergence."""
        divergent: set[str] = set()
        for peer in agreement.dissenters:
            outcome = self._dissent_outcome(job, agreement, peer)
            self._record(self.workers[peer].key, outcome)
            for member in member_keys(job.results[peer][0]):  # a group outvoted: its members with it
                self._record(member, outcome)
            if outcome == "divergent":
                divergent.add(peer)
        if len(agreement.peers) < 2:
            return divergent  # one result checked by nobody: proves nothing about anyone (trusted single)
        for peer in agreement.peers:
            self._record(self.workers[peer].key, "valid")
            for member in member_keys(job.results[peer][0]):  # as reputation_from_ledger rebuilds it
                self._record(member, "valid")
            self._measure(peer, n_tokens, job.elapsed.get(peer, 0.0))
        if job.request.sealed or not job.request.prompt:
            return divergent  # sealed mode: the coordinator never saw the prompt, so it cannot replay it
        self._keep_answer(job, agreement.commitment)
        return divergent


def _dissenters(
    job: JobRecord, agreement: Agreement, keys: dict[str, bytes], credits: tuple[Credit, ...]
) -> tuple[bytes, ...]:
    """The receipt's dissenters: each outvoted worker's account and, for an outvoted split group, its
    members' (they co-signed the losing output: spec/split.md §6), once each and none credited (the
    ledger's rule: a key credited for the winning output, e.g. as a member of the winning group, is not
    also a dissenter)."""
    outvoted = [keys[p] for p in agreement.dissenters]
    outvoted += [m for p in agreement.dissenters for m in member_keys(job.results[p][0])]
    credited = {c.account for c in credits}
    return tuple(k for k in dict.fromkeys(outvoted) if k not in credited)

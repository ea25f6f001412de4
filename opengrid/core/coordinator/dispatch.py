"""Getting jobs onto workers: a submission checked and admitted (or refused with a typed error), the
fair queue drained into free worker slots, replicas refilled after a failure or a disagreement, adaptive
replication's "trusted single result", and the per-worker slot count."""

from __future__ import annotations

import msgspec

from opengrid.core.coordinator.records import JobRecord
from opengrid.core.coordinator.registry import no_sampler, takes_job, too_long
from opengrid.core.coordinator.shared import CoordinatorParts
from opengrid.core.coordinator.state import JobEvent, JobState, move
from opengrid.core.coordinator.streaming import audit_streamed, sealed_streamed
from opengrid.core.effects import DispatchReplica, Effect, FinishJob
from opengrid.core.events import JobSubmitted
from opengrid.core.queueing import in_good_standing
from opengrid.core.refusal import Refusal
from opengrid.core.reputation import Reputation, replication_probability
from opengrid.core.scheduler import Candidate, capacity, choose_class, pick_workers
from opengrid.wire.messages import MAX_PROMPT_CHARS, ErrorReply, RunJob, SubmitJob, job_cost


class DispatchPart(CoordinatorParts):
    """Submission checks, the fair queue drained into worker slots, refills, trusted single results.

    A mixin of ``Coordinator`` over ``CoordinatorParts``.
    """

    def _on_submitted(self, event: JobSubmitted, now: float, *, bounded: bool = True) -> list[Effect]:
        """Check a job and queue it for its replicas (refusing it with a typed error), then offer the free
        slots to the queue. ``bounded``: refuse it if the queue is full (not for jobs taken back after a
        restart, which were accepted once already)."""
        request = event.request
        job_id = request.job_id
        if job_id in self._jobs or self.ledger.receipt_for(job_id) is not None:
            return [
                FinishJob(job_id, ErrorReply("malformed", "job id already used; pick a fresh one", job_id))
            ]
        if problem := _input_problem(request):  # whatever path it came by (a node's API builds its own)
            return [FinishJob(job_id, problem.reply(job_id))]
        if self.config.require_payment and not request.hold:
            weight = self.weight(request.model, max_tokens=request.max_tokens) or 1
            return [
                FinishJob(
                    job_id,
                    ErrorReply(
                        "payment_required",
                        "this coordinator runs only paid jobs: submit with an identity (the SDK's "
                        "Client(identity_seed=...)) whose points pay a HOLD of "
                        f"{job_cost(request.max_tokens, request.replicas, weight)} points (max_tokens x "
                        f"replicas x {weight} points per token of {request.model!r}); "
                        "a new identity can claim the network's starting grant (GrantRequest)",
                        job_id,
                    ),
                )
            ]
        sealed = {s.peer_id: s.ciphertext for s in request.sealed}
        if request.sealed:
            problem = _sealed_problem(request, sealed)
            if problem is not None:
                return [FinishJob(job_id, problem.reply(job_id))]
        any_length = self._candidates(request.model, allowed=sealed or None)
        # The same list as _candidates(..., max_tokens=...), without scoring every worker a second time.
        fitting = [c for c in any_length if takes_job(self.workers[c.peer], request.max_tokens)]
        unsealed = any_length  # _candidates(request.model) when not sealed, before the sampler filter
        if request.temperature > 0:
            # A sampled job runs on a class that runs its own sampler (spec/verification.md §11): the job's
            # class is chosen here, and every later replica, prover and refill matches that class.
            samplers = [c for c in any_length if c.contract.runs_seeded_sampler]
            if any_length and not samplers:
                return [FinishJob(job_id, no_sampler(request.model, request.temperature).reply(job_id))]
            any_length, fitting = samplers, [c for c in fitting if c.contract.runs_seeded_sampler]
        candidates = choose_class(fitting)
        if any_length and not candidates:
            longest = max(self.workers[c.peer].max_job_tokens for c in any_length)
            return [FinishJob(job_id, too_long(request.model, longest).reply(job_id))]
        audit = self.config.verify == "audit"
        if sealed and audit and candidates:
            refused = self._sealed_audit_problem(request, sealed, candidates[0].contract.model_sha256)
            if refused is not None:
                return [FinishJob(job_id, refused.reply(job_id))]
        elif sealed and capacity(candidates) < request.replicas and self._candidates(request.model):
            # The model is served here, only not by enough of the workers the prompt was sealed to (they
            # went offline since the quote): a fresh quote can do (spec/sealed-mode.md §5).
            offline = sorted(p for p in sealed if p not in self.workers or not self.workers[p].online)
            return [
                FinishJob(
                    job_id,
                    ErrorReply(
                        "no_capacity",
                        f"only {capacity(candidates)} of the {len(sealed)} workers this sealed job was "
                        f"sealed to can run it now, fewer than {request.replicas} replicas; offline: "
                        f"{', '.join(offline) or 'none'}; quote again and seal the prompt to other workers "
                        "under a fresh job id (the SDK does)",
                        job_id,
                    ),
                )
            ]
        if not candidates:
            served = ", ".join(self.served_models()) or "none yet"
            return [
                FinishJob(
                    job_id,
                    ErrorReply(
                        "unknown_model",
                        f"no online worker serves model {request.model!r}; served here: {served}",
                        job_id,
                    ),
                )
            ]
        available = capacity(candidates)
        if audit and not sealed:  # a sealed job's prover and auditors were checked above
            # One prover of the job's class, and auditors among every worker holding the same weights.
            unauditable = self._audit_capacity_problem(request.model, unsealed)
            if unauditable is not None:
                return [FinishJob(job_id, unauditable.reply(job_id))]
        elif available < request.replicas:
            return [
                FinishJob(
                    job_id,
                    ErrorReply(
                        "no_capacity",
                        f"job asks for {request.replicas} replicas of {request.model!r} but only "
                        f"{available} worker(s) on distinct operators serve it; lower replicas or wait "
                        "for workers",
                        job_id,
                    ),
                )
            ]
        full = self._queue.admit(event.client) if bounded else ""
        if full:
            return [
                FinishJob(
                    job_id,
                    ErrorReply(
                        "busy",
                        f"this coordinator is saturated: {full}; retry later or on another coordinator",
                        job_id,
                    ),
                )
            ]
        # Take the payment last: every check above can refuse the job without touching the ledger.
        weight = self.class_weight(candidates[0].contract)
        hold_effects: list[Effect] = []
        hold_id, hold_amount = b"", 0
        if request.hold:
            held, hold_effects = self._take_hold(request, weight)
            if isinstance(held, Refusal):
                return [*hold_effects, FinishJob(job_id, held.reply(job_id))]
            hold_id = held
            hold_amount = self.ledger.hold(hold_id).amount  # type: ignore[union-attr]  # just applied
        job = JobRecord(
            request=request,
            client=event.client,
            wall_ms=event.wall_ms,
            contract=request.job_contract(candidates[0].contract),  # the class + the client's sampling
            model_name=candidates[0].model_name,
            deadline=now + self.config.job_timeout_s,
            target=request.replicas,
            replicas=request.replicas,
            sealed=sealed,
            hold=hold_id,
            hold_amount=hold_amount,
            weight=weight,
        )
        if audit:  # one prover; its claim is audited (``_start_audits``) before it is accepted
            job.audit, job.target, job.replicas = True, 1, 1
        self._jobs[job_id] = job
        self._queue.push(job_id, event.client, request.priority, preferred=self._preferred(job))
        return hold_effects + self._drain(now) + self._maybe_canary(now)

    def _drain(self, now: float) -> list[Effect]:
        """Offer the free worker slots to the waiting jobs, in the queue's order (interactive first,
        clients in turn); each job takes what it can and keeps its place if it still needs more. Claims
        waiting for a free auditor go first: their generation is already paid for."""
        effects: list[Effect] = self._drain_audits(now) if self._audit_wait else []
        if not self._queue:
            return effects
        full: set[tuple[str, tuple[str, ...]]] = set()
        """(model, sealed-to peers) whose workers are all busy: slots only get taken during a drain, so
        later jobs for the same model need not look again."""
        for job_id in self._queue.order():
            job = self._jobs.get(job_id)
            if job is None or job_id not in self._queue:  # pragma: no cover - removed with its job
                self._queue.remove(job_id)
                continue
            wanted = (job.request.model.lower(), tuple(sorted(job.sealed)))
            if wanted in full:
                continue
            candidates = self._candidates(
                job.request.model, allowed=job.sealed or None, max_tokens=job.request.max_tokens
            )
            if not any(self._has_slot(c.peer) for c in candidates):
                if (
                    job.sealed
                    and job.state is JobState.QUEUED
                    and job.tried().issuperset(c.peer for c in candidates)
                ):
                    # None of the workers it was sealed to is online and untried (they died or went
                    # silent while it waited): fail it now, not at its deadline, so that the client
                    # seals afresh to others (spec/sealed-mode.md §5). An open job waits on: its pool
                    # is every worker, back online with their next heartbeat.
                    effects += self._refill(job, now)
                    continue
                full.add(wanted)
                continue
            effects += self._refill(job, now)
        return effects

    def _preferred(self, job: JobRecord) -> bool:
        """Does ``job`` go ahead of open jobs in the queue (spec/job-protocol.md §8.1)? A paid job does
        (its HOLD was applied), and so does a job submitted by a volunteer in good standing: the client's
        peer id (an API node's, for its users' jobs: ``peer/user``) is a worker registered here whose
        reputation adaptive replication trusts."""
        if job.hold:
            return True
        record = self.workers.get(job.client.split("/", 1)[0])
        if record is None:
            return False
        reputation = self.reputation.get(record.key, Reputation())
        return in_good_standing(reputation, min_trust_streak=self.config.min_trust_streak)

    def _has_slot(self, peer: str) -> bool:
        record = self.workers.get(peer)
        return record is not None and self._in_flight.get(peer, 0) < record.slots

    def _occupy(self, peer: str) -> None:
        self._in_flight[peer] = self._in_flight.get(peer, 0) + 1

    def _release(self, peer: str) -> None:
        left = self._in_flight.get(peer, 0) - 1
        if left > 0:
            self._in_flight[peer] = left
        else:
            self._in_flight.pop(peer, None)

    def _refill(self, job: JobRecord, now: float) -> list[Effect]:
        """Dispatch replicas to free workers until results + pending reach the job's target; wait in the
        queue for the rest while busy workers could still run them; fail if no worker is left at all."""
        job_id = job.request.job_id
        missing = job.target - len(job.results) - len(job.pending)
        if missing <= 0:
            self._queue.remove(job_id)
            return []
        first = not job.tried()
        tried = job.tried()
        allowed = job.sealed or None
        # The job's own class, whichever class is largest now (a sampled job's class is one that runs its
        # sampler, chosen at submission; another class may have grown since).
        pool = choose_class(
            c
            for c in self._candidates(job.request.model, allowed=allowed, max_tokens=job.request.max_tokens)
            if c.contract == job.contract.numerical_class()
        )
        if job.audit and not any(c.peer not in tried for c in pool):
            pool = self._other_class(job, tried) or pool
        free = [c for c in pool if self._has_slot(c.peer)]
        chosen = pick_workers(
            free, missing, exclude=tried, rng=self._rng, exclude_operators=self._operators(tried)
        )
        if first and chosen and not job.audit and self._runs_alone(job, chosen[0]):
            job.single, job.replicas, job.target = True, 1, 1
            chosen, missing = chosen[:1], 1
        effects: list[Effect] = []
        run = RunJob(
            job_id=job.request.job_id,
            contract=job.contract,
            prompt=job.request.prompt,
            max_tokens=job.request.max_tokens,
            format=job.request.format,
        )
        for candidate in chosen:
            job.pending[candidate.peer] = now + self.config.replica_timeout_s
            self._occupy(candidate.peer)
            if job.sealed:  # each worker gets the ciphertext made for it alone
                personal = msgspec.structs.replace(
                    run, sealed_prompt=job.sealed[candidate.peer], client_box_key=job.request.client_box_key
                )
                if job.audit:  # sealed audits: it seals its claim to the others the prompt was sealed to
                    personal = msgspec.structs.replace(
                        personal, readers=self._sealed_readers(job, candidate.peer)
                    )
                    job.readers[candidate.peer] = tuple(personal.readers)
                    if job.request.stream:  # it streams sealed chunks, cut by our policy (verification §14.3)
                        personal = msgspec.structs.replace(
                            personal,
                            stream=True,
                            chunk_first=self._chunk_policy.first,
                            chunk_max=self._chunk_policy.largest,
                        )
                effects.append(DispatchReplica(peer=candidate.peer, run=personal))
            else:
                effects.append(DispatchReplica(peer=candidate.peer, run=run))
        if chosen:
            move(job, JobEvent.DISPATCHED)
            if audit_streamed(job) or sealed_streamed(job):  # its auditors open their sessions while it
                # prefills (spec/verification.md §14.2, §14.3)
                effects += self._open_streamed_claim(job, chosen[0].peer, now)
                if job_id not in self._jobs:
                    return effects  # no worker is left to audit it: the job failed
        short = missing - len(chosen)
        if short > 0:
            taken = tried | {c.peer for c in chosen}
            operators = self._operators(taken)
            later = capacity(c for c in pool if c.peer not in taken and c.operator not in operators)
            if later >= short:  # busy workers can run the rest once they free up: wait for them
                if job_id in self._queue:
                    if chosen:
                        self._queue.served(job_id, done=False)
                else:  # a job that already started goes ahead of its client's jobs that have not
                    self._queue.push(
                        job_id,
                        job.client,
                        job.request.priority,
                        front=bool(tried),
                        preferred=self._preferred(job),
                    )
                return effects
        self._queue.served(job_id, done=True)
        if not job.pending and len(job.results) + len(chosen) < job.target:
            if job.sealed and (job.failed or not job.results):
                # Only the sealed-to workers can run it, and failures (or silence) used them up: a fresh
                # quote and a fresh seal can still succeed on others, which ``no_capacity`` tells the
                # client to try (spec/sealed-mode.md §5). A disagreement alone stays
                # ``verification_failed``.
                effects += self._fail(job_id, "no_capacity", self._sealed_used_up(job))
                return effects
            effects += self._fail(
                job.request.job_id,
                "verification_failed" if job.results else "no_capacity",
                f"ran out of workers for {job.model_name!r}: {len(job.results)} result(s) without quorum, "
                f"{len(job.failed)} worker(s) failed; add workers or lower replicas",
            )
        return effects

    def _sealed_audit_problem(
        self, request: SubmitJob, sealed: dict[str, bytes], model_sha256: str
    ) -> Refusal | None:
        """Why a sealed job cannot be audited here (spec/sealed-mode.md §11), or None. Its prover and its
        auditors all come from the workers the prompt was sealed to (they alone can read it): too few sealed
        to is the client's choice (``malformed``: seal to more); too few of them online holding the weights
        is ``no_capacity`` (a fresh quote and seal can do, as for any sealed job)."""
        needed = 1 + self._auditors
        unauditable = self._audit_capacity_problem(model_sha256)
        if unauditable is not None:  # too few workers here at all: no seal can help
            return unauditable
        if len(sealed) < needed:
            return Refusal(
                "malformed",
                f"this coordinator audits every job: a sealed job needs a prover and {self._auditors} "
                f"auditor(s) among the workers its prompt is sealed to, so at least {needed} of them, but it "
                f"is sealed to {len(sealed)}; seal it to {needed} or more "
                f"(Client.complete(exposure={needed}) or more; the SDK's default exposure is replicas + 2)",
            )
        serving = {c.peer for c in self._candidates(model_sha256, allowed=sealed)}
        if len(serving) >= needed:
            return None
        offline = sorted(p for p in sealed if p not in self.workers or not self.workers[p].online)
        return Refusal(
            "no_capacity",
            f"only {len(serving)} of the {len(sealed)} workers this sealed job was sealed to can run or "
            f"audit it now, fewer than a prover and {self._auditors} auditor(s); offline: "
            f"{', '.join(offline) or 'none'}; quote again and seal the prompt to other workers under a fresh "
            "job id (the SDK does)",
        )

    def _sealed_readers(self, job: JobRecord, prover: str) -> list[bytes]:
        """Keys of the workers a sealed, audited job was sealed to, but its prover: it seals its claim to
        each, since any of them may audit it. Only registered workers (we know their keys); the prover
        checks each against the client's own list (``SealedPrompt.readers``)."""
        return sorted({self.workers[p].key for p in job.sealed if p != prover and p in self.workers})

    def _sealed_used_up(self, job: JobRecord) -> str:
        """Why a sealed job has no worker left: which of the workers it was sealed to failed or are
        offline, by full peer id (the SDK re-quotes without them; spec/sealed-mode.md §5)."""
        failed = sorted(set(job.failed))
        offline = sorted(
            p for p in job.sealed if p not in failed and (p not in self.workers or not self.workers[p].online)
        )
        return (
            f"the workers this sealed job was sealed to are used up: {len(failed)} of {len(job.sealed)} "
            f"failed ({', '.join(failed) or 'none'}), "
            f"{len(offline)} offline ({', '.join(offline) or 'none'}), "
            f"{len(job.results)} result(s) without quorum; quote again and seal the prompt to other workers "
            "under a fresh job id (the SDK does)"
        )

    def _other_class(self, job: JobRecord, tried: set[str]) -> list[Candidate]:
        """Audit mode, when no untried worker of the job's class is left (its one prover, e.g. a split
        group, failed its audit): the untried workers of another class holding the same weights (same
        GGUF sha256, under any name), whose claim auditors check as they check any (spec/verification.md
        §13.1: audits work across numerical classes). The job's contract becomes that class's, with the
        client's sampling; its weight stays the one it was priced at. Only between claims (no result nor
        replica in flight), and not for sealed jobs (their prompts are sealed to the quoted class) nor
        streamed ones (the verified prefix forwarded was another class's). Empty when none."""
        if job.sealed or job.request.stream or job.results or job.pending or not tried:
            return []
        others = [
            c
            for c in self._candidates(job.contract.model_sha256, max_tokens=job.request.max_tokens)
            if c.peer not in tried and c.contract != job.contract.numerical_class()
        ]
        if not job.contract.greedy:
            others = [c for c in others if c.contract.runs_seeded_sampler]
        pool = choose_class(others)
        if pool:
            job.contract = job.request.job_contract(pool[0].contract)
        return pool

    def _runs_alone(self, job: JobRecord, lead: Candidate) -> bool:
        """Adaptive replication: does this job run on its lead worker alone (a trusted single result)?"""
        if not self.config.adaptive or job.request.replicas <= 1:
            return False
        record = self.workers.get(lead.peer)
        p = replication_probability(
            self._standing(record) if record is not None else Reputation(),  # a group: its weakest
            min_trust_streak=self.config.min_trust_streak,
            min_rate=self.config.min_replication_rate,
        )
        return p < 1.0 and self._rng.random() >= p


def _input_problem(request: SubmitJob) -> Refusal | None:
    """Why an open job's input can run on no worker (``malformed``), or None (sealed prompts are checked
    by workers)."""
    if request.sealed:
        return None
    if not request.prompt:
        return Refusal(
            "malformed", "the prompt is empty: send the text the model should continue (or chat messages)"
        )
    if len(request.prompt) > MAX_PROMPT_CHARS:
        return Refusal(
            "malformed",
            f"the prompt has {len(request.prompt):,} characters, over the limit of {MAX_PROMPT_CHARS:,}; "
            "shorten it",
        )
    return None


def _sealed_problem(request: SubmitJob, sealed: dict[str, bytes]) -> Refusal | None:
    """Why a sealed submission is unacceptable (``malformed``), or None if it is fine."""
    if request.prompt:
        why = "a sealed job must not also carry a plaintext prompt"
    elif len(request.client_box_key) != 32:
        why = "a sealed job needs the client's 32-byte ephemeral box key"
    elif len(sealed) != len(request.sealed):
        why = "a sealed job lists a worker twice"
    elif len(sealed) < request.replicas:
        why = f"the prompt is sealed to {len(sealed)} worker(s), fewer than {request.replicas} replicas"
    else:
        return None
    return Refusal("malformed", why)

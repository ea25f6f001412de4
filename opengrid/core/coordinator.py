"""The coordinator's protocol machine: registry of workers, dispatch, verification, receipts.

Sans-IO: ``handle(event, now)`` and ``on_timer(now)`` return effects (data) that a driver executes — the
trio node over libp2p, or the simulator over its event heap. The machine never waits and never does I/O.

Job lifecycle (spec/job-protocol.md §Lifecycle)::

    submitted ──dispatch k replicas──▶ running ──quorum──▶ accepted (receipt signed, points minted)
                                        │  ▲
                 disagreement / failure │  │ one more replica (bounded)
                                        ▼  │
                                      (refill) ──no workers / limit──▶ failed (typed error to the client)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec
from nacl.signing import SigningKey
from opengrid_ledger import (
    Attestation,
    Credit,
    LedgerState,
    Receipt,
    encode_entry,
    open_entry,
    sign_entry,
    verify_attestation,
)

from opengrid.core.effects import (
    AppendEntry,
    CancelReplica,
    DispatchReplica,
    Effect,
    FinishJob,
    Penalize,
    SendReceipt,
)
from opengrid.core.events import (
    Event,
    JobSubmitted,
    ReplicaFailed,
    ReplicaReturned,
    WorkerRegistered,
)
from opengrid.core.scheduler import Candidate, RandomSource, choose_class, pick_workers
from opengrid.core.verifier import Agreement, judge
from opengrid.errors import InvalidEntryError
from opengrid.wire.commitment import commit_output
from opengrid.wire.contract import DecodingContract
from opengrid.wire.messages import (
    ErrorCode,
    ErrorReply,
    JobAccepted,
    ModelOffer,
    ReceiptNotice,
    ReplicaResult,
    RunJob,
    SubmitJob,
)

_MAX_PUSH = 1024  # entries per ReceiptNotice (its wire limit)


@dataclass(frozen=True)
class CoordinatorConfig:
    """Policy knobs; every default is justified in spec/verification.md."""

    heartbeat_s: float = 5.0
    """Workers re-register this often; a worker silent for ``3 * heartbeat_s`` gets no new work."""
    replica_timeout_s: float = 120.0
    """A replica that has not answered by then is treated as failed and replaced."""
    job_timeout_s: float = 300.0
    """A job not accepted by then fails with a clear error."""
    max_extra_replicas: int = 2
    """Extra replicas a disagreement may add, beyond the requested number."""
    max_failovers: int = 4
    """Replacements for failed or vanished workers, per job."""


@dataclass
class WorkerRecord:
    """What the coordinator knows of one registered worker."""

    peer: str
    key: bytes
    offers: tuple[ModelOffer, ...]
    last_seen: float
    online: bool = True


@dataclass
class _Job:
    request: SubmitJob
    client: str
    wall_ms: int
    contract: DecodingContract
    model_name: str
    deadline: float
    target: int
    pending: dict[str, float] = field(default_factory=dict)
    """peer -> replica deadline"""
    results: dict[str, tuple[ReplicaResult, Attestation]] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)
    invalid: list[str] = field(default_factory=list)
    failovers: int = 0

    def tried(self) -> set[str]:
        return set(self.pending) | set(self.results) | set(self.failed) | set(self.invalid)


class Coordinator:
    """Accepts jobs, dispatches replicas, verifies agreement, signs receipts."""

    def __init__(
        self,
        *,
        network: str,
        signing_key: SigningKey,
        ledger: LedgerState,
        rng: RandomSource,
        config: CoordinatorConfig | None = None,
    ) -> None:
        self.network = network
        self.config = config or CoordinatorConfig()
        self._key = signing_key
        self.public_key = bytes(signing_key.verify_key)
        self.ledger = ledger
        self.ledger.add_minter(self.public_key)
        self._rng = rng
        self.workers: dict[str, WorkerRecord] = {}
        self._jobs: dict[bytes, _Job] = {}
        self._own_entries: list[bytes] = [
            encode_entry(e) for e in ledger.entries() if open_entry(e, network).author == self.public_key
        ]
        self._pushed: dict[str, int] = {}
        """peer -> how many of our own entries it has been sent (this run; a restart resends)."""

    # ── inputs ───────────────────────────────────────────────────────────────────────────────────────
    def handle(self, event: Event, now: float) -> list[Effect]:
        """Feed one event; return the effects the driver must execute, in order."""
        match event:
            case WorkerRegistered():
                return self._on_registered(event, now)
            case JobSubmitted():
                return self._on_submitted(event, now)
            case ReplicaReturned():
                return self._on_returned(event, now)
            case ReplicaFailed():
                return self._on_failed(event.job_id, event.peer, event.reason, now, penalize=False)
        raise TypeError(f"unknown event {event!r}")  # pragma: no cover - exhaustiveness guard

    def on_timer(self, now: float) -> list[Effect]:
        """Expire silent workers, overdue replicas and overdue jobs."""
        effects: list[Effect] = []
        silence = 3 * self.config.heartbeat_s
        for record in self.workers.values():
            if record.online and now - record.last_seen >= silence:
                record.online = False
        for job_id in sorted(self._jobs):
            job = self._jobs.get(job_id)
            if job is None:
                continue
            if now >= job.deadline:
                effects += self._fail(
                    job_id,
                    "verification_failed",
                    f"job not verified within {self.config.job_timeout_s:.0f} s "
                    f"({len(job.results)} result(s), {len(job.pending)} pending); retry later",
                )
                continue
            for peer in sorted(p for p, deadline in job.pending.items() if now >= deadline):
                effects.append(CancelReplica(peer=peer, job_id=job_id))
                effects += self._on_failed(job_id, peer, "timed out", now, penalize=False)
        return effects

    def next_deadline(self) -> float | None:
        """The earliest time at which ``on_timer`` has something to do (None: nothing scheduled)."""
        deadlines = [job.deadline for job in self._jobs.values()]
        deadlines += [d for job in self._jobs.values() for d in job.pending.values()]
        deadlines += [r.last_seen + 3 * self.config.heartbeat_s for r in self.workers.values() if r.online]
        return min(deadlines, default=None)

    @property
    def active_jobs(self) -> int:
        return len(self._jobs)

    # ── registry ─────────────────────────────────────────────────────────────────────────────────────
    def _on_registered(self, event: WorkerRegistered, now: float) -> list[Effect]:
        self.workers[event.peer] = WorkerRecord(
            peer=event.peer, key=event.key, offers=event.offers, last_seen=now, online=True
        )
        return []

    def served_models(self) -> list[str]:
        """Names of the models some online worker serves, sorted."""
        return sorted({o.name for r in self.workers.values() if r.online for o in r.offers})

    def _candidates(self, model: str) -> list[Candidate]:
        wanted = model.lower()
        return [
            Candidate(peer=r.peer, key=r.key, model_name=o.name, contract=o.contract)
            for r in self.workers.values()
            if r.online
            for o in r.offers
            if wanted in (o.name.lower(), o.contract.model_sha256.lower())
        ]

    # ── jobs ─────────────────────────────────────────────────────────────────────────────────────────
    def _on_submitted(self, event: JobSubmitted, now: float) -> list[Effect]:
        request = event.request
        job_id = request.job_id
        if job_id in self._jobs or self.ledger.receipt_for(job_id) is not None:
            return [
                FinishJob(job_id, ErrorReply("malformed", "job id already used; pick a fresh one", job_id))
            ]
        candidates = choose_class(self._candidates(request.model))
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
        if len(candidates) < request.replicas:
            return [
                FinishJob(
                    job_id,
                    ErrorReply(
                        "no_capacity",
                        f"job asks for {request.replicas} replicas of {request.model!r} but only "
                        f"{len(candidates)} worker(s) serve it; lower replicas or wait for workers",
                        job_id,
                    ),
                )
            ]
        job = _Job(
            request=request,
            client=event.client,
            wall_ms=event.wall_ms,
            contract=candidates[0].contract,
            model_name=candidates[0].model_name,
            deadline=now + self.config.job_timeout_s,
            target=request.replicas,
        )
        self._jobs[job_id] = job
        return self._refill(job, now)

    def _refill(self, job: _Job, now: float) -> list[Effect]:
        """Dispatch replicas until results + pending reach the job's target, or fail if none are left."""
        missing = job.target - len(job.results) - len(job.pending)
        if missing <= 0:
            return []
        pool = [c for c in choose_class(self._candidates(job.request.model)) if c.contract == job.contract]
        chosen = pick_workers(pool, missing, exclude=job.tried(), rng=self._rng)
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
            effects.append(DispatchReplica(peer=candidate.peer, run=run))
        if not job.pending and len(job.results) + len(chosen) < job.target:
            effects += self._fail(
                job.request.job_id,
                "verification_failed" if job.results else "no_capacity",
                f"ran out of workers for {job.model_name!r}: {len(job.results)} result(s) without quorum, "
                f"{len(job.failed)} worker(s) failed; add workers or lower replicas",
            )
        return effects

    def _on_returned(self, event: ReplicaReturned, now: float) -> list[Effect]:
        job = self._jobs.get(event.job_id)
        if job is None or event.peer not in job.pending:
            return []  # late or unsolicited: the job is settled, or this peer was never asked
        problem = self._check_result(job, event.peer, event.result)
        if isinstance(problem, str):
            return self._on_failed(event.job_id, event.peer, problem, now, penalize=True)
        del job.pending[event.peer]
        job.results[event.peer] = (event.result, problem)
        commitments = {peer: att.output_commitment for peer, (_, att) in job.results.items()}
        agreement = judge(commitments, job.request.replicas)
        if agreement is not None:
            return self._accept(job, agreement)
        if not job.pending:
            if job.target >= job.request.replicas + self.config.max_extra_replicas:
                return self._fail(
                    event.job_id,
                    "verification_failed",
                    f"{len(job.results)} workers returned {len(set(commitments.values()))} different outputs "
                    "and no majority reached quorum; the model may not be deterministic across these workers",
                )
            job.target += 1  # disagreement: ask one more worker, majority decides
        return self._refill(job, now)

    def _check_result(self, job: _Job, peer: str, result: ReplicaResult) -> Attestation | str:
        """Return the result's verified attestation, or a reason to reject it."""
        record = self.workers.get(peer)
        if record is None:
            return "result from an unregistered worker"
        if result.job_id != job.request.job_id:
            return "result names another job"
        if len(result.tokens) > job.request.max_tokens:
            return f"{len(result.tokens)} tokens returned, limit was {job.request.max_tokens}"
        try:
            attestation = msgspec.msgpack.decode(result.attestation, type=Attestation)
            verify_attestation(attestation, self.network)
        except (msgspec.DecodeError, UnicodeDecodeError, InvalidEntryError) as exc:
            return f"bad attestation: {exc}"
        expected = (
            record.key,
            job.request.job_id,
            job.contract.digest(),
            commit_output(result.tokens, result.text),
        )
        actual = (
            attestation.worker,
            attestation.job_id,
            attestation.contract_hash,
            attestation.output_commitment,
        )
        if actual != expected or attestation.n_tokens != len(result.tokens):
            return "attestation does not match the result or the job"
        return attestation

    def _on_failed(
        self, job_id: bytes, peer: str, reason: str, now: float, *, penalize: bool
    ) -> list[Effect]:
        job = self._jobs.get(job_id)
        if job is None or peer not in job.pending:
            return []
        del job.pending[peer]
        effects: list[Effect] = []
        if penalize:
            job.invalid.append(peer)
            effects.append(Penalize(peer=peer, why=reason))
        else:
            job.failed.append(peer)
            record = self.workers.get(peer)
            if record is not None:
                record.online = False  # no new work until its next heartbeat shows it alive
        if job.failovers >= self.config.max_failovers:
            return effects + self._fail(
                job_id, "verification_failed", f"{job.failovers} workers failed on this job; retry later"
            )
        job.failovers += 1
        return effects + self._refill(job, now)

    def _accept(self, job: _Job, agreement: Agreement) -> list[Effect]:
        job_id = job.request.job_id
        winning = [job.results[peer] for peer in agreement.peers]
        tokens = winning[0][0].tokens
        points = max(1, len(tokens))
        keys = {peer: self.workers[peer].key for peer in job.results}
        receipt = Receipt(
            job_id=job_id,
            contract_hash=job.contract.digest(),
            output_commitment=agreement.commitment,
            n_tokens=len(tokens),
            credits=tuple(Credit(account=keys[p], points=points) for p in agreement.peers),
            attestations=tuple(att for _, att in winning),
            dissenters=tuple(keys[p] for p in agreement.dissenters),
            issued_at_ms=job.wall_ms,
        )
        entry = sign_entry(self._key, self.ledger.next_body(self.public_key, receipt))
        self.ledger.apply(entry)
        encoded = encode_entry(entry)
        self._own_entries.append(encoded)
        effects: list[Effect] = [AppendEntry(entry)]
        effects += [CancelReplica(peer=peer, job_id=job_id) for peer in sorted(job.pending)]
        effects += [Penalize(peer=p, why="output disagreed with the majority") for p in agreement.dissenters]
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
        )
        del self._jobs[job_id]
        effects.append(FinishJob(job_id, reply))
        return effects

    def _notice_for(self, peer: str) -> ReceiptNotice:
        """Our entries ``peer`` has not been sent yet, newest last, capped at the message limit."""
        start = self._pushed.get(peer, 0)
        if len(self._own_entries) - start > _MAX_PUSH:
            start = len(self._own_entries) - _MAX_PUSH  # the rest waits for ledger sync
        self._pushed[peer] = len(self._own_entries)
        return ReceiptNotice(entries=self._own_entries[start:])

    def _fail(self, job_id: bytes, code: ErrorCode, message: str) -> list[Effect]:
        job = self._jobs.pop(job_id, None)
        effects: list[Effect] = []
        if job is not None:
            effects += [CancelReplica(peer=peer, job_id=job_id) for peer in sorted(job.pending)]
        effects.append(FinishJob(job_id, ErrorReply(code, message, job_id)))
        return effects

"""The ``Coordinator`` facade: construction, ``handle`` / ``on_timer`` (which event goes to which part),
timers and deadlines, persistence hooks and the public queries drivers use."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from nacl.signing import SigningKey
from opengrid_ledger import ED25519, ChainWriter, LedgerState, SignatureScheme

from opengrid.core.audit_policy import AuditPlanConfig
from opengrid.core.coordinator.audits import AuditsPart
from opengrid.core.coordinator.canaries import CanariesPart
from opengrid.core.coordinator.chain import ChainPart
from opengrid.core.coordinator.config import CoordinatorConfig
from opengrid.core.coordinator.dispatch import DispatchPart
from opengrid.core.coordinator.payments import PaymentsPart
from opengrid.core.coordinator.records import Canary, JobRecord, KnownAnswer, WorkerRecord
from opengrid.core.coordinator.registry import RegistryPart
from opengrid.core.coordinator.results import ResultsPart
from opengrid.core.coordinator.settle import SettlePart
from opengrid.core.coordinator.shared import AuditorJournal
from opengrid.core.coordinator.state import JobState
from opengrid.core.coordinator.streaming import StreamingPart
from opengrid.core.effects import CancelReplica, Effect
from opengrid.core.events import (
    AuditFailed,
    AuditReturned,
    ChunkAudited,
    Event,
    FirstPositionJudged,
    JobCancelled,
    JobSubmitted,
    ReplicaFailed,
    ReplicaProgressed,
    ReplicaReturned,
    SealedChunkReported,
    WorkerRegistered,
)
from opengrid.core.grants import GrantPolicy
from opengrid.core.queueing import FairQueue
from opengrid.core.reputation import Reputation, reputation_from_ledger
from opengrid.core.scheduler import RandomSource, capacity, choose_class
from opengrid.core.stream_chunks import ChunkPolicy
from opengrid.errors import ConfigError


class Coordinator(
    RegistryPart,
    DispatchPart,
    ResultsPart,
    StreamingPart,
    AuditsPart,
    CanariesPart,
    SettlePart,
    PaymentsPart,
    ChainPart,
):
    """Accepts jobs, dispatches replicas, verifies agreement, signs receipts."""

    def __init__(
        self,
        *,
        network: str,
        signing_key: SigningKey,
        ledger: LedgerState,
        rng: RandomSource,
        config: CoordinatorConfig | None = None,
        scheme: SignatureScheme = ED25519,
        chain: ChainWriter | None = None,
    ) -> None:
        """``scheme`` signs receipts and checks attestations: real Ed25519 unless a simulator passes a
        cheaper one (opengrid_ledger.signatures); give ``ledger`` the same one. ``chain``: the node's one
        writer of ``signing_key``'s chain on ``ledger``, shared with its FRAUD and ADMIT paths (default: a
        new one, for a coordinator that is the only writer, as in the simulator)."""
        self.network = network
        self._scheme = scheme
        self.config = config or CoordinatorConfig()
        self._key = signing_key
        self.public_key = bytes(signing_key.verify_key)
        self.ledger = ledger
        self.ledger.add_minter(self.public_key)
        if chain is None:
            chain = ChainWriter(ledger, signing_key, scheme=scheme)
        elif chain.author != self.public_key or chain.ledger is not ledger:
            raise ConfigError(
                "the coordinator's chain writer must write its own key's chain on its own ledger; build it "
                "with ChainWriter(ledger, signing_key)"
            )
        self.chain = chain
        self._rng = rng
        self.workers: dict[str, WorkerRecord] = {}
        self._serving: dict[str, dict[str, None]] = {}
        """Candidate index: lowered model name or sha256 -> peers with an offer under it (online or not;
        kept up to date by ``_on_registered``, the only place records are added or their offers change).
        A dict as an ordered set, so nothing depends on the hash seed."""
        self._jobs: dict[bytes, JobRecord] = {}
        # The writer's log of our chain (the same list, kept up to date by the writer, whoever writes).
        self._own_entries: list[bytes] = chain.entries()
        self._pushed: dict[str, int] = {}
        """peer -> how many of our own entries it has been sent (this run; a restart resends)."""
        self.reputation: dict[bytes, Reputation] = reputation_from_ledger(ledger, author=self.public_key)
        """Worker key -> verified history. Rebuilt from this coordinator's receipts; timeouts, canaries and
        failed checks are in memory only (a driver may persist this table and assign it back)."""
        self._known: list[KnownAnswer] = []
        self._canaries: dict[bytes, Canary] = {}
        self._canary_count = 0
        # Canary ids come from a keyed hash, not from ``rng``: workers see them, and must not be able to
        # tell them from clients' random ids nor learn anything about the scheduler's random stream.
        self._canary_secret = hashlib.sha256(b"opengrid canary job ids\0" + bytes(signing_key)).digest()
        self._resumed: dict[bytes, tuple[float, JobSubmitted]] = {}
        self._resume_patience: dict[bytes, float] = {}
        """Resumed job -> until when it waits for enough workers to re-register."""
        """job id -> (when to submit it, the job), for jobs handed to ``resume``."""
        self._in_flight: dict[str, int] = {}
        """peer -> replicas and canaries dispatched to it and not settled yet (absent: none)."""
        self._queue: FairQueue[bytes] = FairQueue(
            max_total=self.config.max_queued, max_per_client=self.config.max_queued_per_client
        )
        """Client jobs waiting for free worker slots (each is also in ``_jobs``)."""
        self.grants = GrantPolicy(self.config.grant_limits)
        """Who got starting-grant vouchers, and when (the driver journals it, so it survives restarts)."""
        self._auditors = max(1, self.config.auditors)
        """Audit mode: auditors per claim (at least one: an audit mode that audits nothing checks nothing)."""
        self._audit_plans = AuditPlanConfig(
            auditors=self._auditors,
            full_rate=self.config.audit_full_rate,
            second_rate=self.config.audit_second_rate,
            min_positions=self.config.audit_min_positions,
            skew=self.config.audit_window_skew,
            min_trust_streak=self.config.min_trust_streak,
            offender_second=self.config.audit_offender_second,
        )
        """Audit mode: the adaptive audit policy (spec/verification.md §13.5)."""
        if not 0.0 <= self.config.audit_canary_rate <= 1.0:
            raise ConfigError(
                f"audit_canary_rate is a probability in [0, 1], got {self.config.audit_canary_rate}"
            )
        self.audit_reputation: dict[bytes, Reputation] = {}
        """Audit mode: worker key -> its record as an auditor (canary audits, split verdicts settled by a
        tie-break; spec/verification.md §13.6). The auditor draw weighs by it and skips anyone caught.
        Kept across restarts by the driver's ``audit_journal`` (``restore_auditors`` at start); the
        general ``reputation`` gets the same offences (rebuilt from EVIDENCE entries)."""
        self.audit_journal: AuditorJournal | None = None
        """Where changes of ``audit_reputation`` are written (the node's SQLite store; None: memory only)."""
        self._chunk_policy = ChunkPolicy(
            first=self.config.stream_chunk_first, largest=self.config.stream_chunk_max
        )
        """Audit mode, streaming jobs: how a claim is cut into chunks for its auditors (§14.2)."""
        self._audit_wait: dict[bytes, None] = {}
        """Audit mode: jobs whose claim waits for a free auditor slot (an ordered set; retried by
        ``_drain``, bounded by the job deadline)."""

    def restore_auditors(self, records: Iterable[tuple[bytes, Reputation]]) -> None:
        """Take back the auditor records kept before a restart (``audit_journal``'s rows)."""
        for key, record in records:
            self.audit_reputation[key] = record

    def handle(self, event: Event, now: float) -> list[Effect]:
        """Feed one event; return the effects the driver must execute, in order."""
        match event:
            case WorkerRegistered():
                return self._on_registered(event, now)
            case JobSubmitted():
                return self._on_submitted(event, now)
            case ReplicaReturned():
                return self._on_returned(event, now) + self._drain(now)
            case ReplicaProgressed():
                effects = self._on_progressed(event, now)
                # Most frames decide nothing; one that rejected a streaming prover may have freed slots.
                return effects + self._drain(now) if effects else effects
            case ReplicaFailed(client_fault=True):
                return self._on_client_fault(event, now) + self._drain(now)
            case ReplicaFailed():
                effects = self._on_failed(event.job_id, event.peer, event.reason, now, penalize=False)
                return effects + self._drain(now)
            case JobCancelled():
                return self._on_cancelled(event) + self._drain(now)
            case AuditReturned():
                return self._on_audit_returned(event, now) + self._drain(now)
            case SealedChunkReported():
                effects = self._on_sealed_chunk(event, now)
                return effects + self._drain(now) if effects else effects
            case ChunkAudited():
                return self._on_chunk_audited(event, now) + self._drain(now)
            case FirstPositionJudged():
                return self._on_first_position_judged(event, now) + self._drain(now)
            case AuditFailed():
                return self._on_audit_failed(event.job_id, event.peer, event.reason, now) + self._drain(now)
        raise TypeError(f"unknown event {event!r}")  # pragma: no cover - exhaustiveness guard

    def on_timer(self, now: float) -> list[Effect]:
        """Expire silent workers, overdue replicas, canaries and jobs; submit resumed jobs that are due."""
        effects: list[Effect] = []
        silence = 3 * self.config.heartbeat_s
        for record in self.workers.values():
            if record.online and now - record.last_seen >= silence:
                record.online = False
        self._forget_silent(now)
        for canary_id in sorted(c for c, canary in self._canaries.items() if now >= canary.deadline):
            peer = self._canaries[canary_id].peer
            effects.append(CancelReplica(peer=peer, job_id=canary_id))
            effects += self._on_failed(canary_id, peer, "timed out", now, penalize=False)
        for job_id in sorted(j for j, (due, _) in self._resumed.items() if now >= due):
            event = self._resumed[job_id][1]
            request = event.request
            pool = self._candidates(request.model, max_tokens=request.max_tokens)
            waiting = capacity(choose_class(pool)) < request.replicas
            if waiting and now < self._resume_patience.get(job_id, now):
                # Workers re-register a beat or two after a restart: give them until the patience ends.
                self._resumed[job_id] = (now + self.config.heartbeat_s / 2, event)
                continue
            self._resumed.pop(job_id)
            self._resume_patience.pop(job_id, None)
            effects += self._on_submitted(event, now, bounded=False)
        for job_id in sorted(self._jobs):
            job = self._jobs.get(job_id)
            if job is None:
                continue
            if (
                now >= job.deadline
                and job.state is JobState.QUEUED
                and job_id in self._queue
                and not job.results
            ):
                effects += self._fail(
                    job_id,
                    "busy",
                    f"job waited {self.config.job_timeout_s:.0f} s and no worker serving "
                    f"{job.model_name!r} had a free slot ({self._queue.waiting(job.client)} of your jobs, "
                    f"{len(self._queue)} in all, were waiting); retry later or on another coordinator",
                )
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
            for peer in sorted(p for p, deadline in job.audits.items() if now >= deadline):
                effects.append(CancelReplica(peer=peer, job_id=job_id))
                effects += self._on_audit_failed(job_id, peer, "audit timed out", now)
        return effects + self._drain(now)

    def next_deadline(self) -> float | None:
        """The earliest time at which ``on_timer`` has something to do (None: nothing scheduled)."""
        deadlines = [job.deadline for job in self._jobs.values()]
        deadlines += [d for job in self._jobs.values() for d in job.pending.values()]
        deadlines += [d for job in self._jobs.values() for d in job.audits.values()]
        deadlines += [r.last_seen + 3 * self.config.heartbeat_s for r in self.workers.values() if r.online]
        deadlines += [canary.deadline for canary in self._canaries.values()]
        deadlines += [due for due, _ in self._resumed.values()]
        return min(deadlines, default=None)

    @property
    def active_jobs(self) -> int:
        """Client jobs in flight (canaries and resumed jobs not yet due are not counted)."""
        return len(self._jobs)

    @property
    def queued_jobs(self) -> int:
        """Client jobs waiting for a free worker slot (also counted in ``active_jobs``)."""
        return len(self._queue)

    def job_state(self, job_id: bytes) -> JobState | None:
        """Where a client job in flight is in its lifecycle (``state.JobState``); None for a job that is
        not in flight: unknown, ended, a canary, or resumed and not submitted yet."""
        job = self._jobs.get(job_id)
        return job.state if job is not None else None

    def is_queued(self, job_id: bytes) -> bool:
        """True while a client job waits for a free worker slot (some of its replicas may be running)."""
        return job_id in self._queue

    def free_slots(self) -> int:
        """Slots free on online workers, all models together (what a driver may announce as its load)."""
        return sum(
            max(0, r.slots - self._in_flight.get(r.peer, 0)) for r in self.workers.values() if r.online
        )

    @property
    def active_canaries(self) -> int:
        return len(self._canaries)

    def is_canary(self, job_id: bytes) -> bool:
        """True while ``job_id`` is a canary in flight (for drivers' logs and metrics; never tell workers)."""
        return job_id in self._canaries

    def snapshot(self) -> list[JobSubmitted]:
        """The client jobs not finished yet, as the events that submitted them, by job id.

        A driver that persists these (or persists each ``JobSubmitted`` and deletes it on its
        ``FinishJob``) can hand them to ``resume`` after a restart. Canaries are not included.
        """
        jobs = [JobSubmitted(job.client, job.request, job.wall_ms) for job in self._jobs.values()]
        jobs += [event for _, event in self._resumed.values()]
        return sorted(jobs, key=lambda event: event.request.job_id)

    def is_running(self, job_id: bytes) -> bool:
        """True while a client job is in flight or waiting to be resumed."""
        return job_id in self._jobs or job_id in self._resumed

    def resume(
        self, jobs: Iterable[JobSubmitted], now: float, *, delay_s: float | None = None
    ) -> list[Effect]:
        """Take back jobs persisted before a restart; they are submitted afresh ``delay_s`` from now.

        The default delay, one heartbeat, lets workers register again first (a job submitted to an empty
        registry fails at once with ``unknown_model``). Jobs already in flight are ignored, and so are jobs
        the ledger already holds a receipt for: they were accepted, the receipt is their answer
        (``ledger.receipt_for``). Each resumed job gets a new job deadline; its answer is a ``FinishJob``
        as usual. Returns the effects of jobs submitted at once (``delay_s=0``).
        """
        due = now + (self.config.heartbeat_s if delay_s is None else delay_s)
        effects: list[Effect] = []
        for event in sorted(jobs, key=lambda e: e.request.job_id):
            job_id = event.request.job_id
            if job_id in self._jobs or job_id in self._resumed or self.ledger.receipt_for(job_id) is not None:
                continue
            if due <= now:
                effects += self._on_submitted(event, now, bounded=False)
            else:
                self._resumed[job_id] = (due, event)
                self._resume_patience[job_id] = now + 10 * self.config.heartbeat_s
        return effects

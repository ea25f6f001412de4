"""The coordinator's protocol machine: registry of workers, dispatch, verification, receipts.

Sans-IO: ``handle(event, now)`` and ``on_timer(now)`` return effects (data) that a driver executes — the
trio node over libp2p, or the simulator over its event heap. The machine never waits and never does I/O.

Job lifecycle (spec/job-protocol.md §Lifecycle)::

    submitted ──dispatch k replicas──▶ running ──quorum──▶ accepted (receipt signed, points minted)
                                        │  ▲
                 disagreement / failure │  │ one more replica (bounded)
                                        ▼  │
                                      (refill) ──no workers / limit──▶ failed (typed error to the client)

Adaptive replication, reputation and canaries (spec/verification-adaptive.md): the machine keeps a
``Reputation`` per worker key, rebuilt from its own receipts at start and updated by every verified
outcome. A job whose lead worker has earned trust may run on that worker alone (probability ``1 - p``,
``p = max(min_replication_rate, 1/streak)``); such a "trusted single result" is accepted with one credit.
Now and then (``canary_rate``) a verified answer is re-sent under a fresh job id to one worker that never
saw it; a different answer costs that worker its reputation. Canaries never reach a client or the ledger.

Audit mode (``CoordinatorConfig.verify = "audit"``, spec/verification.md §13; opt-in): an open job runs on
one prover; its checked result (the claim) goes to ``auditors`` workers holding the same weights, on any
numerical class (``DispatchAudit``), whose ``AuditReturned`` reports pass it (receipt: the prover and the
auditors credited) or fail it (the prover penalised, the job re-run on another prover within
``max_failovers``). A failed or silent auditor is replaced; a claim with no free auditor waits for a slot.
Sealed jobs are replicated as above.

Capacity and queueing (spec/job-protocol.md §8.1): a worker runs at most ``slots`` replicas (and canaries)
of this coordinator at once. A job that cannot get its replicas because every worker that could run it is
busy waits in a ``FairQueue`` (opengrid/core/queueing.py): interactive before batch, clients in turn.
Whenever a slot may have freed (a result, a failure, a timeout, a settled job, a worker coming online) the
machine offers the free slots to the waiting jobs in that order.

Payment (spec/ledger.md §7, spec/job-protocol.md §5.4): a job may carry its client's HOLD of
``job_cost``; the machine applies it before dispatch, then SETTLEs it to the agreeing workers or REFUNDs
it. A new account's job may also carry its GRANT (the starting grant), applied just before the HOLD;
``vouch`` signs the voucher such a GRANT needs, under the rate limits of ``opengrid.core.grants``. With
``require_payment`` an unpaid job is refused (``payment_required``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import msgspec
from nacl.signing import SigningKey
from opengrid_ledger import (
    ED25519,
    Attestation,
    Credit,
    Entry,
    EntryBody,
    Evidence,
    Grant,
    Hold,
    LedgerState,
    Payload,
    Receipt,
    Refund,
    Settle,
    SignatureScheme,
    decode_body,
    decode_entry,
    encode_entry,
    open_entry,
    sign_entry,
    sign_grant_voucher,
    verify_attestation,
)

from opengrid.core.audit import DEFAULT_GAP_TOLERANCE
from opengrid.core.effects import (
    AppendEntry,
    CancelReplica,
    DispatchAudit,
    DispatchReplica,
    Effect,
    FinishJob,
    Penalize,
    SendReceipt,
)
from opengrid.core.events import (
    AuditFailed,
    AuditReturned,
    Event,
    JobCancelled,
    JobSubmitted,
    ReplicaFailed,
    ReplicaReturned,
    WorkerRegistered,
)
from opengrid.core.grants import GrantLimits, GrantPolicy
from opengrid.core.queueing import MAX_QUEUED, MAX_QUEUED_PER_CLIENT, FairQueue
from opengrid.core.reputation import (
    Outcome,
    Reputation,
    affords_divergence,
    looks_like_honest_divergence,
    replication_probability,
    reputation_from_ledger,
)
from opengrid.core.scheduler import Candidate, RandomSource, capacity, choose_class, pick_workers
from opengrid.core.verifier import Agreement, judge
from opengrid.errors import InvalidEntryError
from opengrid.wire.commitment import commit_output
from opengrid.wire.contract import DecodingContract
from opengrid.wire.control import MAX_CLOCK_SKEW_MS
from opengrid.wire.grant import grant_request_signing_bytes
from opengrid.wire.messages import (
    MAX_PROMPT_CHARS,
    AuditJob,
    AuditReport,
    ErrorCode,
    ErrorReply,
    GrantRequest,
    GrantVoucher,
    JobAccepted,
    ModelOffer,
    PromptFormat,
    ReceiptNotice,
    ReplicaResult,
    RunJob,
    Sealed,
    SubmitJob,
    job_cost,
    model_weight,
)

_MAX_PUSH = 1024  # entries per ReceiptNotice (its wire limit)

QUOTE_FRESH_BEATS = 1.5
"""A quote draws first among workers heard from within this many heartbeats (``Coordinator.quote``):
one beat, plus half of one for a beat that arrives late from a loaded worker."""


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
    client_fault_quorum: int = 2
    """Workers that must refuse a job's input (context overflow, empty or unopenable prompt) before it
    fails as the client's fault; fewer when no other worker serves the model. 1 trusts a single worker's
    word, which lets one lazy worker fail any job it is given."""
    adaptive: bool = True
    """Adaptive replication (BOINC): a job whose lead worker has ``min_trust_streak`` verified valid
    results in a row may run on that worker alone. Off: every job runs the replicas its client asked for."""
    min_trust_streak: int = 10
    """Verified valid results in a row before a worker's results may go unreplicated (doubled per invalid
    result the worker ever returned, up to 8x). Lower is cheaper and easier to game."""
    min_replication_rate: float = 0.05
    """A trusted worker's jobs are still replicated with probability ``max(this, 1/streak)``: the chance
    that any one cheat by a trusted worker is caught by replication alone."""
    canary_rate: float = 0.05
    """Probability, per client job submitted, of also sending one canary (a verified answer re-sent under
    a fresh job id to a worker that never saw it). 0 disables canaries."""
    canary_pool_size: int = 64
    """Verified answers kept for canaries (the oldest is dropped first)."""
    weighted: bool = True
    """Weight the random choice of workers by reputation, speed and RTT. Off: uniform (experiments)."""
    max_queued: int = MAX_QUEUED
    """Jobs waiting for a free worker slot, all clients together; a job over the limit is refused
    (``busy``)."""
    max_queued_per_client: int = MAX_QUEUED_PER_CLIENT
    """Jobs one client may have waiting for a free worker slot; more are refused (``busy``)."""
    require_payment: bool = False
    """Refuse jobs that carry no HOLD (``payment_required``): every job is paid from its client's points
    (a new account claims the starting grant first). Off: anonymous clients run jobs for free."""
    grant_limits: GrantLimits = field(default_factory=GrantLimits)
    """Rate limits on starting-grant vouchers (opengrid/core/grants.py, spec/ledger.md §7)."""
    model_params: Mapping[str, int] = field(default_factory=dict)
    """Model sha256 (lower-case hex) -> parameter count, trusted over what workers announce (the node
    passes the model catalog's). It prices a token of that model (``model_weight``, spec/ledger.md §7)."""
    forget_after_s: float = 600.0
    """A worker silent this long (seconds) and used by no job is forgotten: dropped from the registry and
    from NodeStatus, so dead or fake registrations do not pile up (spec/limits.md). It comes back as a new
    worker with its next heartbeat; its reputation is kept (keyed by its key)."""

    verify: Literal["replicate", "audit"] = "replicate"
    """How an open job is verified (spec/verification.md §13). ``replicate``: ``replicas`` workers of one
    numerical class must return bit-identical outputs (§5). ``audit``: one worker (the prover) generates,
    ``auditors`` other workers holding the same weights (any numerical class) re-score its claimed tokens
    in one forward pass; a failed audit penalises the prover and re-runs the job on another. Sealed jobs
    are always replicated (auditing them needs the prompt sealed to the auditors too: a later step)."""
    auditors: int = 1
    """Audit mode: auditors that must pass a claim before it is accepted (at least 1)."""
    audit_tolerance: float = DEFAULT_GAP_TOLERANCE
    """Audit mode: the largest gap (logits) an auditor accepts at any position (spec/verification.md
    §12.2-12.3: 0.5, above the 0.44 measured between three CPU builds)."""
    audit_credit_divisor: int = 2
    """Audit mode: an auditor earns ``ceil(max(1, n_tokens) / this) * weight`` points for scoring ``n``
    tokens, the prover ``max(1, n_tokens) * weight``. 2: scoring 128 tokens cost 0.44-0.64 of generating
    them on this project's CPUs (spec/verification.md §13.3), so an audit pays about what its compute
    costs; a job costs 1.5 units of pay instead of replication's 2."""

    @classmethod
    def plain(cls, **overrides: object) -> CoordinatorConfig:
        """Plain verification: every job runs the replicas asked for, on workers chosen uniformly at
        random, with no canaries — the baseline that experiments and tests compare against."""
        return cls(adaptive=False, canary_rate=0.0, weighted=False, **overrides)  # type: ignore[arg-type]


@dataclass
class WorkerRecord:
    """What the coordinator knows of one registered worker."""

    peer: str
    key: bytes
    offers: tuple[ModelOffer, ...]
    last_seen: float
    online: bool = True
    operator: str = ""
    """From the latest registration (``WorkerRegistered.operator``)."""
    rtt_s: float = 0.0
    """From the latest registration (``WorkerRegistered.rtt_s``)."""
    tokens_per_s: float = 0.0
    """Moving average of the speed measured on its verified results (dispatch to answer); 0 unmeasured."""
    slots: int = 1
    """From the latest registration (``WorkerRegistered.slots``): replicas it may run at once."""
    probed_tokens_per_s: float = 0.0
    """From the latest registration: the worker's own start-up measurement, a prior until measured here."""
    max_job_tokens: int = 0
    """From the latest registration: the longest job it takes (edge nodes); 0: no limit."""


@dataclass
class _Job:
    request: SubmitJob
    client: str
    wall_ms: int
    contract: DecodingContract
    model_name: str
    deadline: float
    target: int
    replicas: int
    """Replicas the quorum is counted against: the client's, or 1 for a trusted single result."""
    single: bool = False
    """True while the job runs as a trusted single result (reverts to full replication on a failure)."""
    pending: dict[str, float] = field(default_factory=dict)
    """peer -> replica deadline"""
    results: dict[str, tuple[ReplicaResult, Attestation]] = field(default_factory=dict)
    elapsed: dict[str, float] = field(default_factory=dict)
    """peer -> seconds from dispatch to its answer"""
    failed: list[str] = field(default_factory=list)
    invalid: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)
    """peer -> why it refused the job's input as the client's fault (context overflow, a sealed prompt
    that does not open): not blamed, not tried again (spec/job-protocol.md §6.4)."""
    failovers: int = 0
    sealed: dict[str, bytes] = field(default_factory=dict)
    """Sealed mode: peer -> the prompt encrypted to it; only these peers may run the job."""
    hold: bytes = b""
    """Paid jobs: the EntryId of the client's HOLD, settled on acceptance and refunded on failure."""
    hold_amount: int = 0
    weight: int = 1
    """Points per generated token of the job's model (``Coordinator.weight``), fixed at submission."""
    audit: bool = False
    """Audit mode (``CoordinatorConfig.verify``): one prover, its claim re-scored by auditors."""
    prover: str = ""
    """Audit mode: the peer whose returned claim (in ``results``) is being audited; "" before it answers."""
    audits: dict[str, float] = field(default_factory=dict)
    """Audit mode: auditor peer -> deadline of its pending audit."""
    audited: dict[str, Attestation] = field(default_factory=dict)
    """Audit mode: auditors that passed the current claim -> their attestation of it."""

    def tried(self) -> set[str]:
        return (
            set(self.pending)
            | set(self.results)
            | set(self.failed)
            | set(self.invalid)
            | set(self.refused)
            | set(self.audits)
            | set(self.audited)
        )


@dataclass
class _KnownAnswer:
    """A verified answer kept for canaries."""

    prompt: str
    contract: DecodingContract
    max_tokens: int
    commitment: bytes
    seen: set[bytes]
    format: PromptFormat = "text"
    """Keys of the workers that were ever sent this prompt: never canaried with it."""


@dataclass
class _Canary:
    """A canary in flight."""

    peer: str
    key: bytes
    answer: _KnownAnswer
    sent_at: float
    deadline: float


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
        scheme: SignatureScheme = ED25519,
    ) -> None:
        """``scheme`` signs receipts and checks attestations: real Ed25519 unless a simulator passes a
        cheaper one (opengrid_ledger.signatures); give ``ledger`` the same one."""
        self.network = network
        self._scheme = scheme
        self.config = config or CoordinatorConfig()
        self._key = signing_key
        self.public_key = bytes(signing_key.verify_key)
        self.ledger = ledger
        self.ledger.add_minter(self.public_key)
        self._rng = rng
        self.workers: dict[str, WorkerRecord] = {}
        self._serving: dict[str, dict[str, None]] = {}
        """Candidate index: lowered model name or sha256 -> peers with an offer under it (online or not;
        kept up to date by ``_on_registered``, the only place records are added or their offers change).
        A dict as an ordered set, so nothing depends on the hash seed."""
        self._jobs: dict[bytes, _Job] = {}
        # The ledger already verified and indexed these: no need to re-check every signature at start-up.
        self._own_entries: list[bytes] = [encode_entry(e) for e in ledger.entries_by_author(self.public_key)]
        self._pushed: dict[str, int] = {}
        """peer -> how many of our own entries it has been sent (this run; a restart resends)."""
        self.reputation: dict[bytes, Reputation] = reputation_from_ledger(ledger, author=self.public_key)
        """Worker key -> verified history. Rebuilt from this coordinator's receipts; timeouts, canaries and
        failed checks are in memory only (a driver may persist this table and assign it back)."""
        self._known: list[_KnownAnswer] = []
        self._canaries: dict[bytes, _Canary] = {}
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
        self._audit_wait: dict[bytes, None] = {}
        """Audit mode: jobs whose claim waits for a free auditor slot (an ordered set; retried by
        ``_drain``, bounded by the job deadline)."""

    # ── inputs ───────────────────────────────────────────────────────────────────────────────────────
    def handle(self, event: Event, now: float) -> list[Effect]:
        """Feed one event; return the effects the driver must execute, in order."""
        match event:
            case WorkerRegistered():
                return self._on_registered(event, now)
            case JobSubmitted():
                return self._on_submitted(event, now)
            case ReplicaReturned():
                return self._on_returned(event, now) + self._drain(now)
            case ReplicaFailed(client_fault=True):
                return self._on_client_fault(event, now) + self._drain(now)
            case ReplicaFailed():
                effects = self._on_failed(event.job_id, event.peer, event.reason, now, penalize=False)
                return effects + self._drain(now)
            case JobCancelled():
                return self._on_cancelled(event) + self._drain(now)
            case AuditReturned():
                return self._on_audit_returned(event, now) + self._drain(now)
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
            if now >= job.deadline and job_id in self._queue and not job.results and not job.pending:
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

    # ── persistence hooks (the driver persists; the machine only says what to keep) ──────────────────
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

    # ── registry ─────────────────────────────────────────────────────────────────────────────────────
    def _forget_silent(self, now: float) -> None:
        """Drop the workers silent for ``forget_after_s`` that no job or canary still refers to."""
        silent = [
            peer
            for peer, record in self.workers.items()
            if not record.online and now - record.last_seen >= self.config.forget_after_s
        ]
        if not silent:
            return
        in_use = {peer for job in self._jobs.values() for peer in job.tried()}
        in_use |= {canary.peer for canary in self._canaries.values()}
        for peer in silent:
            if peer in in_use:
                continue
            record = self.workers.pop(peer)
            for name in _index_names(record.offers):
                serving = self._serving.get(name)
                if serving is not None:
                    serving.pop(peer, None)
                    if not serving:
                        del self._serving[name]

    def _on_registered(self, event: WorkerRegistered, now: float) -> list[Effect]:
        earlier = self.workers.get(event.peer)
        if earlier is None:  # a registry that grows is swept as it grows, not only on timers
            self._forget_silent(now)
        # A heartbeat that changes nothing frees no capacity: only then is the queue not looked at.
        grown = (
            earlier is None
            or not earlier.online
            or earlier.offers != event.offers
            or earlier.slots < event.slots
            or earlier.operator != event.operator
            or earlier.max_job_tokens != event.max_job_tokens
        )
        if earlier is None or earlier.offers != event.offers:
            for name in _index_names(earlier.offers if earlier is not None else ()):
                peers = self._serving[name]
                del peers[event.peer]
                if not peers:
                    del self._serving[name]
            for name in _index_names(event.offers):
                self._serving.setdefault(name, {})[event.peer] = None
        self.workers[event.peer] = WorkerRecord(
            peer=event.peer,
            key=event.key,
            offers=event.offers,
            last_seen=now,
            online=True,
            operator=event.operator,
            rtt_s=event.rtt_s,
            tokens_per_s=earlier.tokens_per_s if earlier is not None and earlier.key == event.key else 0.0,
            slots=max(1, event.slots),
            probed_tokens_per_s=max(0.0, event.probed_tokens_per_s),
            max_job_tokens=max(0, event.max_job_tokens),
        )
        return self._drain(now) if grown else []

    def served_models(self) -> list[str]:
        """Names of the models some online worker serves, sorted."""
        return sorted({o.name for r in self.workers.values() if r.online for o in r.offers})

    def _candidates(
        self, model: str, *, allowed: Container[str] | None = None, max_tokens: int = 0
    ) -> list[Candidate]:
        """Online workers serving ``model`` (only those in ``allowed``, when given; only those that take
        jobs of ``max_tokens`` tokens, when given: edge nodes take short jobs only).

        O(workers serving ``model``), through the index. The order of the list is not part of any
        decision: every caller passes it through ``choose_class``, which sorts by peer (and is stable
        within one peer, whose offers keep their order here).
        """
        wanted = model.lower()
        records = (self.workers[peer] for peer in self._serving.get(wanted, ()))
        return [
            self._candidate(r, o)
            for r in records
            if r.online and (allowed is None or r.peer in allowed)
            if not (max_tokens and r.max_job_tokens and r.max_job_tokens < max_tokens)
            for o in r.offers
            if wanted in (o.name.lower(), o.contract.model_sha256.lower())
        ]

    def quote(
        self,
        model: str,
        *,
        exposure: int,
        trusted: Sequence[str] = (),
        max_tokens: int = 0,
        now: float | None = None,
    ) -> list[Candidate]:
        """Up to ``exposure`` workers of one numerical class for a sealed job of ``max_tokens`` (0: any
        length), chosen at random on distinct operators (only among ``trusted`` when given) from the class
        the job itself would run on. The client seals its prompt to these.

        With ``now``, workers heard from within ``QUOTE_FRESH_BEATS`` heartbeats are drawn first and the
        others only fill the places left (spec/sealed-mode.md §4): a worker that died a moment ago is still
        online here until ``3 * heartbeat_s`` of silence, and a job sealed to it can only fail over to the
        other workers it was sealed to. None: every online worker counts as fresh."""
        allowed = set(trusted) if trusted else None
        pool = choose_class(self._candidates(model, allowed=allowed, max_tokens=max_tokens))
        if now is None:
            return pick_workers(pool, exposure, exclude=(), rng=self._rng)
        fresh_s = QUOTE_FRESH_BEATS * self.config.heartbeat_s
        stale = {c.peer for c in pool if now - self.workers[c.peer].last_seen > fresh_s}
        chosen = pick_workers([c for c in pool if c.peer not in stale], exposure, exclude=(), rng=self._rng)
        if len(chosen) < exposure and stale:
            taken = {c.peer for c in chosen}
            chosen += pick_workers(
                [c for c in pool if c.peer in stale],
                exposure - len(chosen),
                exclude=taken,
                rng=self._rng,
                exclude_operators=self._operators(taken),
            )
        return chosen

    def weight(self, model: str, *, max_tokens: int = 0) -> int | None:
        """Points per generated token of ``model`` here, its weight (spec/ledger.md §7): what a job of it
        costs per token per replica, and what each agreeing worker earns per token. ``max_tokens``: of the
        class a job that long runs on (the same choice as its submission). None: no online worker serves
        it."""
        candidates = choose_class(self._candidates(model, max_tokens=max_tokens))
        return self.class_weight(candidates[0].contract) if candidates else None

    def class_weight(self, contract: DecodingContract) -> int:
        """The weight of the numerical class ``contract``: ``model_weight`` of the parameter count the
        config pins for its model file (the catalog's), else of the smallest count an online worker of the
        class announces — so one worker that inflates its count cannot raise the price."""
        sha = contract.model_sha256.lower()
        pinned = self.config.model_params.get(sha)
        if pinned is not None:
            return model_weight(pinned)
        announced = [
            offer.n_params
            for peer in self._serving.get(sha, ())
            if self.workers[peer].online
            for offer in self.workers[peer].offers
            if offer.contract == contract
        ]
        return model_weight(min(announced, default=0))

    def _candidate(self, record: WorkerRecord, offer: ModelOffer) -> Candidate:
        return Candidate(
            peer=record.peer,
            key=record.key,
            model_name=offer.name,
            contract=offer.contract,
            reputation=self.reputation.get(record.key, Reputation()).score if self.config.weighted else 0.0,
            tokens_per_s=self._speed(record) if self.config.weighted else 0.0,
            rtt_s=record.rtt_s if self.config.weighted else 0.0,
            speed_claimed=record.tokens_per_s <= 0,
            operator=record.operator,
        )

    def _speed(self, record: WorkerRecord) -> float:
        """Its speed for the draw: measured here on verified results, else its own start-up claim (the tier
        it announced), which can only lower its odds (``Candidate.speed_claimed``: a cheater would claim
        to be fast) and is replaced by the first measurement."""
        return record.tokens_per_s if record.tokens_per_s > 0 else record.probed_tokens_per_s

    def _operators(self, peers: Iterable[str]) -> set[str]:
        return {self.workers[p].operator for p in peers if p in self.workers and self.workers[p].operator}

    def _record(self, key: bytes, outcome: Outcome) -> None:
        self.reputation[key] = self.reputation.get(key, Reputation()).update(outcome)

    def _measure(self, peer: str, n_tokens: int, elapsed: float) -> None:
        """Fold one verified result's speed into the worker's moving average."""
        record = self.workers.get(peer)
        if record is None or elapsed <= 0 or n_tokens <= 0:
            return
        speed = n_tokens / elapsed
        record.tokens_per_s = speed if record.tokens_per_s <= 0 else 0.8 * record.tokens_per_s + 0.2 * speed

    # ── jobs ─────────────────────────────────────────────────────────────────────────────────────────
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
            return [FinishJob(job_id, ErrorReply("malformed", problem, job_id))]
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
            if problem:
                return [FinishJob(job_id, ErrorReply("malformed", problem, job_id))]
        any_length = self._candidates(request.model, allowed=sealed or None)
        candidates = choose_class(
            self._candidates(request.model, allowed=sealed or None, max_tokens=request.max_tokens)
        )
        if any_length and not candidates:
            longest = max(self.workers[c.peer].max_job_tokens for c in any_length)
            return [
                FinishJob(
                    job_id,
                    ErrorReply(
                        "no_capacity",
                        f"the workers serving {request.model!r} here take jobs of at most {longest} tokens "
                        f"(edge nodes); ask for max_tokens <= {longest}, or wait for a full worker",
                        job_id,
                    ),
                )
            ]
        if sealed and capacity(candidates) < request.replicas and self._candidates(request.model):
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
        audit = self.config.verify == "audit" and not sealed
        available = capacity(candidates)
        if audit:
            # One prover of the job's class, and auditors among every worker holding the same weights.
            serving = {c.peer for c in self._candidates(candidates[0].contract.model_sha256)}
            if len(serving) < 1 + self._auditors:
                return [
                    FinishJob(
                        job_id,
                        ErrorReply(
                            "no_capacity",
                            f"this coordinator audits every job: it needs a worker to run it and "
                            f"{self._auditors} other(s) holding the same weights to audit it, but only "
                            f"{len(serving)} worker(s) serve {request.model!r}; wait for workers",
                            job_id,
                        ),
                    )
                ]
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
            if isinstance(held, str):
                return [*hold_effects, FinishJob(job_id, ErrorReply("malformed", held, job_id))]
            hold_id = held
            hold_amount = self.ledger.hold(hold_id).amount  # type: ignore[union-attr]  # just applied
        job = _Job(
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
        self._queue.push(job_id, event.client, request.priority)
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
                if job.sealed and not job.pending and job.tried().issuperset(c.peer for c in candidates):
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

    def _refill(self, job: _Job, now: float) -> list[Effect]:
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
        pool = [
            c
            for c in choose_class(
                self._candidates(job.request.model, allowed=allowed, max_tokens=job.request.max_tokens)
            )
            if c.contract == job.contract.numerical_class()
        ]
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
                effects.append(DispatchReplica(peer=candidate.peer, run=personal))
            else:
                effects.append(DispatchReplica(peer=candidate.peer, run=run))
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
                    self._queue.push(job_id, job.client, job.request.priority, front=bool(tried))
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

    def _sealed_used_up(self, job: _Job) -> str:
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

    def _runs_alone(self, job: _Job, lead: Candidate) -> bool:
        """Adaptive replication: does this job run on its lead worker alone (a trusted single result)?"""
        if not self.config.adaptive or job.request.replicas <= 1:
            return False
        p = replication_probability(
            self.reputation.get(lead.key, Reputation()),
            min_trust_streak=self.config.min_trust_streak,
            min_rate=self.config.min_replication_rate,
        )
        return p < 1.0 and self._rng.random() >= p

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
        sent_at = job.pending.pop(event.peer) - self.config.replica_timeout_s
        self._release(event.peer)
        job.elapsed[event.peer] = now - sent_at
        job.results[event.peer] = (event.result, problem)
        if job.audit:
            job.prover = event.peer
            return self._start_audits(job, now)
        commitments = {peer: att.output_commitment for peer, (_, att) in job.results.items()}
        agreement = judge(commitments, job.replicas)
        if agreement is not None:
            return self._accept(job, agreement)
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
        return attestation

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
        effects: list[Effect] = []
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

    def _accept(self, job: _Job, agreement: Agreement) -> list[Effect]:
        job_id = job.request.job_id
        winning = [job.results[peer] for peer in agreement.peers]
        tokens = winning[0][0].tokens  # empty in sealed mode
        n_tokens = winning[0][1].n_tokens
        divergent = self._learn(job, agreement, n_tokens)
        evidence = self._evidence(job)  # before the receipt: those outcomes came first
        points = max(1, n_tokens) * job.weight  # proportional to compute (spec/ledger.md §7)
        keys = {peer: self.workers[peer].key for peer in job.results}
        receipt = Receipt(
            job_id=job_id,
            contract_hash=job.contract.digest(),
            output_commitment=agreement.commitment,
            n_tokens=n_tokens,
            credits=tuple(Credit(account=keys[p], points=points) for p in agreement.peers),
            attestations=tuple(att for _, att in winning),
            dissenters=tuple(keys[p] for p in agreement.dissenters),
            issued_at_ms=job.wall_ms,
            weight=job.weight,
        )
        entry = self._sign_own(receipt)
        encoded = self._own_entries[-1]
        effects: list[Effect] = [*evidence, AppendEntry(entry)]
        if job.hold:  # the client pays the agreeing workers out of its hold; the rest returns to it
            payouts = _payouts(receipt.credits, job.hold_amount)
            effects += self._author(
                Settle(hold=job.hold, payouts=payouts) if payouts else Refund(hold=job.hold)
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
        del self._jobs[job_id]
        effects.append(FinishJob(job_id, reply))
        return effects

    def _dissent_outcome(self, job: _Job, agreement: Agreement, peer: str) -> Outcome:
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

    def _learn(self, job: _Job, agreement: Agreement, n_tokens: int) -> set[str]:
        """Update reputations from a settled job, and keep its answer for canaries if it was verified.
        Return the dissenters whose outputs looked like honest divergence."""
        divergent: set[str] = set()
        for peer in agreement.dissenters:
            outcome = self._dissent_outcome(job, agreement, peer)
            self._record(self.workers[peer].key, outcome)
            if outcome == "divergent":
                divergent.add(peer)
        if len(agreement.peers) < 2:
            return divergent  # one result checked by nobody: proves nothing about anyone (trusted single)
        for peer in agreement.peers:
            self._record(self.workers[peer].key, "valid")
            self._measure(peer, n_tokens, job.elapsed.get(peer, 0.0))
        if job.request.sealed or not job.request.prompt:
            return divergent  # sealed mode: the coordinator never saw the prompt, so it cannot replay it
        self.add_known_answer(
            job.request.prompt,
            job.contract,
            job.request.max_tokens,
            agreement.commitment,
            seen={self.workers[p].key for p in job.tried() if p in self.workers},
            format=job.request.format,
        )
        return divergent

    # ── audits (spec/verification.md §13) ────────────────────────────────────────────────────────────
    def _start_audits(self, job: _Job, now: float) -> list[Effect]:
        """Send the prover's claim to as many auditors as it still needs: online workers holding the same
        weights (any numerical class), not the prover nor any worker already on the job, on another
        operator than the prover's when one is free. With none free now the claim waits for a slot
        (``_drain``); with none left at all the job fails, since it could not be checked."""
        job_id = job.request.job_id
        needed = self._auditors - len(job.audited) - len(job.audits)
        if needed <= 0:
            self._audit_wait.pop(job_id, None)
            return []
        tried = job.tried()
        pool = [
            c
            for c in self._candidates(job.contract.model_sha256, max_tokens=job.request.max_tokens)
            if c.peer not in tried
        ]
        free = [c for c in pool if self._has_slot(c.peer)]
        chosen = pick_workers(
            free, needed, exclude=tried, rng=self._rng, exclude_operators=self._operators([job.prover])
        )
        if len(chosen) < needed:  # another operator is preferred, not required
            taken = tried | {c.peer for c in chosen}
            chosen += pick_workers(
                free,
                needed - len(chosen),
                exclude=taken,
                rng=self._rng,
                exclude_operators=self._operators(taken),
            )
        if chosen:
            effects: list[Effect] = []
            audit = self._audit_job(job)
            for candidate in chosen:
                job.audits[candidate.peer] = now + self.config.replica_timeout_s
                self._occupy(candidate.peer)
                effects.append(DispatchAudit(peer=candidate.peer, audit=audit))
            if len(chosen) >= needed:
                self._audit_wait.pop(job_id, None)
            else:
                self._audit_wait[job_id] = None
            return effects
        if job.audits:
            return []  # the pending audits may still pass it; a later failure looks again
        if any(c.peer not in tried for c in pool):
            self._audit_wait[job_id] = None  # auditors exist but are busy: wait for a slot
            return []
        return self._fail(
            job_id,
            "verification_failed",
            f"no worker is left to audit the answer of {job.prover} (the job's output is never accepted "
            f"unchecked; {len(job.failed)} worker(s) failed on it); add workers serving {job.model_name!r}",
        )

    def _drain_audits(self, now: float) -> list[Effect]:
        """Offer free slots to claims waiting for auditors, oldest first."""
        effects: list[Effect] = []
        for job_id in list(self._audit_wait):
            job = self._jobs.get(job_id)
            if job is None or not job.prover:
                self._audit_wait.pop(job_id, None)
                continue
            effects += self._start_audits(job, now)
        return effects

    def _audit_job(self, job: _Job) -> AuditJob:
        """The AuditJob for the job's current claim: the prover's tokens under its contract's sampler."""
        result, _ = job.results[job.prover]
        contract = job.contract
        greedy = contract.greedy
        return AuditJob(
            job_id=job.request.job_id,
            contract=contract,
            prompt=job.request.prompt,
            tokens=list(result.tokens),
            text=result.text,
            finish_reason=result.finish_reason,
            format=job.request.format,
            temperature=0.0 if greedy else contract.temperature,
            top_k=0 if greedy else max(0, contract.top_k),
            top_p=1.0 if greedy else contract.top_p_value,
            seed=0 if greedy else contract.seed,
            tolerance=self.config.audit_tolerance,
        )

    def _check_report(self, job: _Job, peer: str, report: AuditReport) -> Attestation | str | None:
        """A passing report's attestation, None for a well-formed failing report, or why the report is
        unacceptable (the auditor's fault). The coordinator cannot re-score (it holds no model); it checks
        that the report is consistent with the claim and the tolerance it sent."""
        record = self.workers.get(peer)
        if record is None:
            return "audit report from an unregistered worker"
        result, prover_att = job.results[job.prover]
        expected = len(result.tokens) + (1 if result.finish_reason == "stop" else 0)
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
        if report.n_scored != expected:
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
        return attestation

    def _on_audit_returned(self, event: AuditReturned, now: float) -> list[Effect]:
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
            if len(job.audited) >= self._auditors:
                return self._accept_audited(job)
            return self._start_audits(job, now)
        return self._reject_claim(job, event.peer, event.report, now)

    def _reject_claim(self, job: _Job, auditor: str, report: AuditReport, now: float) -> list[Effect]:
        """An auditor failed the prover's claim: the prover is penalised (like an outvoted replica) and
        earns nothing; the job runs again on another prover, within ``max_failovers``."""
        prover = job.prover
        job.results.pop(prover, None)
        job.prover = ""
        job.invalid.append(prover)
        record = self.workers.get(prover)
        if record is not None:
            self._record(record.key, "invalid")
        effects: list[Effect] = [
            Penalize(
                peer=prover,
                why=f"its output failed the audit by {auditor} (max gap {report.max_gap:.3f} logits, "
                f"tolerance {self.config.audit_tolerance}): {report.reason}",
            )
        ]
        effects += self._cancel_audits(job)
        job.audited.clear()
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

    def _replace_auditor(self, job: _Job, now: float) -> list[Effect]:
        if job.failovers >= self.config.max_failovers:
            return self._fail(
                job.request.job_id,
                "verification_failed",
                f"{job.failovers} replacement(s) used up and the answer was not audited; retry later",
            )
        job.failovers += 1
        return self._start_audits(job, now)

    def _cancel_audits(self, job: _Job) -> list[Effect]:
        """Stop the job's pending audits and free their slots."""
        for peer in job.audits:
            self._release(peer)
        effects: list[Effect] = [
            CancelReplica(peer=peer, job_id=job.request.job_id) for peer in sorted(job.audits)
        ]
        job.audits.clear()
        return effects

    def _accept_audited(self, job: _Job) -> list[Effect]:
        """Every auditor passed the claim: sign a receipt crediting the prover ``max(1, n) * weight`` and
        each auditor ``ceil(max(1, n) / audit_credit_divisor) * weight``, and answer the client."""
        job_id = job.request.job_id
        prover = job.prover
        result, prover_att = job.results[prover]
        auditors = sorted(job.audited)
        n_tokens = prover_att.n_tokens
        for peer in (prover, *auditors):
            self._record(self.workers[peer].key, "valid")
        self._measure(prover, n_tokens, job.elapsed.get(prover, 0.0))
        if job.request.prompt:  # an audited answer is a verified one: good for canaries
            self.add_known_answer(
                job.request.prompt,
                job.contract,
                job.request.max_tokens,
                prover_att.output_commitment,
                seen={self.workers[p].key for p in job.tried() if p in self.workers},
                format=job.request.format,
            )
        evidence = self._evidence(job)
        points = max(1, n_tokens) * job.weight
        audit_points = -(-max(1, n_tokens) // max(1, self.config.audit_credit_divisor)) * job.weight
        keys = {peer: self.workers[peer].key for peer in (prover, *auditors)}
        receipt = Receipt(
            job_id=job_id,
            contract_hash=job.contract.digest(),
            output_commitment=prover_att.output_commitment,
            n_tokens=n_tokens,
            credits=(
                Credit(account=keys[prover], points=points),
                *(Credit(account=keys[a], points=audit_points) for a in auditors),
            ),
            attestations=(prover_att, *(job.audited[a] for a in auditors)),
            issued_at_ms=job.wall_ms,
            weight=job.weight,
        )
        entry = self._sign_own(receipt)
        encoded = self._own_entries[-1]
        effects: list[Effect] = [*evidence, AppendEntry(entry)]
        if job.hold:  # the prover is paid first, then the auditors, out of the hold; the rest goes back
            payouts = _payouts_in_order(receipt.credits, job.hold_amount)
            effects += self._author(
                Settle(hold=job.hold, payouts=payouts) if payouts else Refund(hold=job.hold)
            )
        effects += self._cancel_pending(job)
        effects += [SendReceipt(peer=p, notice=self._notice_for(p)) for p in (prover, *auditors)]
        reply = JobAccepted(
            job_id=job_id,
            text=result.text,
            tokens=list(result.tokens),
            finish_reason=result.finish_reason,
            receipt=encoded,
            workers=[prover, *auditors],
            failed=sorted(set(job.failed) | set(job.invalid)),
        )
        del self._jobs[job_id]
        effects.append(FinishJob(job_id, reply))
        return effects

    # ── canaries ─────────────────────────────────────────────────────────────────────────────────────
    def add_known_answer(
        self,
        prompt: str,
        contract: DecodingContract,
        max_tokens: int,
        commitment: bytes,
        *,
        seen: Iterable[bytes] = (),
        format: PromptFormat = "text",
    ) -> None:
        """Keep a verified answer for canaries (the coordinator does this for every job two or more
        workers agreed on; a driver may add answers a trusted node computed). ``seen``: worker keys that
        already know this prompt, never canaried with it. The pool keeps the newest answers."""
        if self.config.canary_pool_size <= 0 or not contract.greedy:
            return  # a sampled answer is fixed by its own job id: a canary (a new job id) would differ
        self._known.append(_KnownAnswer(prompt, contract, max_tokens, commitment, set(seen), format))
        del self._known[: -self.config.canary_pool_size]

    def _maybe_canary(self, now: float) -> list[Effect]:
        """With probability ``canary_rate``, re-send a known answer's prompt to one worker, as a new job."""
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
        self._canaries[canary_id] = _Canary(
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

    # ── cancel ───────────────────────────────────────────────────────────────────────────────────────
    def _on_cancelled(self, event: JobCancelled) -> list[Effect]:
        job = self._jobs.get(event.job_id)
        resumed = self._resumed.get(event.job_id)
        client = job.client if job is not None else resumed[1].client if resumed is not None else None
        if client is None or (event.client and event.client != client):
            return []  # unknown, settled, a canary, or not the submitter's to cancel
        self._resumed.pop(event.job_id, None)
        # No code says "cancelled" yet (a wire change); "malformed" is the nearest that clients do not
        # retry. The work done so far is not credited: no receipt, no points.
        return self._fail(event.job_id, "malformed", "job cancelled by its client; nothing was credited")

    def _take_hold(self, request: SubmitJob, weight: int) -> tuple[bytes | str, list[Effect]]:
        """Apply the client's GRANT (if any) and HOLD for a paid job of ``weight`` points per token. Return
        the hold's id, or why it was not taken, with the effects that store what was applied (a GRANT
        stays applied, and so must be stored, even when the HOLD after it is refused)."""
        try:
            entry = decode_entry(request.hold)
            body = open_entry(entry, self.network, scheme=self._scheme)
        except InvalidEntryError as exc:
            return f"the job's hold is not a valid ledger entry: {exc}", []
        hold = body.payload
        cost = job_cost(request.max_tokens, request.replicas, weight)
        if not isinstance(hold, Hold) or hold.job_id != request.job_id or hold.coordinator != self.public_key:
            return "the job's hold must be a HOLD for this job, naming this coordinator", []
        if hold.amount < cost:
            return (
                f"the job's hold reserves {hold.amount} points; it costs up to {cost} "
                f"(max_tokens x replicas x {weight} points per token of {request.model!r}); "
                "ask for a Quote, which says the price",
                [],
            )
        applied: list[Entry] = []
        if request.grant:
            granted = self._take_grant(request.grant, body.author)
            if isinstance(granted, str):
                return granted, []
            applied += granted
        effects: list[Effect] = [AppendEntry(e) for e in applied]
        self._adopt(applied)
        try:
            applied = self.ledger.apply(entry)
        except InvalidEntryError as exc:
            return f"the ledger refused the job's hold: {exc}", effects
        effects += [AppendEntry(e) for e in applied]
        self._adopt(applied)
        if self.ledger.hold(entry.id) is None:
            return (
                f"the hold waits: its author's balance ({self.ledger.balance(body.author)} points) is below "
                f"{hold.amount}, or its earlier entries have not reached this coordinator",
                effects,
            )
        return bytes(entry.id), effects

    def _adopt(self, applied: Iterable[Entry]) -> None:
        """Count our own entries among ``applied`` (the GRANT and HOLD of a job we pay ourselves) as ours,
        so that they are pushed with the rest of our chain (``_notice_for``)."""
        for entry in applied:
            if decode_body(entry.body).author == self.public_key:
                self._own_entries.append(encode_entry(entry))

    # ── the operator's own jobs ──────────────────────────────────────────────────────────────────────
    def pay_own_job(self, request: SubmitJob) -> SubmitJob | str:
        """``request`` paid from this coordinator's own account (its operator's: the node key), for the
        jobs its node submits itself (the OpenAI-compatible API): with a HOLD of the job's price as the next
        entry of our chain, after our starting GRANT when the account is new and short (the network has a
        grant and we are a minter). Returns the request to feed to ``handle`` at once (the HOLD is the next
        link of our chain), or why it cannot be paid. A model no worker serves is returned unpaid: the
        submission refuses it (``unknown_model``)."""
        weight = self.weight(request.model, max_tokens=request.max_tokens)
        if weight is None:
            return request
        cost = job_cost(request.max_tokens, request.replicas, weight)
        me = self.public_key
        balance = self.ledger.balance(me)
        head = self.ledger.head(me)
        genesis = self.ledger.genesis
        grant_points = genesis.grant_points if genesis is not None else 0
        grant = b""
        if balance < cost and head is None and grant_points > 0 and me in self.ledger.minters():
            # We vouch for ourselves, outside the rate limits (they guard against strangers' fresh keys):
            # a GRANT is an account's first entry, so this happens once per coordinator key.
            voucher = sign_grant_voucher(self._key, self.network, me, grant_points, scheme=self._scheme)
            body = EntryBody(
                network=self.network, author=me, seq=1, prev=b"", payload=Grant(grant_points, voucher)
            )
            entry = sign_entry(self._key, body, scheme=self._scheme)
            grant, head, balance = encode_entry(entry), (1, entry.id), balance + grant_points
        if balance < cost:
            why = (
                f"; network {self.network!r} has no starting grant"
                if grant_points <= 0
                else "; a starting grant can only be an account's first ledger entry, and this one has some"
                if head is not None
                else ""
            )
            return (
                f"this node pays its API's jobs from its own account ({me.hex()[:16]}..., the node's "
                f"identity key), which has {balance} points; this job costs up to {cost} (max_tokens "
                f"{request.max_tokens} x replicas {request.replicas} x {weight} points per token of "
                f"{request.model!r})"
                f"{why}. Lower max_tokens, earn points by running a worker with this identity, or have "
                "another account TRANSFER points to it"
            )
        hold = EntryBody(
            network=self.network,
            author=me,
            seq=head[0] + 1 if head is not None else 1,
            prev=bytes(head[1]) if head is not None else b"",
            payload=Hold(job_id=request.job_id, amount=cost, coordinator=me),
        )
        signed = encode_entry(sign_entry(self._key, hold, scheme=self._scheme))
        return msgspec.structs.replace(request, hold=signed, grant=grant)

    def _take_grant(self, data: bytes, payer: bytes) -> list[Entry] | str:
        """Apply a paying client's GRANT entry (its starting grant, sent with its first paid job); return
        what was applied, or why not."""
        try:
            entry = decode_entry(data)
            body = open_entry(entry, self.network, scheme=self._scheme)
        except InvalidEntryError as exc:
            return f"the job's grant is not a valid ledger entry: {exc}"
        if not isinstance(body.payload, Grant) or body.author != payer:
            return "the job's grant must be a GRANT entry authored by the account that pays the job"
        try:
            return self.ledger.apply(entry)
        except InvalidEntryError as exc:
            return f"the ledger refused the job's grant: {exc}"

    # ── starting grants ──────────────────────────────────────────────────────────────────────────────
    def vouch(
        self, request: GrantRequest, *, operator: str, now: float, wall_ms: int
    ) -> GrantVoucher | ErrorReply:
        """Sign a voucher for ``request.account``'s starting grant, or say why not (spec/ledger.md §7).

        ``operator``: the requesting peer's public IP ("" if private or unknown: one shared bucket);
        ``wall_ms``: the driver's wall clock (Unix ms), to refuse stale requests. The voucher is issued
        only if the request is signed by the account's key, the network has a starting grant, the
        account has no ledger entry yet (a GRANT must be its first), and the rate limits of
        ``opengrid.core.grants`` allow one more.
        """
        account = request.account
        signed = grant_request_signing_bytes(self.network, self.public_key, account, request.issued_at_ms)
        try:
            self._scheme.verify(account, signed, request.signature)
        except InvalidEntryError:
            return ErrorReply(
                "malformed",
                "grant request not signed by the account's key (over the network, this coordinator's key, "
                "the account and issued_at_ms); sign it with the account's own key",
            )
        if abs(wall_ms - request.issued_at_ms) > MAX_CLOCK_SKEW_MS:
            return ErrorReply(
                "malformed",
                f"grant request issued at {request.issued_at_ms} ms, more than {MAX_CLOCK_SKEW_MS} ms from "
                f"this coordinator's clock ({wall_ms} ms); check your clock and sign a fresh one",
            )
        genesis = self.ledger.genesis
        points = genesis.grant_points if genesis is not None else 0
        if points <= 0:
            return ErrorReply(
                "grant_refused",
                f"network {self.network!r} has no starting grant (its genesis sets no grant_points); "
                "earn points by running a worker, or get a transfer from an account that has some",
            )
        first = self.ledger.entries_by_author(account, to_seq=1)
        if first:
            claimed = isinstance(decode_body(first[0].body).payload, Grant)
            return ErrorReply(
                "grant_refused",
                f"account {account.hex()} already claimed its starting grant"
                if claimed
                else f"account {account.hex()} already has ledger entries; a grant can only be an "
                "account's first entry",
            )
        refusal = self.grants.refusal(account, operator, now)
        if refusal:
            return ErrorReply("busy", refusal)
        self.grants.record(account, operator, now)
        voucher = sign_grant_voucher(self._key, self.network, account, points, scheme=self._scheme)
        return GrantVoucher(
            account=account, points=points, signer=voucher.signer, signature=voucher.signature
        )

    def _evidence(self, job: _Job) -> list[Effect]:
        """An EVIDENCE entry for what the job's receipt cannot show — replicas that failed their checks
        (invalid) or failed / timed out (timeout) — so a restarted coordinator's reputations still count
        them (``reputation_from_ledger``). Nothing when every replica answered properly."""
        invalid = {self.workers[p].key for p in job.invalid if p in self.workers}
        timeout = {self.workers[p].key for p in job.failed if p in self.workers} - invalid
        if not invalid and not timeout:
            return []
        job_id = job.request.job_id
        return self._author(
            Evidence(job_id=job_id, invalid=tuple(sorted(invalid)), timeout=tuple(sorted(timeout)))
        )

    def _author(self, payload: Payload) -> list[Effect]:
        """Sign ``payload`` as our next ledger entry, apply it, and have it stored and pushed."""
        return [AppendEntry(self._sign_own(payload))]

    def _sign_own(self, payload: Payload) -> Entry:
        """Sign ``payload`` as our next ledger entry, apply it and queue it for pushing (its encoding is
        ``_own_entries[-1]``); the caller has it stored (``AppendEntry``)."""
        entry = sign_entry(self._key, self.ledger.next_body(self.public_key, payload), scheme=self._scheme)
        self.ledger.apply(entry)
        self._own_entries.append(encode_entry(entry))
        return entry

    def _notice_for(self, peer: str) -> ReceiptNotice:
        """Our entries ``peer`` has not been sent yet, newest last, capped at the message limit."""
        start = self._pushed.get(peer, 0)
        if len(self._own_entries) - start > _MAX_PUSH:
            start = len(self._own_entries) - _MAX_PUSH  # the rest waits for ledger sync
        self._pushed[peer] = len(self._own_entries)
        return ReceiptNotice(entries=self._own_entries[start:])

    def _cancel_pending(self, job: _Job) -> list[Effect]:
        """The job is settled: free its workers' slots, stop its pending replicas and audits, leave the
        queues."""
        self._queue.remove(job.request.job_id)
        self._audit_wait.pop(job.request.job_id, None)
        for peer in job.pending:
            self._release(peer)
        effects: list[Effect] = [
            CancelReplica(peer=peer, job_id=job.request.job_id) for peer in sorted(job.pending)
        ]
        effects += self._cancel_audits(job)
        return effects

    def _fail(self, job_id: bytes, code: ErrorCode, message: str) -> list[Effect]:
        job = self._jobs.pop(job_id, None)
        effects: list[Effect] = []
        if job is not None:
            effects += self._evidence(job)
            effects += self._cancel_pending(job)
            if job.hold:  # a paid job that failed costs its client nothing
                effects += self._author(Refund(hold=job.hold))
        effects.append(FinishJob(job_id, ErrorReply(code, message, job_id)))
        return effects


def _index_names(offers: Iterable[ModelOffer]) -> set[str]:
    """The keys ``_candidates`` looks a model up by: each offer's lowered name and model sha256."""
    return {name for o in offers for name in (o.name.lower(), o.contract.model_sha256.lower())}


def _input_problem(request: SubmitJob) -> str:
    """Why an open job's input can run on no worker, or "" (sealed prompts are checked by workers)."""
    if request.sealed:
        return ""
    if not request.prompt:
        return "the prompt is empty: send the text the model should continue (or chat messages)"
    if len(request.prompt) > MAX_PROMPT_CHARS:
        return (
            f"the prompt has {len(request.prompt):,} characters, over the limit of {MAX_PROMPT_CHARS:,}; "
            "shorten it"
        )
    return ""


def _sealed_problem(request: SubmitJob, sealed: dict[str, bytes]) -> str:
    """Why a sealed submission is unacceptable, or "" if it is fine."""
    if request.prompt:
        return "a sealed job must not also carry a plaintext prompt"
    if len(request.client_box_key) != 32:
        return "a sealed job needs the client's 32-byte ephemeral box key"
    if len(sealed) != len(request.sealed):
        return "a sealed job lists a worker twice"
    if len(sealed) < request.replicas:
        return f"the prompt is sealed to {len(sealed)} worker(s), fewer than {request.replicas} replicas"
    return ""


def _payouts(credits: tuple[Credit, ...], amount: int) -> tuple[Credit, ...]:
    """What a paid job's client pays each agreeing worker: what the receipt credits them, capped so the
    total fits the hold (extra replicas after a disagreement can credit more workers than were paid for)."""
    share = amount // max(1, len(credits))
    return tuple(
        Credit(account=c.account, points=min(c.points, share)) for c in credits if min(c.points, share) > 0
    )


def _payouts_in_order(credits: tuple[Credit, ...], amount: int) -> tuple[Credit, ...]:
    """Audit mode: pay the credits in order (the prover first) until ``amount`` runs out, so a hold sized
    for one replica still pays the whole generation before any audit."""
    payouts: list[Credit] = []
    left = amount
    for credit in credits:
        paid = min(credit.points, left)
        if paid > 0:
            payouts.append(Credit(account=credit.account, points=paid))
            left -= paid
    return tuple(payouts)

"""The coordinator's policy knobs (``CoordinatorConfig``) and the constants its parts share."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from opengrid.core.audit import DEFAULT_GAP_TOLERANCE
from opengrid.core.grants import GrantLimits
from opengrid.core.queueing import MAX_QUEUED, MAX_QUEUED_PER_CLIENT

MAX_PUSH = 1024  # entries per ReceiptNotice (its wire limit)

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
    a fresh job id to a worker that never saw it). 0 disables canaries. Replication mode only: in audit
    mode every claim is audited, and an exact-match canary would punish honest workers on other builds
    (auditors are checked by canary *audits* instead, ``audit_canary_rate``)."""
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

    verify: Literal["replicate", "audit"] = "audit"
    """How a job is verified (spec/verification.md §13). ``audit`` (the default): one worker (the prover)
    generates, ``auditors`` other workers holding the same weights (any numerical class) re-score its
    claimed tokens in one forward pass; a failed audit penalises the prover and re-runs the job on another.
    Needs ``1 + auditors`` workers holding a model. ``replicate``: ``replicas`` workers of one numerical
    class must return bit-identical outputs (§5), for engines that cannot score. A sealed job's
    prover and auditors are workers it was sealed to (spec/sealed-mode.md §11)."""
    auditors: int = 1
    """Audit mode: auditors that must pass a claim before it is accepted (at least 1)."""
    audit_tolerance: float = DEFAULT_GAP_TOLERANCE
    """Audit mode: the largest gap (logits) an auditor accepts at any position (spec/verification.md
    §12.2-12.3: 0.75, a 24 % margin over the largest honest gap measured across builds, 0.607)."""
    audit_credit_divisor: int = 2
    """Audit mode: an auditor earns ``ceil(max(1, n_tokens) / this) * weight`` points for scoring ``n``
    tokens, the prover ``max(1, n_tokens) * weight``. 2: scoring 128 tokens cost 0.44-0.64 of generating
    them on this project's CPUs (spec/verification.md §13.3), so an audit pays about what its compute
    costs; a job costs 1.5 units of pay instead of replication's 2."""
    audit_full_rate: float = 0.55
    """Audit mode: probability that a trusted prover's claim is scored in full (spec/verification.md
    §13.5); the rest are scored on a random prefix window of at least ``audit_min_positions``. Untrusted
    provers (a streak below ``min_trust_streak``, doubled per offence, or any offence on record) are always
    scored in full. 0.55: the share that met issue 14's goal (≤ 0.1 % wrong at ≤ 1.35 units) in the
    simulator, also against a cheater that changes only the last token (§13.5); 1 scores every position."""
    audit_second_rate: float = 0.02
    """Audit mode: probability, per claim, of one more auditor and a full window (a second audit, which
    meets a lying auditor or a prover + auditor cartel). 0.02: the measured policy's (§13.5)."""
    audit_min_positions: int = 20
    """Audit mode: a partial window scores at least the first this many positions (20: any claim that
    changes one token in 20 or more is always caught)."""
    audit_window_skew: float = 6.0
    """Audit mode: shape of a partial window's end beyond ``audit_min_positions``: 1 uniform; larger
    windows are shorter on average (cheaper) and catch a cheat confined to the tail less often. 6: the
    measured policy's (§13.5; on average the minimum plus a seventh of the rest)."""
    audit_offender_second: bool = False
    """Audit mode: a prover with any invalid result on record gets a second audit on every claim (spec/
    verification.md §13.6): what catches a prover + auditor cartel once the prover was caught once. Off
    (the default): offenders get second audits at ``audit_second_rate`` like everyone."""
    audit_canary_rate: float = 0.0
    """Audit mode: probability, per claim whose audits start, of also sending one canary audit (spec/
    verification.md §13.6): a claim whose verdict the coordinator knows, to a worker drawn as auditors are.
    A wrong verdict costs the auditor its reputation and its audits. 0 (the default): none."""

    stream_chunk_first: int = 1
    """Audit mode, streaming jobs: tokens in the first chunk sent to the auditors (spec/verification.md
    §14.2). One: the client's first verified text waits for it and its audit, and the auditor scores a
    one-token first chunk on the row its prompt evaluation left (no forward pass); a larger one also
    waits for the prover's next progress frame (paced 50 ms apart). Measured: benchmarks/README.md."""
    stream_chunk_max: int = 16
    """Audit mode, streaming jobs: each later chunk doubles the previous one, up to this many tokens (at
    most 1024, a frame's limit). Larger: fewer audit round trips (a forward pass each) on long answers;
    smaller: a shorter tail, the last chunk audited after generation ends. Measured: benchmarks/README.md."""

    @classmethod
    def plain(cls, **overrides: object) -> CoordinatorConfig:
        """Plain verification: every job runs the replicas asked for (exact replication, unless
        ``verify="audit"`` is passed), on workers chosen uniformly at random, with no canaries — the
        baseline that experiments and tests compare against."""
        settings: dict[str, object] = {"verify": "replicate", **overrides}
        return cls(adaptive=False, canary_rate=0.0, weighted=False, **settings)  # type: ignore[arg-type]

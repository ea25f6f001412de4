"""Per-job records: what happened to each job, from submission to ledger convergence."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True, eq=False)
class JobRecord:
    """One job's story as the simulator observed it (ground truth included)."""

    n: int
    coordinator: int
    submit_ns: int
    max_tokens: int
    replicas: int
    dispatched: int = 0
    """DispatchReplica effects the coordinator issued for this job."""
    audits: int = 0
    """DispatchAudit effects the coordinator issued for this job (audit mode)."""
    audit_units: float = 0.0
    """Those audits in full audits: each counts the share of the claim's positions it scores (its window,
    spec/verification.md §13.5; 1 for a full audit)."""
    returned: dict[str, bool] = field(default_factory=dict)
    """peer -> whether the output it returned was wrong (ground truth), for results that arrived."""
    churn_lost: int = 0
    """Replicas lost because their worker went offline."""
    accept_ns: int = -1
    """When the coordinator accepted it (signed the receipt)."""
    finish_ns: int = -1
    """When the client got the answer or the error."""
    outcome: str = ""
    """'accepted', an ErrorReply code, or '' if unfinished when the run ended."""
    correct: bool | None = None
    """For accepted jobs: whether the accepted tokens are the honest ones."""
    credited: tuple[str, ...] = ()
    dissenters: tuple[str, ...] = ()
    awaiting: set[str] = field(default_factory=set)
    """Credited workers that have not yet applied this job's receipt."""
    converged_ns: int = -1
    """When the last credited worker applied the receipt (-1: not yet)."""
    model: str = ""
    """The model the job asked for (the scenario's, or a workload trace's)."""

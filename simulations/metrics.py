"""Summary metrics of a run: detection, replication overhead, fairness, latency, churn, convergence.

Definitions (ground truth comes from the simulator, which knows every honest output):

- A *bad replica* is a returned result whose tokens differ from the honest output.
- A replica is *rejected* when it was not credited: its worker was outvoted (a dissenter) or the job
  failed. Detection precision = bad rejected / all rejected; recall = bad rejected / all bad (jobs
  settled during the run only).
- *Accepted bad* = accepted jobs whose answer is not the honest one.
- *Replicas per accepted job* = replicas dispatched over all settled jobs / accepted jobs (the overhead
  BOINC's adaptive replication drives towards 1 + 1/n).
- *Wrong accepted* = accepted bad / accepted jobs (``detection.accepted_wrong_fraction``).
- *Compute units per job* = (generations dispatched + audits dispatched x ``audit_cost`` x the share of
  the claim each scores, its window: spec/verification.md §13.5) / accepted
  jobs, over settled jobs (plus every canary): a generation (replica or canary) counts 1, an audit its
  measured cost as a fraction of one (``Scenario.audit_cost``, default 0.24: the bf16 scoring copy).
  Exact replication of 2 costs 2; audit mode 1 + 0.24 per full audit, plus re-runs of caught cheats.
- *Points Gini* vs *compute Gini*: inequality of points earned and of inference seconds spent, over the
  workers that were ever online.
- *Ledger convergence*: for each accepted job, time from acceptance until every credited worker has
  applied its receipt; receipts never applied count as unconverged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from simulations.engine import NS_PER_S
from simulations.records import JobRecord
from simulations.simulation import RunOutput


def gini(values: Sequence[float]) -> float:
    """Gini coefficient of non-negative values (0 = equal, →1 = one holder has everything)."""
    ordered = sorted(values)
    n = len(ordered)
    total = sum(ordered)
    if n == 0 or total <= 0:
        return 0.0
    weighted = sum((i + 1) * v for i, v in enumerate(ordered))
    return (2.0 * weighted) / (n * total) - (n + 1.0) / n


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (deterministic, no interpolation); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[rank - 1]


def _ratio(num: float, den: float) -> float | None:
    return num / den if den else None


def detection(jobs: Sequence[JobRecord]) -> dict[str, Any]:
    """Precision/recall of rejecting bad replicas, and bad answers that got accepted."""
    bad_rejected = honest_rejected = bad_credited = 0
    accepted = accepted_bad = 0
    for job in jobs:
        if not job.outcome:
            continue
        credited = set(job.credited)
        for peer, wrong in job.returned.items():
            rejected = peer not in credited
            if wrong and rejected:
                bad_rejected += 1
            elif wrong:
                bad_credited += 1
            elif (rejected and job.outcome != "accepted") or peer in job.dissenters:
                honest_rejected += 1
        if job.outcome == "accepted":
            accepted += 1
            accepted_bad += job.correct is False
    return {
        "bad_replicas": bad_rejected + bad_credited,
        "bad_replicas_rejected": bad_rejected,
        "bad_replicas_credited": bad_credited,
        "honest_replicas_rejected": honest_rejected,
        "precision": _ratio(bad_rejected, bad_rejected + honest_rejected),
        "recall": _ratio(bad_rejected, bad_rejected + bad_credited),
        "accepted_jobs": accepted,
        "accepted_bad": accepted_bad,
        "accepted_correct_fraction": _ratio(accepted - accepted_bad, accepted),
        "accepted_wrong_fraction": _ratio(accepted_bad, accepted),
    }


def compute_units(run: RunOutput) -> dict[str, Any]:
    """Generation and audit units spent on settled jobs (and every canary and canary audit), in total and
    per accepted job (see the module docstring). Jobs unfinished when the run ends are left out of both
    sides."""
    settled = [j for j in run.jobs if j.outcome]
    accepted = sum(1 for j in settled if j.outcome == "accepted")
    generation = float(sum(j.dispatched for j in settled) + run.counters.get("canary_dispatches", 0))
    audit = run.scenario.audit_cost * (
        sum(j.audit_units for j in settled) + run.counters.get("canary_audit_milliunits", 0) / 1000
    )
    return {
        "audit_cost": run.scenario.audit_cost,
        "generation": generation,
        "audit": audit,
        "generation_per_job": _ratio(generation, accepted),
        "audit_per_job": _ratio(audit, accepted),
        "per_job": _ratio(generation + audit, accepted),
    }


def latency(jobs: Sequence[JobRecord]) -> dict[str, Any]:
    """Submit → answer at the client, for accepted jobs, in seconds."""
    done = [
        (j.finish_ns - j.submit_ns) / NS_PER_S for j in jobs if j.outcome == "accepted" and j.finish_ns >= 0
    ]
    return {f"p{q}": percentile(done, q) for q in (50, 90, 99)} | {"max": max(done, default=None)}


def convergence(jobs: Sequence[JobRecord]) -> dict[str, Any]:
    """Receipt acceptance → applied by every credited worker, in seconds."""
    accepted = [j for j in jobs if j.outcome == "accepted"]
    times = [(j.converged_ns - j.accept_ns) / NS_PER_S for j in accepted if j.converged_ns >= 0]
    return {
        "receipts": len(accepted),
        "converged": len(times),
        "converged_fraction": _ratio(len(times), len(accepted)),
        "p50_s": percentile(times, 50),
        "p99_s": percentile(times, 99),
        "max_s": max(times, default=None),
    }


def replicas_per_accepted(jobs: Sequence[JobRecord], *, since_s: float = 0.0) -> float | None:
    """Replicas dispatched per accepted job, over settled jobs submitted at or after ``since_s``."""
    since_ns = since_s * NS_PER_S
    settled = [j for j in jobs if j.outcome and j.submit_ns >= since_ns]
    accepted = sum(1 for j in settled if j.outcome == "accepted")
    return _ratio(sum(j.dispatched for j in settled), accepted)


def summarize(run: RunOutput) -> dict[str, Any]:
    """Every metric of a run as plain JSON-able data."""
    jobs = run.jobs
    settled = [j for j in jobs if j.outcome]
    accepted = [j for j in settled if j.outcome == "accepted"]
    outcomes: dict[str, int] = {}
    for job in jobs:
        outcomes[job.outcome or "unfinished"] = outcomes.get(job.outcome or "unfinished", 0) + 1
    active = [w for w in run.workers if w.session > 0]
    points = [float(run.points.get(w.peer, 0)) for w in active]
    compute = [w.compute_s for w in active]
    by_behaviour: dict[str, dict[str, float]] = {}
    for w in active:
        row = by_behaviour.setdefault(w.behaviour.name, {"workers": 0, "points": 0, "compute_s": 0.0})
        row["workers"] += 1
        row["points"] += run.points.get(w.peer, 0)
        row["compute_s"] += w.compute_s
    total_points = sum(points)
    for row in by_behaviour.values():
        row["points_share"] = row["points"] / total_points if total_points else 0.0
    warmup = float(run.scenario.expect.get("warmup_s", 0.0))
    return {
        "jobs": {"submitted": len(jobs), "outcomes": dict(sorted(outcomes.items()))},
        "detection": detection(jobs),
        "replicas_per_accepted_job": replicas_per_accepted(jobs),
        "replicas_per_accepted_job_after_warmup": replicas_per_accepted(jobs, since_s=warmup),
        "compute_units": compute_units(run),
        "results_per_accepted_job": _ratio(sum(len(j.returned) for j in accepted), len(accepted)),
        "fairness": {
            "points_gini": gini(points),
            "compute_gini": gini(compute),
            "by_behaviour": dict(sorted(by_behaviour.items())),
        },
        "latency_s": latency(jobs),
        "churn": {
            "replicas_lost": sum(j.churn_lost for j in jobs),
            "jobs_lost": sum(1 for j in settled if j.outcome != "accepted" and j.churn_lost),
        },
        "ledger_convergence": convergence(jobs),
        "counters": run.counters,
        "run": {"events": run.events, "wall_s": run.wall_s, "events_per_s": _ratio(run.events, run.wall_s)},
    }

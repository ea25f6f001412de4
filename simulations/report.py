"""What a run leaves on disk: manifest.json, metrics.json, jobs.csv, workers.csv (plots: plots.py).

The manifest names everything needed to reproduce the run (seed, git commit, the parsed scenario) and
the event-log hash to check that a rerun really was the same run.
"""

from __future__ import annotations

import csv
import json
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

from simulations.engine import NS_PER_S
from simulations.metrics import summarize
from simulations.simulation import RunOutput

JOB_COLUMNS = (
    "job",
    "coordinator",
    "submit_s",
    "accept_s",
    "finish_s",
    "latency_s",
    "outcome",
    "correct",
    "max_tokens",
    "replicas",
    "dispatched",
    "audits",
    "returned",
    "bad_returned",
    "credited",
    "dissenters",
    "churn_lost",
    "convergence_s",
    "model",
)
WORKER_COLUMNS = (
    "peer",
    "behaviour",
    "hardware",
    "full",
    "coordinator",
    "joined_s",
    "compute_s",
    "answered",
    "points",
)


def git_commit(repo: Path | None = None) -> str | None:
    """``git rev-parse HEAD`` of the code that ran (None outside a git checkout), '+dirty' if modified."""
    root = repo or Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}+dirty" if dirty else head


def _s(ns: int) -> float | str:
    return round(ns / NS_PER_S, 6) if ns >= 0 else ""


def job_rows(run: RunOutput) -> list[dict[str, Any]]:
    """One CSV row per client job."""
    rows = []
    for j in run.jobs:
        rows.append(
            {
                "job": j.n,
                "coordinator": j.coordinator,
                "submit_s": _s(j.submit_ns),
                "accept_s": _s(j.accept_ns),
                "finish_s": _s(j.finish_ns),
                "latency_s": _s(j.finish_ns - j.submit_ns) if j.finish_ns >= 0 else "",
                "outcome": j.outcome or "unfinished",
                "correct": "" if j.correct is None else int(j.correct),
                "max_tokens": j.max_tokens,
                "replicas": j.replicas,
                "dispatched": j.dispatched,
                "audits": j.audits,
                "returned": len(j.returned),
                "bad_returned": sum(j.returned.values()),
                "credited": " ".join(j.credited),
                "dissenters": " ".join(j.dissenters),
                "churn_lost": j.churn_lost,
                "convergence_s": _s(j.converged_ns - j.accept_ns) if j.converged_ns >= 0 else "",
                "model": j.model,
            }
        )
    return rows


def worker_rows(run: RunOutput) -> list[dict[str, Any]]:
    """One CSV row per worker identity."""
    return [
        {
            "peer": w.peer,
            "behaviour": w.behaviour.name,
            "hardware": w.hardware.name,
            "full": int(w.full),
            "coordinator": w.coordinator,
            "joined_s": _s(w.joined_ns),
            "compute_s": round(w.compute_s, 6),
            "answered": w.answered,
            "points": run.points.get(w.peer, 0),
        }
        for w in run.workers
    ]


def _write_csv(path: Path, columns: tuple[str, ...], rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def write_run(run: RunOutput, out: Path, *, scenario_path: str | None = None) -> dict[str, Any]:
    """Write the run's files into ``out`` (created if needed); return its metrics."""
    out.mkdir(parents=True, exist_ok=True)
    metrics = summarize(run)
    manifest = {
        "scenario": run.scenario.name,
        "scenario_file": scenario_path,
        "seed": run.seed,
        "git_commit": git_commit(),
        "event_log_sha256": run.digest,
        "events": run.events,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "config": run.scenario.to_dict(),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    _write_csv(out / "jobs.csv", JOB_COLUMNS, job_rows(run))
    _write_csv(out / "workers.csv", WORKER_COLUMNS, worker_rows(run))
    return metrics


def read_csv(path: Path) -> list[dict[str, str]]:
    """Rows of a CSV this module wrote."""
    with path.open(newline="") as f:
        return list(csv.DictReader(f))

"""Matplotlib figures of a run, drawn from its files alone, so ``opengrid sim plot DIR`` can redraw them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on CI machines or over ssh

import matplotlib.pyplot as plt

from simulations.report import read_csv

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["plot_run", "plt"]  # plt: pyplot with the file-only backend chosen (sweep.py draws with it)


def _floats(rows: list[dict[str, str]], column: str) -> list[float]:
    return [float(r[column]) for r in rows if r.get(column, "") != ""]


def _cdf(ax: Axes, values: list[float], label: str) -> None:
    ordered = sorted(values)
    n = len(ordered)
    ax.plot(ordered, [(i + 1) / n for i in range(n)], label=label)


def plot_run(directory: Path) -> list[Path]:
    """Draw every figure of the run in ``directory``; return the files written."""
    metrics = json.loads((directory / "metrics.json").read_text())
    jobs = read_csv(directory / "jobs.csv")
    workers = read_csv(directory / "workers.csv")
    written = [
        _detection(directory, metrics),
        _replicas(directory, jobs, metrics),
        _fairness(directory, workers, metrics),
        _latency(directory, jobs, metrics),
        _convergence(directory, jobs, metrics),
        _timeline(directory, jobs),
    ]
    return written


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _detection(d: Path, metrics: dict[str, Any]) -> Path:
    det = metrics["detection"]
    names = ["precision", "recall", "accepted_correct_fraction"]
    values = [det[n] if det[n] is not None else 0.0 for n in names]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.bar(["precision", "recall", "accepted correct"], values, color=["#4c72b0", "#55a868", "#c44e52"])
    ax.set_ylim(0, 1.05)
    ax.set_title(
        f"bad-result detection ({det['bad_replicas']} bad replicas, {det['accepted_bad']} bad accepted)"
    )
    return _save(fig, d / "detection.png")


def _replicas(d: Path, jobs: list[dict[str, str]], metrics: dict[str, Any]) -> Path:
    counts = [int(r["dispatched"]) for r in jobs if r["outcome"] == "accepted"]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    if counts:
        ax.hist(counts, bins=range(0, max(counts) + 2), align="left", rwidth=0.8)
    mean = metrics["replicas_per_accepted_job"]
    ax.set_title(f"replicas per accepted job (mean {mean:.3f})" if mean else "replicas per accepted job")
    ax.set_xlabel("replicas dispatched")
    ax.set_ylabel("jobs")
    return _save(fig, d / "replicas.png")


def _fairness(d: Path, workers: list[dict[str, str]], metrics: dict[str, Any]) -> Path:
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for behaviour in sorted({w["behaviour"] for w in workers}):
        rows = [w for w in workers if w["behaviour"] == behaviour]
        left.scatter(_floats(rows, "compute_s"), _floats(rows, "points"), s=8, label=behaviour)
    left.set_xlabel("contributed compute (inference s)")
    left.set_ylabel("points")
    left.legend()
    f = metrics["fairness"]
    left.set_title(f"points Gini {f['points_gini']:.3f} vs compute Gini {f['compute_gini']:.3f}")
    for column, label in (("points", "points"), ("compute_s", "compute")):
        values = sorted(_floats(workers, column))
        total = sum(values) or 1.0
        acc, curve = 0.0, [0.0]
        for v in values:
            acc += v
            curve.append(acc / total)
        n = len(values) or 1
        right.plot([i / n for i in range(len(curve))], curve, label=label)
    right.plot([0, 1], [0, 1], "k:", label="equality")
    right.set_title("Lorenz curves")
    right.legend()
    return _save(fig, d / "fairness.png")


def _latency(d: Path, jobs: list[dict[str, str]], metrics: dict[str, Any]) -> Path:
    values = [float(r["latency_s"]) for r in jobs if r["outcome"] == "accepted" and r["latency_s"]]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    if values:
        _cdf(ax, values, "submit → accepted answer")
    for q, value in metrics["latency_s"].items():
        if q.startswith("p") and value is not None:
            ax.axvline(value, linestyle=":", color="grey")
            ax.text(value, 0.02, q, rotation=90)
    ax.set_xlabel("seconds")
    ax.set_ylabel("fraction of accepted jobs")
    ax.set_title("latency percentiles")
    return _save(fig, d / "latency.png")


def _convergence(d: Path, jobs: list[dict[str, str]], metrics: dict[str, Any]) -> Path:
    values = _floats(jobs, "convergence_s")
    c = metrics["ledger_convergence"]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    if values:
        _cdf(ax, values, "receipt applied by all credited workers")
    share = c["converged_fraction"]
    ax.set_title(
        f"ledger convergence ({share:.1%} of receipts)" if share is not None else "ledger convergence"
    )
    ax.set_xlabel("seconds after acceptance")
    return _save(fig, d / "convergence.png")


def _timeline(d: Path, jobs: list[dict[str, str]]) -> Path:
    fig, ax = plt.subplots(figsize=(8, 3.5))
    outcomes = sorted({r["outcome"] for r in jobs})
    times = _floats(jobs, "submit_s")
    end = max(times, default=1.0)
    bins = [end * i / 60 for i in range(61)]
    for outcome in outcomes:
        ax.hist(
            [float(r["submit_s"]) for r in jobs if r["outcome"] == outcome],
            bins=bins,
            histtype="step",
            label=outcome,
        )
    lost = [float(r["submit_s"]) for r in jobs if r["churn_lost"] not in ("", "0")]
    if lost:
        ax.hist(lost, bins=bins, histtype="step", linestyle="--", label="lost a replica to churn")
    ax.set_xlabel("submitted at (simulated s)")
    ax.set_ylabel("jobs")
    ax.legend(fontsize=7)
    ax.set_title("jobs over time, by outcome")
    return _save(fig, d / "timeline.png")

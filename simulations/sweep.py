"""Parameter sweeps: one run per point of a grid, one process per core.

``--param workers=100,200 --param lazy_fraction=0,0.2`` gives four points; each runs in its own process
(``ProcessPoolExecutor``, at most ``os.cpu_count()``) and writes a normal run directory; the sweep adds
summary.csv / summary.json with one row per run and a figure per metric.
"""

from __future__ import annotations

import csv
import itertools
import json
import multiprocessing
import os
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from opengrid.errors import ConfigError
from simulations.scenario import load, parse_value

SUMMARY_METRICS = (
    ("replicas_per_accepted_job", ("replicas_per_accepted_job",)),
    ("precision", ("detection", "precision")),
    ("recall", ("detection", "recall")),
    ("accepted_bad", ("detection", "accepted_bad")),
    ("accepted_wrong_fraction", ("detection", "accepted_wrong_fraction")),
    ("units_per_job", ("compute_units", "per_job")),
    ("points_gini", ("fairness", "points_gini")),
    ("latency_p50_s", ("latency_s", "p50")),
    ("latency_p99_s", ("latency_s", "p99")),
    ("jobs_lost_to_churn", ("churn", "jobs_lost")),
    ("ledger_converged_fraction", ("ledger_convergence", "converged_fraction")),
)


def parse_params(specs: Sequence[str]) -> dict[str, list[Any]]:
    """``["workers=100,200", ...]`` → ``{"workers": [100, 200], ...}`` (order kept)."""
    grid: dict[str, list[Any]] = {}
    for spec in specs:
        key, sep, values = spec.partition("=")
        if not sep or not key.strip() or not values.strip():
            raise ConfigError(f"--param {spec!r} must look like name=v1,v2 (e.g. workers=100,200)")
        grid[key.strip()] = [parse_value(v.strip()) for v in values.split(",")]
    return grid


def points(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of the grid's values, first parameter slowest."""
    keys = list(grid)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(grid[k] for k in keys))]


def run_name(overrides: dict[str, Any], seed: int) -> str:
    """A directory name for one run, e.g. ``workers-100_lazy_fraction-0.2_seed-1``."""
    parts = [f"{k}-{v}" for k, v in overrides.items()] + [f"seed-{seed}"]
    return re.sub(r"[^A-Za-z0-9_.=-]", "_", "_".join(parts))


def run_point(
    scenario_path: str, overrides: dict[str, Any], seed: int, out: str, plots: bool
) -> dict[str, Any]:
    """Run one grid point (in a worker process) and return its summary row."""
    from simulations.report import write_run
    from simulations.simulation import simulate

    scenario = load(Path(scenario_path), overrides)
    run = simulate(scenario, seed)
    metrics = write_run(run, Path(out), scenario_path=scenario_path)
    if plots:  # matplotlib costs a second to import: only where figures are wanted
        from simulations.plots import plot_run

        plot_run(Path(out))
    row: dict[str, Any] = {**overrides, "seed": seed, "event_log_sha256": run.digest}
    for name, path in SUMMARY_METRICS:
        value: Any = metrics
        for part in path:
            value = value[part]
        row[name] = value
    return row


def sweep(
    scenario_path: Path,
    grid: dict[str, list[Any]],
    out: Path,
    *,
    seeds: Sequence[int],
    jobs: int | None = None,
    plots: bool = True,
    on_done: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Run every grid point for every seed in parallel; write and return the summary rows."""
    for overrides in points(grid):  # fail fast on a bad key before starting processes
        load(scenario_path, overrides)
    tasks = [(overrides, seed) for overrides in points(grid) for seed in seeds]
    limit = max(1, min(jobs or os.cpu_count() or 1, os.cpu_count() or 1, len(tasks)))
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    # spawn: each run starts from a clean interpreter, whatever threads the parent has.
    with ProcessPoolExecutor(max_workers=limit, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [
            pool.submit(run_point, str(scenario_path), o, s, str(out / run_name(o, s)), plots)
            for o, s in tasks
        ]
        for future in as_completed(futures):
            row = future.result()
            rows.append(row)
            if on_done is not None:
                on_done(row)
    order = {run_name(o, s): i for i, (o, s) in enumerate(tasks)}
    rows.sort(key=lambda r: order[run_name({k: r[k] for k in grid}, r["seed"])])
    write_summary(rows, out, list(grid))
    return rows


def write_summary(rows: list[dict[str, Any]], out: Path, params: list[str]) -> None:
    """summary.json, summary.csv and one figure per metric against the first parameter."""
    (out / "summary.json").write_text(json.dumps({"params": params, "runs": rows}, indent=2) + "\n")
    columns = [*params, "seed", "event_log_sha256", *(name for name, _ in SUMMARY_METRICS)]
    with (out / "summary.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    plot_summary(out)


def plot_summary(out: Path) -> list[Path]:
    """Each summary metric against the first parameter, one line per value of the others."""
    from simulations.plots import plt

    data = json.loads((out / "summary.json").read_text())
    params, rows = data["params"], data["runs"]
    if not params or not rows:
        return []
    x_param, others = params[0], params[1:]
    written = []
    for name, _ in SUMMARY_METRICS:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        groups: dict[str, list[tuple[float, float]]] = {}
        for row in rows:
            if row.get(name) is None or not isinstance(row[x_param], int | float):
                continue
            label = ", ".join(f"{k}={row[k]}" for k in others) or name
            groups.setdefault(label, []).append((row[x_param], row[name]))
        for label, pts in sorted(groups.items()):
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
        ax.set_xlabel(x_param)
        ax.set_ylabel(name)
        if groups:
            ax.legend(fontsize=7)
        fig.tight_layout()
        path = out / f"sweep_{name}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written

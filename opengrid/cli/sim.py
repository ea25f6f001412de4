"""``opengrid sim``: run, sweep and plot network simulations (simulations/README.md).

opengrid sim run SCENARIO.toml --seed N --out DIR     one run: manifest, metrics, CSVs, PNGs
opengrid sim sweep SCENARIO.toml --param k=v1,v2 ...   a grid of runs, one process per core
opengrid sim plot DIR                                  redraw the figures of a run or a sweep
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from opengrid.errors import ConfigError

_ACTIONS = ("run", "sweep", "plot")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``sim`` command (with its run | sweep | plot actions) to the top-level parser."""
    sim = subparsers.add_parser(
        "sim",
        help="simulate a network of thousands of nodes with the real protocol code",
        description="Discrete-event simulation driving the real coordinator, worker and ledger code.",
    )
    actions = sim.add_subparsers(dest="sim_action", required=True, metavar="ACTION")
    run = actions.add_parser("run", help="run one scenario and write its results")
    run.add_argument("scenario", type=Path, help="scenario TOML (see simulations/scenarios/)")
    run.add_argument("--seed", type=int, default=1, help="random seed (default: 1)")
    run.add_argument("--out", type=Path, default=Path("sim-out"), help="output directory (default: sim-out)")
    run.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a scenario key (repeatable)"
    )
    run.add_argument("--no-plots", action="store_true", help="skip the PNG figures")
    run.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    sweep = actions.add_parser("sweep", help="run a scenario over a parameter grid, in parallel")
    sweep.add_argument("scenario", type=Path)
    sweep.add_argument(
        "--param",
        action="append",
        required=True,
        metavar="KEY=V1,V2",
        help="a swept key and its values, e.g. workers=100,200 or lazy_fraction=0,0.2 (repeatable)",
    )
    sweep.add_argument("--seed", type=int, default=1, help="first seed (default: 1)")
    sweep.add_argument("--repeats", type=int, default=1, help="seeds per grid point (default: 1)")
    sweep.add_argument("--jobs", type=int, default=None, help="processes (default and cap: CPU count)")
    sweep.add_argument("--out", type=Path, default=Path("sim-sweep"))
    sweep.add_argument("--no-plots", action="store_true", help="skip per-run figures")
    plot = actions.add_parser("plot", help="redraw the figures of a run or sweep directory")
    plot.add_argument("directory", type=Path)


def run(args: argparse.Namespace) -> int:
    """Execute ``opengrid sim <action>``; returns the process exit status."""
    try:
        if args.sim_action == "run":
            return _run(args)
        if args.sim_action == "sweep":
            return _sweep(args)
        if args.sim_action == "plot":
            return _plot(args)
    except ConfigError as exc:
        print(f"opengrid sim: {exc}", file=sys.stderr)
        return 2
    print(
        f"opengrid sim: unknown action {args.sim_action!r}; use one of {', '.join(_ACTIONS)}", file=sys.stderr
    )
    return 2


def _overrides(pairs: list[str]) -> dict[str, Any]:
    from simulations.scenario import typed_value

    result: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ConfigError(f"--set {pair!r} must look like key=value (e.g. workers=500)")
        result[key.strip()] = typed_value(key.strip(), value.strip())
    return result


def _run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from simulations.plots import plot_run
    from simulations.report import write_run
    from simulations.scenario import load
    from simulations.simulation import Simulation

    scenario = load(args.scenario, _overrides(args.set))
    console = Console(stderr=True)
    simulation = Simulation(scenario, args.seed)
    with Progress(
        TextColumn(f"[bold]{scenario.name}[/] seed {args.seed}"),
        BarColumn(),
        TextColumn("{task.completed:.0f}/{task.total:.0f} simulated s"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=args.quiet,
    ) as progress:
        task = progress.add_task("run", total=scenario.duration_s)
        result = simulation.run(lambda now_ns: progress.update(task, completed=now_ns / 1e9))
    metrics = write_run(result, args.out, scenario_path=str(args.scenario))
    if not args.no_plots:
        plot_run(args.out)
    if not args.quiet:
        det = metrics["detection"]
        console.print(
            f"{result.events} events in {result.wall_s:.1f} s; {det['accepted_jobs']} jobs accepted "
            f"({det['accepted_bad']} wrong), {metrics['replicas_per_accepted_job'] or 0:.2f} replicas/job; "
            f"event-log sha256 {result.digest[:16]}…; results in {args.out}"
        )
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from simulations.sweep import parse_params, points, sweep

    if args.repeats < 1:
        raise ConfigError(f"--repeats must be >= 1, got {args.repeats}")
    grid = parse_params(args.param)
    seeds = [args.seed + i for i in range(args.repeats)]
    total = len(points(grid)) * len(seeds)
    done = 0

    def report(row: dict[str, Any]) -> None:
        nonlocal done
        done += 1
        print(f"[{done}/{total}] " + json.dumps(row, default=str), file=sys.stderr)

    sweep(args.scenario, grid, args.out, seeds=seeds, jobs=args.jobs, plots=not args.no_plots, on_done=report)
    print(f"{total} runs; summary in {args.out / 'summary.csv'}", file=sys.stderr)
    return 0


def _plot(args: argparse.Namespace) -> int:
    from simulations.plots import plot_run
    from simulations.sweep import plot_summary

    directory: Path = args.directory
    written: list[Path] = []
    if (directory / "summary.json").exists():
        written += plot_summary(directory)
        for child in sorted(p for p in directory.iterdir() if (p / "metrics.json").exists()):
            written += plot_run(child)
    elif (directory / "metrics.json").exists():
        written += plot_run(directory)
    else:
        raise ConfigError(f"{directory} holds neither a run (metrics.json) nor a sweep (summary.json)")
    print(f"{len(written)} figures written in {directory}", file=sys.stderr)
    return 0

"""Simulator benchmark: events/s with the real core, memory at 100k nodes, wall time for 10k workers.

Each case runs in its own subprocess so its peak RSS (``resource.getrusage``) is its own. Prints a
markdown table (our figure, the goal from issue 8, the ratio) and the same data as JSON.

    python benchmarks/sim_bench.py            # every case (a few minutes on a 2-core box)
    python benchmarks/sim_bench.py --quick    # smaller sizes, same cases

Cases named ``*-sampled`` run with ``real_signatures = 0.01``: signatures are keyed-hash stubs, 1 % of
them real Ed25519 (simulations/signatures.py); the others sign and verify every signature for real.
"""

from __future__ import annotations

import argparse
import functools
import json
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _scenario(**changes: Any) -> Any:
    from simulations.scenario import parse

    base: dict[str, Any] = {
        "name": "bench",
        "coordinator": {"heartbeat_s": 5.0, "replica_timeout_s": 60.0},
        "workload": {"rate_per_s": 5.0, "replicas": 2, "max_tokens": [16, 64]},
        "hardware": [
            {"name": "gpu", "share": 0.3, "tokens_per_s": 60},
            {"name": "cpu", "share": 0.7, "tokens_per_s": 12},
        ],
    }
    return parse({**base, **changes})


def case_engine(quick: bool) -> dict[str, Any]:
    """Bare engine: schedule-and-run events with an empty handler (the SimPy comparison)."""
    from simulations.engine import Engine

    engine = Engine()
    n = 200_000 if quick else 1_000_000
    k = engine.kind("noop", lambda node, tag, data: None)
    for i in range(n):
        engine.at(i, k, 0, i)
    started = time.perf_counter()
    engine.run(n + 1)
    return {"events": n, "wall_s": time.perf_counter() - started}


def _run(scenario: Any) -> dict[str, Any]:
    from simulations.simulation import Simulation

    started = time.perf_counter()
    simulation = Simulation(scenario, 1)
    built = time.perf_counter() - started
    result = simulation.run()
    jobs = sum(1 for j in result.jobs if j.outcome == "accepted")
    return {
        "workers": len(result.workers),
        "coordinators": scenario.coordinators,
        "simulated_s": scenario.duration_s,
        "events": result.events,
        "build_s": built,
        "wall_s": result.wall_s,
        "accepted_jobs": jobs,
    }


def case_full(quick: bool, signatures: float = 1.0) -> dict[str, Any]:
    """Full fidelity: every worker runs the real WorkerLogic and ledger (every signature real)."""
    return _run(
        _scenario(
            fidelity="full",
            workers=50 if quick else 100,
            coordinators=2,
            duration_s=30 if quick else 60,
            real_signatures=signatures,
        )
    )


def case_hybrid_events(quick: bool, signatures: float = 1.0) -> dict[str, Any]:
    """Hybrid fidelity at moderate size: real coordinators, 2 % real workers."""
    return _run(
        _scenario(
            fidelity="hybrid",
            real_fraction=0.02,
            workers=2000,
            coordinators=20,
            duration_s=30 if quick else 60,
            real_signatures=signatures,
        )
    )


def case_memory(quick: bool) -> dict[str, Any]:
    """100k nodes in hybrid mode (1 % real), heartbeats every 60 s, 100 coordinators."""
    n = 20_000 if quick else 100_000
    scenario = _scenario(
        fidelity="hybrid",
        real_fraction=0.01,
        workers=n,
        coordinators=max(1, n // 1000),
        duration_s=30,
        coordinator={"heartbeat_s": 60.0, "replica_timeout_s": 60.0},
        workload={"rate_per_s": 10.0, "replicas": 2, "max_tokens": [16, 64]},
    )
    return _run(scenario)


def case_10k(quick: bool, signatures: float = 1.0) -> dict[str, Any]:
    """10k workers (hybrid, 1 % real, 100 coordinators, heartbeat 30 s) for a slice of an hour."""
    simulated = 60.0 if quick else 300.0
    scenario = _scenario(
        fidelity="hybrid",
        real_fraction=0.01,
        workers=10_000,
        coordinators=100,
        duration_s=simulated,
        real_signatures=signatures,
        coordinator={"heartbeat_s": 30.0, "replica_timeout_s": 60.0},
        workload={"rate_per_s": 10.0, "replicas": 2, "max_tokens": [16, 64]},
    )
    return _run(scenario)


SAMPLED = 0.01
"""``real_signatures`` of the ``*-sampled`` cases."""


CASES: dict[str, Callable[[bool], dict[str, Any]]] = {
    "engine": case_engine,
    "full": case_full,
    "full-sampled": functools.partial(case_full, signatures=SAMPLED),
    "hybrid": case_hybrid_events,
    "hybrid-sampled": functools.partial(case_hybrid_events, signatures=SAMPLED),
    "memory": case_memory,
    "10k": case_10k,
    "10k-sampled": functools.partial(case_10k, signatures=SAMPLED),
}


def _child(name: str, quick: bool) -> None:
    result = CASES[name](quick)
    result["max_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    print(json.dumps(result))


def _measure(name: str, quick: bool) -> dict[str, Any]:
    args = [sys.executable, __file__, "--child", name] + (["--quick"] if quick else [])
    out = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, check=True, timeout=900)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def table(results: dict[str, dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """The markdown table: figure, goal from issue 8, ratio (>1 means the goal is met)."""
    rows: list[dict[str, Any]] = []
    e = results["engine"]
    rows.append(
        {
            "metric": "bare engine events/s (no-op handler)",
            "ours": e["events"] / e["wall_s"],
            "goal": 400_000.0,
            "higher_is_better": True,
        }
    )
    for key, label in (
        ("full", "events/s, real core, full fidelity"),
        ("full-sampled", f"events/s, real core, full fidelity, {SAMPLED:.0%} real signatures"),
        ("hybrid", "events/s, real core, hybrid (2 % real)"),
        ("hybrid-sampled", f"events/s, real core, hybrid (2 % real), {SAMPLED:.0%} real signatures"),
    ):
        r = results[key]
        rows.append(
            {
                "metric": f"{label} ({r['workers']} workers)",
                "ours": r["events"] / r["wall_s"],
                "goal": 100_000.0,
                "higher_is_better": True,
            }
        )
    m = results["memory"]
    rows.append(
        {
            "metric": f"peak RSS MiB, hybrid, {m['workers']} nodes",
            "ours": m["max_rss_mib"],
            "goal": 1024.0,
            "higher_is_better": False,
        }
    )
    for key, note in (("10k", ""), ("10k-sampled", f", {SAMPLED:.0%} real signatures")):
        t = results[key]
        per_hour = (t["wall_s"] + t["build_s"]) * 3600.0 / t["simulated_s"]
        rows.append(
            {
                "metric": f"wall s, 10k workers x 1 simulated h (extrapolated from {t['simulated_s']:.0f} s)"
                + note,
                "ours": per_hour,
                "goal": 120.0,
                "higher_is_better": False,
            }
        )
    lines = ["| metric | ours | goal (issue 8) | ratio |", "|---|---:|---:|---:|"]
    for row in rows:
        ratio = row["ours"] / row["goal"] if row["higher_is_better"] else row["goal"] / row["ours"]
        row["ratio"] = ratio
        lines.append(f"| {row['metric']} | {row['ours']:,.0f} | {row['goal']:,.0f} | {ratio:.2f} |")
    return "\n".join(lines), rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes")
    parser.add_argument("--child", choices=sorted(CASES), help=argparse.SUPPRESS)
    parser.add_argument("--only", choices=sorted(CASES), action="append", help="run only these cases")
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.quick)
        return 0
    results: dict[str, dict[str, Any]] = {}
    for name in args.only or list(CASES):
        print(f"running {name} ...", file=sys.stderr, flush=True)
        results[name] = _measure(name, args.quick)
        print(json.dumps(results[name]), file=sys.stderr, flush=True)
    if set(results) == set(CASES):
        markdown, rows = table(results)
        print(markdown)
        print(json.dumps({"cases": results, "table": rows}, indent=2))
    else:
        print(json.dumps({"cases": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

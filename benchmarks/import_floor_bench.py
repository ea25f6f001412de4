"""The floor under the 50-node discovery and memory goals (issue 3): what N Python processes cost that
only *import* what an OpenGrid node imports, started at once, doing nothing else.

``grid_discovery_bench.py`` times 50 real nodes from the first spawn until both coordinators know every
worker. Before a node can do anything it imports its libraries; this benchmark measures that part alone,
for three import sets, each in N fresh interpreters started together:

* ``python``: an empty interpreter (``pass``), the process cost itself;
* ``libp2p``: ``import libp2p`` (py-libp2p, the networking library every node needs);
* ``worker``: everything a worker node imports before it starts (``opengrid.cli.main``,
  ``opengrid.node.service``, ``opengrid.engines.llama``: py-libp2p, trio, llama.cpp, numpy, ...).

For each: seconds from the first spawn until the last process exits, and per process (``os.wait4``'s
resource usage) the CPU seconds and the peak RSS. If N processes importing py-libp2p alone take longer
than a goal, no change in OpenGrid's own code can meet that goal on this machine.

Usage: python benchmarks/import_floor_bench.py [--processes 50] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]

IMPORT_SETS = {
    "python": "pass",
    "libp2p": "import libp2p",
    "worker": "import opengrid.cli.main, opengrid.node.service, opengrid.engines.llama",
}
TIMEOUT_S = 300.0
"""Bound on one set (50 processes take ~35-50 s on 2 cores)."""


def spawn_together(code: str, processes: int) -> dict[str, Any]:
    """Start ``processes`` interpreters running ``code`` at once; wait for all (bounded)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "ledger"), str(ROOT / "sdk")]))
    started = time.monotonic()
    children = [subprocess.Popen([sys.executable, "-c", code], env=env) for _ in range(processes)]
    cpu_s: list[float] = []
    rss_mib: list[float] = []
    failed = 0
    pending = {child.pid: child for child in children}
    while pending:
        if time.monotonic() - started > TIMEOUT_S:
            for child in children:
                child.kill()
            raise SystemExit(
                f"{len(pending)} of {processes} processes still importing after {TIMEOUT_S:.0f} s"
            )
        pid, status, usage = os.wait4(-1, 0)
        reaped = pending.pop(pid, None)
        if reaped is None:
            continue
        reaped.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
        failed += reaped.returncode != 0
        cpu_s.append(usage.ru_utime + usage.ru_stime)
        rss_mib.append(usage.ru_maxrss / 1024)  # KiB on Linux
    return {
        "processes": processes,
        "wall_s": round(time.monotonic() - started, 2),
        "cpu_s_median": round(statistics.median(cpu_s), 3),
        "cpu_s_total": round(sum(cpu_s), 1),
        "peak_rss_mib_median": round(statistics.median(rss_mib), 1),
        "failed": failed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=50, help="interpreters started at once (default 50)")
    parser.add_argument("--json", type=pathlib.Path, help="write the figures here too")
    args = parser.parse_args()
    if not 1 <= args.processes <= 200:
        parser.error("--processes must be 1..200")
    results: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "load_average_at_start": os.getloadavg()[0],
        "sets": {},
    }
    print(
        f"| import set | {args.processes} at once: first spawn → last exit | CPU s per process (median) | "
        "peak RSS per process (median) | failed |"
    )
    print("|---|---:|---:|---:|---:|")
    for name, code in IMPORT_SETS.items():
        figures = spawn_together(code, args.processes)
        results["sets"][name] = figures
        print(
            f"| {name} | {figures['wall_s']:.1f} s | {figures['cpu_s_median']:.2f} s | "
            f"{figures['peak_rss_mib_median']:.1f} MiB | {figures['failed']} |",
            flush=True,
        )
        time.sleep(2)  # let the machine settle between sets
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

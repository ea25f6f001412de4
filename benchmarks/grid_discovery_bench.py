"""Issue 3's benchmark on real nodes: N `opengrid node start` processes on 127.0.0.1, ONE bootstrap address.

Two coordinators and N-2 workers (the project's tiny model, llama.cpp in each worker process); every node
is given only the first coordinator's address. Measures:

* discovery: seconds until BOTH coordinators hold every worker online with its model — from the first
  spawn (includes starting N Python processes on this machine) and from the moment the last node was up;
* RSS per idle node (VmRSS after the grid settled), coordinators and workers apart;
* idle CPU per node (core-seconds per second over a quiet window);
* job dispatch p50/p99 on loopback (issue 3's measure): from the coordinator's dispatch decision (the core's
  DispatchReplica effect executed) to the worker's engine starting that job. Every node runs with
  ``--trace-timing``; coordinator and worker stamp ``time.monotonic()`` (CLOCK_MONOTONIC, one clock for
  every process of the machine) and the traces are merged (opengrid/node/timing.py), with the median time
  from the decision to each point on the way (stream ready, RunJob sent, RunJob received);
* the round trip of a 1-token open job through the grid minus the engine time for the same prompt run in
  this process: everything a client waits for besides generation (its stream to the coordinator, the
  dispatch above, the answer's way back, verification, receipt signing, ledger write, the SDK's receipt
  check). The SDK client is on the same machine.

Usage: python benchmarks/grid_discovery_bench.py [--nodes 50] [--announce 5] [--jobs 50] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import sys
import tempfile
import time
from typing import Any

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(ROOT / "ledger"), str(ROOT / "sdk")]

GOALS = {"discovery_s": 30.0, "rss_mb": 120.0, "dispatch_p50_ms": 10.0}
NETWORK = "grid-bench"
TIMEOUT_S = 600.0


def rss_mib(pid: int) -> float:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run(args: argparse.Namespace) -> dict[str, Any]:
    from opengrid_sdk import Client

    from opengrid.cli.demo import DemoNetwork
    from opengrid.engines import LlamaEngine, ModelInfo, sha256_file, write_tiny_gguf
    from opengrid.engines.base import GenerationRequest
    from opengrid.errors import OpenGridError
    from opengrid.node.timing import dispatches, read_trace, stage_medians

    base = pathlib.Path(tempfile.mkdtemp(prefix="grid-bench-"))
    model = write_tiny_gguf(base / "tiny.gguf")
    flags = ["--announce", str(args.announce), "--heartbeat", str(args.heartbeat)]

    def traced(name: str) -> list[str]:
        return [*flags, "--trace-timing", str(base / f"{name}.timing.jsonl")]

    net = DemoNetwork(base, model=str(model), network=NETWORK)
    try:
        started = time.monotonic()
        first = net.start("coordinator-1", "coordinator", extra_args=traced("coordinator-1"))
        net.wait_ready(first)
        bootstrap = first.addrs[0]
        second = net.start(
            "coordinator-2", "coordinator", bootstrap=bootstrap, extra_args=traced("coordinator-2")
        )
        workers = [
            net.start(f"worker-{i:02d}", "worker", bootstrap=bootstrap, extra_args=traced(f"worker-{i:02d}"))
            for i in range(args.nodes - 2)
        ]
        for node in (second, *workers):
            net.wait_ready(node, timeout=TIMEOUT_S)
        all_up = time.monotonic()
        wanted = {w.peer_id for w in workers}
        with Client([bootstrap], network=NETWORK, timeout=120) as client:
            for coordinator in (first, second):
                while True:
                    online = {w.peer_id for w in client.status(coordinator.addrs[0]).workers if w.online}
                    if wanted <= online:
                        break
                    if time.monotonic() - started > TIMEOUT_S:
                        raise SystemExit(f"{coordinator.name} knows {len(online & wanted)} of {len(wanted)}")
                    time.sleep(0.25)
            discovered = time.monotonic()
            print(f"discovered: {discovered - started:.1f} s from the first spawn", file=sys.stderr)

            time.sleep(args.settle)
            before = {n.name: cpu_seconds(n.process.pid) for n in net.nodes}
            time.sleep(args.idle_window)
            window = args.idle_window
            idle_cpu = {n.name: (cpu_seconds(n.process.pid) - before[n.name]) / window for n in net.nodes}
            rss = {n.name: rss_mib(n.process.pid) for n in net.nodes}

            engine = LlamaEngine(ModelInfo("tiny", model, sha256_file(model)), n_threads=1)
            overheads = []
            failures: list[str] = []
            jobs_from = time.monotonic()
            for i in range(args.jobs):
                prompt = f"dispatch {i}"
                t0 = time.perf_counter()
                engine.generate(GenerationRequest(prompt=prompt, max_tokens=1))
                engine_s = time.perf_counter() - t0
                t0 = time.perf_counter()
                try:
                    client.complete(prompt, model="tiny", max_tokens=1, replicas=1, sealed=False)
                except OpenGridError as exc:  # counted and reported, not hidden
                    failures.append(str(exc))
                    continue
                overheads.append((time.perf_counter() - t0 - engine_s) * 1000)
            engine.close()
    finally:
        net.stop()
    marks = [m for path in sorted(base.glob("*.timing.jsonl")) for m in read_trace(path) if m.t >= jobs_from]
    found = dispatches(marks)
    to_engine = [d.to_engine_s * 1000 for d in found]
    stages = {point: round(s * 1000, 2) for point, s in stage_medians(found).items()}
    coordinators = [v for k, v in rss.items() if k.startswith("coordinator")]
    worker_rss = [v for k, v in rss.items() if k.startswith("worker")]
    worker_cpu = [v for k, v in idle_cpu.items() if k.startswith("worker")]
    return {
        "nodes": args.nodes,
        "announce_s": args.announce,
        "heartbeat_s": args.heartbeat,
        "discovery_s_from_first_spawn": round(discovered - started, 1),
        "discovery_s_after_all_up": round(discovered - all_up, 1),
        "spawn_to_all_up_s": round(all_up - started, 1),
        "rss_mib_coordinators": [round(v) for v in coordinators],
        "rss_mib_worker_median": round(statistics.median(worker_rss)),
        "rss_mib_worker_max": round(max(worker_rss)),
        "idle_cpu_core_worker_median": round(statistics.median(worker_cpu), 4),
        "idle_cpu_core_coordinators": [round(idle_cpu[n], 4) for n in ("coordinator-1", "coordinator-2")],
        "dispatch_ms_p50": round(percentile(to_engine, 0.5), 2) if to_engine else None,
        "dispatch_ms_p99": round(percentile(to_engine, 0.99), 2) if to_engine else None,
        "dispatch_replicas_timed": len(to_engine),
        "dispatch_stage_medians_ms": stages,
        "round_trip_overhead_ms_p50": round(percentile(overheads, 0.5), 1) if overheads else None,
        "round_trip_overhead_ms_p99": round(percentile(overheads, 0.99), 1) if overheads else None,
        "jobs_failed": len(failures),
        "job_failures": failures[:5],
        "goals": GOALS,
        "load_average_end": os.getloadavg()[0],
    }


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--nodes", type=int, default=50, help="node processes in all (default 50)")
    parser.add_argument("--announce", type=float, default=5.0, help="gossip announcement period (default 5)")
    parser.add_argument("--heartbeat", type=float, default=5.0, help="registration heartbeat (default 5)")
    parser.add_argument("--jobs", type=int, default=50, help="1-token jobs for the dispatch overhead")
    parser.add_argument("--settle", type=float, default=10.0, help="seconds before the idle window")
    parser.add_argument("--idle-window", type=float, default=20.0, help="seconds of idle CPU measured")
    parser.add_argument("--json", type=pathlib.Path, help="write the figures here too")
    args = parser.parse_args()
    if args.nodes < 3:
        parser.error("--nodes must be at least 3 (two coordinators and a worker)")
    figures = run(args)
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()

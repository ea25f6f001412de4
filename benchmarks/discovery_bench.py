"""Discovery at scale on one machine: N node processes on 127.0.0.1 that know ONE bootstrap address.

Measures (issue 3's benchmark):
* time until every node's PeerDirectory (fed by gossip announcements) knows every other node,
  from the first spawn and from the moment the last node was up (imports of ~N Python processes on a
  2-core machine dominate the first figure);
* RSS per idle node (VmRSS from /proc/<pid>/status, after the grid settled);
* DHT ``find_providers`` latency p50/p99 (several nodes looking up a model key that every worker
  provides).
Job dispatch overhead (the issue's third goal) is measured by the job-path benchmarks, not here.

Usage: python benchmarks/discovery_bench.py [--nodes 20|50] [--beat 2.0] [--lookups 20] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

GOALS = {"discovery_s": 30.0, "rss_mb": 120.0, "dispatch_p50_ms": 10.0}
MODEL_SHA = "be" * 32
NETWORK = "bench"


# ── child: one node ─────────────────────────────────────────────────────────────────────────────────────
def child_main(args: argparse.Namespace) -> None:
    import trio
    from nacl.signing import SigningKey

    from opengrid.net.announce import ModelAd
    from opengrid.net.discovery import Discovery, model_key, role_key
    from opengrid.net.gossip import Gossip
    from opengrid.net.host import open_host, quiet_libp2p_logging

    def emit(**event: Any) -> None:
        print(json.dumps(event), flush=True)

    async def node() -> None:
        quiet_libp2p_logging(logging.CRITICAL)
        seed = secrets.token_bytes(32)
        key = SigningKey(seed)
        role = "coordinator" if not args.bootstrap else "worker"
        async with open_host(seed) as host, trio.open_nursery() as nursery:
            discovery = Discovery(host, network=NETWORK, signing_key=key)
            gossip = Gossip(
                host,
                network=NETWORK,
                signing_key=key,
                roles=[role],
                models=[ModelAd("bench-model", MODEL_SHA, bytes(32))] if role == "worker" else [],
                beat_s=args.beat,
            )
            await nursery.start(discovery.run)
            await nursery.start(gossip.run)
            if args.bootstrap:
                await discovery.bootstrap([args.bootstrap])
            emit(event="ready", addr=host.addrs()[0], peer=host.peer_id, t=time.time())
            await (
                discovery.provide(model_key(NETWORK, MODEL_SHA))
                if role == "worker"
                else discovery.provide(role_key(NETWORK, "coordinator"))
            )

            async def watch() -> None:
                known = -1
                while (n := len(gossip.directory.online(trio.current_time()))) < args.expect:
                    if n != known:
                        known = n
                        emit(event="progress", known=n, connections=len(host.connected_peers()))
                    await gossip.changed.wait()
                emit(event="complete", t=time.time())

            nursery.start_soon(watch)
            stdin = trio.wrap_file(sys.stdin)
            while line := await stdin.readline():
                command = line.strip()
                if command == "lookup":
                    times = []
                    for _ in range(args.lookups):
                        start = time.perf_counter()
                        found = await discovery.find_providers(model_key(NETWORK, MODEL_SHA), limit=1000)
                        times.append((time.perf_counter() - start) * 1000)
                    emit(
                        event="lookups",
                        ms=times,
                        found=len(found),
                        table=discovery.routing_table_size(),
                        connections=len(host.connected_peers()),
                    )
                elif command == "quit":
                    break
            nursery.cancel_scope.cancel()

    trio.run(node)


# ── parent ──────────────────────────────────────────────────────────────────────────────────────────────
@dataclass
class Child:
    proc: subprocess.Popen[str]
    events: dict[str, dict[str, Any]] = field(default_factory=dict)
    cond: threading.Condition = field(default_factory=threading.Condition)

    def reader(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            with self.cond:
                self.events[event["event"]] = event
                self.cond.notify_all()

    def wait(self, name: str, deadline: float) -> dict[str, Any] | None:
        with self.cond:
            while name not in self.events:
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    return self.events.get(name)
                self.cond.wait(min(left, 0.5))
            return self.events[name]

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()


def spawn(args: argparse.Namespace, bootstrap: str | None) -> Child:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        "--expect",
        str(args.nodes - 1),
        "--beat",
        str(args.beat),
        "--lookups",
        str(args.lookups),
    ]
    if bootstrap:
        cmd += ["--bootstrap", bootstrap]
    proc = subprocess.Popen(
        cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    child = Child(proc)
    threading.Thread(target=child.reader, daemon=True).start()
    return child


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def parent_main(args: argparse.Namespace) -> None:
    t0 = time.time()
    first = spawn(args, None)
    children = [first]
    try:
        ready = first.wait("ready", time.monotonic() + 60)
        if ready is None:
            sys.exit("bootstrap node did not start")
        for _ in range(args.nodes - 1):
            children.append(spawn(args, ready["addr"]))
        deadline = time.monotonic() + args.timeout
        readies = [c.wait("ready", deadline) for c in children]
        completes = [c.wait("complete", deadline) for c in children]
        missing = sum(1 for c in completes if c is None)
        if missing:
            stuck = [
                c.events.get("progress") for c, done in zip(children, completes, strict=True) if not done
            ]
            print(f"{missing} nodes never knew everyone; last progress: {stuck}", file=sys.stderr)
        last_ready = max(r["t"] for r in readies if r)
        all_known = max((c["t"] for c in completes if c), default=float("nan"))
        time.sleep(args.settle)
        rss = [rss_mb(c.proc.pid) for c in children]
        queriers = children[1 : 1 + args.queriers]
        for c in queriers:
            c.send("lookup")
        lookups = [c.wait("lookups", time.monotonic() + 120) for c in queriers]
        latencies = [ms for r in lookups if r for ms in r["ms"]]
        found = [r["found"] for r in lookups if r]
        result = {
            "nodes": args.nodes,
            "beat_s": args.beat,
            "cpus": os.cpu_count(),
            "load_avg_1m": os.getloadavg()[0],
            "nodes_never_complete": missing,
            "discovery_from_first_spawn_s": round(all_known - t0, 2),
            "discovery_after_last_node_up_s": round(all_known - last_ready, 2),
            "startup_all_nodes_up_s": round(last_ready - t0, 2),
            "rss_mb_idle_p50": round(statistics.median(rss), 1),
            "rss_mb_idle_max": round(max(rss), 1),
            "find_providers_ms_p50": round(pct(latencies, 0.5), 1) if latencies else None,
            "find_providers_ms_p99": round(pct(latencies, 0.99), 1) if latencies else None,
            "find_providers_samples": len(latencies),
            "providers_found_min": min(found) if found else None,
            "providers_expected": args.nodes - 2,  # queriers are workers: they exclude themselves
            "routing_table_sizes": [r["table"] for r in lookups if r],
            "connections_per_querier": [r["connections"] for r in lookups if r],
            "goals": GOALS,
        }
    finally:
        for c in children:
            if c.proc.poll() is None:
                try:
                    c.send("quit")
                except (BrokenPipeError, OSError):
                    pass
        for c in children:
            try:
                c.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                c.proc.kill()

    def ok(good: bool) -> str:
        return "yes" if good else "NO"

    disc = result["discovery_from_first_spawn_s"]
    print(
        f"\n### discovery_bench: {args.nodes} node processes, beat {args.beat} s, "
        f"{result['cpus']} CPUs, load {result['load_avg_1m']:.1f}\n"
    )
    print("| metric | measured | goal | met |")
    print("|---|---|---|---|")
    print(f"| all directories complete, from first spawn | {disc} s | ≤ 30 s | {ok(disc <= 30)} |")
    print(f"| … after the last node was up | {result['discovery_after_last_node_up_s']} s | | |")
    print(
        f"| all {args.nodes} processes up (imports, bootstrap) | {result['startup_all_nodes_up_s']} s | | |"
    )
    print(
        f"| RSS per idle node p50 / max | {result['rss_mb_idle_p50']} / {result['rss_mb_idle_max']} MB "
        f"| ≤ 120 MB | {ok(result['rss_mb_idle_max'] <= 120)} |"
    )
    print(
        f"| DHT find_providers p50 / p99 | {result['find_providers_ms_p50']} / "
        f"{result['find_providers_ms_p99']} ms ({len(latencies)} lookups) | | |"
    )
    print(f"| providers found (min) / expected | {result['providers_found_min']} / {args.nodes - 2} | | |")
    print("| job dispatch overhead p50 | not measured here (job path) | ≤ 10 ms | |")
    print("\n" + json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=20)
    parser.add_argument("--beat", type=float, default=5.0, help="heartbeat period, seconds (Gossip default)")
    parser.add_argument("--lookups", type=int, default=20, help="find_providers calls per querying node")
    parser.add_argument("--queriers", type=int, default=5)
    parser.add_argument("--settle", type=float, default=5.0, help="idle seconds before reading RSS")
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--json", help="also write the JSON result here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--bootstrap", help=argparse.SUPPRESS)
    parser.add_argument("--expect", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(args)
    else:
        parent_main(args)


if __name__ == "__main__":
    main()

"""``opengrid demo``: a whole OpenGrid network on 127.0.0.1, explained.

Starts one coordinator and several workers, each its own OS process running ``opengrid node start``;
submits jobs through the SDK exactly as a user would; then reads every node's status (points from each
node's *own* ledger) and reports what happened, in prose or as one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from opengrid.errors import ConfigError, OpenGridError, TransportError
from opengrid.node.service import NODE_INFO_FILE

if TYPE_CHECKING:
    from opengrid_sdk import Client

PROMPTS = (
    "The capital of France is",
    "Volunteer computing means",
    "A short poem about the sea:",
    "The three primary colours are",
    "To make a cup of tea, first",
    "The largest planet in the solar system is",
    "Peer-to-peer networks are useful because",
    "Once upon a time,",
)
DEMO_NETWORK = "opengrid-demo"
START_TIMEOUT_S = 120.0


@dataclass
class DemoNode:
    """One node process of the demo network."""

    name: str
    role: str
    data_dir: pathlib.Path
    process: subprocess.Popen[bytes]
    cheater: bool = False
    peer_id: str = ""
    addrs: list[str] = field(default_factory=list)

    @property
    def log_path(self) -> pathlib.Path:
        return self.data_dir / "node.log"

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


class DemoNetwork:
    """Starts node processes under ``base`` and stops every one of them on exit."""

    def __init__(self, base: pathlib.Path, *, model: str, network: str = DEMO_NETWORK) -> None:
        self.base = base
        self.model = model
        self.network = network
        self.nodes: list[DemoNode] = []

    def start(
        self,
        name: str,
        role: str,
        *,
        bootstrap: str | None = None,
        cheater: bool = False,
        extra_args: Sequence[str] = (),
        module: str = "opengrid",
    ) -> DemoNode:
        """Start node ``name`` (``role``) as ``python -m module node start ...``: ``module`` is ``opengrid``
        unless a test runs a node through a testing entry point that takes the same command line."""
        data_dir = self.base / name
        data_dir.mkdir(parents=True, exist_ok=True)
        (data_dir / NODE_INFO_FILE).unlink(missing_ok=True)
        cmd = [
            sys.executable,
            "-m",
            module,
            "node",
            "start",
            "--role",
            role,
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--data-dir",
            str(data_dir),
            "--network",
            self.network,
            "--heartbeat",
            "2",
            "--no-lan",  # the demo's grid is whole by itself: nothing to look for, nothing to announce
        ]
        if bootstrap:
            cmd += ["--bootstrap", bootstrap, "--model", self.model, "--threads", "1"]
        if cheater:
            cmd += ["--adversary", "wrong-tokens"]
        cmd += list(extra_args)
        log_file = (data_dir / "node.log").open("wb")
        env = dict(os.environ, PYTHONUNBUFFERED="1", COLUMNS="160")
        process = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env)
        log_file.close()
        node = DemoNode(name=name, role=role, data_dir=data_dir, process=process, cheater=cheater)
        self.nodes.append(node)
        return node

    def wait_ready(self, node: DemoNode, timeout: float = START_TIMEOUT_S) -> None:
        """Wait until the node wrote its node.json (it is listening), or fail with its log."""
        info_path = node.data_dir / NODE_INFO_FILE
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if node.process.poll() is not None:
                raise TransportError(
                    f"{node.name} exited with code {node.process.returncode}:\n{node.log_tail()}"
                )
            if info_path.exists():
                try:
                    info = json.loads(info_path.read_text())
                except ValueError:
                    info = None  # half-written: look again
                if info:
                    node.peer_id, node.addrs = info["peer_id"], info["addrs"]
                    return
            time.sleep(0.05)
        raise TransportError(f"{node.name} did not start within {timeout:.0f} s:\n{node.log_tail()}")

    def stop(self) -> None:
        """SIGTERM every node (clean shutdown), then SIGKILL whatever is still alive after 10 s."""
        for node in self.nodes:
            if node.process.poll() is None:
                node.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for node in self.nodes:
            try:
                node.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                node.process.kill()
                node.process.wait()


@contextmanager
def demo_network(base: pathlib.Path, *, model: str, network: str = DEMO_NETWORK) -> Iterator[DemoNetwork]:
    net = DemoNetwork(base, model=model, network=network)
    try:
        yield net
    finally:
        net.stop()


def wait_for_workers(client: Client, expected: int, timeout: float = START_TIMEOUT_S) -> None:
    """Poll the coordinator until ``expected`` workers are registered and online."""
    deadline = time.monotonic() + timeout
    online = 0
    while time.monotonic() < deadline:
        online = sum(1 for w in client.status().workers if w.online)
        if online >= expected:
            return
        time.sleep(0.2)
    raise TransportError(f"only {online} of {expected} workers registered within {timeout:.0f} s")


def run_demo(args: argparse.Namespace) -> int:
    """Run the demo described by the parsed ``opengrid demo`` arguments; return the exit code."""
    from opengrid.engines import resolve_model

    if args.workers + args.cheaters < args.replicas:
        raise ConfigError(f"--replicas {args.replicas} needs at least that many workers")
    if args.jobs < 1:
        raise ConfigError("--jobs must be >= 1")
    model = resolve_model(args.model)  # fail fast, with the list of known models, before any process starts
    base = args.keep or pathlib.Path(tempfile.mkdtemp(prefix="opengrid-demo-"))
    started = time.monotonic()

    def show(report: dict[str, Any]) -> None:
        report["model"] = {"name": model.name, "sha256": model.sha256}
        report["duration_s"] = round(time.monotonic() - started, 2)
        if args.json:
            print(json.dumps(report, indent=2), flush=True)
        else:
            _print_report(report)
        if args.stay:
            _stay(base, report)

    try:
        report = _run(args, base, model.name, show)
    finally:
        if args.keep is None:
            shutil.rmtree(base, ignore_errors=True)
    return 0 if report["jobs_failed"] == 0 and report["ledgers_agree"] else 1


def _stay(base: pathlib.Path, report: dict[str, Any]) -> None:
    """Keep the network running for the user (wallet, submit, API) until Ctrl-C or SIGTERM."""
    worker = next(n["name"] for n in report["nodes"] if n["role"] == "worker")
    print(
        f"\nThe network keeps running. In another terminal:\n"
        f"  .venv/bin/opengrid wallet --data-dir {base / worker}\n"
        f"  .venv/bin/opengrid submit 'Hello' --network {DEMO_NETWORK} --bootstrap {report['coordinator']}\n"
        "Press Ctrl-C to stop it.",
        flush=True,
    )
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):  # bounded waits, so Ctrl-C is handled promptly
            pass
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
    print("stopping the network", file=sys.stderr, flush=True)


def _run(
    args: argparse.Namespace, base: pathlib.Path, model_name: str, show: Callable[[dict[str, Any]], None]
) -> dict[str, Any]:
    from opengrid_sdk import Client

    say = (lambda *_: None) if args.json else _progress
    with demo_network(base, model=args.model) as net:
        say("starting the coordinator")
        coordinator = net.start("coordinator", "coordinator")
        net.wait_ready(coordinator)
        bootstrap = coordinator.addrs[0]
        total = args.workers + args.cheaters
        say(f"starting {total} workers ({args.cheaters} of them cheat), each its own process")
        workers = [
            net.start(f"worker-{i + 1}", "worker", bootstrap=bootstrap, cheater=i >= args.workers)
            for i in range(total)
        ]
        for worker in workers:
            net.wait_ready(worker)
        names = {node.peer_id: node.name for node in net.nodes}
        jobs: list[dict[str, Any]] = []
        with Client([bootstrap], network=net.network) as client:
            wait_for_workers(client, total)
            for index in range(args.jobs):
                prompt = PROMPTS[index % len(PROMPTS)]
                say(f"job {index + 1}/{args.jobs}: {prompt!r}")
                jobs.append(_submit(client, prompt, model_name, args, names))
            statuses = _settled_statuses(client, net)
        nodes = [
            {
                "name": node.name,
                "peer_id": node.peer_id,
                "role": node.role,
                "cheater": node.cheater,
                "points": statuses[node.name].points,
                "jobs_done": statuses[node.name].jobs_done,
                "address": node.addrs[0] if node.addrs else "",
            }
            for node in net.nodes
        ]
        coordinator_view = {
            names.get(_peer_of(key), key): points for key, points in statuses["coordinator"].balances.items()
        }
        ledgers_agree = all(
            coordinator_view.get(n["name"], 0) == n["points"] for n in nodes if n["role"] == "worker"
        )
        report = {
            "network": DEMO_NETWORK,
            "coordinator": bootstrap,
            "jobs_submitted": len(jobs),
            "jobs_verified": sum(1 for j in jobs if j["verified"]),
            "jobs_failed": sum(1 for j in jobs if not j["verified"]),
            "jobs": jobs,
            "nodes": nodes,
            "coordinator_ledger": coordinator_view,
            "ledgers_agree": ledgers_agree,
        }
        show(report)  # while the network still runs (--stay keeps it up here)
    return report


def _submit(
    client: Client, prompt: str, model: str, args: argparse.Namespace, names: dict[str, str]
) -> dict[str, Any]:
    from opengrid_ledger import decode_entry

    try:
        done = client.complete(prompt, model=model, max_tokens=args.max_tokens, replicas=args.replicas)
    except OpenGridError as exc:
        return {"prompt": prompt, "verified": False, "error": f"{type(exc).__name__}: {exc}"}
    credits = {names.get(_peer_of(k.hex()), k.hex()): p for k, p in done.receipt.credits.items()}
    return {
        "prompt": prompt,
        "verified": True,
        "text": done.text,
        "tokens": len(done.tokens),
        "job_id": done.job_id.hex(),
        "agreed": [names.get(p, p) for p in done.workers],
        "outvoted": [names.get(p, p) for p in done.dissenters],
        "failed": [names.get(p, p) for p in done.failed],
        "receipt_id": decode_entry(done.receipt.entry).id.hex(),
        "receipt": done.receipt.entry.hex(),
        "credits": credits,
    }


def _settled_statuses(client: Client, net: DemoNetwork, timeout: float = 15.0) -> dict[str, Any]:
    """Every node's status, once each worker's own ledger holds the receipts the coordinator signed."""
    deadline = time.monotonic() + timeout
    while True:
        statuses = {node.name: client.status(node.addrs[0]) for node in net.nodes}
        minted = statuses["coordinator"].balances
        settled = all(
            statuses[node.name].points == minted.get(statuses[node.name].public_key.hex(), 0)
            for node in net.nodes
            if node.role == "worker"
        )
        if settled or time.monotonic() > deadline:
            return statuses
        time.sleep(0.2)


def _peer_of(key_hex: str) -> str:
    from opengrid.net.keys import peer_id_of

    return peer_id_of(bytes.fromhex(key_hex))


def _progress(message: str) -> None:
    print(f"· {message}", file=sys.stderr, flush=True)


def _print_report(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print()
    console.rule("[bold]OpenGrid demo: a verified network on 127.0.0.1")
    console.print(
        f"Model [bold]{report['model']['name']}[/] (sha256 {report['model']['sha256'][:12]}…). "
        f"Coordinator at {report['coordinator']}"
    )
    console.print(
        "Each job was generated by one worker and audited by another holding the same model, which "
        "re-scored every generated token; the coordinator paid both only when the audit passed, and ran "
        "a job again on another worker when its output failed (spec/verification.md §13).\n"
    )
    for index, job in enumerate(report["jobs"], 1):
        console.print(f"[bold]Job {index}[/]: {job['prompt']!r}")
        if not job["verified"]:
            console.print(f"  [red]failed[/]: {job['error']}")
            continue
        line = f"  ran on {', '.join(job['agreed'] + job['outvoted'] + job['failed'])}: "
        prover, *auditors = job["agreed"]
        line += f"{prover} generated, {' and '.join(auditors) or 'nobody'} [green]audited and passed[/] it"
        if job["outvoted"]:
            line += f"; {', '.join(job['outvoted'])} returned different tokens and was [red]outvoted[/]"
        if job["failed"]:
            line += f"; {', '.join(job['failed'])} failed (an output that failed its audit, or no answer) "
            line += "and was replaced"
        console.print(line)
        console.print(f"  answer: [cyan]{job['text'].strip()!r}[/]")
        paid = ", ".join(f"{name} +{points}" for name, points in job["credits"].items())
        console.print(
            f"  receipt {job['receipt_id'][:16]}… signed by the coordinator, verified by the SDK: {paid}"
        )
    table = Table(title="Points, as each node's own ledger records them")
    for column in ("node", "role", "peer id", "points", "jobs done"):
        table.add_column(column, justify="right" if column in ("points", "jobs done") else "left")
    for node in report["nodes"]:
        role = node["role"] + (" (cheater)" if node["cheater"] else "")
        table.add_row(node["name"], role, node["peer_id"], str(node["points"]), str(node["jobs_done"]))
    console.print()
    console.print(table)
    console.print(
        f"\n{report['jobs_submitted']} jobs submitted, [green]{report['jobs_verified']} verified[/], "
        f"{report['jobs_failed']} failed; workers' ledgers "
        + ("[green]agree[/] with the coordinator's" if report["ledgers_agree"] else "[red]DISAGREE[/]")
        + f". ({report['duration_s']} s)"
    )

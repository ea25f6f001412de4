"""Soak: a coordinator serving legitimate jobs while attackers try what issue 15 found (spec/limits.md).

A coordinator (with ``--api``) and two workers, each its own ``opengrid node start`` process on
127.0.0.1 with the generated tiny model. For ``--seconds`` a legitimate client submits open jobs one after
another (``max_tokens=8``, 2 replicas) while attacker peers, each a plain py-libp2p host speaking our wire
format, run at once:

- ``idle-sync``: ledger-sync streams opened and left silent (item 1: one used to kill the node);
- ``slowloris``: job streams fed one byte every 2 s (item 2);
- ``stream-flood``: idle job streams opened as fast as the node lets one peer (item 3);
- ``bad-prompts``: a job whose prompt overflows the context every 2 s (item 4);
- ``big-names``: registrations announcing a 1 MB model name (item 5);
- ``big-bodies``: 50 MB API bodies without and with a Content-Length (item 8).

Printed: legitimate jobs served / submitted, their latency p50 / p99, the coordinator's RSS at start, peak
and end, and what each attacker got. Goal (issue 15): >= 99 % served with bounded RSS. Every loop is
bounded by the deadline and by a count.

    .venv/bin/python benchmarks/soak_bench.py                # 180 s
    .venv/bin/python benchmarks/soak_bench.py --seconds 40   # a quick look
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import json
import pathlib
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import trio
from libp2p.custom_types import TProtocol
from nacl.signing import SigningKey

from opengrid.cli.demo import DemoNetwork, DemoNode
from opengrid.engines.tiny_model import write_tiny_gguf
from opengrid.errors import OpenGridError
from opengrid.net.host import BEAT_PROTOCOL, JOB_PROTOCOL, FrameStream, Host, open_host, quiet_libp2p_logging
from opengrid.node.ledger_sync import SYNC_PROTOCOL
from opengrid.wire.contract import DecodingContract
from opengrid.wire.messages import (
    JobAccepted,
    ModelOffer,
    NodeStatus,
    RegisterWorker,
    StatusRequest,
    SubmitJob,
)

if TYPE_CHECKING:
    from trio_typing import TaskStatus  # trio-typing's stubs (a py-libp2p dependency) hide trio.TaskStatus

NETWORK = "opengrid-soak"
Tally = collections.Counter[str]


def rss_mib(pid: int) -> float:
    """Resident memory of a process, from /proc (0 once it is gone)."""
    try:
        for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


async def _attacker(nursery: trio.Nursery, address: str) -> tuple[Host, str, bytes]:
    """A fresh attacker host connected to the coordinator: (host, coordinator peer id, its seed)."""
    seed = secrets.token_bytes(32)
    host: Host = await nursery.start(_host_task, seed)
    peer = await host.connect(address)
    return host, peer, seed


async def _host_task(seed: bytes, *, task_status: TaskStatus[Host]) -> None:
    async with open_host(seed) as host:
        task_status.started(host)
        await trio.sleep_forever()


async def _ended_by_node(stream: FrameStream, seconds: float) -> bool:
    """Read what the node says until it ends the stream (an error reply, then its end, or a reset):
    True if it did within ``seconds``."""
    with trio.move_on_after(seconds):
        for _ in range(8):
            try:
                await stream.receive_body()  # a reply (``malformed``: too slow) before the end is fine
            except OpenGridError:
                return True
    return False


async def _held(tally: Tally, name: str, stream: FrameStream, seconds: float) -> None:
    """Hold a stream open without sending; count whether the node ended it within ``seconds``."""
    if await _ended_by_node(stream, seconds):
        tally[f"{name}: ended by the node"] += 1
    else:
        tally[f"{name}: still open after {seconds:.0f} s"] += 1
    await stream.reset()


async def idle_sync(host: Host, peer: str, deadline: float, tally: Tally) -> None:
    async with trio.open_nursery() as nursery:
        for _ in range(200):
            if trio.current_time() > deadline:
                break
            try:
                stream = await host.open_stream(peer, TProtocol(SYNC_PROTOCOL))
            except OpenGridError:
                tally["idle-sync: refused"] += 1
            else:
                nursery.start_soon(_held, tally, "idle-sync", stream, 90.0)
            await trio.sleep(1.0)


async def slowloris(host: Host, peer: str, deadline: float, tally: Tally) -> None:
    async def drip() -> None:
        try:
            stream = await host.open_stream(peer, JOB_PROTOCOL)
        except OpenGridError:
            tally["slowloris: refused"] += 1
            return
        started = trio.current_time()

        async def trickle() -> None:
            # a 4-byte length prefix of a 1 KiB frame, then one byte every 2 s: ~1000 s to finish it
            with contextlib.suppress(Exception):
                await stream._stream.write(b"\x00\x00\x04\x00")
                for _ in range(30):
                    await trio.sleep(2.0)
                    await stream._stream.write(b"x")

        async with trio.open_nursery() as dripping:
            dripping.start_soon(trickle)
            ended = await _ended_by_node(stream, 60.0)
            dripping.cancel_scope.cancel()
        if ended:
            tally[f"slowloris: ended by the node within {(trio.current_time() - started):.0f} s"] += 1
        else:
            tally["slowloris: never ended by the node"] += 1
        await stream.reset()

    async with trio.open_nursery() as nursery:
        for _ in range(20):
            nursery.start_soon(drip)
            await trio.sleep(0.5)


async def stream_flood(host: Host, peer: str, deadline: float, tally: Tally) -> None:
    async with trio.open_nursery() as nursery:
        for _ in range(3000):
            if trio.current_time() > deadline:
                break
            try:
                with trio.fail_after(5):
                    stream = await host.open_stream(peer, JOB_PROTOCOL)
            except (OpenGridError, trio.TooSlowError):
                tally["stream-flood: refused"] += 1
                await trio.sleep(0.2)
                continue
            tally["stream-flood: opened"] += 1
            nursery.start_soon(_held, tally, "stream-flood", stream, 30.0)  # > the first-request bound


async def bad_prompts(host: Host, peer: str, deadline: float, tally: Tally) -> None:
    for _ in range(1000):
        if trio.current_time() > deadline:
            break
        job = SubmitJob(job_id=secrets.token_bytes(16), model="tiny", prompt="x " * 6000, max_tokens=8)
        try:
            with trio.fail_after(30):
                reply = await host.request(peer, job)
            tally[f"bad-prompts: {getattr(reply, 'code', type(reply).__name__)}"] += 1
        except (OpenGridError, trio.TooSlowError) as exc:
            tally[f"bad-prompts: {type(exc).__name__}"] += 1
        await trio.sleep(2.0)


async def big_names(host: Host, peer: str, seed: bytes, deadline: float, tally: Tally) -> None:
    offer = ModelOffer(name="m" * 1_000_000, contract=DecodingContract(model_sha256="ab" * 32))
    register = RegisterWorker(
        network=NETWORK,
        public_key=bytes(SigningKey(seed).verify_key),
        listen_addrs=[],
        models=[offer, offer, offer],
    )
    for _ in range(100):
        if trio.current_time() > deadline:
            break
        try:
            stream = await host.open_stream(peer, BEAT_PROTOCOL, fallbacks=[JOB_PROTOCOL])
            await stream.send(register)
            with trio.fail_after(10):
                reply = await stream.receive()
            tally[f"big-names: {getattr(reply, 'code', type(reply).__name__)}"] += 1
            await stream.aclose()
        except (OpenGridError, trio.TooSlowError) as exc:
            tally[f"big-names: {type(exc).__name__}"] += 1
        await trio.sleep(5.0)


async def _post_big_body(host: str, port: int, *, chunked: bool) -> str:
    """POST 50 MiB to /v1/completions over a raw socket (announced by Content-Length, or chunked) while
    reading the answer; return its status line's code ("" if the server closed without one)."""
    head = "POST /v1/completions HTTP/1.1\r\nHost: soak\r\nContent-Type: application/json\r\n"
    head += "Transfer-Encoding: chunked\r\n\r\n" if chunked else f"Content-Length: {50 << 20}\r\n\r\n"
    chunk = b"x" * (1 << 20)
    framed = b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk
    answer = bytearray()
    stream = await trio.open_tcp_stream(host, port)
    async with stream, trio.open_nursery() as nursery:

        async def send() -> None:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await stream.send_all(head.encode())
                for _ in range(50):
                    await stream.send_all(framed)

        async def read() -> None:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                while b"\r\n" not in answer and len(answer) < 4096:
                    data = await stream.receive_some(4096)
                    if not data:
                        break
                    answer.extend(data)
            nursery.cancel_scope.cancel()

        nursery.start_soon(send)
        nursery.start_soon(read)
    line = bytes(answer).split(b"\r\n", 1)[0].decode(errors="replace")
    return line.split(" ")[1] if line.startswith("HTTP/") and " " in line else ""


async def big_bodies(api: str, deadline: float, tally: Tally) -> None:
    host, port = api.removeprefix("http://").rsplit(":", 1)
    for i in range(100):
        if trio.current_time() > deadline:
            break
        with trio.move_on_after(30):
            code = await _post_big_body(host, int(port), chunked=bool(i % 2))
            tally[f"big-bodies: HTTP {code or '(closed)'}"] += 1
        await trio.sleep(10.0)


async def legitimate(host: Host, peer: str, deadline: float, latencies: list[float], tally: Tally) -> None:
    for n in range(100_000):
        if trio.current_time() > deadline:
            break
        job = SubmitJob(job_id=secrets.token_bytes(16), model="tiny", prompt=f"Story {n}:", max_tokens=8)
        started = time.monotonic()
        try:
            with trio.fail_after(60):
                reply = await host.request(peer, job)
        except (OpenGridError, trio.TooSlowError) as exc:
            tally[f"failed: {type(exc).__name__}: {str(exc)[:80]}"] += 1
            continue
        if isinstance(reply, JobAccepted):
            latencies.append(time.monotonic() - started)
            tally["served"] += 1
        else:
            tally[f"failed: {getattr(reply, 'code', '?')}: {getattr(reply, 'message', '')[:80]}"] += 1
        await trio.sleep(0.2)


async def soak(coordinator: DemoNode, api: str, seconds: float) -> dict[str, object]:
    quiet_libp2p_logging()
    address = coordinator.addrs[0]
    legit_tally: Tally = collections.Counter()
    attack_tally: Tally = collections.Counter()
    latencies: list[float] = []
    rss: list[float] = [rss_mib(coordinator.process.pid)]

    async def sample_rss(deadline: float) -> None:
        while trio.current_time() < deadline + 5:
            rss.append(rss_mib(coordinator.process.pid))
            await trio.sleep(1.0)

    async with trio.open_nursery() as nursery:
        client, peer, _ = await _attacker(nursery, address)
        with trio.fail_after(60):
            while True:
                status = await client.request(peer, StatusRequest())
                if isinstance(status, NodeStatus) and sum(w.online for w in status.workers) >= 2:
                    break
                await trio.sleep(0.5)
        deadline = trio.current_time() + seconds
        attacks: list[Callable[[], Awaitable[None]]] = []
        for attack in (idle_sync, slowloris, stream_flood, bad_prompts):
            host, target, _ = await _attacker(nursery, address)
            attacks.append(functools.partial(attack, host, target, deadline, attack_tally))
        host, target, seed = await _attacker(nursery, address)
        attacks.append(lambda: big_names(host, target, seed, deadline, attack_tally))
        attacks.append(lambda: big_bodies(api, deadline, attack_tally))
        async with trio.open_nursery() as running:
            running.start_soon(sample_rss, deadline)
            running.start_soon(legitimate, client, peer, deadline, latencies, legit_tally)
            for start_attack in attacks:
                running.start_soon(start_attack)
        nursery.cancel_scope.cancel()
    submitted = sum(legit_tally.values())
    latencies.sort()
    return {
        "seconds": seconds,
        "legitimate_submitted": submitted,
        "legitimate_served": legit_tally["served"],
        "served_fraction": legit_tally["served"] / submitted if submitted else 0.0,
        "latency_p50_s": statistics.median(latencies) if latencies else None,
        "latency_p99_s": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
        if latencies
        else None,
        "rss_start_mib": rss[0],
        "rss_peak_mib": max(rss),
        "rss_end_mib": rss[-1],
        "coordinator_alive": coordinator.process.poll() is None,
        "legitimate_outcomes": dict(legit_tally),
        "attacks": dict(sorted(attack_tally.items())),
    }


def start_grid(net: DemoNetwork) -> tuple[DemoNode, str]:
    """The soak's grid: a coordinator with the API on a random loopback port, and two workers; returns
    the coordinator and the API's base URL once every node is up."""
    api_port = 20000 + secrets.randbelow(20000)
    coordinator = net.start(
        "coordinator", "coordinator", extra_args=["--plain-verification", "--api", f"127.0.0.1:{api_port}"]
    )
    net.wait_ready(coordinator)
    for name in ("worker-1", "worker-2"):
        net.wait_ready(net.start(name, "worker", bootstrap=coordinator.addrs[0]))
    return coordinator, f"http://127.0.0.1:{api_port}"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--seconds", type=float, default=180.0, help="how long the attacks last (default 180)"
    )
    parser.add_argument("--json", type=pathlib.Path, help="also write the figures to this file")
    parser.add_argument("--keep", type=pathlib.Path, metavar="DIR", help="keep the nodes' data dirs and logs")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="opengrid-soak-") as tmp:
        base = args.keep or pathlib.Path(tmp)
        base.mkdir(parents=True, exist_ok=True)
        model = write_tiny_gguf(base / "tiny.gguf", seed=0)
        net = DemoNetwork(base, model=str(model), network=NETWORK)
        try:
            coordinator, api = start_grid(net)
            figures = trio.run(soak, coordinator, api, args.seconds)
        finally:
            net.stop()
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    met = figures["served_fraction"] >= 0.99 and figures["coordinator_alive"]  # type: ignore[operator]
    print(f"goal (>= 99 % of legitimate jobs served, coordinator alive): {'met' if met else 'NOT met'}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())

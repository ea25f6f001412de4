"""Issue 14: streaming through the grid against ``python -m llama_cpp.server``, same model and threads.

One run starts, on 127.0.0.1:

* **server**: ``python -m llama_cpp.server`` (``ManagedServer``: the contract's settings pinned) with
  SmolLM2-135M-Instruct and ``--threads`` threads;
* **grid**: a coordinator serving the OpenAI API (``--api``, ``--verify MODE``) and ``--workers`` workers
  (``--threads`` each), each its own ``opengrid node start`` process (``DemoNetwork``).

Then, ``--reps`` times, alternating which goes first, the same ``POST /v1/completions`` with
``stream: true`` (greedy, ``--tokens`` tokens, a prompt of its own per repetition that runs to the
limit) to each, read as
server-sent events by one HTTP client in this process. Per request:

* **time to first token (TTFT)**: request sent → first event with non-empty text. On the grid that is
  the first *verified* chunk (spec/verification.md §14): in replicated mode, the first position a
  quorum of replicas agreed on (``--replicas``); in audit mode, whatever the coordinator releases first;
* **tokens/s**: tokens ÷ (request sent → last text event), the whole stream as the client sees it; and
  the decode rate after the first token, (tokens - 1) ÷ (first → last text event);
* the cadence: text events received and the longest gap between two of them.

Both must give the same text (the same tokens): the script checks it. Goals (issue 14): grid TTFT
≤ 1.3 x the server's, grid tokens/s ≥ 0.9 x the server's. The figures are medians over the repetitions
with their range; the load average is printed, since other work on the machine skews wall time.

    .venv/bin/python benchmarks/streaming_bench.py                          # replicated, 1 replica
    .venv/bin/python benchmarks/streaming_bench.py --replicas 2 --workers 2  # a real quorum of two
    .venv/bin/python benchmarks/streaming_bench.py --verify audit --workers 2 --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx

# Continuations that run to 128 tokens (audit_cost_bench.py's), one per repetition: llama_cpp.server
# keeps its KV cache between requests and evaluates only what follows the longest common prefix, so
# repeating one prompt would spare it the prefill (and, by evaluating the last prompt token alone, change
# its greedy tokens). Each begins differently, so every request of both sides prefills its whole prompt.
PROMPTS = [
    "Once upon a time, in a lighthouse by the sea, there lived",
    "The capital of France is",
    "def quicksort(items):",
    "Vaccines work by",
    "Here is a list of animals that live in the ocean: 1.",
    "The difference between weather and climate is",
    "Dear team, thank you all for",
    "The three laws of thermodynamics are",
]
WARM_UP = "Photosynthesis is"
NETWORK = "opengrid-bench-streaming"
MODEL = "smollm2-135m-instruct"


def log(message: str) -> None:
    print(f"[streaming {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class Stream:
    """What one streamed completion looked like to the client."""

    started: float
    """``time.monotonic()`` when the request was sent: the clock of the nodes' timing traces."""
    ttft_s: float
    total_s: float
    text: str
    events: int
    max_gap_s: float
    finish_reason: str | None
    job: str = ""
    """The job id, from the events' ``id`` (``cmpl-HEX``) on the grid."""

    def tokens_per_s(self, tokens: int) -> float:
        return tokens / self.total_s

    def decode_tokens_per_s(self, tokens: int) -> float:
        """NaN for a stream whose text came in one event (no rate after the first to speak of)."""
        if self.events < 2 or self.total_s <= self.ttft_s:
            return math.nan
        return (tokens - 1) / (self.total_s - self.ttft_s)


def stream_completion(client: httpx.Client, url: str, body: dict[str, Any], timeout_s: float) -> Stream:
    """POST ``body`` with ``stream: true`` to ``url`` and time its server-sent events."""
    started = time.monotonic()
    deadline = started + timeout_s
    first = last = 0.0
    previous = 0.0
    max_gap = 0.0
    events = 0
    text: list[str] = []
    finish: str | None = None
    job = ""
    with client.stream("POST", url, json={**body, "stream": True}, timeout=timeout_s) as response:
        if response.status_code != 200:
            raise RuntimeError(f"{url} answered {response.status_code}: {response.read()[:500]!r}")
        for line in response.iter_lines():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} streamed for more than {timeout_s:.0f} s")
            if not line.startswith("data: "):
                continue
            data = line[len("data: ") :]
            if data == "[DONE]":
                break
            event = json.loads(data)
            if "error" in event:
                raise RuntimeError(f"{url} streamed an error: {event['error']}")
            choice = event["choices"][0]
            piece = choice.get("text") or ""
            finish = choice.get("finish_reason") or finish
            job = job or str(event.get("id", "")).removeprefix("cmpl-")
            if piece:
                now = time.monotonic()
                first = first or now
                if previous:
                    max_gap = max(max_gap, now - previous)
                previous = last = now
                events += 1
                text.append(piece)
    if not first:
        raise RuntimeError(f"{url} streamed no text")
    return Stream(started, first - started, last - started, "".join(text), events, max_gap, finish, job)


def wait_for_api(client: httpx.Client, base: str, model: str, timeout_s: float) -> None:
    """Until ``GET /v1/models`` lists ``model`` (the coordinator knows a worker holding it)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            answer = client.get(f"{base}/v1/models", timeout=5.0)
            if answer.status_code == 200 and any(m["id"] == model for m in answer.json()["data"]):
                return
        time.sleep(0.2)
    raise TimeoutError(f"{base} did not list {model} within {timeout_s:.0f} s")


@contextlib.contextmanager
def grid(
    base: pathlib.Path, *, threads: int, workers: int, verify: str, api_port: int
) -> Iterator[tuple[str, dict[str, int]]]:
    """A coordinator with the OpenAI API and ``workers`` workers, each its own process; yields the API URL
    and the processes' ids by node name."""
    from opengrid_sdk import Client

    from opengrid.cli.demo import demo_network, wait_for_workers

    with demo_network(base, model=MODEL, network=NETWORK) as net:
        trace = ["--trace-timing", str(base / "coordinator.trace")]
        coordinator = net.start(
            "coordinator",
            "coordinator",
            extra_args=["--api", f"127.0.0.1:{api_port}", "--verify", verify, *trace],
        )
        net.wait_ready(coordinator)
        started = [
            net.start(
                f"worker-{i}",
                "worker",
                bootstrap=coordinator.addrs[0],
                extra_args=["--threads", str(threads), "--trace-timing", str(base / f"worker-{i}.trace")],
            )
            for i in range(workers)
        ]
        for worker in started:
            net.wait_ready(worker)
        with Client([coordinator.addrs[0]], network=NETWORK, timeout=120.0) as sdk:
            wait_for_workers(sdk, workers, timeout=120.0)
        yield f"http://127.0.0.1:{api_port}", {node.name: node.process.pid for node in net.nodes}


def pin_to_cores(pids: dict[str, int]) -> None:
    """Stand in for machines of their own on a 2-core box (``--pin``): the two workers on CPU 0 and 1, so
    a prover and its auditor never share a core, as they do not on a real grid; llama_cpp.server on CPU 0
    (it is measured alternately with the grid, never at the same time, so it has that core to itself as
    the prover has its own); the coordinator and this client on CPU 1. Every thread of each process
    (``taskset -a``)."""
    if len(os.sched_getaffinity(0)) < 2:
        raise SystemExit("--pin needs 2 CPUs")
    cores = {"server": 0, "worker-0": 0, "worker-1": 1, "coordinator": 1}
    for name, pid in pids.items():
        core = cores.get(name, 1)
        subprocess.run(["taskset", "-a", "-cp", str(core), str(pid)], check=True, capture_output=True)
    os.sched_setaffinity(0, {1})
    log("pinned: " + ", ".join(f"{name} on CPU {cores.get(name, 1)}" for name in pids) + ", client on CPU 1")


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system, every thread) a process has used so far, from /proc/PID/stat."""
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def breakdown(streams: list[Stream], base: pathlib.Path) -> dict[str, dict[str, float]]:
    """Where a grid stream's time went, from the nodes' timing traces (one clock: ``time.monotonic``).

    Per stream, with the first replica's marks: request → the coordinator's dispatch decision
    (HTTP, admission, queue), dispatch → the worker's engine start (the hop, the RunJob), engine start →
    first text at the client (prompt prefill, first token, its frame, verification, the SSE event), the
    engine's own run (start → end), and engine end → last text at the client (the last frame's trip).
    """
    from opengrid.node.timing import read_trace

    marks: dict[tuple[str, str], float] = {}
    last: dict[tuple[str, str], float] = {}
    for path in sorted(base.glob("*.trace")):
        for mark in read_trace(path):
            marks.setdefault((mark.job, mark.point), mark.t)  # the first replica's mark
            last[(mark.job, mark.point)] = max(mark.t, last.get((mark.job, mark.point), mark.t))
    stages: dict[str, list[float]] = {}
    for stream in streams:
        points = {p: marks.get((stream.job, p)) for p in ("dispatch", "engine_start", "engine_end")}
        dispatch, start, end = points["dispatch"], points["engine_start"], points["engine_end"]
        if dispatch is None or start is None or end is None:
            continue  # no trace for this job (an old node, or the trace was not written yet)
        first, last_text = stream.started + stream.ttft_s, stream.started + stream.total_s
        for name, value in (
            ("request_to_dispatch_s", dispatch - stream.started),
            ("dispatch_to_engine_s", start - dispatch),
            ("engine_start_to_first_text_s", first - start),
            ("engine_run_s", end - start),
            ("engine_end_to_last_text_s", last_text - end),
        ):
            stages.setdefault(name, []).append(value)
        # Verified streaming's own points (§14.2, when the nodes write them): the first frame, the
        # auditor's session ready, its first and last chunk verdicts, the coordinator's first forward.
        frame = marks.get((stream.job, "first_frame"))
        received = marks.get((stream.job, "audit_received"))
        ready = marks.get((stream.job, "audit_ready"))
        verdict = marks.get((stream.job, "chunk_verdict"))
        final_verdict = last.get((stream.job, "chunk_verdict"))
        forward = marks.get((stream.job, "forwarded"))
        listed = marks.get((stream.job, "first_position"))
        for name, a, b in (
            ("engine_start_to_first_frame_s", start, frame),
            ("dispatch_to_auditor_received_s", dispatch, received),
            ("dispatch_to_auditor_ready_s", dispatch, ready),
            ("dispatch_to_first_position_s", dispatch, listed),
            ("first_frame_to_first_forward_s", frame, forward),
            ("first_frame_to_first_verdict_s", frame, verdict),
            ("first_verdict_to_first_forward_s", verdict, forward),
            ("first_forward_to_first_text_s", forward, first),
            ("engine_end_to_last_verdict_s", end, final_verdict),
        ):
            if a is not None and b is not None:
                stages.setdefault(name, []).append(b - a)
    return {name: spread(values) for name, values in stages.items()}


def bench_streaming(
    reps: int,
    max_tokens: int,
    threads: int,
    *,
    verify: str = "replicate",
    replicas: int = 1,
    workers: int | None = None,
    timeout_s: float = 300.0,
    pinned: bool = False,
) -> dict[str, Any]:
    """The figures of one run (see the module docstring); every node and the server stopped at the end.
    ``pinned``: each process on a CPU of its own as far as two go (``pin_to_cores``)."""
    from opengrid.engines import ManagedServer, resolve_model
    from opengrid.engines.http import free_loopback_port

    model = resolve_model(MODEL)
    n_workers = workers or (2 if verify == "audit" else replicas)
    common = {"model": MODEL, "max_tokens": max_tokens}
    # llama_cpp.server's defaults are not greedy (temperature 0.8, repeat_penalty 1.1): pin what
    # HttpEngine pins, so that it decodes as the contract does (greedy argmax, no penalties).
    server_body = {
        **common,
        "temperature": 0.0,
        "top_k": 1,
        "top_p": 1.0,
        "min_p": 0.0,
        "repeat_penalty": 1.0,
        "frequency_penalty": 0.0,
        "presence_penalty": 0.0,
        "mirostat_mode": 0,
        "seed": 0,
        "logprobs": None,  # as HttpEngine sends it: left out, this server decodes other tokens here
    }
    grid_body = {**common, "replicas": replicas}  # greedy unless temperature > 0 (spec/api.md)
    runs: dict[str, list[Stream]] = {"server": [], "grid": []}
    load_start = os.getloadavg()[0]
    with contextlib.ExitStack() as stack:
        base = pathlib.Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="opengrid-stream-")))
        http = stack.enter_context(httpx.Client())
        log(f"starting llama_cpp.server ({threads} threads)")
        server = stack.enter_context(
            ManagedServer(model, backend="llama.cpp-server", n_threads=threads, ready_timeout_s=120.0)
        )
        urls = {"server": f"{server.base_url}/v1/completions"}
        log(f"starting a coordinator (--verify {verify}) and {n_workers} worker(s), {threads} threads each")
        api, pids = stack.enter_context(
            grid(base, threads=threads, workers=n_workers, verify=verify, api_port=free_loopback_port())
        )
        wait_for_api(http, api, MODEL, 120.0)
        urls["grid"] = f"{api}/v1/completions"
        bodies = {"server": server_body, "grid": grid_body}
        assert server.pid is not None
        processes = {"server": {"server": server.pid}, "grid": pids}
        if pinned:
            pin_to_cores({"server": server.pid, **pids})
        cpu: dict[str, list[float]] = {}  # CPU seconds per request, by process
        log("warming up")
        for name in ("server", "grid"):
            warm = {**bodies[name], "prompt": WARM_UP, "max_tokens": 4}
            stream_completion(http, urls[name], warm, timeout_s)
        for rep in range(reps):
            prompt = PROMPTS[rep % len(PROMPTS)]
            order = ("server", "grid") if rep % 2 == 0 else ("grid", "server")
            for name in order:
                body = {**bodies[name], "prompt": prompt}
                before = {n: cpu_seconds(pid) for n, pid in processes[name].items()}
                runs[name].append(stream_completion(http, urls[name], body, timeout_s))
                for n, pid in processes[name].items():
                    cpu.setdefault(n, []).append(cpu_seconds(pid) - before[n])
            s, g = runs["server"][-1], runs["grid"][-1]
            if s.text != g.text or {s.finish_reason, g.finish_reason} != {"length"}:
                raise AssertionError(
                    f"prompt {prompt!r}: the server streamed {s.text!r} ({s.finish_reason}), the grid "
                    f"{g.text!r} ({g.finish_reason}); both must stream the same {max_tokens} tokens"
                )
            log(
                f"rep {rep + 1}/{reps}: TTFT server {s.ttft_s * 1000:.0f} ms, grid {g.ttft_s * 1000:.0f} ms; "
                f"total server {s.total_s:.2f} s, grid {g.total_s:.2f} s; load {os.getloadavg()[0]:.1f}"
            )
        stages = breakdown(runs["grid"], base)
    tokens = max_tokens
    result: dict[str, Any] = {
        "verify": verify,
        "replicas": replicas,
        "workers": n_workers,
        "threads": threads,
        "tokens": tokens,
        "reps": reps,
        "pinned": pinned,
        "load_average": {"start": load_start, "end": os.getloadavg()[0]},
        "grid_stages": stages,
        "cpu_s_per_request": {n: spread(v) for n, v in cpu.items()},
    }
    for name, streams in runs.items():
        result[name] = {
            "ttft_s": spread([s.ttft_s for s in streams]),
            "total_s": spread([s.total_s for s in streams]),
            "tokens_per_s": spread([s.tokens_per_s(tokens) for s in streams]),
            "decode_tokens_per_s": spread([s.decode_tokens_per_s(tokens) for s in streams]),
            "events": spread([float(s.events) for s in streams]),
            "max_gap_s": spread([s.max_gap_s for s in streams]),
        }
    # Ratios per repetition (the two requests of a repetition ran back to back), then their median.
    pairs = list(zip(runs["grid"], runs["server"], strict=True))
    result["ttft_ratio"] = spread([g.ttft_s / s.ttft_s for g, s in pairs])
    result["tokens_per_s_ratio"] = spread([s.total_s / g.total_s for g, s in pairs])
    result["decode_tokens_per_s_ratio"] = spread(
        [g.decode_tokens_per_s(tokens) / s.decode_tokens_per_s(tokens) for g, s in pairs]
    )
    return result


def report(result: dict[str, Any]) -> str:
    """A markdown table of one run."""

    def ms(figure: dict[str, float]) -> str:
        return f"{figure['median'] * 1000:.0f} ms ({figure['min'] * 1000:.0f}-{figure['max'] * 1000:.0f})"

    def rate(figure: dict[str, float]) -> str:
        if math.isnan(figure["median"]):
            return "— (one event)"
        return f"{figure['median']:.1f} ({figure['min']:.1f}-{figure['max']:.1f})"

    def ratio(figure: dict[str, float]) -> str:
        if math.isnan(figure["median"]):
            return "—"
        return f"{figure['median']:.2f} ({figure['min']:.2f}-{figure['max']:.2f})"

    g, s = result["grid"], result["server"]
    ttft_ok = result["ttft_ratio"]["median"] <= 1.3
    tps_ok = result["tokens_per_s_ratio"]["median"] >= 0.9
    lines = [
        f"SmolLM2-135M-Instruct, {result['tokens']} tokens, {result['threads']} thread(s); grid: "
        f"--verify {result['verify']}, {result['replicas']} replica(s), {result['workers']} worker(s); "
        f"{result['reps']} repetitions, median (min-max); load average {result['load_average']['start']:.1f}"
        f" at start, {result['load_average']['end']:.1f} at end"
        + ("; pinned: each worker on a CPU of its own (--pin)" if result.get("pinned") else ""),
        "",
        "| measure | grid | llama_cpp.server | grid ÷ server (per rep) | goal | met |",
        "|---|---:|---:|---:|---:|:---:|",
        f"| time to first token | {ms(g['ttft_s'])} | {ms(s['ttft_s'])} | {ratio(result['ttft_ratio'])} "
        f"| ≤ 1.3 | {'yes' if ttft_ok else 'no'} |",
        f"| tokens/s (request → last token) | {rate(g['tokens_per_s'])} | {rate(s['tokens_per_s'])} | "
        f"{ratio(result['tokens_per_s_ratio'])} | ≥ 0.9 | {'yes' if tps_ok else 'no'} |",
        f"| tokens/s after the first | {rate(g['decode_tokens_per_s'])} | "
        f"{rate(s['decode_tokens_per_s'])} | {ratio(result['decode_tokens_per_s_ratio'])} | — | |",
        f"| text events | {rate(g['events'])} | {rate(s['events'])} | | | |",
        f"| longest gap between events | {ms(g['max_gap_s'])} | {ms(s['max_gap_s'])} | | | |",
    ]
    names = {
        "request_to_dispatch_s": "request → coordinator's dispatch decision",
        "dispatch_to_engine_s": "dispatch → worker's engine start",
        "engine_start_to_first_text_s": "engine start → first text at the client",
        "engine_run_s": "the worker's engine run (start → end)",
        "engine_end_to_last_text_s": "engine end → last text at the client",
        "engine_start_to_first_frame_s": "engine start → the prover's first frame written",
        "dispatch_to_auditor_received_s": "dispatch → the auditor reads the chunked AuditJob",
        "dispatch_to_auditor_ready_s": "dispatch → the auditor's session open (prompt evaluated)",
        "dispatch_to_first_position_s": "dispatch → the auditor's first-position list written",
        "first_frame_to_first_forward_s": "first frame → the coordinator forwards the first text",
        "first_frame_to_first_verdict_s": "first frame → the auditor's first chunk verdict written",
        "first_verdict_to_first_forward_s": "first verdict → the coordinator forwards the first text",
        "first_forward_to_first_text_s": "first forward → first text at the client",
        "engine_end_to_last_verdict_s": "engine end → the auditor's last chunk verdict written",
    }
    lines += [
        "",
        "CPU seconds per streamed request, by process (median (min-max)): "
        + "; ".join(
            f"{n} {v['median']:.2f} ({v['min']:.2f}-{v['max']:.2f})"
            for n, v in result["cpu_s_per_request"].items()
        ),
    ]
    if result["grid_stages"]:
        lines += ["", "Where a grid stream's time goes (nodes' timing traces), median (min-max):", ""]
        lines += [f"- {names[k]}: {ms(v)}" for k, v in result["grid_stages"].items()]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1, help="llama.cpp threads, server and every worker")
    parser.add_argument(
        "--verify", choices=["replicate", "audit"], default="replicate", help="the coordinator's --verify"
    )
    parser.add_argument("--replicas", type=int, default=1, help="replicas the request asks for")
    parser.add_argument("--workers", type=int, help="workers (default: 2 for audit, else --replicas)")
    parser.add_argument("--json", type=pathlib.Path, help="also write the figures here")
    parser.add_argument(
        "--pin",
        action="store_true",
        help="each worker on a CPU of its own (prover and auditor never share one, as on a real grid); "
        "the server on the first, the coordinator and this client on the second (needs 2 CPUs, taskset)",
    )
    args = parser.parse_args()
    result = bench_streaming(
        args.reps,
        args.tokens,
        args.threads,
        verify=args.verify,
        replicas=args.replicas,
        workers=args.workers,
        pinned=args.pin,
    )
    print(report(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

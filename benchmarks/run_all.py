"""The whole OpenGrid benchmark suite in one command: one markdown table (and JSON) of every measure.

    .venv/bin/python benchmarks/run_all.py                # ~5-10 minutes on a 2-core machine
    .venv/bin/python benchmarks/run_all.py --quick        # smaller sizes, ~2 minutes
    .venv/bin/python benchmarks/run_all.py --json out.json

For each measure: our figure, the baseline measured in the same run, their ratio and the goal (issues
3, 5, 6, 8). Figures are medians over ``--reps`` repetitions. Everything runs on 127.0.0.1; node
processes are started with ``opengrid.cli.demo.DemoNetwork`` (one OS process per node) and stopped at the
end, whatever happens. benchmarks/README.md explains each measure.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]
HERE = pathlib.Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(ROOT), str(ROOT / "ledger"), str(ROOT / "sdk")]

PROMPT = "Once upon a time, in a small village by the sea,"
NETWORK = "opengrid-bench"


# ── helpers ───────────────────────────────────────────────────────────────────────────────────────────


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def rss_mib(pid: int) -> float:
    """Resident set size of a live process, from /proc/PID/status (VmRSS, in KiB)."""
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def machine() -> dict[str, Any]:
    cpu = "unknown"
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break

    def version(dist: str) -> str:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "llama-cpp-python": version("llama_cpp_python"),
        "libp2p": version("libp2p"),
        "msgspec": version("msgspec"),
        "pynacl": version("pynacl"),
        "trio": version("trio"),
        "load_average_at_start": round(os.getloadavg()[0], 2),
    }


@dataclass
class Row:
    measure: str
    ours: float
    baseline: float | None
    baseline_name: str
    unit: str
    goal: str
    ratio: float | None = None
    meets: bool | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "—"
    if float(value).is_integer() and abs(value) < 1000:
        text = str(int(value))
    elif abs(value) >= 1000:
        text = f"{value:,.0f}"
    elif abs(value) >= 100:
        text = f"{value:.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.2f}"
    return f"{text} {unit}".strip()


def markdown(rows: list[Row], info: dict[str, Any], wall_s: float, reps: int, quick: bool) -> str:
    lines = [
        "| measure | ours | baseline (same run) | ratio | goal | met |",
        "|---|---:|---:|---:|---|:-:|",
    ]
    for r in rows:
        base = f"{fmt(r.baseline, r.unit)} ({r.baseline_name})" if r.baseline is not None else r.baseline_name
        met = "—" if r.meets is None else ("yes" if r.meets else "**no**")
        ratio = "—" if r.ratio is None else (f"{r.ratio:.2f}" if r.ratio >= 0.1 else f"{r.ratio:.2g}")
        lines.append(f"| {r.measure} | {fmt(r.ours, r.unit)} | {base} | {ratio} | {r.goal} | {met} |")
    lines.append("")
    lines.append(
        f"Machine: {info['cpu']}, {info['cpus']} CPUs, {info['memory_gib']} GiB, {info['os']}; "
        f"Python {info['python']}, llama-cpp-python {info['llama-cpp-python']}, libp2p {info['libp2p']}, "
        f"msgspec {info['msgspec']}, PyNaCl {info['pynacl']}, trio {info['trio']}. "
        f"Medians of {reps} repetitions{' (--quick sizes)' if quick else ''}; llama.cpp threads: "
        f"{info['threads']}; whole run {wall_s / 60:.1f} min; 1-min load average "
        f"{info['load_average_at_start']} at start, {info['load_average_at_end']} at end (other work on the "
        "machine skews every figure)."
    )
    return "\n".join(lines)


# ── node processes ────────────────────────────────────────────────────────────────────────────────────


@contextlib.contextmanager
def grid(model: str, threads: int, base: pathlib.Path) -> Iterator[tuple[Any, Any, Any, Any]]:
    """A coordinator and one worker, each its own process on 127.0.0.1, and an SDK client."""
    from opengrid_sdk import Client

    from opengrid.cli.demo import demo_network, wait_for_workers

    with demo_network(base, model=model, network=NETWORK) as net:
        # One worker cannot be audited (audit, the default, needs two holding the model): replicate.
        coordinator = net.start("coordinator", "coordinator", extra_args=["--verify", "replicate"])
        net.wait_ready(coordinator)
        worker = net.start(
            "worker", "worker", bootstrap=coordinator.addrs[0], extra_args=["--threads", str(threads)]
        )
        net.wait_ready(worker)
        with Client([coordinator.addrs[0]], network=NETWORK, timeout=120.0) as client:
            wait_for_workers(client, 1, timeout=120.0)
            yield net, client, coordinator, worker


def bare_python_rss(settle_s: float) -> float:
    """Baseline: RSS of an idle bare Python interpreter."""
    process = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        time.sleep(settle_s)
        return rss_mib(process.pid)
    finally:
        assert process.stdin is not None
        process.stdin.close()
        process.wait(timeout=10)


# ── (i) grid vs in-process llama.cpp, (ii) vs llama_cpp.server ────────────────────────────────────────


class FirstText:
    """An ``on_text`` callback that records when the first non-empty text arrived."""

    def __init__(self) -> None:
        self.first_s = 0.0

    def reset(self) -> None:
        self.first_s = 0.0

    def append(self, text: str) -> None:
        if text and not self.first_s:
            self.first_s = time.perf_counter()


def bench_llm(reps: int, max_tokens: int, threads: int) -> dict[str, Any]:
    from opengrid.engines import GenerationRequest, LlamaEngine, ManagedServer, resolve_model

    model = resolve_model("smollm2-135m-instruct")
    request = GenerationRequest(prompt=PROMPT, max_tokens=max_tokens)
    runs: dict[str, list[float]] = {
        k: []
        for k in (
            "inproc_tps",
            "inproc_s",
            "inproc_ttft_s",
            "grid_open_tps",
            "grid_open_s",
            "grid_ttft_s",
            "grid_sealed_tps",
            "grid_sealed_s",
            "server_s",
            "server_tps",
        )
    }
    tokens: dict[str, int] = {}
    with contextlib.ExitStack() as stack:
        base = pathlib.Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="opengrid-bench-")))
        log(f"loading {model.name} in-process ({threads} threads)")
        engine = stack.enter_context(LlamaEngine(model, n_threads=threads))
        log("starting llama_cpp.server")
        server = stack.enter_context(
            ManagedServer(model, backend="llama.cpp-server", n_threads=threads, ready_timeout_s=120.0)
        )
        http = server.engine()
        log("starting a coordinator and a worker")
        _, client, _, worker = stack.enter_context(grid(model.name, threads, base))
        log("warming up")
        warm = GenerationRequest(prompt=PROMPT, max_tokens=4)
        engine.generate(warm)
        http.generate(warm)
        client.complete(PROMPT, model=model.name, max_tokens=4, replicas=1, sealed=False)
        client.complete(PROMPT, model=model.name, max_tokens=4, replicas=1, sealed=True)
        texts = FirstText()
        for rep in range(reps):
            log(f"repetition {rep + 1}/{reps}: {max_tokens} tokens, in-process / grid / server")
            texts.reset()
            started = time.perf_counter()
            out = engine.generate(request)
            elapsed = time.perf_counter() - started
            tokens["inproc"] = len(out.tokens)
            runs["inproc_s"].append(elapsed)
            runs["inproc_tps"].append(len(out.tokens) / elapsed)

            started = time.perf_counter()
            engine.generate_streaming(request, texts.append)
            runs["inproc_ttft_s"].append(texts.first_s - started)

            started = time.perf_counter()
            done = client.complete(PROMPT, model=model.name, max_tokens=max_tokens, replicas=1, sealed=False)
            elapsed = time.perf_counter() - started
            assert list(done.tokens) == list(out.tokens), "the grid must return llama.cpp's own tokens"
            tokens["grid_open"] = len(done.tokens)
            runs["grid_open_s"].append(elapsed)
            runs["grid_open_tps"].append(len(done.tokens) / elapsed)

            started = time.perf_counter()
            ttft = None
            for item in client.stream(PROMPT, model=model.name, max_tokens=max_tokens, replicas=1):
                if ttft is None and isinstance(item, str) and item:
                    ttft = time.perf_counter() - started
            assert ttft is not None, "no verified text was streamed"
            runs["grid_ttft_s"].append(ttft)

            started = time.perf_counter()
            sealed = client.complete(PROMPT, model=model.name, max_tokens=max_tokens, replicas=1, sealed=True)
            elapsed = time.perf_counter() - started
            tokens["grid_sealed"] = len(sealed.tokens)
            runs["grid_sealed_s"].append(elapsed)
            runs["grid_sealed_tps"].append(len(sealed.tokens) / elapsed)

            started = time.perf_counter()
            served = http.generate(request)
            elapsed = time.perf_counter() - started
            tokens["server"] = len(served.tokens)
            runs["server_s"].append(elapsed)
            runs["server_tps"].append(len(served.tokens) / elapsed)
        worker_rss = rss_mib(worker.process.pid)
    result: dict[str, Any] = {k: median(v) for k, v in runs.items()}
    result.update(tokens=tokens, runs=runs, smollm2_worker_rss_mib=worker_rss, threads=threads)
    return result


# ── (iii) dispatch overhead, (vi) idle RSS ────────────────────────────────────────────────────────────


def bench_dispatch(jobs: int, settle_s: float) -> dict[str, Any]:
    from opengrid.engines import GenerationRequest, LlamaEngine, resolve_model

    model = resolve_model("tiny")
    request = GenerationRequest(prompt=PROMPT, max_tokens=1)
    with contextlib.ExitStack() as stack:
        base = pathlib.Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="opengrid-bench-")))
        engine = stack.enter_context(LlamaEngine(model, n_threads=1))
        engine.generate(request)
        engine_s = []
        for _ in range(jobs):
            started = time.perf_counter()
            engine.generate(request)
            engine_s.append(time.perf_counter() - started)
        log("starting a coordinator and a worker with the tiny model")
        _, client, coordinator, worker = stack.enter_context(grid(model.name, 1, base))
        time.sleep(settle_s)  # let start-up garbage settle before reading idle RSS
        idle = {"coordinator": rss_mib(coordinator.process.pid), "worker": rss_mib(worker.process.pid)}
        client.complete(PROMPT, model=model.name, max_tokens=1, replicas=1, sealed=False)  # warm-up
        log(f"{jobs} jobs of 1 token each")
        latency = []
        for _ in range(jobs):
            started = time.perf_counter()
            client.complete(PROMPT, model=model.name, max_tokens=1, replicas=1, sealed=False)
            latency.append(time.perf_counter() - started)
    engine_median = median(engine_s)
    overhead = [t - engine_median for t in latency]
    return {
        "jobs": jobs,
        "engine_s_median": engine_median,
        "latency_s_p50": percentile(latency, 50),
        "latency_s_p99": percentile(latency, 99),
        "overhead_s_p50": percentile(overhead, 50),
        "overhead_s_p99": percentile(overhead, 99),
        "idle_rss_mib": idle,
        "bare_python_rss_mib": bare_python_rss(1.0),
    }


# ── (iv) ledger, (v) simulator ────────────────────────────────────────────────────────────────────────


def bench_ledger(reps: int, ingest: int, sync_entries: int, authors: int, diff: int) -> dict[str, Any]:
    import ledger_bench as lb

    raw, evidence, receipt = [], [], []
    ev_entries, ev_minters = lb.evidence_ledger(ingest, 10)
    paid, coordinator = lb.receipts(max(1, ingest // 4))
    for rep in range(reps):
        log(f"ledger ingest, repetition {rep + 1}/{reps}")
        raw.append(lb.raw_verify_rate(min(ingest, 20_000)))
        evidence.append(lb.ingest_rate(ev_entries, ev_minters))
        receipt.append(3 * lb.ingest_rate(paid, [coordinator]))
    log(f"ledger sync: generating two ledgers of {sync_entries:,} entries")
    big, minters = lb.evidence_ledger(sync_entries, authors)
    sync = lb.sync_figures(big, minters, diff)
    return {
        "raw_verify_per_s": median(raw),
        "evidence_entries_per_s": median(evidence),
        "receipt_signatures_per_s": median(receipt),
        "runs": {"raw": raw, "evidence": evidence, "receipt_signatures": receipt},
        "ingest_entries": ingest,
        "sync_entries": sync_entries,
        "sync_authors": authors,
        "sync_diff": diff,
        "sync": sync,
    }


def bench_sim(reps: int, quick: bool) -> dict[str, Any]:
    import sim_bench

    runs: dict[str, list[dict[str, Any]]] = {"engine": [], "full": [], "hybrid": []}
    for rep in range(reps):
        log(f"simulator, repetition {rep + 1}/{reps}")
        for case in runs:
            runs[case].append(sim_bench._measure(case, quick))
    rate = {case: median([r["events"] / r["wall_s"] for r in results]) for case, results in runs.items()}
    return {
        "events_per_s": rate,
        "workers": {case: results[0].get("workers") for case, results in runs.items()},
        "runs": runs,
    }


def bench_streaming(reps: int, max_tokens: int, threads: int) -> dict[str, Any]:
    """Issue 14: an OpenAI API stream through the grid vs llama_cpp.server's (streaming_bench.py)."""
    import streaming_bench

    return streaming_bench.bench_streaming(reps, max_tokens, threads)


def bench_verification(quick: bool) -> dict[str, Any]:
    """Issue 4 on a real network (verification_bench.py): one run, not repeated (it counts, not times)."""
    import verification_bench

    jobs, limit_s = (500, 60.0) if quick else (3200, 270.0)
    return verification_bench.bench_verification(jobs, time_limit_s=limit_s)


# ── the table ─────────────────────────────────────────────────────────────────────────────────────────


def rows_of(results: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []

    def add(row: Row, higher_is_better: bool | None, threshold: float | None, on: str = "ratio") -> None:
        if row.baseline:
            row.ratio = row.ours / row.baseline
        value = row.ratio if on == "ratio" else row.ours
        if threshold is not None and value is not None and higher_is_better is not None:
            row.meets = value >= threshold if higher_is_better else value <= threshold
        rows.append(row)

    llm = results.get("llm")
    if llm:
        n = llm["tokens"]["grid_open"]
        add(
            Row(
                f"grid tokens/s, open mode ({n} tokens, 1 worker)",
                llm["grid_open_tps"],
                llm["inproc_tps"],
                "in-process llama.cpp",
                "tok/s",
                "≥ 0.95 x in-process",
            ),
            True,
            0.95,
        )
        add(
            Row(
                f"grid tokens/s, sealed mode ({llm['tokens']['grid_sealed']} tokens)",
                llm["grid_sealed_tps"],
                llm["inproc_tps"],
                "in-process llama.cpp",
                "tok/s",
                "≥ 0.95 x in-process",
            ),
            True,
            0.95,
        )
        added = (llm["grid_ttft_s"] - llm["inproc_ttft_s"]) * 1000
        add(
            Row(
                f"time to first token, open streaming (adds {added:.0f} ms)",
                llm["grid_ttft_s"] * 1000,
                llm["inproc_ttft_s"] * 1000,
                "in-process llama.cpp",
                "ms",
                "report (issue 6)",
            ),
            None,
            None,
        )
        add(
            Row(
                f"job latency, open mode ({n} tokens)",
                llm["grid_open_s"] * 1000,
                llm["server_s"] * 1000,
                "llama_cpp.server over HTTP",
                "ms",
                "≤ 1.05 x server",
            ),
            False,
            1.05,
        )
        add(
            Row(
                "job latency, sealed mode",
                llm["grid_sealed_s"] * 1000,
                llm["server_s"] * 1000,
                "llama_cpp.server over HTTP",
                "ms",
                "≤ 1.05 x server",
            ),
            False,
            1.05,
        )
    streaming = results.get("streaming")
    if streaming:
        ours, server = streaming["grid"], streaming["server"]
        mode = (
            f"--verify {streaming['verify']}, {streaming['replicas']} replica(s), "
            f"{streaming['tokens']} tokens"
        )
        add(
            Row(
                f"time to first verified chunk, OpenAI API stream ({mode})",
                ours["ttft_s"]["median"] * 1000,
                server["ttft_s"]["median"] * 1000,
                "llama_cpp.server stream",
                "ms",
                "≤ 1.3 x server (issue 14)",
            ),
            False,
            1.3,
        )
        add(
            Row(
                f"streamed tokens/s, OpenAI API ({mode})",
                ours["tokens_per_s"]["median"],
                server["tokens_per_s"]["median"],
                "llama_cpp.server stream",
                "tok/s",
                "≥ 0.9 x server (issue 14)",
            ),
            True,
            0.9,
        )
    dispatch = results.get("dispatch")
    if dispatch:
        engine_ms = dispatch["engine_s_median"] * 1000
        for q in ("p50", "p99"):
            add(
                Row(
                    f"dispatch overhead {q} (1-token job minus engine time, {dispatch['jobs']} jobs)",
                    dispatch[f"overhead_s_{q}"] * 1000,
                    engine_ms,
                    "engine time, tiny model",
                    "ms",
                    "≤ 10 ms p50 (issue 3)" if q == "p50" else "report",
                ),
                False if q == "p50" else None,
                10.0 if q == "p50" else None,
                on="ours",
            )
        bare = dispatch["bare_python_rss_mib"]
        for role, mib in dispatch["idle_rss_mib"].items():
            add(
                Row(
                    f"idle RSS, {role} process{' (tiny model)' if role == 'worker' else ''}",
                    mib,
                    bare,
                    "bare Python interpreter",
                    "MiB",
                    "≤ 120 MB (issue 3)",
                ),
                False,
                120 / 1.048576,
                on="ours",
            )
    if llm:
        add(
            Row(
                "idle RSS, worker process (SmolLM2-135M, after the jobs)",
                llm["smollm2_worker_rss_mib"],
                None,
                "",
                "MiB",
                "report",
            ),
            None,
            None,
        )
    ledger = results.get("ledger")
    if ledger:
        raw = ledger["raw_verify_per_s"]
        add(
            Row(
                "ledger ingest, EVIDENCE entries/s (decode+verify+apply+store)",
                ledger["evidence_entries_per_s"],
                raw,
                "raw PyNaCl verify/s",
                "/s",
                "≥ 0.5 x raw (issue 5)",
            ),
            True,
            0.5,
        )
        add(
            Row(
                "ledger ingest, RECEIPT signatures/s (entry + 2 attestations)",
                ledger["receipt_signatures_per_s"],
                raw,
                "raw PyNaCl verify/s",
                "/s",
                "≥ 0.5 x raw (issue 5)",
            ),
            True,
            0.5,
        )
        sync = ledger["sync"]
        size = (
            f"{ledger['sync_entries']:,} vs {ledger['sync_entries']:,} entries, {ledger['sync_diff']} differ"
        )
        add(
            Row(f"sync round trips ({size})", sync["round_trips"], None, "", "", "≤ 4 (issue 5)"),
            False,
            4,
            on="ours",
        )
        add(
            Row(
                "sync bytes for reconciliation (without the entries)",
                sync["bytes_reconciliation"] / 1000,
                sync["bytes_entries"] / 1000,
                "the differing entries themselves",
                "KB",
                "≤ 64 KB (issue 5)",
            ),
            False,
            64,
            on="ours",
        )
    verification = results.get("verification")
    if verification:
        import verification_bench

        rows += verification_bench.rows(verification)
    sim = results.get("sim")
    if sim:
        rate, workers = sim["events_per_s"], sim["workers"]
        add(
            Row(
                f"simulator events/s, real core, hybrid ({workers['hybrid']} workers)",
                rate["hybrid"],
                rate["engine"],
                "bare event loop, no-op handler",
                "/s",
                "≥ 100k/s (issue 8)",
            ),
            True,
            100_000,
            on="ours",
        )
        add(
            Row(
                f"simulator events/s, real core, full fidelity ({workers['full']} workers)",
                rate["full"],
                rate["engine"],
                "bare event loop, no-op handler",
                "/s",
                "report (every signature real)",
            ),
            None,
            None,
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smaller sizes (about 2 minutes)")
    parser.add_argument("--json", type=pathlib.Path, help="also write the results as JSON here")
    parser.add_argument("--reps", type=int, help="repetitions per measure (default 5, --quick 3)")
    parser.add_argument(
        "--threads", type=int, default=1, help="llama.cpp threads, the same everywhere (default 1)"
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=["llm", "streaming", "dispatch", "ledger", "sim", "verification"],
        help="run only these parts; 'verification' (issue 4, 11 node processes, ~5 min) runs only when named",
    )
    args = parser.parse_args()
    reps = args.reps or (3 if args.quick else 5)
    parts = args.only or ["llm", "streaming", "dispatch", "ledger", "sim"]
    started = time.perf_counter()
    info = machine()
    results: dict[str, Any] = {}
    plan: dict[str, Callable[[], dict[str, Any]]] = {
        "llm": lambda: bench_llm(reps, 32 if args.quick else 128, args.threads),
        "streaming": lambda: bench_streaming(reps, 32 if args.quick else 128, args.threads),
        "dispatch": lambda: bench_dispatch(20 if args.quick else 50, 3.0),
        "ledger": lambda: bench_ledger(
            reps,
            ingest=4_000 if args.quick else 20_000,
            sync_entries=50_000 if args.quick else 1_000_000,
            authors=100 if args.quick else 1000,
            diff=100,
        ),
        "sim": lambda: bench_sim(reps, args.quick),
        "verification": lambda: bench_verification(args.quick),
    }
    for part in parts:
        log(f"── {part}")
        part_started = time.perf_counter()
        results[part] = plan[part]()
        results[part]["wall_s"] = time.perf_counter() - part_started
    wall = time.perf_counter() - started
    info["load_average_at_end"] = round(os.getloadavg()[0], 2)
    info["threads"] = args.threads
    rows = rows_of(results)
    table = markdown(rows, info, wall, reps, args.quick)
    print(table)
    document = {
        "machine": info,
        "quick": args.quick,
        "reps": reps,
        "wall_s": wall,
        "table": [r.as_dict() for r in rows],
        "results": results,
    }
    print(json.dumps(document, indent=2))
    if args.json:
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

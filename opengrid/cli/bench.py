"""``opengrid bench run``: send a file of prompts through a grid and report every job (issue 19).

opengrid bench run PROMPTS.jsonl --bootstrap MULTIADDR [--concurrency N] [--json OUT.json]

Every line of PROMPTS.jsonl is one JSON object: ``prompt`` (required), and optionally ``model``,
``max_tokens``, ``replicas``, ``sealed``, ``temperature``, ``top_p``, ``top_k``, ``seed`` (absent ones
take the command's flags). The whole file is read and checked before anything is sent: a bad line is
refused with its number, exit status 2 (a usage error, as argparse's own).

Each job goes through the SDK's ``Client.complete`` (the receipt is verified there: signature, output
commitment, attestations), ``--concurrency`` at a time on threads sharing one client. A job's failure (an
unknown model, no capacity, a timeout, a receipt that does not verify) is that job's record, not the run's
end. Like ``opengrid submit`` today, the jobs are unpaid: the client carries no identity.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import pathlib
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final

from opengrid.errors import ConfigError, OpenGridError
from opengrid.node.config import DEFAULT_NETWORK
from opengrid.wire.contract import sampling_problem
from opengrid.wire.messages import MAX_PROMPT_CHARS, MAX_REPLICAS, MAX_TOKENS_LIMIT

MAX_PROMPTS: Final = 10_000
"""Prompts in one file, at most: a run is a benchmark, not a queue."""
MAX_FILE_BYTES: Final = 256 * 1024 * 1024
"""The prompts file's size, at most (read whole before anything is sent)."""
DEFAULT_MODEL: Final = "smollm2-135m-instruct"
"""As ``opengrid submit``'s and the SDK's default."""
_FIELDS: Final = frozenset(
    {"prompt", "model", "max_tokens", "replicas", "sealed", "temperature", "top_p", "top_k", "seed"}
)


@dataclasses.dataclass(frozen=True)
class BenchJob:
    """One line of the prompts file, with the command's defaults filled in."""

    line: int
    prompt: str
    model: str
    max_tokens: int
    replicas: int
    sealed: bool
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``opengrid bench`` (action ``run``) to the top-level parser."""
    bench = subparsers.add_parser(
        "bench",
        help="send a file of prompts through a grid; per-job latency, verification, workers; JSON export",
        description="Benchmark a grid with real jobs.",
    )
    actions = bench.add_subparsers(dest="bench_action", required=True, metavar="ACTION")
    run_parser = actions.add_parser(
        "run",
        help="send every prompt of a JSONL file through a grid and report each job",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Send every prompt of PROMPTS.jsonl through the grid reached at --bootstrap, --concurrency\n"
            "jobs at a time, through the SDK (each answer's signed receipt is verified before it counts).\n"
            "A progress bar runs on stderr; then a table of the jobs and a summary (ok/failed, p50/p95\n"
            "latency, tokens, tokens/s). --json OUT writes every job's record and the summary.\n\n"
            "Each line is one JSON object; only 'prompt' is required:\n"
            '  {"prompt": "Once upon a time", "model": "tiny", "max_tokens": 16}\n'
            '  {"prompt": "Roll a die:", "max_tokens": 4, "temperature": 0.8, "top_p": 0.9, "seed": 7}\n'
            "Optional keys: model, max_tokens, replicas, sealed (true/false), temperature, top_p, top_k,\n"
            "seed; absent keys take the flags below. Blank lines are skipped. At most "
            f"{MAX_PROMPTS:,} prompts,\neach at most {MAX_PROMPT_CHARS:,} characters. The file is "
            "checked whole before anything is\nsent: a bad line is named, exit status 2.\n\n"
            "Jobs are unpaid, as with `opengrid submit` (the client has no identity).\n"
            "Exit status: 0 every job verified, 1 some job failed (each failure is in the report), 2 a bad\n"
            "prompts file or flag."
        ),
    )
    run_parser.add_argument("prompts", type=pathlib.Path, metavar="PROMPTS.jsonl")
    run_parser.add_argument(
        "--bootstrap",
        required=True,
        metavar="MULTIADDR",
        help="any node's multiaddr; the jobs go to a coordinator found through it",
    )
    run_parser.add_argument(
        "--concurrency",
        type=_bounded_int("--concurrency", 1, 64),
        default=4,
        metavar="N",
        help="jobs in flight at once, 1..64 (default 4)",
    )
    run_parser.add_argument(
        "--json",
        type=pathlib.Path,
        metavar="OUT.json",
        help="write every job and the summary here ('-': stdout)",
    )
    run_parser.add_argument(
        "--model", default=DEFAULT_MODEL, help=f"for lines without 'model' (default {DEFAULT_MODEL})"
    )
    run_parser.add_argument(
        "--max-tokens",
        type=_bounded_int("--max-tokens", 1, MAX_TOKENS_LIMIT),
        default=64,
        metavar="N",
        help="for lines without 'max_tokens' (default 64)",
    )
    run_parser.add_argument(
        "--replicas",
        type=_bounded_int("--replicas", 1, MAX_REPLICAS),
        default=2,
        metavar="N",
        help="for lines without 'replicas': workers that must agree (default 2)",
    )
    run_parser.add_argument(
        "--open", action="store_true", help="for lines without 'sealed': open mode (default: sealed)"
    )
    run_parser.add_argument(
        "--timeout",
        type=_bounded_int("--timeout", 1, 3600),
        default=300,
        metavar="S",
        help="each job's limit in seconds (default 300)",
    )
    run_parser.add_argument(
        "--network", default=DEFAULT_NETWORK, help=f"the network's name (default {DEFAULT_NETWORK})"
    )
    run_parser.add_argument(
        "--network-key",
        default=os.environ.get("OPENGRID_NETWORK_KEY"),
        metavar="SECRET",
        help="the private network's key (default: $OPENGRID_NETWORK_KEY)",
    )
    run_parser.add_argument("--quiet", action="store_true", help="no progress bar, per-job lines or table")


def _bounded_int(flag: str, low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} takes a whole number, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{flag} must be {low}..{high}, got {value}")
        return value

    return parse


def run(args: argparse.Namespace) -> int:
    """Execute ``opengrid bench run``; the exit status: 0 all verified, 1 some failed, 2 bad input."""
    try:
        jobs = load_prompts(args.prompts, model=args.model, max_tokens=args.max_tokens,
                            replicas=args.replicas, sealed=not args.open)  # fmt: skip
    except ConfigError as exc:
        print(f"opengrid: error: {exc}", file=sys.stderr)
        return 2
    started = time.monotonic()
    records = _run_jobs(args, jobs)
    summary = summarize(records, wall_s=time.monotonic() - started)
    if args.json is not None:
        report = json.dumps({"summary": summary, "jobs": records}, indent=2)
        if str(args.json) == "-":
            print(report)
        else:
            args.json.write_text(report + "\n", encoding="utf-8")
    if not args.quiet:
        _print_report(records, summary, to_stderr=str(args.json) == "-")
    return 0 if summary["failed"] == 0 else 1


# ── the prompts file ─────────────────────────────────────────────────────────────────────────────────
def load_prompts(
    path: pathlib.Path, *, model: str, max_tokens: int, replicas: int, sealed: bool
) -> list[BenchJob]:
    """Every job of a prompts file, checked whole; ``ConfigError`` naming the line of the first problem."""
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ConfigError(f"{path} is {size:,} bytes, over the {MAX_FILE_BYTES:,}-byte limit; split it")
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    jobs: list[BenchJob] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        if len(jobs) == MAX_PROMPTS:
            raise ConfigError(f"{path} line {number}: more than {MAX_PROMPTS:,} prompts; split the file")
        try:
            jobs.append(_job_of(raw, number, model=model, max_tokens=max_tokens, replicas=replicas,
                                sealed=sealed))  # fmt: skip
        except ConfigError as exc:
            raise ConfigError(f"{path} line {number}: {exc}") from None
    if not jobs:
        raise ConfigError(f'{path} holds no prompts; write one JSON object a line, e.g. {{"prompt": "Hi"}}')
    return jobs


def _job_of(raw: str, line: int, *, model: str, max_tokens: int, replicas: int, sealed: bool) -> BenchJob:
    try:
        item = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"not JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(item, dict):
        raise ConfigError(f'expected a JSON object like {{"prompt": "Hi"}}, got {type(item).__name__}')
    unknown = sorted(set(item) - _FIELDS)
    if unknown:
        raise ConfigError(
            f"unknown key(s) {', '.join(map(repr, unknown))}; known: {', '.join(sorted(_FIELDS))}"
        )
    prompt = item.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise ConfigError("'prompt' must be a non-empty string")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise ConfigError(
            f"the prompt has {len(prompt):,} characters, over the limit of {MAX_PROMPT_CHARS:,}"
        )
    chosen_model = item.get("model", model)
    if not isinstance(chosen_model, str) or not chosen_model:
        raise ConfigError("'model' must be a non-empty string (a model name or a GGUF sha256)")
    # The wire's own limits, so a line the coordinator would refuse is refused here, before anything is sent.
    tokens = _whole(item, "max_tokens", max_tokens, 1, MAX_TOKENS_LIMIT)
    copies = _whole(item, "replicas", replicas, 1, MAX_REPLICAS)
    seal = item.get("sealed", sealed)
    if not isinstance(seal, bool):
        raise ConfigError(f"'sealed' must be true or false, got {seal!r}")
    temperature = item.get("temperature", 0.0)
    top_k = item.get("top_k", 0)
    top_p = item.get("top_p", 1.0)
    seed = item.get("seed", 0)
    if any(isinstance(v, bool) for v in (temperature, top_k, top_p, seed)):
        raise ConfigError("sampling fields take numbers, not true/false")
    problem = sampling_problem(temperature, top_k, top_p, seed)
    if problem:
        raise ConfigError(problem)
    return BenchJob(line, prompt, chosen_model, tokens, copies, seal,
                    float(temperature), int(top_k), float(top_p), int(seed))  # fmt: skip


def _whole(item: dict[str, Any], key: str, default: int, low: int, high: int) -> int:
    value = item.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"'{key}' must be a whole number {low}..{high}, got {value!r}")
    return value


# ── running ──────────────────────────────────────────────────────────────────────────────────────────
def _run_jobs(args: argparse.Namespace, jobs: Sequence[BenchJob]) -> list[dict[str, Any]]:
    from opengrid_sdk import Client
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    records: list[dict[str, Any] | None] = [None] * len(jobs)
    failed = 0
    lock = threading.Lock()
    with (
        Client(
            [args.bootstrap], network=args.network, network_key=args.network_key, timeout=float(args.timeout)
        ) as client,
        Progress(
            TextColumn("[bold]bench[/]"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("jobs, {task.fields[failed]} failed"),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            transient=True,
            disable=args.quiet,
        ) as progress,
    ):
        task = progress.add_task("jobs", total=len(jobs), failed=0)

        def one(index: int) -> None:
            nonlocal failed
            record = run_job(client, jobs[index])
            with lock:
                records[index] = record
                failed += not record["ok"]
                progress.update(task, advance=1, failed=failed)

        pool = ThreadPoolExecutor(max_workers=args.concurrency, thread_name_prefix="bench")
        try:
            for future in [pool.submit(one, i) for i in range(len(jobs))]:
                future.result()
        except BaseException:
            # Ctrl-C (or a bug in a job): queued jobs must not run on. The jobs in flight end when the
            # client closes below (its trio thread cancels their calls), not after their full timeout.
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
    return [r for r in records if r is not None]


def run_job(client: Any, job: BenchJob) -> dict[str, Any]:
    """Run one job through ``client.complete``; its record (a failure's too, with the error's type and
    message). Only ``OpenGridError`` is a job's failure: anything else is a bug and propagates."""
    record: dict[str, Any] = {
        "line": job.line,
        "model": job.model,
        "max_tokens": job.max_tokens,
        "replicas": job.replicas,
        "sealed": job.sealed,
        "temperature": job.temperature,
        "top_k": job.top_k,
        "top_p": job.top_p,
        "seed": job.seed,
    }
    started = time.monotonic()
    try:
        done = client.complete(job.prompt, model=job.model, max_tokens=job.max_tokens, replicas=job.replicas,
                               sealed=job.sealed, temperature=job.temperature, top_k=job.top_k,
                               top_p=job.top_p, seed=job.seed)  # fmt: skip
    except OpenGridError as exc:
        latency = time.monotonic() - started
        return record | {"ok": False, "latency_s": round(latency, 4), "verification": "failed",
                         "error_type": type(exc).__name__, "error": str(exc)}  # fmt: skip
    latency = time.monotonic() - started
    return record | {
        "ok": True,
        "job_id": done.job_id.hex(),
        "latency_s": round(latency, 4),
        "tokens": len(done.tokens),
        "tokens_per_s": round(len(done.tokens) / latency, 3) if latency > 0 else None,
        "finish_reason": done.finish_reason,
        # complete() returns only after the receipt verified: signature, output commitment, attestations
        "verification": "verified",
        "workers": list(done.workers),
        "dissenters": list(done.dissenters),
        "failed_workers": list(done.failed),
        "coordinator": done.coordinator,
        "receipt": done.receipt.entry.hex(),
        "text": done.text,
    }


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """The nearest-rank percentile (``fraction`` in (0, 1]) of ``values``; None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def summarize(records: Sequence[dict[str, Any]], *, wall_s: float) -> dict[str, Any]:
    """Counts, latency percentiles over verified jobs, and their tokens. ``tokens_per_s`` is the run's
    throughput (verified tokens over the run's ``wall_s``, jobs overlapping); ``job_tokens_per_s`` what
    one job sees (tokens over the sum of the verified jobs' latencies)."""
    ok = [r for r in records if r["ok"]]
    latencies = [float(r["latency_s"]) for r in ok]
    tokens = sum(int(r["tokens"]) for r in ok)
    busy = sum(latencies)
    p50, p95 = percentile(latencies, 0.5), percentile(latencies, 0.95)
    return {
        "jobs": len(records),
        "ok": len(ok),
        "failed": len(records) - len(ok),
        "p50_latency_s": None if p50 is None else round(p50, 4),
        "p95_latency_s": None if p95 is None else round(p95, 4),
        "tokens": tokens,
        "wall_s": round(wall_s, 4),
        "tokens_per_s": round(tokens / wall_s, 3) if wall_s > 0 else None,
        "job_tokens_per_s": round(tokens / busy, 3) if busy > 0 else None,
    }


def _print_report(records: Sequence[dict[str, Any]], summary: dict[str, Any], *, to_stderr: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=to_stderr, highlight=False)
    jobs = Table(title="jobs")
    for column in ("line", "model", "outcome", "latency s", "tokens", "tok/s", "workers"):
        jobs.add_column(
            column, justify="right" if column in ("line", "latency s", "tokens", "tok/s") else "left"
        )
    for r in records:
        if r["ok"]:
            workers = ", ".join(w[-8:] for w in r["workers"])
            jobs.add_row(str(r["line"]), r["model"], "verified", f"{r['latency_s']:.2f}", str(r["tokens"]),
                         f"{r['tokens_per_s'] or 0:.1f}", workers)  # fmt: skip
        else:
            jobs.add_row(str(r["line"]), r["model"], f"failed: {r['error_type']}: {r['error']}",
                         f"{r['latency_s']:.2f}", "", "", "")  # fmt: skip
    console.print(jobs)
    table = Table(title="summary")
    for column in ("jobs", "ok", "failed", "p50 s", "p95 s", "tokens", "tokens/s", "wall s"):
        table.add_column(column, justify="right")

    def num(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    counts = [str(summary[key]) for key in ("jobs", "ok", "failed")]
    timing = [num(summary["p50_latency_s"]), num(summary["p95_latency_s"]), str(summary["tokens"])]
    table.add_row(*counts, *timing, num(summary["tokens_per_s"]), num(summary["wall_s"]))
    console.print(table)

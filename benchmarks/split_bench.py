"""Issue 17: tokens/s of a model split 2-way and 3-way on loopback, against the same model in one process.

For each way n (head + n-1 member processes, layers split evenly by the planner), in the same run:

* ``single``: ``LlamaEngine`` in this process (the baseline);
* ``direct``: the split engine with the head's llama.cpp connected straight to each member's RPC server
  (loopback TCP, no libp2p): ggml-rpc's own cost;
* ``tunnel``: the same through ``/opengrid/split/1`` (what a grid runs): the difference to ``direct`` is
  the tunnel's cost, reported per token and per hop (each member is one hop from the head).

Generation is greedy, one thread per process (``--threads``), ``--tokens`` tokens after a short prompt;
the model is loaded (and its layers sent to the members) before timing. On a shared machine the load
moves from minute to minute, so one-process and split generations alternate, ``--repeats`` pairs per
mode, and a mode's ratio to one process is the median of its pairs' ratios (rates are reported as the
one-process median times that ratio). The median time between two tokens is reported too.

    .venv/bin/python benchmarks/split_bench.py                          # SmolLM2-135M, 2- and 3-way
    .venv/bin/python benchmarks/split_bench.py --model PATH.gguf --tokens 64 --json out.json
    .venv/bin/python benchmarks/split_bench.py --model-size 600m        # a generated 0.6 B model

``--model-size NAME`` generates a random llama model of that shape (``opengrid.engines.tiny_model.
GENERATED_SHAPES``: 150m, 600m, 1b; ``--file-type`` q4_1 by default, as SmolLM2) into ``--cache-dir``
on first use (the user cache directory's ``opengrid/models/generated``), so a model several times larger than
SmolLM2-135M can be measured with nothing downloaded. Its output is gibberish; its speed is that of a
real model of its shape. The load average is recorded with the figures (the machine may be shared).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import pathlib
import secrets
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import trio

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from opengrid.core.split_plan import SplitCandidate, SplitPlan, plan_split  # noqa: E402
from opengrid.engines.base import GenerationRequest, ModelInfo  # noqa: E402
from opengrid.engines.footprint import model_footprint  # noqa: E402
from opengrid.engines.llama import LlamaEngine  # noqa: E402
from opengrid.engines.models import default_cache_dir, resolve_model, sha256_file  # noqa: E402
from opengrid.engines.split import SplitEngine  # noqa: E402
from opengrid.engines.tiny_model import GENERATED_SHAPES, write_generated_gguf  # noqa: E402
from opengrid.net.host import open_host, quiet_libp2p_logging  # noqa: E402
from opengrid.net.split import SplitHead  # noqa: E402

PROMPT = "Here are five facts about the water cycle: 1."
MIB = 1024 * 1024


@contextmanager
def members(n: int, offer: int, threads: int) -> Iterator[list[tuple[subprocess.Popen[bytes], str]]]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), *(p for p in sys.path if p)]))
    procs = []
    try:
        for _ in range(n):
            command = [sys.executable, "-m", "opengrid.net.split_member_main", "--max-memory", str(offer)]
            command += ["--threads", str(threads), "--print-ports"]
            procs.append(subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env))
        out = []
        for p in procs:
            assert p.stdout is not None
            line = p.stdout.readline().decode().split()
            if line[:1] != ["addr"]:
                raise SystemExit(f"a member did not start: {line}")
            out.append((p, line[1]))
        yield out
    finally:
        for p in procs:
            p.kill()
            p.wait(timeout=30)


@dataclass
class Timing:
    """One mode's timed generations: tokens/s of each whole generation, and the times between tokens."""

    rates: list[float] = field(default_factory=list)
    gaps: list[float] = field(default_factory=list)
    tokens: tuple[int, ...] = ()

    def time(self, engine: Any, request: GenerationRequest) -> float:
        """Generate once, record the rate and the gaps; the rate."""
        stamps: list[float] = []

        def stamp(_token: int, _piece: str) -> None:
            stamps.append(time.perf_counter())

        start = time.perf_counter()
        result = engine.generate_streaming(request, None, stamp)
        rate = len(result.tokens) / (time.perf_counter() - start)
        self.rates.append(rate)
        self.gaps += [b - a for a, b in itertools.pairwise(stamps)]
        self.tokens = result.tokens
        return rate

    @property
    def median_rate(self) -> float:
        """Tokens/s of the median time between two tokens."""
        return 1 / statistics.median(self.gaps) if self.gaps else 0.0


def paired(single: LlamaEngine, split: Any, tokens: int, repeats: int) -> tuple[Timing, Timing, float]:
    """Alternate one-process and split generations (after one untimed warm-up of each): (one process,
    split, the median over pairs of split tokens/s / one-process tokens/s). Pairs taken seconds apart
    see the same load on a shared machine; runs taken minutes apart do not."""
    request = GenerationRequest(PROMPT, max_tokens=tokens)
    single.generate(request)
    split.generate(request)
    one, many = Timing(), Timing()
    ratios = []
    for _ in range(repeats):
        base = one.time(single, request)
        ratios.append(many.time(split, request) / base)
    return one, many, statistics.median(ratios)


async def split_run(
    model: ModelInfo,
    plan: SplitPlan,
    procs: list[tuple[subprocess.Popen[bytes], str]],
    single: LlamaEngine,
    args: argparse.Namespace,
) -> dict[str, Any]:
    quiet_libp2p_logging()
    result: dict[str, Any] = {}
    async with open_host(secrets.token_bytes(32)) as host, trio.open_nursery() as nursery:
        head = SplitHead(host)
        endpoints, direct = [], []
        by_peer = {addr.rsplit("/p2p/", 1)[1]: (p, addr) for p, addr in procs}
        for share in plan.members:
            proc, addr = by_peer[share.peer]
            await host.connect(addr)
            lease = await head.invite(
                share.peer, model_sha256=model.sha256, units=share.count, bytes_needed=share.bytes
            )
            assert proc.stdout is not None
            port = (await trio.to_thread.run_sync(proc.stdout.readline)).decode().split()[1]
            direct.append(f"127.0.0.1:{port}")
            endpoints.append(await nursery.start(head.serve_endpoint, lease))

        def run(eps: list[str]) -> dict[str, Any]:
            started = time.perf_counter()
            with SplitEngine(
                model,
                eps,
                plan.tensor_split,
                plan.offloaded,
                n_ctx=args.n_ctx,
                n_threads=args.threads,
                load_timeout_s=600,
            ) as engine:
                load_s = time.perf_counter() - started
                one, many, ratio = paired(single, engine, args.tokens, args.repeats)
            return {"load_s": load_s, "single": one, "split": many, "ratio": ratio}

        # The RPC server serves one connection at a time: the tunnelled run first, then the direct one
        # (the tunnel's connection is closed with its engine).
        before = sum(s.busy_s for s in head.stats.values())
        result["tunnel"] = await trio.to_thread.run_sync(run, endpoints)
        result["tunnel"]["head_busy_s"] = sum(s.busy_s for s in head.stats.values()) - before
        result["direct"] = await trio.to_thread.run_sync(run, direct)
        nursery.cancel_scope.cancel()
    return result


def generated_model(size: str, file_type: str, seed: int, cache_dir: pathlib.Path) -> ModelInfo:
    """The generated model ``size`` (written on first use, re-used afterwards)."""
    shape = GENERATED_SHAPES[size]
    path = cache_dir / f"generated-{size}-{file_type}-seed{seed}.gguf"
    if not path.is_file():
        print(f"generating a {shape.n_params / 1e6:.0f} M-parameter model ({shape}) into {path}", flush=True)
        started = time.perf_counter()
        write_generated_gguf(
            path, shape, seed=seed, file_type=file_type, progress=lambda line: print(f"  {line}", flush=True)
        )
        print(f"  written in {time.perf_counter() - started:.1f} s", flush=True)
    return ModelInfo(path.stem, path, sha256_file(path))


def summary(plan: SplitPlan, result: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """The figures of one n-way run."""
    t, d = result["tunnel"], result["direct"]
    single_rates = t["single"].rates + d["single"].rates
    single_rate = statistics.median(single_rates)
    # Each mode's rate is the one-process median times its paired ratio: the load of its own minutes.
    tunnel_rate, direct_rate = single_rate * t["ratio"], single_rate * d["ratio"]
    tunnel_ms = 1000 / tunnel_rate - 1000 / direct_rate
    hops = len(plan.members)
    return {
        "head_layers": plan.head_layers,
        "member_layers": [m.count for m in plan.members],
        "single_tokens_per_s": single_rate,
        "tunnel_tokens_per_s": tunnel_rate,
        "direct_tokens_per_s": direct_rate,
        "ratio_to_single": t["ratio"],
        "direct_ratio_to_single": d["ratio"],
        "tunnel_ms_per_token": tunnel_ms,
        "tunnel_ms_per_token_per_hop": tunnel_ms / hops,
        "single_median_ms": 1000 / statistics.median([t["single"].median_rate, d["single"].median_rate]),
        "tunnel_median_ms": 1000 / t["split"].median_rate,
        "direct_median_ms": 1000 / d["split"].median_rate,
        "head_tunnel_busy_ms_per_token": 1000 * t["head_busy_s"] / (args.tokens * (args.repeats + 1)),
        "load_s": t["load_s"],
        "tokens_equal_single": t["split"].tokens == t["single"].tokens == d["split"].tokens,
        "load_average": os.getloadavg()[0],
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2", help="catalog name or GGUF path (default smollm2)")
    parser.add_argument("--ways", default="2,3", help="comma-separated process counts (default 2,3)")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--n-ctx", type=int, default=512)
    parser.add_argument("--json", type=pathlib.Path)
    parser.add_argument(
        "--model-size", choices=sorted(GENERATED_SHAPES), help="a generated model of this shape (not --model)"
    )
    parser.add_argument("--file-type", default="q4_1", choices=["q4_0", "q4_1", "q8_0", "f16", "f32"])
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated model")
    parser.add_argument(
        "--scratch-mib",
        type=int,
        default=64,
        help="compute scratch per participant in the plan, MiB (default 64, the planner's; the 0.6 B model's "
        "is 34 MiB)",
    )
    parser.add_argument("--cache-dir", type=pathlib.Path, default=default_cache_dir() / "generated")
    args = parser.parse_args()
    if args.model_size:
        model = generated_model(args.model_size, args.file_type, args.seed, args.cache_dir)
    elif pathlib.Path(args.model).is_file():
        path = pathlib.Path(args.model)
        model = ModelInfo(path.stem, path, sha256_file(path))
    else:
        model = resolve_model(args.model)
    scratch = args.scratch_mib * MIB
    fp = model_footprint(model.path, n_ctx=args.n_ctx, overhead_bytes=scratch)
    report: dict[str, Any] = {
        "model": model.name,
        "bytes": model.path.stat().st_size,
        "tokens": args.tokens,
        "threads": args.threads,
        "load_average_start": os.getloadavg(),
        "ways": {},
    }
    with LlamaEngine(model, n_ctx=args.n_ctx, n_threads=args.threads) as single:
        for ways in (int(w) for w in args.ways.split(",")):
            # Everyone offers an even share of the layers (plus a layer, and scratch): fewer than ``ways``
            # processes cannot hold them, so the planner needs them all. The head also holds the input and
            # output layers.
            share = sum(fp.layer_bytes) // ways + max(fp.layer_bytes) + scratch
            with members(ways - 1, share, args.threads) as procs:
                head = SplitCandidate("head", share + fp.input_bytes + fp.output_bytes)
                candidates = [SplitCandidate(a.rsplit("/p2p/", 1)[1], share) for _, a in procs]
                plan = plan_split(fp, head, candidates)
                if len(plan.members) != ways - 1:
                    raise SystemExit(f"the planner used {len(plan.members)} members, not {ways - 1}")
                result = trio.run(split_run, model, plan, procs, single, args)
            report["ways"][str(ways)] = entry = summary(plan, result, args)
            print(
                f"{ways}-way (head {plan.head_layers} layers, members {entry['member_layers']} layers): "
                f"tunnel {entry['tunnel_tokens_per_s']:.1f} tokens/s, {entry['ratio_to_single']:.2f}x one "
                f"process ({entry['single_tokens_per_s']:.1f}) in the same minutes; direct "
                f"{entry['direct_tokens_per_s']:.1f} tokens/s, {entry['direct_ratio_to_single']:.2f}x; "
                f"tunnel cost {entry['tunnel_ms_per_token']:.2f} ms/token "
                f"({entry['tunnel_ms_per_token_per_hop']:.2f} per hop); median time between tokens: one "
                f"process {entry['single_median_ms']:.1f} ms, tunnel {entry['tunnel_median_ms']:.1f}, direct "
                f"{entry['direct_median_ms']:.1f}; load {entry['load_s']:.1f} s; tokens equal one process: "
                f"{entry['tokens_equal_single']}; load average {entry['load_average']:.1f}",
                flush=True,
            )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Issue 14: calibrate scoring copies — honest Q4_1 claims audited on a bf16/q8_0/f16/f32 copy of the
same weights still pass the tolerance, cheats still fail, and what each copy costs.

A prover (``LlamaEngine`` on SmolLM2-135M-Instruct Q4_1, ``--threads``) generates, per prompt of
cross_build_bench's 60, 128 tokens; each auditor — the original file and each ``--copies`` scoring copy
(``opengrid.engines.scoring_copy``, made in ``--cache-dir``) — scores every claim with
``LlamaEngine.score`` and the default tolerance (spec/verification.md §12.2). Claim sets:

* ``--part greedy``: honest greedy (``--prompts``); and, on the first ``--cheat-prompts``: one token in
  20 replaced by a random one, uniform random tokens, and a model swap (greedy output of a Q4_0
  re-quantization of the same weights, a cheaper model);
* ``--part sampled``: honest Gumbel-max samples at ``--temperature`` / ``--seed`` (``--prompts``); and a
  sample made at half the temperature, audited as if made at ``--temperature`` (``--cheat-prompts``).

With ``--python-b`` (another llama-cpp-python build's interpreter, e.g. the AVX2-only one of
cross_build_bench), that build also generates the honest set (``--generate-only``, in a subprocess) and
every auditor scores it too: a prover on other hardware, audited on a copy.

For each (claim set, auditor): accepted / total, the largest gap per job (median, p99, max), and the
margin to the tolerance. Cost: per prompt of the honest set, the auditor's CPU time (``process_time``)
÷ the prover's for that very claim, interleaved prompt by prompt; median (range). Memory: file size and
the RSS added by loading the auditor and scoring once.

    .venv/bin/python benchmarks/scoring_copy_bench.py --part greedy --json greedy.json
    .venv/bin/python benchmarks/scoring_copy_bench.py --part sampled --json sampled.json
    .venv/bin/python benchmarks/scoring_copy_bench.py --part greedy --cheat-prompts 0 \
        --python-b /work/avx2/.venv/bin/python --copies bf16 q8_0
    # an auditor on build B: claims made here, scored there (the copies already in --cache-dir)
    .venv/bin/python benchmarks/scoring_copy_bench.py --part greedy --generate-only claims.json
    /work/avx2/.venv/bin/python benchmarks/scoring_copy_bench.py --part greedy --score-only claims.json \
        --copies bf16 f16 --cache-dir CACHE
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import random
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from cross_build_bench import PROMPTS

from opengrid.core.audit import DEFAULT_GAP_TOLERANCE, SamplingParams
from opengrid.engines import GenerationRequest, LlamaEngine, ScoreRequest, resolve_model
from opengrid.engines.base import ModelInfo
from opengrid.engines.scoring_copy import (
    SCORING_COPY_TYPES,
    make_scoring_copy,
    write_scoring_copy,
)


def rss_mib() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return math.nan


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def _sampling(args: argparse.Namespace) -> SamplingParams:
    if args.part == "greedy":
        return SamplingParams()
    return SamplingParams(temperature=args.temperature, seed=args.seed)


def generate_only(args: argparse.Namespace) -> int:
    """Build B's side: the honest claims of the part, as JSON in ``args.generate_only``."""
    prover = LlamaEngine(resolve_model("smollm2-135m-instruct"), n_threads=args.threads)
    claims = []
    for number, prompt in enumerate(PROMPTS[: args.prompts]):
        job_id = number.to_bytes(4, "big") * 8
        generation = prover.generate(
            GenerationRequest(prompt=prompt, max_tokens=args.tokens, sampling=_sampling(args), job_id=job_id)
        )
        claims.append(
            {
                "prompt": prompt,
                "tokens": list(generation.tokens),
                "stopped": generation.finish_reason == "stop",
            }
        )
    args.generate_only.write_text(json.dumps(claims))
    prover.close()
    return 0


def score_only(args: argparse.Namespace) -> int:
    """Audit claims from a file (``--generate-only``'s output, made by any build) on this build: with the
    Q4_1 file and with each ``--copies`` copy (found in ``--cache-dir``, or made there); largest gaps."""
    if args.cache_dir is None:
        raise SystemExit("--score-only needs --cache-dir (where the copies are, or are made)")
    model = resolve_model("smollm2-135m-instruct")
    auditors = {"original q4_1": LlamaEngine(model, n_threads=args.threads)}
    for kind in args.copies:
        copy = make_scoring_copy(model, kind, cache_dir=args.cache_dir)
        auditors[kind] = LlamaEngine(model, n_threads=args.threads, scoring_copy=copy)
    claims = json.loads(args.score_only.read_text())
    for name, auditor in auditors.items():
        largest = []
        for number, claim in enumerate(claims):
            request = ScoreRequest(
                prompt=claim["prompt"],
                tokens=tuple(claim["tokens"]),
                stopped=claim["stopped"],
                sampling=_sampling(args),
                job_id=number.to_bytes(4, "big") * 8,
            )
            largest.append(max(max(e.gap, e.mask_margin) for e in auditor.score(request).evidence))
        accepted = sum(1 for g in largest if g <= DEFAULT_GAP_TOLERANCE)
        print(
            f"| {args.score_only.name} | {name} | {accepted}/{len(largest)} | "
            f"{statistics.median(largest):.3f} | {max(largest):.3f} |",
            flush=True,
        )
        auditor.close()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--part", choices=("greedy", "sampled"), required=True)
    parser.add_argument("--prompts", type=int, default=len(PROMPTS))
    parser.add_argument("--cheat-prompts", type=int, default=20)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--copies", nargs="*", default=list(SCORING_COPY_TYPES), choices=SCORING_COPY_TYPES)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--cache-dir", type=pathlib.Path, default=None)
    parser.add_argument("--json")
    parser.add_argument("--python-b", help="another build's python: it generates the honest set too")
    parser.add_argument("--generate-only", type=pathlib.Path, help=argparse.SUPPRESS)
    parser.add_argument(
        "--score-only", type=pathlib.Path, help="audit the claims of a --generate-only file on this build"
    )
    args = parser.parse_args()
    if args.generate_only is not None:
        return generate_only(args)
    if args.score_only is not None:
        return score_only(args)
    tmp = tempfile.TemporaryDirectory(prefix="scoring-copy-bench-")
    cache = args.cache_dir if args.cache_dir is not None else pathlib.Path(tmp.name)
    prompts = PROMPTS[: args.prompts]
    model = resolve_model("smollm2-135m-instruct")
    prover = LlamaEngine(model, n_threads=args.threads)

    auditors: dict[str, LlamaEngine] = {"original q4_1": prover}
    memory: dict[str, dict[str, float]] = {}
    warm = ScoreRequest(prompt=prompts[0], tokens=prover.tokenize(" hello world") * 8, stopped=False)
    for kind in args.copies:
        start = time.perf_counter()
        copy = make_scoring_copy(model, kind, cache_dir=cache)
        made = time.perf_counter() - start
        before = rss_mib()
        engine = LlamaEngine(ModelInfo(model.name, copy.path, model.sha256), n_threads=args.threads)
        engine.score(warm)
        memory[kind] = {
            "file_mib": copy.path.stat().st_size / 2**20,
            "rss_added_mib": rss_mib() - before,
            "conversion_s": made,
        }
        auditors[kind] = engine
        print(f"{kind}: {memory[kind]}", flush=True)

    sampled = SamplingParams(temperature=args.temperature, seed=args.seed)
    claim_sampling = _sampling(args)
    rng = random.Random(20261207)
    n_vocab = prover.n_vocab
    sets: dict[str, list[tuple[ScoreRequest, str]]] = {}
    cost: dict[str, list[float]] = {name: [] for name in auditors}
    prover_cpu: list[float] = []
    scored: dict[tuple[str, int, str], list[float]] = {}  # the honest claims' gaps, from the timed scores
    honest_name = "honest greedy" if args.part == "greedy" else f"honest sample T={args.temperature}"
    for number, prompt in enumerate(prompts):
        job_id = number.to_bytes(4, "big") * 8
        request = GenerationRequest(
            prompt=prompt, max_tokens=args.tokens, sampling=claim_sampling, job_id=job_id
        )
        cpu = time.process_time()
        generation = prover.generate(request)
        prover_cpu.append(time.process_time() - cpu)
        score = ScoreRequest(
            prompt=prompt,
            tokens=generation.tokens,
            stopped=generation.finish_reason == "stop",
            sampling=claim_sampling,
            job_id=job_id,
        )
        sets.setdefault(honest_name, []).append((score, prompt))
        for name, auditor in auditors.items():
            cpu = time.process_time()
            evidence = auditor.score(score).evidence
            cost[name].append((time.process_time() - cpu) / prover_cpu[-1])
            scored[(honest_name, number, name)] = [max(e.gap, e.mask_margin) for e in evidence]
        # The token-level cheats need a claim of 20 tokens or more (a short answer has nothing to change).
        if number < args.cheat_prompts and args.part == "greedy" and len(generation.tokens) >= 20:
            tokens = list(generation.tokens)
            changed = [
                t if i % 20 != 19 else (t + rng.randrange(1, n_vocab)) % n_vocab for i, t in enumerate(tokens)
            ]
            sets.setdefault("one token in 20 random", []).append(
                (ScoreRequest(prompt=prompt, tokens=tuple(changed), stopped=False, job_id=job_id), prompt)
            )
            noise = tuple(rng.randrange(n_vocab) for _ in tokens)
            sets.setdefault("uniform random tokens", []).append(
                (ScoreRequest(prompt=prompt, tokens=noise, stopped=False, job_id=job_id), prompt)
            )
        if number < args.cheat_prompts and args.part == "sampled":
            cold = GenerationRequest(
                prompt=prompt,
                max_tokens=args.tokens,
                sampling=SamplingParams(temperature=args.temperature / 2, seed=args.seed),
                job_id=job_id,
            )
            other = prover.generate(cold)
            sets.setdefault(f"sample at T={args.temperature / 2} audited as T={args.temperature}", []).append(
                (
                    ScoreRequest(
                        prompt=prompt,
                        tokens=other.tokens,
                        stopped=other.finish_reason == "stop",
                        sampling=sampled,
                        job_id=job_id,
                    ),
                    prompt,
                )
            )
        if (number + 1) % 10 == 0:
            so_far = ", ".join(f"{n} {statistics.median(v):.3f}" for n, v in cost.items())
            print(f"{number + 1} prompts; CPU ratios {so_far}; load {os.getloadavg()[0]:.1f}", flush=True)

    for name, values in cost.items():  # now too: a later failure must not lose the timings
        print(f"cost | {name} | {statistics.median(values):.3f} ({min(values):.2f}-{max(values):.2f}) |")

    if args.part == "greedy" and args.cheat_prompts:
        swap_path = cache / "swap-q4_0.gguf"
        write_scoring_copy(model.path, swap_path, "q4_0", source_sha256=model.sha256)
        swap = LlamaEngine(ModelInfo("swap", swap_path, "0" * 64), n_threads=args.threads)
        for number, prompt in enumerate(prompts[: args.cheat_prompts]):
            generation = swap.generate(GenerationRequest(prompt=prompt, max_tokens=args.tokens))
            sets.setdefault("model swap: Q4_0 re-quantization", []).append(
                (
                    ScoreRequest(
                        prompt=prompt,
                        tokens=generation.tokens,
                        stopped=generation.finish_reason == "stop",
                        job_id=number.to_bytes(4, "big") * 8,
                    ),
                    prompt,
                )
            )
        swap.close()

    if args.python_b:
        claims_file = pathlib.Path(tmp.name) / "claims-b.json"
        root = pathlib.Path(__file__).resolve().parents[1]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(str(root / d) for d in ("", "sdk", "ledger")))
        command = [args.python_b, __file__, "--part", args.part, "--prompts", str(args.prompts)]
        command += ["--tokens", str(args.tokens), "--threads", str(args.threads)]
        command += ["--temperature", str(args.temperature), "--seed", str(args.seed)]
        command += ["--generate-only", str(claims_file)]
        subprocess.run(command, check=True, env=env)
        for number, claim in enumerate(json.loads(claims_file.read_text())):
            b_claim = ScoreRequest(
                prompt=claim["prompt"],
                tokens=tuple(claim["tokens"]),
                stopped=claim["stopped"],
                sampling=claim_sampling,
                job_id=number.to_bytes(4, "big") * 8,
            )
            sets.setdefault(f"{honest_name}, build B", []).append((b_claim, claim["prompt"]))

    tau = DEFAULT_GAP_TOLERANCE
    results: dict[str, dict[str, float]] = {}
    for set_name, claims in sets.items():
        for name, auditor in auditors.items():
            largest = []
            nonzero: list[float] = []
            for number, (claim, _prompt) in enumerate(claims):
                gaps = scored.get((set_name, number, name))
                if gaps is None:
                    gaps = [max(e.gap, e.mask_margin) for e in auditor.score(claim).evidence]
                largest.append(max(gaps))
                nonzero += [g for g in gaps if g > 0]
            accepted = sum(1 for g in largest if g <= tau)
            row: dict[str, float] = {
                "accepted": accepted,
                "jobs": len(largest),
                "largest_gap_median": statistics.median(largest),
                "largest_gap_p99": percentile(largest, 0.99),
                "largest_gap_max": max(largest),
                "largest_gap_min": min(largest),
                "nonzero_positions": len(nonzero),
                "nonzero_p99": percentile(nonzero, 0.99) if nonzero else 0.0,
            }
            results[f"{set_name} | {name}"] = row
            print(
                f"| {set_name} | {name} | {accepted}/{len(largest)} | {row['largest_gap_median']:.3f} | "
                f"{row['largest_gap_p99']:.3f} | {row['largest_gap_max']:.3f} | "
                f"{row['largest_gap_min']:.3f} |",
                flush=True,
            )
    print("| auditor | CPU auditor ÷ prover, median (range) |")
    for name, values in cost.items():
        print(f"| {name} | {statistics.median(values):.3f} ({min(values):.2f}-{max(values):.2f}) |")
    print(f"prover CPU per claim: median {statistics.median(prover_cpu):.2f} s; load {os.getloadavg()}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(
                {
                    "part": args.part,
                    "tolerance": tau,
                    "results": results,
                    "cost": {
                        n: {"median": statistics.median(v), "min": min(v), "max": max(v)}
                        for n, v in cost.items()
                    },
                    "prover_cpu_s": statistics.median(prover_cpu),
                    "memory": memory,
                    "load": os.getloadavg(),
                },
                out,
                indent=2,
            )
    for engine in auditors.values():
        engine.close()
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Issue 14: honest provers on another llama.cpp build pass the audit, where exact comparison fails.

Two Pythons, each with llama-cpp-python 0.3.36 built differently (this one native, ``--python-b`` e.g.
built for AVX2 only, see benchmarks/README.md), generate the same ``--prompts`` x ``--tokens`` jobs on
SmolLM2-135M with this repository's engine and sampler (greedy, or Gumbel-max with ``--temperature``).
Each build's ``LlamaEngine.score`` audits both builds' outputs with the default tolerance
(spec/verification.md §12): on a mixed fleet the auditor may sit on either build. It reports, in the
same run:

* exact comparison: on how many prompts build B's tokens differ from build A's, and the first differing
  positions (what replication by bit-identical outputs would reject);
* audit, for each of the four (outputs, auditor) pairs: how many outputs the auditor accepts (goal:
  100 %), the largest gap per job (median, p99, max) against the tolerance, the per-position gaps that
  are not zero (count, median, p99), and every rejection with its position, gap and rank.

The B side runs this very script in ``--generate-only`` mode under ``--python-b``, with this
repository on its ``PYTHONPATH``: it generates, audits A's outputs (handed over in a file) and its own,
and hands everything back as JSON.

    .venv/bin/python benchmarks/cross_build_bench.py --python-b /opt/avx2-venv/bin/python
    .venv/bin/python benchmarks/cross_build_bench.py --python-b ... --temperature 0.8 --seed 7 --json out.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]

# 60 varied prompts: factual, code, story, list and chat-style questions (continuations, no template).
_TOPICS = [
    "the water cycle", "black holes", "the French revolution", "photosynthesis", "binary search",
    "the immune system", "volcanoes", "the printing press", "neural networks", "the Roman empire",
    "climate change", "prime numbers",
]  # fmt: skip
_FORMS = [
    "Explain {} in simple terms:",
    "Write a short story about {}.",
    "Here are five facts about {}: 1.",
    "Q: What is the most important thing to know about {}?\nA:",
    "A Python function related to {}:\ndef",
]
PROMPTS = [form.format(topic) for topic in _TOPICS for form in _FORMS]


def _percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile of ``values`` (sorted here); 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def generate_all(
    prompts: list[str], tokens: int, temperature: float, seed: int, threads: int
) -> dict[str, object]:
    """Run every prompt with this Python's llama.cpp build; tokens per prompt and the build's features."""
    import llama_cpp

    from opengrid.core.audit import SamplingParams
    from opengrid.engines import GenerationRequest, LlamaEngine, resolve_model

    sampling = SamplingParams(temperature=temperature, seed=seed)
    outputs = []
    with LlamaEngine(resolve_model("smollm2-135m-instruct"), n_threads=threads) as engine:
        for i, prompt in enumerate(prompts):
            job_id = i.to_bytes(32, "big")
            request = GenerationRequest(prompt=prompt, max_tokens=tokens, sampling=sampling, job_id=job_id)
            generation = engine.generate(request)
            outputs.append({"tokens": list(generation.tokens), "stopped": generation.finish_reason == "stop"})
    return {"system_info": llama_cpp.llama_print_system_info().decode(), "outputs": outputs}


def audit_all(
    prompts: list[str],
    claims: dict[str, list[dict[str, object]]],
    temperature: float,
    seed: int,
    threads: int,
) -> dict[str, dict[str, object]]:
    """Audit each named set of outputs with this Python's build at the default tolerance; figures per set."""
    from opengrid.core.audit import SamplingParams, judge
    from opengrid.engines import LlamaEngine, ScoreRequest, resolve_model

    sampling = SamplingParams(temperature=temperature, seed=seed)
    figures: dict[str, dict[str, object]] = {}
    with LlamaEngine(resolve_model("smollm2-135m-instruct"), n_threads=threads) as auditor:
        for name, outputs in claims.items():
            job_gaps: list[float] = []
            nonzero: list[float] = []
            positions = 0
            rejections: list[dict[str, object]] = []
            for i, (prompt, output) in enumerate(zip(prompts, outputs, strict=True)):
                tokens = output["tokens"]
                assert isinstance(tokens, list)
                request = ScoreRequest(
                    prompt=prompt,
                    tokens=tuple(tokens),
                    stopped=bool(output["stopped"]),
                    sampling=sampling,
                    job_id=i.to_bytes(32, "big"),
                )
                evidence = auditor.score(request).evidence
                verdict = judge(evidence)
                positions += len(evidence)
                nonzero.extend(e.gap for e in evidence if e.gap > 0.0)
                job_gaps.append(verdict.max_gap)
                if not verdict.accepted:
                    assert verdict.failure is not None
                    rejections.append(
                        {
                            "prompt": i,
                            "position": verdict.first_failure,
                            "gap": verdict.failure.gap,
                            "rank": verdict.failure.rank,
                            "max_gap": verdict.max_gap,
                            "reason": verdict.reason,
                        }
                    )
            figures[name] = {
                "accepted": len(prompts) - len(rejections),
                "jobs": len(prompts),
                "max_gap_median": statistics.median(job_gaps),
                "max_gap_p99": _percentile(job_gaps, 0.99),
                "max_gap_max": max(job_gaps),
                "positions": positions,
                "nonzero_gaps": len(nonzero),
                "nonzero_gap_median": statistics.median(nonzero) if nonzero else 0.0,
                "nonzero_gap_p99": _percentile(nonzero, 0.99),
                "rejections": rejections,
            }
    return figures


def first_difference(x: list[int], y: list[int]) -> int | None:
    """The first output position where two token sequences differ; None when they are identical.

    When one is a prefix of the other (one build stopped earlier), they differ where the shorter ends.
    """
    if x == y:
        return None
    return next((k for k, (s, t) in enumerate(zip(x, y, strict=False)) if s != t), min(len(x), len(y)))


def run_b(python_b: str, args: argparse.Namespace, outputs_a: object) -> dict[str, object]:
    """Run the B side under ``python_b``: its outputs, and its audits of A's outputs and its own."""
    with tempfile.TemporaryDirectory() as scratch:
        out = pathlib.Path(scratch) / "b.json"
        claims_a = pathlib.Path(scratch) / "a.json"
        claims_a.write_text(json.dumps(outputs_a), encoding="utf-8")
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "sdk"), str(ROOT / "ledger")]),
        }
        command = [
            python_b, __file__, "--generate-only", str(out), "--audit-a", str(claims_a),
            "--prompts", str(args.prompts), "--tokens", str(args.tokens),
            "--temperature", str(args.temperature), "--seed", str(args.seed), "--threads", str(args.threads),
        ]  # fmt: skip
        subprocess.run(command, env=env, check=True, timeout=args.timeout)
        result: dict[str, object] = json.loads(out.read_text(encoding="utf-8"))
        return result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--python-b", help="the other build's python (required unless --generate-only)")
    parser.add_argument("--generate-only", metavar="OUT", help="(B side) write this build's outputs here")
    parser.add_argument(
        "--audit-a", metavar="IN", help="(B side) also audit build A's outputs from this file"
    )
    parser.add_argument("--prompts", type=int, default=len(PROMPTS))
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds the B side may take")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    if not 1 <= args.prompts <= len(PROMPTS):
        parser.error(f"--prompts must be in 1..{len(PROMPTS)}, got {args.prompts}")
    prompts = PROMPTS[: args.prompts]
    if args.generate_only:
        result = generate_all(prompts, args.tokens, args.temperature, args.seed, args.threads)
        if args.audit_a:
            outputs_b = result["outputs"]
            assert isinstance(outputs_b, list)
            outputs_a = json.loads(pathlib.Path(args.audit_a).read_text(encoding="utf-8"))
            claims = {"A": outputs_a, "B": outputs_b}
            result["audit"] = audit_all(prompts, claims, args.temperature, args.seed, args.threads)
        pathlib.Path(args.generate_only).write_text(json.dumps(result), encoding="utf-8")
        return 0
    if not args.python_b:
        parser.error("--python-b is required (the python of the second llama-cpp-python build)")

    from opengrid.core.audit import AuditPolicy

    a = generate_all(prompts, args.tokens, args.temperature, args.seed, args.threads)
    outputs_a = a["outputs"]
    assert isinstance(outputs_a, list)
    b = run_b(args.python_b, args, outputs_a)
    if a["system_info"] == b["system_info"]:
        print("warning: both builds report the same llama.cpp features; is --python-b really another build?")
    outputs_b = b["outputs"]
    assert isinstance(outputs_b, list)
    audit_a = audit_all(prompts, {"A": outputs_a, "B": outputs_b}, args.temperature, args.seed, args.threads)
    audit_b = b["audit"]
    assert isinstance(audit_b, dict)
    figures = {
        f"{o} by {auditor}": audits[o] for auditor, audits in (("A", audit_a), ("B", audit_b)) for o in "AB"
    }
    tolerance = AuditPolicy().gap_tolerance
    first_differences = [
        first_difference(x["tokens"], y["tokens"]) for x, y in zip(outputs_a, outputs_b, strict=True)
    ]
    differing = sorted(p for p in first_differences if p is not None)
    mode = "greedy" if args.temperature == 0.0 else f"Gumbel-max T={args.temperature} seed={args.seed}"
    print(
        f"SmolLM2-135M, {len(prompts)} prompts x {args.tokens} tokens, {mode}, {args.threads} threads, "
        f"tolerance {tolerance} logits"
    )
    print(f"build A: {a['system_info']}\nbuild B: {b['system_info']}")
    print(
        f"exact comparison: B differs from A on {len(differing)} of {len(prompts)} prompts; first "
        f"differing positions {differing}"
        + (f" (median {statistics.median(differing)})" if differing else "")
    )
    print(
        "| outputs by auditor | accepted by audit | largest gap per job: median / p99 / max "
        "| positions with a gap > 0: count / median / p99 |\n|---|---:|---|---|"
    )
    for name, f in figures.items():
        print(
            f"| {name} | {f['accepted']} / {f['jobs']} | "
            f"{f['max_gap_median']:.3f} / {f['max_gap_p99']:.3f} / {f['max_gap_max']:.3f} | "
            f"{f['nonzero_gaps']} of {f['positions']} / {f['nonzero_gap_median']:.3f} / "
            f"{f['nonzero_gap_p99']:.3f} |"
        )
    for name, f in figures.items():
        rejections = f["rejections"]
        assert isinstance(rejections, list)
        for r in rejections:
            print(f"rejected ({name}): prompt {r['prompt']}: {r['reason']}")
    if args.json:
        result = {
            "prompts": len(prompts),
            "tokens": args.tokens,
            "temperature": args.temperature,
            "seed": args.seed,
            "threads": args.threads,
            "tolerance": tolerance,
            "system_info": {"A": a["system_info"], "B": b["system_info"]},
            "exact_differ": len(differing),
            "first_differences": first_differences,
            "audit": figures,
            # The claims themselves, so a rejection can be re-examined without rerunning both builds.
            "outputs": {"A": outputs_a, "B": outputs_b},
        }
        pathlib.Path(args.json).write_text(json.dumps(result, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

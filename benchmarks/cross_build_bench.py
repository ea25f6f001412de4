"""Issue 14: honest provers on another llama.cpp build pass the audit, where exact comparison fails.

Two Pythons, each with llama-cpp-python 0.3.36 built differently (this one native, ``--python-b`` e.g.
built for AVX2 only, see benchmarks/README.md), generate the same ``--prompts`` x ``--tokens`` jobs on
SmolLM2-135M with this repository's engine and sampler (greedy, or Gumbel-max with ``--temperature``).
The auditor is this Python's ``LlamaEngine.score`` with the default tolerance (spec/verification.md §12).
It reports, in the same run:

* exact comparison: on how many prompts build B's tokens differ from build A's, and the first differing
  positions (what replication by bit-identical outputs would reject);
* audit: how many of A's and of B's outputs the auditor accepts (goal: 100 %), and the distribution of
  the largest gap per job (median, p99, max) against the tolerance.

The B side runs this very script in ``--generate-only`` mode under ``--python-b``, with this
repository on its ``PYTHONPATH``, and hands the tokens back as JSON.

    .venv/bin/python benchmarks/cross_build_bench.py --python-b /opt/avx2-venv/bin/python
    .venv/bin/python benchmarks/cross_build_bench.py --python-b ... --temperature 0.8 --seed 7 --json out.json
"""

from __future__ import annotations

import argparse
import json
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


def run_b(python_b: str, args: argparse.Namespace) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as scratch:
        out = pathlib.Path(scratch) / "b.json"
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "sdk"), str(ROOT / "ledger")]),
        }
        command = [
            python_b, __file__, "--generate-only", str(out), "--prompts", str(args.prompts),
            "--tokens", str(args.tokens), "--temperature", str(args.temperature), "--seed", str(args.seed),
            "--threads", str(args.threads),
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
    parser.add_argument("--prompts", type=int, default=len(PROMPTS))
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds the B side may take")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    prompts = PROMPTS[: args.prompts]
    if args.generate_only:
        result = generate_all(prompts, args.tokens, args.temperature, args.seed, args.threads)
        pathlib.Path(args.generate_only).write_text(json.dumps(result), encoding="utf-8")
        return 0
    if not args.python_b:
        parser.error("--python-b is required (the python of the second llama-cpp-python build)")

    from opengrid.core.audit import AuditPolicy, SamplingParams, judge
    from opengrid.engines import LlamaEngine, ScoreRequest, resolve_model

    a = generate_all(prompts, args.tokens, args.temperature, args.seed, args.threads)
    b = run_b(args.python_b, args)
    if a["system_info"] == b["system_info"]:
        print("warning: both builds report the same llama.cpp features; is --python-b really another build?")
    sampling = SamplingParams(temperature=args.temperature, seed=args.seed)
    tolerance = AuditPolicy().gap_tolerance
    outputs_a, outputs_b = a["outputs"], b["outputs"]
    assert isinstance(outputs_a, list) and isinstance(outputs_b, list)
    first_differences = []
    figures: dict[str, dict[str, object]] = {}
    with LlamaEngine(resolve_model("smollm2-135m-instruct"), n_threads=args.threads) as auditor:
        for name, outputs in (("A (this build)", outputs_a), ("B", outputs_b)):
            gaps, accepted = [], 0
            for i, (prompt, output) in enumerate(zip(prompts, outputs, strict=True)):
                request = ScoreRequest(
                    prompt=prompt,
                    tokens=tuple(output["tokens"]),
                    stopped=output["stopped"],
                    sampling=sampling,
                    job_id=i.to_bytes(32, "big"),
                )
                verdict = judge(auditor.score(request).evidence)
                accepted += verdict.accepted
                gaps.append(verdict.max_gap)
            gaps.sort()
            figures[name] = {
                "accepted": accepted,
                "jobs": len(prompts),
                "max_gap_median": statistics.median(gaps),
                "max_gap_p99": gaps[min(len(gaps) - 1, int(0.99 * len(gaps)))],
                "max_gap_max": gaps[-1],
            }
    for x, y in zip(outputs_a, outputs_b, strict=True):
        if x["tokens"] != y["tokens"]:
            pairs = zip(x["tokens"], y["tokens"], strict=False)
            first_differences.append(next((k for k, (s, t) in enumerate(pairs) if s != t), None))
    mode = "greedy" if sampling.greedy else f"Gumbel-max T={args.temperature} seed={args.seed}"
    print(
        f"SmolLM2-135M, {len(prompts)} prompts x {args.tokens} tokens, {mode}, tolerance {tolerance} logits"
    )
    print(f"build A: {a['system_info']}\nbuild B: {b['system_info']}")
    print(
        f"exact comparison: B differs from A on {len(first_differences)} of {len(prompts)} prompts; first "
        f"differing positions {sorted(p for p in first_differences if p is not None)}"
    )
    print("| outputs | accepted by audit | largest gap per job: median / p99 / max |\n|---|---:|---|")
    for name, f in figures.items():
        print(
            f"| {name} | {f['accepted']} / {f['jobs']} | "
            f"{f['max_gap_median']:.3f} / {f['max_gap_p99']:.3f} / {f['max_gap_max']:.3f} |"
        )
    if args.json:
        result = {
            "exact_differ": len(first_differences),
            "first_differences": first_differences,
            "audit": figures,
        }
        pathlib.Path(args.json).write_text(json.dumps(result, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Issue 14: what an audit costs — auditor compute ÷ prover compute for 128 tokens on SmolLM2-135M.

In one process, interleaved per prompt and round (so a load change on the machine hits every variant
alike), with the median of the per-prompt ratios over all rounds:

* **prover**: ``LlamaEngine.generate`` of ``--tokens`` greedy tokens (our sampler; ``--threads``);
* **score** (the default audit): ``LlamaEngine.score`` over prompt + the prover's tokens — one eval in
  batches of n_batch with logits only for the output rows, plus the per-position evidence in numpy;
* **score, N threads** for each ``--auditor-threads``: the same with an auditor engine of N threads;
* **evidence only**: the numpy part of ``score`` alone (``score_positions`` on logits already computed);
* **prefill, last row**: ``Llama.eval`` of prompt + tokens with logits for the last row only (the
  "plain prefill" of shared/notes/verification.md, 0.44 at 2 threads there);
* **prefill, logits_all**: the same on a ``Llama(logits_all=True)`` (llama-cpp-python's simple way to
  get every row's logits);
* **batched x K** (``--batch K``): K audits evaluated in one ``llama_decode`` as K sequences (one
  context with ``n_seq_max = K``), per audit: the cost of auditing several jobs at once.

Every ratio's denominator is the prover's time for the same prompt in the same round. CPU time would
hide llama.cpp's spin-waiting threads, so wall time is measured; rerun on an idle machine before quoting.

    .venv/bin/python benchmarks/audit_cost_bench.py                       # 8 prompts x 3 rounds, ~2-4 min
    .venv/bin/python benchmarks/audit_cost_bench.py --rounds 1 --prompts 4 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable

import llama_cpp
import numpy as np

from opengrid.core.audit import SamplingParams
from opengrid.core.sampling import score_positions
from opengrid.engines import GenerationRequest, LlamaEngine, ScoreRequest, resolve_model

# Continuations (no chat template), so that greedy output runs to --tokens rather than stopping early.
PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a lighthouse by the sea, there lived",
    "def quicksort(items):",
    "Vaccines work by",
    "Here is a list of animals that live in the ocean: 1.",
    "The difference between weather and climate is",
    "Dear team, thank you all for",
    "The three laws of thermodynamics are",
]


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


class BatchedAuditor:
    """K audits in one ``llama_decode``: K sequences in one batch, logits for the output rows only."""

    def __init__(self, path: str, k: int, n_ctx: int, threads: int) -> None:
        params = llama_cpp.llama_context_default_params()
        self.k = k
        self.model = llama_cpp.llama_model_load_from_file(
            path.encode(), llama_cpp.llama_model_default_params()
        )
        params.n_ctx = n_ctx * k
        params.n_batch = params.n_ubatch = 512 * k
        params.n_seq_max = k
        params.n_threads = params.n_threads_batch = threads
        params.type_k = params.type_v = llama_cpp.GGML_TYPE_F16
        self.ctx = llama_cpp.llama_init_from_model(self.model, params)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(self.model))
        self.batch = llama_cpp.llama_batch_init(512 * k, 0, 1)

    def score(self, jobs: list[tuple[list[int], list[int]]]) -> list[np.ndarray]:
        """jobs: (prompt tokens, claimed tokens); returns each job's output-row logits."""
        memory = llama_cpp.llama_get_memory(self.ctx)
        llama_cpp.llama_memory_clear(memory, True)
        b = self.batch
        n = 0
        rows: list[list[tuple[int, int]]] = []
        for seq, (prompt, claimed) in enumerate(jobs):
            wanted = []
            sequence = prompt + claimed
            for pos, token in enumerate(sequence):
                b.token[n] = token
                b.pos[n] = pos
                b.n_seq_id[n] = 1
                b.seq_id[n][0] = seq
                want = pos >= len(prompt) - 1 and pos < len(sequence) - 1
                b.logits[n] = want
                if want:
                    wanted.append((n, pos - len(prompt) + 1))
                n += 1
            rows.append(wanted)
        b.n_tokens = n
        if llama_cpp.llama_decode(self.ctx, b) != 0:
            raise RuntimeError("llama_decode failed")
        out = []
        for wanted in rows:
            logits = np.empty((len(wanted), self.n_vocab), dtype=np.float32)
            for i, row in wanted:
                logits[row] = np.ctypeslib.as_array(
                    llama_cpp.llama_get_logits_ith(self.ctx, i), shape=(self.n_vocab,)
                )
            out.append(logits)
        return out

    def close(self) -> None:
        llama_cpp.llama_batch_free(self.batch)
        llama_cpp.llama_free(self.ctx)
        llama_cpp.llama_model_free(self.model)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--prompts", type=int, default=len(PROMPTS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="prover threads (and the default auditor's)")
    parser.add_argument("--auditor-threads", type=int, nargs="*", default=[1])
    parser.add_argument(
        "--batch", type=int, default=4, help="audits per eval in the batched variant; 0: skip"
    )
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()

    model = resolve_model("smollm2-135m-instruct")
    prompts = PROMPTS[: args.prompts]
    prover = LlamaEngine(model, n_threads=args.threads)
    auditors = {n: LlamaEngine(model, n_threads=n) for n in args.auditor_threads if n != args.threads}
    plain = llama_cpp.Llama(
        str(model.path),
        n_ctx=2048,
        n_batch=512,
        n_ubatch=512,
        n_threads=args.threads,
        n_threads_batch=args.threads,
        verbose=False,
    )
    full = llama_cpp.Llama(
        str(model.path),
        n_ctx=2048,
        n_batch=512,
        n_ubatch=512,
        n_threads=args.threads,
        n_threads_batch=args.threads,
        logits_all=True,
        verbose=False,
    )
    batched = BatchedAuditor(str(model.path), args.batch, 2048, args.threads) if args.batch > 1 else None
    greedy = SamplingParams()
    claims = {}
    for prompt in prompts:  # warm-up and the claims every round audits
        generation = prover.generate(GenerationRequest(prompt=prompt, max_tokens=args.tokens))
        claims[prompt] = (prover.tokenize(prompt), generation.tokens, generation.finish_reason == "stop")

    ratios: dict[str, list[float]] = {}
    prover_s: list[float] = []

    def record(name: str, seconds: float, base: float) -> None:
        ratios.setdefault(name, []).append(seconds / base)

    def measure(prompt: str) -> None:
        prompt_tokens, claimed, stopped = claims[prompt]
        base = timed(lambda: prover.generate(GenerationRequest(prompt=prompt, max_tokens=args.tokens)))
        prover_s.append(base)
        request = ScoreRequest(prompt=prompt, tokens=claimed, stopped=stopped)
        record(f"score, {args.threads} threads", timed(lambda: prover.score(request)), base)
        for n, auditor in auditors.items():
            record(f"score, {n} threads", timed(lambda: auditor.score(request)), base)  # noqa: B023
        sequence = list(prompt_tokens) + list(claimed)

        def prefill(llm: llama_cpp.Llama) -> None:
            llm.reset()  # type: ignore[no-untyped-call]  # llama-cpp-python leaves reset() unannotated
            llm.eval(sequence)

        record("prefill, last row", timed(lambda: prefill(plain)), base)
        record("prefill, logits_all", timed(lambda: prefill(full)), base)
        first = len(prompt_tokens) - 1
        rows = np.array(full.scores[first : first + len(claimed)], dtype=np.float32)
        record(
            "evidence only (numpy)", timed(lambda: score_positions(rows, claimed, greedy, b"j" * 32)), base
        )
        if batched is not None:
            jobs = [(list(prompt_tokens), list(claimed))] * args.batch
            seconds = timed(
                lambda: [score_positions(r, claimed, greedy, b"j" * 32) for r in batched.score(jobs)]
            )
            record(f"batched x{args.batch}, per audit", seconds / args.batch, base)

    for round_ in range(args.rounds):
        for prompt in prompts:
            measure(prompt)
        so_far = ", ".join(f"{name} {statistics.median(v):.3f}" for name, v in ratios.items())
        print(f"after round {round_ + 1}: {so_far}", flush=True)

    figures = {name: statistics.median(values) for name, values in ratios.items()}
    print(
        f"SmolLM2-135M Q4_1, {args.tokens} tokens, {len(prompts)} prompts x {args.rounds} rounds, "
        f"prover {args.threads} threads: median prover time {statistics.median(prover_s):.3f} s; "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    print("| auditor variant | auditor ÷ prover (median) |\n|---|---:|")
    for name, value in figures.items():
        print(f"| {name} | {value:.3f} |")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump({"prover_s": statistics.median(prover_s), "ratios": figures}, out, indent=2)
    for engine in (prover, *auditors.values()):
        engine.close()
    plain.close()
    full.close()
    if batched is not None:
        batched.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

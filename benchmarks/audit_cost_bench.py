"""Issue 14: what an audit costs — auditor compute ÷ prover compute for 128 tokens on SmolLM2-135M.

In one process, interleaved per prompt and round (so a load change on the machine hits every variant
alike), with the median (and range) of the per-prompt ratios over all rounds, in **wall time** and in
**CPU time** (``time.process_time``: every thread of this process, llama.cpp's spin-waiting included,
which is the compute a volunteer gives):

* **prover**: ``LlamaEngine.generate`` of ``--tokens`` greedy tokens (our sampler; ``--threads``);
* **score** (the default audit): ``LlamaEngine.score`` over prompt + the prover's tokens — one eval in
  batches of n_batch with logits only for the output rows, plus the per-position evidence in numpy;
* **score, N threads** for each ``--auditor-threads``: the same with an auditor engine of N threads;
* **score on a scoring copy** for each ``--copies`` type: ``LlamaEngine.score`` with a bf16/q8_0/f16/f32
  scoring copy of the model (``opengrid.engines.scoring_copy``, spec/verification.md §12.5: Q4_1 has no
  batched CPU kernel, the copy's formats do), made once in ``--cache-dir`` (default: a temporary one);
* **score, window W** for each ``--window``: a partial audit (spec/verification.md §13.5) scoring output
  positions ``0 .. W-1``, whose forward pass stops there;
* **evidence only**: the numpy part of ``score`` alone (``score_positions`` on logits already computed);
* **prefill, last row**: ``Llama.eval`` of prompt + tokens with logits for the last row only (the
  "plain prefill" of shared/notes/verification.md: no output projection for the other rows);
* **prefill, logits_all**: the same on a ``Llama(logits_all=True)`` (llama-cpp-python's simple way to
  get every row's logits);
* **batched x K** (``--batch K``): K audits in one ``llama_decode`` as K sequences of one context
  (``n_seq_max = K``, a KV cache per sequence: ``kv_unified`` off), per audit: the cost of auditing
  several queued jobs at once. The script checks first that its evidence is **identical** to
  ``LlamaEngine.score``'s (one unified KV cache for the K sequences moved logits by up to 1.3 here);
* **flash attention** (``--flash``): the output-row eval with flash attention on, per audit, and how far
  its evidence moves from the contract's (flash attention is outside the contract: it changes logits).

Every ratio's denominator is the prover's time for the same prompt in the same round. Rerun on an idle
machine before quoting a wall-time figure; the CPU-time ratio is steadier under load.

    .venv/bin/python benchmarks/audit_cost_bench.py                       # 8 prompts x 3 rounds
    .venv/bin/python benchmarks/audit_cost_bench.py --threads 1 --auditor-threads --window 32 64 \
        --rounds 2 --prompts 4 --json out.json
    .venv/bin/python benchmarks/audit_cost_bench.py --threads 1 --auditor-threads --copies bf16 q8_0 f16 f32 \
        --batch 0 --rounds 2 --prompts 4
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

import llama_cpp
import numpy as np

from opengrid.core.audit import SamplingParams
from opengrid.core.sampling import score_positions
from opengrid.engines import GenerationRequest, LlamaEngine, ScoreRequest, resolve_model
from opengrid.engines.scoring_copy import SCORING_COPY_TYPES, make_scoring_copy

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


def timed(action: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of ``action()``."""
    wall, cpu = time.perf_counter(), time.process_time()
    action()
    return time.perf_counter() - wall, time.process_time() - cpu


class RowScorer:
    """K audits in one ``llama_decode``: K sequences, one KV cache each, logits for the output rows only."""

    def __init__(self, path: str, k: int, n_ctx: int, threads: int, *, flash: bool = False) -> None:
        params = llama_cpp.llama_context_default_params()
        self.k = k
        self.model = llama_cpp.llama_model_load_from_file(
            path.encode(), llama_cpp.llama_model_default_params()
        )
        params.n_ctx = n_ctx * k
        params.n_batch = params.n_ubatch = 512 * k
        params.n_seq_max = k
        params.kv_unified = False  # one cache per sequence: the same arithmetic as one audit alone
        params.flash_attn_type = 1 if flash else 0  # the default (-1) lets llama.cpp choose
        params.n_threads = params.n_threads_batch = threads
        params.type_k = params.type_v = llama_cpp.GGML_TYPE_F16
        self.ctx = llama_cpp.llama_init_from_model(self.model, params)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(self.model))
        self.batch = llama_cpp.llama_batch_init(512 * k, 0, 1)

    def score(self, jobs: list[tuple[list[int], list[int]]]) -> list[np.ndarray]:
        """jobs: (prompt tokens, claimed tokens), at most K; returns each job's output-row logits."""
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


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


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
        "--window", type=int, nargs="*", default=[], help="also score only output positions 0..W-1"
    )
    parser.add_argument(
        "--batch", type=int, default=4, help="audits per eval in the batched variant; 0: skip"
    )
    parser.add_argument("--flash", action="store_true", help="also an eval with flash attention on")
    parser.add_argument(
        "--copies",
        nargs="*",
        default=[],
        choices=SCORING_COPY_TYPES,
        help="also score on these scoring copies",
    )
    parser.add_argument(
        "--cache-dir", type=pathlib.Path, help="where scoring copies are made (default: a temp dir)"
    )
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()

    model = resolve_model("smollm2-135m-instruct")
    prompts = PROMPTS[: args.prompts]
    prover = LlamaEngine(model, n_threads=args.threads)
    auditors = {n: LlamaEngine(model, n_threads=n) for n in args.auditor_threads if n != args.threads}
    scratch = tempfile.TemporaryDirectory(prefix="audit-cost-bench-")
    cache = args.cache_dir if args.cache_dir is not None else pathlib.Path(scratch.name)
    copies = {
        kind: LlamaEngine(
            model, n_threads=args.threads, scoring_copy=make_scoring_copy(model, kind, cache_dir=cache)
        )
        for kind in args.copies
    }
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
    batched = RowScorer(str(model.path), args.batch, 2048, args.threads) if args.batch > 1 else None
    flash = RowScorer(str(model.path), 1, 2048, args.threads, flash=True) if args.flash else None
    greedy = SamplingParams()
    claims = {}
    for prompt in prompts:  # warm-up and the claims every round audits
        generation = prover.generate(GenerationRequest(prompt=prompt, max_tokens=args.tokens))
        claims[prompt] = (prover.tokenize(prompt), generation.tokens, generation.finish_reason == "stop")

    # The batched scorer must give the product's evidence exactly, or its cost would be of another audit.
    flash_moves: list[float] = []
    for prompt, (prompt_tokens, claimed, _stopped) in claims.items():
        want = prover.score(ScoreRequest(prompt=prompt, tokens=claimed, stopped=False)).evidence
        job = (list(prompt_tokens), list(claimed))
        if batched is not None:
            for logits in batched.score([job] * args.batch):
                got = score_positions(logits, claimed, greedy, b"")
                if tuple(got) != want:
                    raise AssertionError(f"batched evidence differs from LlamaEngine.score's ({prompt!r})")
        if flash is not None:
            got = score_positions(flash.score([job])[0], claimed, greedy, b"")
            flash_moves.append(max(abs(a.gap - b.gap) for a, b in zip(got, want, strict=True)))

    wall: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    prover_wall: list[float] = []
    prover_cpu: list[float] = []

    def record(name: str, seconds: tuple[float, float], base: tuple[float, float], k: int = 1) -> None:
        wall.setdefault(name, []).append(seconds[0] / base[0] / k)
        cpu.setdefault(name, []).append(seconds[1] / base[1] / k)

    def measure(prompt: str) -> None:
        prompt_tokens, claimed, stopped = claims[prompt]
        base = timed(lambda: prover.generate(GenerationRequest(prompt=prompt, max_tokens=args.tokens)))
        prover_wall.append(base[0])
        prover_cpu.append(base[1])
        request = ScoreRequest(prompt=prompt, tokens=claimed, stopped=stopped)
        record(f"score, {args.threads} threads", timed(lambda: prover.score(request)), base)
        for n, auditor in auditors.items():
            record(f"score, {n} threads", timed(lambda: auditor.score(request)), base)  # noqa: B023
        for kind, engine in copies.items():
            record(f"score on a {kind} scoring copy", timed(lambda: engine.score(request)), base)  # noqa: B023
        for w in args.window:
            window = ScoreRequest(prompt=prompt, tokens=claimed, stopped=stopped, end=w)
            record(f"score, window {w}", timed(lambda: prover.score(window)), base)  # noqa: B023
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
        job = (list(prompt_tokens), list(claimed))
        if batched is not None:
            seconds = timed(
                lambda: [
                    score_positions(r, claimed, greedy, b"j" * 32) for r in batched.score([job] * args.batch)
                ]
            )
            record(f"batched x{args.batch}, per audit", seconds, base, args.batch)
        if flash is not None:
            seconds = timed(lambda: score_positions(flash.score([job])[0], claimed, greedy, b"j" * 32))
            record("flash attention (outside the contract)", seconds, base)

    loads = [os.getloadavg()[0]]
    for round_ in range(args.rounds):
        for prompt in prompts:
            measure(prompt)
        loads.append(os.getloadavg()[0])
        so_far = ", ".join(f"{name} {statistics.median(v):.3f}" for name, v in cpu.items())
        print(f"after round {round_ + 1} (CPU-time ratios): {so_far}", flush=True)

    figures = {name: {"wall": spread(wall[name]), "cpu": spread(cpu[name])} for name in wall}
    print(
        f"SmolLM2-135M Q4_1, {args.tokens} tokens, {len(prompts)} prompts x {args.rounds} rounds, "
        f"prover {args.threads} threads: median prover time {statistics.median(prover_wall):.3f} s wall, "
        f"{statistics.median(prover_cpu):.3f} s CPU; 1-min load average "
        + " / ".join(f"{x:.1f}" for x in loads)
        + " (start / after each round)"
    )
    if flash_moves:
        print(f"flash attention moves the largest gap of a job by up to {max(flash_moves):.3f} logits")
    print("| auditor variant | auditor ÷ prover, wall: median (range) | CPU: median (range) |")
    print("|---|---:|---:|")
    for name, f in figures.items():
        w, c = f["wall"], f["cpu"]
        print(
            f"| {name} | {w['median']:.3f} ({w['min']:.2f}-{w['max']:.2f}) "
            f"| {c['median']:.3f} ({c['min']:.2f}-{c['max']:.2f}) |"
        )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            document = {
                "prover_s": {"wall": spread(prover_wall), "cpu": spread(prover_cpu)},
                "load_average": loads,
                "flash_gap_move_max": max(flash_moves) if flash_moves else None,
                "ratios": figures,
            }
            json.dump(document, out, indent=2)
    for engine in (prover, *auditors.values(), *copies.values()):
        engine.close()
    scratch.cleanup()
    plain.close()
    full.close()
    for scorer in (batched, flash):
        if scorer is not None:
            scorer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

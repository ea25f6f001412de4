"""Audit by re-scoring on real llama.cpp (spec/verification.md §11-12): honest engines whose arithmetic
differs are accepted where exact comparison fails; lazy, copied, edited, swapped-model and truncated
claims are rejected; seeded sampling is reproducible and a sample under another seed or temperature fails.

Calibration on the tiny model (2 layers, random weights; 30 prompts x 40 tokens, measured when these
tests were written): honest gaps are 0.0 for every engine configuration (its n_batch = 1 and f32-KV
engines produce the same tokens as the default one, so the tiny model cannot show honest heterogeneity:
that test runs on SmolLM2 below); the smallest largest-gap of a cheating claim was 4.6 logits (another
prompt's output; medians: another prompt's output 13.5, lazy 39, one token in 20 changed 29, model swap
37, truncated + stop 20). Near-duplicate prompts (one word repeated) have near-identical outputs, down to
0.43: the prompts here are varied. These tests assert a rejection with a largest gap above twice the
default tolerance of 0.5.
"""

from __future__ import annotations

import hashlib
import pathlib
import random
from collections.abc import Sequence

import pytest

from opengrid.core.audit import AuditPolicy, AuditVerdict, SamplingParams, judge
from opengrid.engines import (
    GenerationRequest,
    LlamaEngine,
    ModelInfo,
    ScoreRequest,
    ScoringEngine,
    resolve_model,
    write_tiny_gguf,
)
from opengrid.errors import EngineError, VerificationError

JOB = bytes(range(32))
WORDS = "alpha beta gamma delta river stone light cloud seven north garden paper".split()
_RNG = random.Random(0)
PROMPTS = [" ".join(_RNG.choice(WORDS) for _ in range(2 + i % 9)) for i in range(12)]
N = 40


def audit(
    auditor: LlamaEngine,
    prompt: str,
    tokens: Sequence[int],
    *,
    stopped: bool = False,
    sampling: SamplingParams | None = None,
) -> AuditVerdict:
    request = ScoreRequest(
        prompt=prompt,
        tokens=tuple(tokens),
        stopped=stopped,
        sampling=sampling or SamplingParams(),
        job_id=JOB,
    )
    return judge(auditor.score(request).evidence)


@pytest.fixture
def auditor(tiny_info: ModelInfo) -> LlamaEngine:
    return LlamaEngine(tiny_info, n_threads=1)


def generate(engine: LlamaEngine, prompt: str, sampling: SamplingParams | None = None) -> tuple[int, ...]:
    request = GenerationRequest(
        prompt=prompt, max_tokens=N, sampling=sampling or SamplingParams(), job_id=JOB
    )
    return engine.generate(request).tokens


def test_llama_engine_scores(auditor: LlamaEngine) -> None:
    assert isinstance(auditor, ScoringEngine)


def test_honest_outputs_pass_with_no_gap_on_the_tiny_model(
    tiny_info: ModelInfo, auditor: LlamaEngine
) -> None:
    for config in [{}, {"n_batch": 1}, {"kv_cache_type": "f32"}]:
        with LlamaEngine(tiny_info, n_threads=1, **config) as prover:  # type: ignore[arg-type]
            for prompt in PROMPTS:
                verdict = audit(auditor, prompt, generate(prover, prompt))
                assert verdict.accepted and verdict.positions == N, (config, prompt, verdict)


def test_scoring_equals_per_token_logits_and_reports_every_position(auditor: LlamaEngine) -> None:
    tokens = generate(auditor, PROMPTS[0])
    scoring = auditor.score(ScoreRequest(prompt=PROMPTS[0], tokens=tokens, stopped=True))
    assert len(scoring.evidence) == N + 1  # the stop position is scored too
    assert [e.token for e in scoring.evidence[:N]] == list(tokens)
    assert all(e.gap == 0.0 and e.rank == 0 for e in scoring.evidence[:N])
    assert scoring.prompt_tokens == len(auditor.tokenize(PROMPTS[0]))


def test_cheats_are_rejected(tiny_info: ModelInfo, auditor: LlamaEngine, tmp_path: pathlib.Path) -> None:
    honest = {p: generate(auditor, p) for p in PROMPTS}
    rng = random.Random(7)
    lazy = auditor.tokenize(" the quick brown fox jumps over the lazy dog")[1:]
    swapped_path = write_tiny_gguf(tmp_path / "tiny-seed1.gguf", seed=1)
    swapped_info = ModelInfo(
        "tiny-seed1", swapped_path, hashlib.sha256(swapped_path.read_bytes()).hexdigest()
    )
    with LlamaEngine(swapped_info, n_threads=1) as swapped:
        swaps = {p: generate(swapped, p) for p in PROMPTS}
    for i, prompt in enumerate(PROMPTS):
        edited = list(honest[prompt])
        position = rng.randrange(N)
        edited[position] = (edited[position] + 1 + rng.randrange(100)) % auditor.n_vocab
        claims = {
            "lazy fixed phrase": (lazy, False),
            "another prompt's output": (honest[PROMPTS[(i + 1) % len(PROMPTS)]], False),
            "one token in 20 changed": (edited, False),
            "model swap (tiny, seed 1)": (swaps[prompt], False),
            "truncated at half, claimed stop": (honest[prompt][: N // 2], True),
        }
        for name, (tokens, stopped) in claims.items():
            verdict = audit(auditor, prompt, tokens, stopped=stopped)
            assert not verdict.accepted, (name, prompt)
            assert verdict.max_gap > 2 * AuditPolicy().gap_tolerance, (name, prompt, verdict.max_gap)
        assert audit(auditor, prompt, edited).first_failure == position


def test_seeded_sampling_is_reproducible_and_audited(auditor: LlamaEngine, tiny_info: ModelInfo) -> None:
    sampling = SamplingParams(temperature=0.8, top_p=0.95, seed=42)
    with LlamaEngine(tiny_info, n_threads=2, n_ctx=512) as other:
        for prompt in PROMPTS[:6]:
            sample = generate(auditor, prompt, sampling)
            assert generate(auditor, prompt, sampling) == sample
            assert generate(other, prompt, sampling) == sample
            assert sample != generate(auditor, prompt)  # not the greedy output
            assert audit(auditor, prompt, sample, sampling=sampling).accepted
    # A sample made with another seed or temperature, or greedy output, fails the audit of this job.
    rejected = {"seed 43": 0, "temperature 1.6": 0, "greedy": 0}
    for prompt in PROMPTS:
        claims = {
            "seed 43": generate(auditor, prompt, SamplingParams(temperature=0.8, top_p=0.95, seed=43)),
            "temperature 1.6": generate(
                auditor, prompt, SamplingParams(temperature=1.6, top_p=0.95, seed=42)
            ),
            "greedy": generate(auditor, prompt),
        }
        for name, tokens in claims.items():
            rejected[name] += not audit(auditor, prompt, tokens, sampling=sampling).accepted
    assert rejected == dict.fromkeys(rejected, len(PROMPTS))


def test_malformed_claims_are_verification_errors(auditor: LlamaEngine) -> None:
    with pytest.raises(VerificationError, match="outside the vocabulary"):
        auditor.score(ScoreRequest(prompt="x", tokens=(1, 10**6), stopped=False))
    with pytest.raises(VerificationError, match="nothing to score"):
        auditor.score(ScoreRequest(prompt="x", tokens=(), stopped=False))
    assert len(auditor.score(ScoreRequest(prompt="x", tokens=(), stopped=True)).evidence) == 1
    with LlamaEngine(auditor.model, n_ctx=16) as small, pytest.raises(EngineError, match="context window"):
        small.score(ScoreRequest(prompt="x", tokens=(5,) * 20, stopped=False))


def test_a_partial_audit_scores_its_window_only_and_its_pass_stops_there(auditor: LlamaEngine) -> None:
    prompt = PROMPTS[0]
    tokens = generate(auditor, prompt)

    def score(claim: Sequence[int], end: int, stopped: bool = False) -> list[float]:
        request = ScoreRequest(prompt=prompt, tokens=tuple(claim), stopped=stopped, job_id=JOB, end=end)
        return [e.gap for e in auditor.score(request).evidence]

    full = score(tokens, 0, stopped=True)
    assert len(score(tokens, 10, stopped=True)) == 10
    assert score(tokens, 10, stopped=True) == pytest.approx(full[:10], abs=0.05)
    assert len(score(tokens, N, stopped=True)) == N  # the stop position only when the window reaches it
    assert len(score(tokens, N + 1, stopped=True)) == N + 1
    assert len(score(tokens, N + 50, stopped=True)) == N + 1
    # A changed token after the window goes unseen; one inside it is caught.
    other = next(t for t in auditor.tokenize(" the quick brown fox")[1:] if t != tokens[30])
    edited = (*tokens[:30], other, *tokens[31:])
    assert max(score(edited, 30)) <= 0.5
    assert max(score(edited, 31)) > 1.0
    # The forward pass stops at the window's end: a claim too long for the context is scored on a window
    # that fits.
    with LlamaEngine(auditor.model, n_ctx=16) as small:
        request = ScoreRequest(prompt="x", tokens=(5,) * 20, stopped=False, end=5)
        assert len(small.score(request).evidence) == 5


def test_scoring_leaves_generation_unchanged(auditor: LlamaEngine) -> None:
    before = generate(auditor, PROMPTS[1])
    auditor.score(ScoreRequest(prompt=PROMPTS[2], tokens=before, stopped=False))
    assert generate(auditor, PROMPTS[1]) == before


# Prompts on which the f32-KV engine's greedy output parts from the default's early (measured positions
# 5, 26, 15, 18, 4, 4 of 64 tokens), so 32 tokens show the difference at a sixth of the cost.
SMOL_PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a small village,",
    "Q: Why is the sky blue?\nA:",
    "import numpy as np\n",
    "The history of Rome began",
    "The weather today is",
]


@pytest.mark.slow
def test_honest_heterogeneity_exact_comparison_fails_and_the_audit_accepts_all() -> None:
    """SmolLM2-135M: an f32-KV-cache prover rounds differently from the default (f16) auditor.

    Measured when written (16 prompts x 64 tokens): the f32 engine's greedy output differs from the
    default's on 9 of 16 prompts (first differing positions 4-63), n_batch = 1 on 2 of 16; the audit's
    largest gap was 0.34 logits, and 0.39 for Gumbel-max samples at T = 0.8. On the six prompts below (32
    tokens) all six differ (first at positions 5, 26, 15, 18, 4, 4) and all six are accepted (largest
    gaps 0.02-0.34); the assertion asks for three, as other CPUs may round otherwise. One thread each: on a
    loaded 2-core machine llama.cpp's spin-waiting threads slow each other down many times over.
    """
    try:
        model = resolve_model("smollm2-135m-instruct")
    except Exception as exc:  # not installed: the package ships with setup
        pytest.skip(f"SmolLM2 is not installed: {exc}")
    differ = 0
    with (
        LlamaEngine(model, n_threads=1) as auditor,
        LlamaEngine(model, n_threads=1, kv_cache_type="f32") as prover,
    ):
        for prompt in SMOL_PROMPTS:
            request = GenerationRequest(prompt=prompt, max_tokens=32)
            claim, own = prover.generate(request), auditor.generate(request)
            differ += claim.tokens != own.tokens
            scoring = auditor.score(
                ScoreRequest(prompt=prompt, tokens=claim.tokens, stopped=claim.finish_reason == "stop")
            )
            verdict = judge(scoring.evidence)
            assert verdict.accepted, (prompt, verdict)
    assert differ >= 3, f"exact comparison failed on only {differ} of {len(SMOL_PROMPTS)} prompts"


def test_a_prompt_longer_than_one_batch_is_scored_row_for_row(tiny_info: ModelInfo) -> None:
    # 600+ prompt tokens: the eval runs in two batches of 512; a misplaced row would show a nonzero rank.
    prompt = " ".join(WORDS * 9)  # ~650 tokens of the character-level vocabulary
    with LlamaEngine(tiny_info, n_threads=1, n_ctx=1024) as engine:
        assert 600 < len(engine.tokenize(prompt)) < 1024 - N
        tokens = generate(engine, prompt)
        evidence = engine.score(ScoreRequest(prompt=prompt, tokens=tokens, stopped=False)).evidence
    assert [e.rank for e in evidence] == [0] * N

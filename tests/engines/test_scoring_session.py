"""Chunked audits on real llama.cpp (spec/verification.md §14.2): a claim scored chunk by chunk in a
``ScoringSession`` (KV cache kept between chunks) gives the same per-position evidence, value for value,
as one ``LlamaEngine.score`` of the whole claim on the same build; a cheating chunk fails at its own
positions; pieces that are not what the tokens say are caught; the bounds hold."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from opengrid.core.audit import AuditPolicy, SamplingParams, judge
from opengrid.engines import GenerationRequest, LlamaEngine, ModelInfo, ScoreRequest
from opengrid.engines.scoring_session import ScoringSession
from opengrid.errors import BadRequestError, EngineError, VerificationError

JOB = bytes(range(16))
PROMPTS = ["alpha beta gamma", "river stone light cloud seven", "north"]
N = 48


def generate(
    engine: LlamaEngine, prompt: str, sampling: SamplingParams
) -> tuple[tuple[int, ...], list[str], str]:
    pieces: list[str] = []
    request = GenerationRequest(prompt=prompt, max_tokens=N, sampling=sampling, job_id=JOB)
    generation = engine.generate_streaming(request, None, lambda token, piece: pieces.append(piece))
    return generation.tokens, pieces, generation.finish_reason


def chunks(n: int, sizes: Sequence[int]) -> list[tuple[int, int]]:
    """(start, end) of chunks of the given sizes (the last size repeats) covering ``0 .. n``."""
    out, start, i = [], 0, 0
    while start < n:
        size = sizes[min(i, len(sizes) - 1)]
        out.append((start, min(n, start + size)))
        start, i = start + size, i + 1
    return out


@pytest.mark.parametrize(
    "sampling",
    [
        SamplingParams(),
        SamplingParams(temperature=0.8, seed=7),
        SamplingParams(temperature=0.7, top_k=5, seed=3),
    ],
    ids=["greedy", "gumbel", "gumbel-top-k"],
)
@pytest.mark.parametrize(
    "sizes",
    [(1,), (1, 2, 4, 8), (4, 16), (2, 7, 31), (1, 1, 3)],
    ids=["1", "1-2-4-8", "4-16", "2-7-31", "1-1-3"],
)
def test_chunked_evidence_equals_one_shot_score(
    tiny_info: ModelInfo, sampling: SamplingParams, sizes: tuple[int, ...]
) -> None:
    with LlamaEngine(tiny_info, n_threads=1) as engine:
        for prompt in PROMPTS:
            tokens, pieces, finish = generate(engine, prompt, sampling)
            stopped = finish == "stop"
            whole = engine.score(
                ScoreRequest(prompt=prompt, tokens=tokens, stopped=stopped, sampling=sampling, job_id=JOB)
            )
            session = ScoringSession(engine, prompt=prompt, sampling=sampling, job_id=JOB, max_tokens=N)
            try:
                for start, end in chunks(len(tokens), sizes):
                    scored = session.score_chunk(start, tokens[start:end], pieces[start:end])
                    assert scored.problem == ""
                    assert len(scored.evidence) == end - start
                if stopped:
                    session.score_stop()
            finally:
                session.close()
            assert tuple(session.evidence) == whole.evidence  # bit for bit, every field
            assert judge(session.evidence).accepted


def test_a_generation_between_chunks_does_not_disturb_the_session(tiny_info: ModelInfo) -> None:
    """The session has its own context: the engine may generate other jobs between two chunks."""
    sampling = SamplingParams()
    with LlamaEngine(tiny_info, n_threads=1) as engine:
        tokens, pieces, _ = generate(engine, PROMPTS[0], sampling)
        whole = engine.score(ScoreRequest(prompt=PROMPTS[0], tokens=tokens, stopped=False, job_id=JOB))
        session = ScoringSession(engine, prompt=PROMPTS[0], sampling=sampling, job_id=JOB, max_tokens=N)
        try:
            session.score_chunk(0, tokens[:10], pieces[:10])
            generate(engine, PROMPTS[1], sampling)  # another job on the engine's own context
            engine.score(ScoreRequest(prompt=PROMPTS[2], tokens=tokens[:5], stopped=False, job_id=JOB))
            session.score_chunk(10, tokens[10:], pieces[10:])
        finally:
            session.close()
        assert tuple(session.evidence) == whole.evidence[: len(tokens)]


def test_a_closed_sessions_context_is_reused_cleared_and_scores_the_same(tiny_info: ModelInfo) -> None:
    """A session's context outlives it as the engine's one spare (creating one is the costly part of
    opening a session); the next session on it, its cache cleared, scores what a fresh one would."""
    sampling = SamplingParams()
    with LlamaEngine(tiny_info, n_threads=1) as engine:
        tokens, pieces, _ = generate(engine, PROMPTS[1], sampling)
        whole = engine.score(ScoreRequest(prompt=PROMPTS[1], tokens=tokens, stopped=False, job_id=JOB))
        first = ScoringSession(engine, prompt=PROMPTS[0], sampling=sampling, job_id=JOB, max_tokens=N)
        first.score_chunk(0, tokens[:20])  # fills its cache with another prompt and claim
        context = first._ctx
        first.close()
        assert engine._spare is not None and engine._spare[1] is context
        second = ScoringSession(engine, prompt=PROMPTS[1], sampling=sampling, job_id=JOB, max_tokens=N)
        try:
            assert second._ctx is context and engine._spare is None, "the spare was taken"
            other = ScoringSession(engine, prompt=PROMPTS[1], sampling=sampling, job_id=JOB, max_tokens=N)
            assert other._ctx is not context  # no spare left: a new context
            other.close()
            assert engine._spare is not None and engine._spare[1] is not context
            second.score_chunk(0, tokens[:1], pieces[:1])
            second.score_chunk(1, tokens[1:], pieces[1:])
        finally:
            second.close()  # one spare already: this one is freed
        assert engine._spare is not None and engine._spare[1] is not context
        assert tuple(second.evidence) == whole.evidence[: len(tokens)]
    assert engine._spare is None, "freed with the engine"


def test_a_changed_token_fails_in_its_own_chunk(tiny_info: ModelInfo) -> None:
    sampling = SamplingParams()
    with LlamaEngine(tiny_info, n_threads=1) as engine:
        tokens, pieces, _ = generate(engine, PROMPTS[1], sampling)
        lie = list(tokens)
        lie[20] = (lie[20] + 17) % engine.n_vocab
        session = ScoringSession(engine, prompt=PROMPTS[1], sampling=sampling, job_id=JOB, max_tokens=N)
        try:
            first = session.score_chunk(0, lie[:16], pieces[:16])
            assert judge(first.evidence).accepted
            second = session.score_chunk(16, lie[16:32])
            verdict = judge(second.evidence)
            assert not verdict.accepted
            assert verdict.first_failure == 4  # position 20 of the claim, the 5th of this chunk
        finally:
            session.close()


def test_pieces_that_are_not_the_tokens_text_are_a_problem(tiny_info: ModelInfo) -> None:
    sampling = SamplingParams()
    with LlamaEngine(tiny_info, n_threads=1) as engine:
        tokens, pieces, _ = generate(engine, PROMPTS[0], sampling)
        forged = list(pieces[:8])
        forged[3] = "forged"
        session = ScoringSession(engine, prompt=PROMPTS[0], sampling=sampling, job_id=JOB, max_tokens=N)
        try:
            scored = session.score_chunk(0, tokens[:8], forged)
        finally:
            session.close()
        assert "position 3" in scored.problem and "forged" in scored.problem


def test_bounds(tiny_info: ModelInfo) -> None:
    sampling = SamplingParams()
    with LlamaEngine(tiny_info, n_threads=1, n_ctx=64) as engine:
        with pytest.raises(BadRequestError, match="context window"):
            ScoringSession(engine, prompt=PROMPTS[0], sampling=sampling, job_id=JOB, max_tokens=200)
        session = ScoringSession(engine, prompt=PROMPTS[0], sampling=sampling, job_id=JOB, max_tokens=8)
        try:
            with pytest.raises(EngineError, match="offset 3"):
                session.score_chunk(3, [1, 2])
            with pytest.raises(EngineError, match="max_tokens of 8"):
                session.score_chunk(0, list(range(1, 10)))
            with pytest.raises(VerificationError, match="outside the vocabulary"):
                session.score_chunk(0, [engine.n_vocab + 5])
            assert session.n_scored == 0
            session.score_chunk(0, [1, 2])
            assert session.n_scored == 2
        finally:
            session.close()
        session.close()  # idempotent
        with pytest.raises(EngineError, match="closed"):
            session.score_chunk(2, [3])


@pytest.mark.parametrize(
    "sampling",
    [
        SamplingParams(),
        SamplingParams(temperature=0.8, seed=7),
        SamplingParams(temperature=0.7, top_k=5, seed=3),
    ],
    ids=["greedy", "gumbel", "gumbel-top-k"],
)
@pytest.mark.parametrize("tolerance", [0.75, 3.0])
def test_the_first_position_list_is_exactly_what_a_first_chunk_would_pass(
    tiny_info: ModelInfo, sampling: SamplingParams, tolerance: float
) -> None:
    """Every token of the vocabulary (~370 on the tiny model) scored as a one-token first chunk: it passes
    (the chunk verdict's rule, with its piece) iff the session listed it in advance with that piece; and
    what the prover generated is listed (spec/verification.md §14.2, the first position judged in advance)."""
    with LlamaEngine(tiny_info, n_threads=1) as engine:
        for prompt in PROMPTS[1:2]:
            tokens, pieces, _ = generate(engine, prompt, sampling)
            session = ScoringSession(engine, prompt=prompt, sampling=sampling, job_id=JOB, max_tokens=N)
            try:
                listed = session.first_position_options(tolerance, engine.n_vocab)
            finally:
                session.close()
            assert listed is not None
            assert (tokens[0], pieces[0]) in listed, "the prover's own first token is listed"
            options = dict(listed)
            for token in range(engine.n_vocab):
                fresh = ScoringSession(engine, prompt=prompt, sampling=sampling, job_id=JOB, max_tokens=N)
                try:  # a listed token's chunk carries its listed piece, which must be its text here
                    scored = fresh.score_chunk(0, [token], [options[token]] if token in options else None)
                finally:
                    fresh.close()
                passes = judge(scored.evidence, AuditPolicy(gap_tolerance=tolerance)).accepted
                assert passes == (token in options), (prompt, token, scored.evidence)
                assert scored.problem == ""


def test_a_first_position_list_keeps_the_best_passing_tokens_up_to_its_limit(tiny_info: ModelInfo) -> None:
    with LlamaEngine(tiny_info, n_threads=1) as engine:
        session = ScoringSession(
            engine, prompt=PROMPTS[0], sampling=SamplingParams(), job_id=JOB, max_tokens=N
        )
        try:
            everything = session.first_position_options(1000.0, engine.n_vocab)
            assert everything is not None and len(everything) == engine.n_vocab, "every token passes at 1000"
            assert session.first_position_options(1000.0, 16) == everything[:16], "the 16 best"
            assert session.first_position_options(0.0, 16) == everything[:1], "the best token alone"
            session.score_chunk(0, [everything[0][0]])
            assert session.first_position_options(0.75, 16) is None, "once a chunk is scored: no list"
        finally:
            session.close()

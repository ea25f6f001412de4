"""Scoring copies (opengrid.engines.scoring_copy, spec/verification.md §12.5) on real llama.cpp: a copy is
derived from exactly the named file, deterministically; an engine with one scores within the tolerance of
the original and still rejects cheats; ``load_engine`` makes one for Q4_1 weights only.

The model here is the tiny one re-quantized to Q4_1 (every 2-D weight), so it has what SmolLM2 has: Q4_1
tensors that the copy converts, and other tensors (the norms, F32) that it copies as they are.
"""

from __future__ import annotations

import hashlib
import pathlib
import random
from collections.abc import Iterator
from functools import partial

import gguf
import llama_cpp
import numpy as np
import pytest
import trio

from opengrid.core.audit import DEFAULT_GAP_TOLERANCE, SamplingParams, judge
from opengrid.engines import (
    GenerationRequest,
    LlamaEngine,
    ModelInfo,
    ScoreRequest,
    default_cache_dir,
    load_engine,
    remove_model,
    resolve_model,
    write_tiny_gguf,
)
from opengrid.engines.scoring_copy import (
    SCORING_COPY_TYPES,
    SOURCE_SHA256_KEY,
    TYPE_KEY,
    auto_scoring_copy,
    make_scoring_copy,
    scoring_copies_of,
    scoring_copy_path,
    write_scoring_copy,
)
from opengrid.engines.scoring_session import ScoringSession
from opengrid.errors import EngineError, VerificationError
from opengrid.node.config import SCORE_WITH, NodeConfig
from opengrid.node.engine_setup import open_engine

PROMPTS = ["alpha beta", "river stone light", "seven north garden paper", "cloud", "gamma delta river"]
JOB = bytes(range(32))
N = 40


def _write_q4_1(source: pathlib.Path, dest: pathlib.Path) -> pathlib.Path:
    """``source`` (an F32 GGUF) with every 2-D weight quantized to Q4_1 and file_type MOSTLY_Q4_1."""
    reader = gguf.GGUFReader(source)
    writer = gguf.GGUFWriter(dest, arch="llama")
    for field in reader.fields.values():
        if field.name in ("general.architecture", "general.file_type") or field.name.startswith("GGUF."):
            continue
        kind = field.types[0]
        writer.add_key_value(
            field.name,
            field.contents(),
            kind,
            sub_type=field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None,
        )
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_1)
    for tensor in reader.tensors:
        data = np.asarray(tensor.data)
        if data.ndim == 2:
            writer.add_tensor(
                tensor.name,
                gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q4_1),
                raw_dtype=gguf.GGMLQuantizationType.Q4_1,
            )
        else:
            writer.add_tensor(tensor.name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dest


def _info(path: pathlib.Path, name: str = "tiny-q4_1") -> ModelInfo:
    return ModelInfo(name=name, path=path, sha256=hashlib.sha256(path.read_bytes()).hexdigest())


@pytest.fixture(scope="module")
def q4_1_info(tmp_path_factory: pytest.TempPathFactory, tiny_model_path: pathlib.Path) -> ModelInfo:
    return _info(_write_q4_1(tiny_model_path, tmp_path_factory.mktemp("q4_1") / "tiny-q4_1.gguf"))


@pytest.fixture
def prover(q4_1_info: ModelInfo) -> Iterator[LlamaEngine]:
    with LlamaEngine(q4_1_info, n_threads=1) as engine:
        yield engine


def _types(path: pathlib.Path) -> dict[str, gguf.GGMLQuantizationType]:
    return {t.name: t.tensor_type for t in gguf.GGUFReader(path).tensors}


@pytest.mark.parametrize("kind", SCORING_COPY_TYPES)
def test_a_copy_converts_the_q4_1_tensors_of_the_named_file_and_keeps_the_rest(
    q4_1_info: ModelInfo, tmp_path: pathlib.Path, kind: str
) -> None:
    copy = make_scoring_copy(q4_1_info, kind, cache_dir=tmp_path)  # type: ignore[arg-type]
    assert copy.path == scoring_copy_path(q4_1_info.sha256, kind, tmp_path)  # type: ignore[arg-type]
    assert q4_1_info.sha256 in copy.path.name and copy.source == q4_1_info and copy.kind == kind
    source, made = gguf.GGUFReader(q4_1_info.path), gguf.GGUFReader(copy.path)
    assert made.fields[SOURCE_SHA256_KEY].contents() == q4_1_info.sha256
    assert made.fields[TYPE_KEY].contents() == kind
    target = getattr(gguf.GGMLQuantizationType, kind.upper())
    pairs = dict(zip([t.name for t in source.tensors], source.tensors, strict=True))
    converted = 0
    for tensor in made.tensors:
        original = pairs[tensor.name]
        if original.tensor_type == gguf.GGMLQuantizationType.Q4_1:
            converted += 1
            assert tensor.tensor_type == target
            weights = gguf.quants.dequantize(original.data, gguf.GGMLQuantizationType.Q4_1)
            back = gguf.quants.dequantize(tensor.data, target)
            if kind == "f32":
                assert np.array_equal(back, weights)  # exact: the copy is the Q4_1 weights themselves
            else:  # rounding only: a fraction of the Q4_1 step (range / 15 per block of 32)
                assert np.max(np.abs(back - weights)) <= 0.02 * np.max(np.abs(weights))
        else:
            assert tensor.tensor_type == original.tensor_type
            assert bytes(tensor.data) == bytes(original.data)
    assert converted == 2 * 7 + 2  # per layer q, k, v, o, gate, up, down; token_embd and output


def test_a_copy_is_deterministic(q4_1_info: ModelInfo, tmp_path: pathlib.Path) -> None:
    digests = set()
    for run in ("a", "b"):
        copy = make_scoring_copy(q4_1_info, "bf16", cache_dir=tmp_path / run)
        digests.add(hashlib.sha256(copy.path.read_bytes()).hexdigest())
    assert len(digests) == 1


def test_a_file_whose_sha256_differs_from_the_named_one_is_refused(
    q4_1_info: ModelInfo, tmp_path: pathlib.Path
) -> None:
    wrong = ModelInfo(name=q4_1_info.name, path=q4_1_info.path, sha256="ab" * 32)
    with pytest.raises(VerificationError, match="sha256") as caught:
        make_scoring_copy(wrong, "bf16", cache_dir=tmp_path)
    assert q4_1_info.sha256 in str(caught.value) and "ab" * 32 in str(caught.value)
    assert not (tmp_path / "scoring-copies").exists() or not any((tmp_path / "scoring-copies").iterdir())


def test_a_cached_copy_is_reused_not_rewritten(q4_1_info: ModelInfo, tmp_path: pathlib.Path) -> None:
    first = make_scoring_copy(q4_1_info, "q8_0", cache_dir=tmp_path)
    stamp = first.path.stat().st_mtime_ns
    again = make_scoring_copy(q4_1_info, "q8_0", cache_dir=tmp_path)
    assert again.path == first.path and again.path.stat().st_mtime_ns == stamp
    assert sorted(p.name for p in (tmp_path / "scoring-copies").iterdir()) == [first.path.name]  # no tmp left


def test_unknown_copy_types_are_refused(q4_1_info: ModelInfo, tmp_path: pathlib.Path) -> None:
    with pytest.raises(EngineError, match="q4_1"):
        make_scoring_copy(q4_1_info, "q4_1", cache_dir=tmp_path)  # type: ignore[arg-type]
    with pytest.raises(EngineError, match="score_with"):
        load_engine(q4_1_info, n_threads=1, score_with="fast", cache_dir=tmp_path)


@pytest.mark.parametrize("kind", SCORING_COPY_TYPES)
def test_an_engine_scoring_on_a_copy_accepts_honest_claims_and_rejects_cheats(
    prover: LlamaEngine, q4_1_info: ModelInfo, tmp_path: pathlib.Path, kind: str
) -> None:
    copy = make_scoring_copy(q4_1_info, kind, cache_dir=tmp_path)  # type: ignore[arg-type]
    rng = random.Random(1)
    with LlamaEngine(q4_1_info, n_threads=1, scoring_copy=copy) as auditor:
        assert auditor.scoring_copy == copy and auditor.contract == prover.contract
        for prompt in PROMPTS:
            for sampling in (SamplingParams(), SamplingParams(temperature=0.8, seed=5)):
                honest = prover.generate(
                    GenerationRequest(prompt=prompt, max_tokens=N, sampling=sampling, job_id=JOB)
                )
                request = ScoreRequest(
                    prompt=prompt, tokens=honest.tokens, stopped=False, sampling=sampling, job_id=JOB
                )
                on_copy = auditor.score(request).evidence
                on_original = prover.score(request).evidence
                assert judge(on_copy).accepted, (kind, prompt, sampling)
                # The copy's arithmetic differs from the original's by rounding: on this model (random
                # weights, logits of ~±10) a gap moved by up to 0.44 (q8_0) / 0.38 (bf16) / 0.27 (f16, f32).
                moved = max(abs(a.gap - b.gap) for a, b in zip(on_copy, on_original, strict=True))
                assert moved < DEFAULT_GAP_TOLERANCE, (kind, prompt, sampling, moved)
                changed = [
                    t if i % 20 != 19 else (t + rng.randrange(1, auditor.n_vocab)) % auditor.n_vocab
                    for i, t in enumerate(honest.tokens)
                ]
                cheat = ScoreRequest(
                    prompt=prompt, tokens=tuple(changed), stopped=False, sampling=sampling, job_id=JOB
                )
                verdict = judge(auditor.score(cheat).evidence)
                assert not verdict.accepted and verdict.first_failure == 19, (kind, prompt, verdict)
            wrong_seed = ScoreRequest(
                prompt=prompt,
                tokens=honest.tokens,
                stopped=False,
                sampling=SamplingParams(temperature=0.8, seed=6),
                job_id=JOB,
            )
            assert not judge(auditor.score(wrong_seed).evidence).accepted


def test_a_model_swap_fails_on_the_copy(
    prover: LlamaEngine, q4_1_info: ModelInfo, tmp_path: pathlib.Path
) -> None:
    other = _info(_write_q4_1(write_tiny_gguf(tmp_path / "seed1.gguf", seed=1), tmp_path / "seed1-q4_1.gguf"))
    copy = make_scoring_copy(q4_1_info, "bf16", cache_dir=tmp_path)
    with (
        LlamaEngine(other, n_threads=1) as swap,
        LlamaEngine(q4_1_info, n_threads=1, scoring_copy=copy) as auditor,
    ):
        for prompt in PROMPTS:
            claim = swap.generate(GenerationRequest(prompt=prompt, max_tokens=N))
            request = ScoreRequest(prompt=prompt, tokens=claim.tokens, stopped=False, job_id=JOB)
            assert not judge(auditor.score(request).evidence).accepted


def test_an_engine_refuses_a_copy_of_another_model(
    prover: LlamaEngine, tiny_info: ModelInfo, tmp_path: pathlib.Path
) -> None:
    copy_of_other = make_scoring_copy(tiny_info, "bf16", cache_dir=tmp_path)  # F32 model: nothing to convert
    with pytest.raises(VerificationError, match="sha256"):
        prover.use_scoring_copy(copy_of_other)
    assert prover.scoring_copy is None


def test_a_scoring_session_on_a_copy_gives_the_one_shot_evidence(
    q4_1_info: ModelInfo, prover: LlamaEngine, tmp_path: pathlib.Path
) -> None:
    copy = make_scoring_copy(q4_1_info, "bf16", cache_dir=tmp_path)
    with LlamaEngine(q4_1_info, n_threads=1, scoring_copy=copy) as auditor:
        claim = prover.generate(GenerationRequest(prompt=PROMPTS[1], max_tokens=N))
        whole = auditor.score(ScoreRequest(prompt=PROMPTS[1], tokens=claim.tokens, stopped=False, job_id=JOB))
        session = ScoringSession(
            auditor, prompt=PROMPTS[1], sampling=SamplingParams(), job_id=JOB, max_tokens=N
        )
        try:
            for offset in range(0, N, 16):
                session.score_chunk(offset, claim.tokens[offset : offset + 16])
                if offset == 0:
                    # Back to the original weights mid-session: the open session keeps the copy's (its
                    # context was made over them, and they stay loaded until the engine closes).
                    auditor.use_scoring_copy(None)
        finally:
            session.close()
        assert tuple(session.evidence) == whole.evidence
        assert auditor.scoring_copy is None
        plain = auditor.score(ScoreRequest(prompt=PROMPTS[1], tokens=claim.tokens, stopped=False, job_id=JOB))
        assert (
            plain.evidence
            == prover.score(
                ScoreRequest(prompt=PROMPTS[1], tokens=claim.tokens, stopped=False, job_id=JOB)
            ).evidence
        )


def test_load_engine_makes_a_copy_for_q4_1_weights_only(
    q4_1_info: ModelInfo, tiny_info: ModelInfo, tmp_path: pathlib.Path
) -> None:
    cases: list[tuple[ModelInfo, str, str | None]] = [
        (q4_1_info, "auto", auto_scoring_copy()),
        (q4_1_info, "off", None),
        (q4_1_info, "q8_0", "q8_0"),
        (tiny_info, "auto", None),  # F32 weights: llama.cpp scores them in batches already
    ]
    for info, score_with, kind in cases:
        cache = tmp_path / f"{info.name}-{score_with}"
        engine = load_engine(info, n_threads=1, score_with=score_with, cache_dir=cache)
        try:
            assert isinstance(engine, LlamaEngine)
            assert engine.prefers_scoring_copy == (info is q4_1_info)
            if kind is None:
                assert engine.scoring_copy is None
                assert not cache.exists()  # nothing written
            else:
                assert engine.scoring_copy is not None and engine.scoring_copy.kind == kind
                assert engine.scoring_copy.path.parent == cache / "scoring-copies"
        finally:
            engine.close()


def test_auto_picks_bf16_only_where_the_cpu_multiplies_bf16_natively() -> None:
    """What llama.cpp's system info says decides (spec/verification.md §12.5): bf16 scored at 0.22-0.24 of
    generating with AVX512_BF16 but 0.42 on an AVX2-only build, where f16 was the cheapest (0.36)."""
    avx512 = "CPU : AVX2 = 1 | F16C = 1 | AVX512 = 1 | AVX512_VNNI = 1 | AVX512_BF16 = 1 | LLAMAFILE = 1 | "
    avx2 = "CPU : SSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | LLAMAFILE = 1 | "
    assert auto_scoring_copy(avx512) == "bf16"
    assert auto_scoring_copy(avx2) == "f16"
    assert auto_scoring_copy(avx512.replace("AVX512_BF16 = 1", "AVX512_BF16 = 0")) == "f16"
    native = "AVX512_BF16 = 1" in llama_cpp.llama_print_system_info().decode()
    assert auto_scoring_copy() == ("bf16" if native else "f16")


def test_write_scoring_copy_refuses_unknown_types(q4_1_info: ModelInfo, tmp_path: pathlib.Path) -> None:
    with pytest.raises(EngineError, match="unknown copy type"):
        write_scoring_copy(q4_1_info.path, tmp_path / "x.gguf", "q2_k", source_sha256=q4_1_info.sha256)
    assert not (tmp_path / "x.gguf").exists()


def test_the_node_setting_offers_exactly_what_load_engine_takes() -> None:
    assert SCORE_WITH[:2] == ("auto", "off") and set(SCORE_WITH[2:]) == set(SCORING_COPY_TYPES)
    assert NodeConfig(data_dir=pathlib.Path("d")).score_with == "auto"


@pytest.mark.parametrize(("score_with", "kind"), [("f32", "f32"), ("off", None), ("auto", "auto")])
def test_a_node_scores_on_what_its_score_with_setting_says(
    q4_1_info: ModelInfo,
    tmp_path: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
    score_with: str,
    kind: str | None,
) -> None:
    """``opengrid node start --score-with`` reaches ``load_engine``: the copy is made in the node's model
    cache (the user cache dir, here under tmp_path), or none with ``off``."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    cache = default_cache_dir()
    assert cache.is_relative_to(tmp_path)
    config = NodeConfig(data_dir=tmp_path / "data", model=str(q4_1_info.path), score_with=score_with)  # type: ignore[arg-type]
    if kind == "auto":
        kind = auto_scoring_copy()
    engine = trio.run(partial(open_engine, config, bytes(32), own_server=lambda server: None))
    try:
        assert isinstance(engine, LlamaEngine)
        if kind is None:
            assert engine.scoring_copy is None and scoring_copies_of(q4_1_info.sha256, cache) == []
        else:
            assert engine.scoring_copy is not None and engine.scoring_copy.kind == kind
            assert scoring_copies_of(q4_1_info.sha256, cache) == [engine.scoring_copy.path]
    finally:
        engine.close()


def test_removing_a_generated_model_removes_its_scoring_copies(tmp_path: pathlib.Path) -> None:
    info = resolve_model("tiny", cache_dir=tmp_path)
    copies = [make_scoring_copy(info, kind, cache_dir=tmp_path).path for kind in ("bf16", "f32")]
    other = scoring_copy_path("0" * 64, "bf16", tmp_path)
    other.write_bytes(b"another model's copy")
    assert scoring_copies_of(info.sha256, tmp_path) == sorted(copies)
    assert remove_model("tiny", cache_dir=tmp_path) == [info.path, *sorted(copies)]
    assert scoring_copies_of(info.sha256, tmp_path) == [] and not info.path.exists()
    assert other.exists()

"""The model catalog: names, paths, hashes."""

from __future__ import annotations

import hashlib
import pathlib

import pytest

from opengrid.engines import (
    DEFAULT_MODEL,
    GenerationRequest,
    LlamaEngine,
    load_engine,
    resolve_model,
    sha256_file,
    write_tiny_gguf,
)
from opengrid.errors import UnknownModelError


def test_sha256_file_matches_hashlib(tiny_model_path: pathlib.Path) -> None:
    assert sha256_file(tiny_model_path) == hashlib.sha256(tiny_model_path.read_bytes()).hexdigest()


def test_sha256_file_sees_a_rewritten_file(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"one")
    assert sha256_file(path) == hashlib.sha256(b"one").hexdigest()
    path.write_bytes(b"three")  # new size, so a new cache key
    assert sha256_file(path) == hashlib.sha256(b"three").hexdigest()


def test_resolve_gguf_path(tiny_model_path: pathlib.Path) -> None:
    info = resolve_model(str(tiny_model_path))
    assert info.name == "tiny"  # the file stem
    assert info.path == tiny_model_path.resolve()
    assert info.sha256 == hashlib.sha256(tiny_model_path.read_bytes()).hexdigest()


def test_missing_gguf_path_is_unknown(tmp_path: pathlib.Path) -> None:
    with pytest.raises(UnknownModelError, match="does not exist"):
        resolve_model(str(tmp_path / "nope.gguf"))


def test_unknown_name_lists_the_catalog() -> None:
    with pytest.raises(UnknownModelError) as excinfo:
        resolve_model("gpt-17")
    message = str(excinfo.value)
    assert "smollm2-135m-instruct" in message
    assert "tiny" in message
    assert ".gguf" in message


def test_tiny_is_generated_once_into_the_cache(tmp_path: pathlib.Path, tiny_model_path: pathlib.Path) -> None:
    cache = tmp_path / "cache"
    info = resolve_model("tiny", cache_dir=cache)
    assert info.name == "tiny"
    assert info.path.parent == cache
    assert info.path.read_bytes() == tiny_model_path.read_bytes()
    mtime = info.path.stat().st_mtime_ns
    assert resolve_model("TINY", cache_dir=cache) == info
    assert info.path.stat().st_mtime_ns == mtime


def test_load_engine_returns_a_working_engine(tmp_path: pathlib.Path) -> None:
    info = resolve_model(str(write_tiny_gguf(tmp_path / "t.gguf")))
    engine = load_engine(info, n_threads=1)
    try:
        assert isinstance(engine, LlamaEngine)
        assert len(engine.generate(GenerationRequest(prompt="hi", max_tokens=3)).tokens) == 3
    finally:
        engine.close()


def test_smollm2_smoke() -> None:
    """The real default model: coherent, deterministic, cheap (~0.15 s load, ~0.1 s for 8 tokens)."""
    info = resolve_model(DEFAULT_MODEL)
    assert resolve_model("smollm2") == info
    assert info.path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    with LlamaEngine(info, n_ctx=256) as engine:
        request = GenerationRequest(prompt="The capital of France is", max_tokens=8)
        first = engine.generate(request)
        assert first.text.strip()
        assert 1 <= len(first.tokens) <= 8
        assert engine.generate(request) == first

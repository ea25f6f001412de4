"""Engine fixtures: real llama.cpp on the tiny model (loads in ~10 ms, so engines are per test)."""

from __future__ import annotations

import hashlib
import pathlib
from collections.abc import Iterator

import pytest

from opengrid.engines import LlamaEngine, ModelInfo


@pytest.fixture(scope="session")
def tiny_info(tiny_model_path: pathlib.Path) -> ModelInfo:
    """ModelInfo of the session's tiny model."""
    sha256 = hashlib.sha256(tiny_model_path.read_bytes()).hexdigest()
    return ModelInfo(name="tiny", path=tiny_model_path, sha256=sha256)


@pytest.fixture
def tiny_engine(tiny_info: ModelInfo) -> Iterator[LlamaEngine]:
    """A freshly loaded engine on the tiny model, closed after the test."""
    with LlamaEngine(tiny_info, n_threads=2) as engine:
        yield engine

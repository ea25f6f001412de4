"""Fixtures shared by every test layer."""

from __future__ import annotations

import pathlib

import pytest

from opengrid.engines.tiny_model import write_tiny_gguf


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """The seed-0 tiny GGUF model (2 layers, 64 wide, ~0.5 MB), written once per test session."""
    return write_tiny_gguf(tmp_path_factory.mktemp("models") / "tiny.gguf", seed=0)

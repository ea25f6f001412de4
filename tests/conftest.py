"""Fixtures shared by every test layer."""

from __future__ import annotations

import logging
import pathlib
from collections.abc import Iterator

import pytest

from opengrid.engines.tiny_model import write_tiny_gguf


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """The seed-0 tiny GGUF model (2 layers, 64 wide, ~0.5 MB), written once per test session."""
    return write_tiny_gguf(tmp_path_factory.mktemp("models") / "tiny.gguf", seed=0)


@pytest.fixture(autouse=True)
def _restore_root_logging() -> Iterator[None]:
    """Undo what a test's CLI run did to the root logger: ``opengrid`` installs a handler on the stderr
    pytest captured for that test, and later tests' log lines would go to that closed stream ("Logging
    error ... I/O operation on closed file" in the CI output)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)

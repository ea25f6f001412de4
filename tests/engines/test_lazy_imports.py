"""A node that never runs a model must not pay for llama.cpp: ``opengrid.engines`` imports on first use.

Issue 3 (RSS per idle node): llama_cpp + numpy cost ~20 MiB of RSS, which a coordinator never needs. Each
check runs in a fresh interpreter, because this test process has imported everything already.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("llama_cpp", "numpy", "gguf")


def _imported_after(code: str) -> set[str]:
    check = f"{code}\nimport sys\nprint(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    command = [sys.executable, "-c", check]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)
    return set(done.stdout.split())


@pytest.mark.parametrize(
    "code",
    [
        "import opengrid.cli.main, opengrid.node.service",
        "from opengrid.engines import DEFAULT_MODEL, ModelInfo, resolve_model, TINY_MODEL_NAME",
    ],
)
def test_the_node_imports_no_engine(code: str) -> None:
    assert _imported_after(code) == set()


def test_engines_load_on_first_use() -> None:
    assert _imported_after("from opengrid.engines import LlamaEngine") >= {"llama_cpp", "numpy"}
    # the tiny model's writer imports gguf and numpy when called, not when looked up
    assert _imported_after("import opengrid.engines as e; e.write_tiny_gguf") == set()


def test_unknown_names_still_raise() -> None:
    import opengrid.engines

    with pytest.raises(AttributeError, match="no attribute 'NoSuchEngine'"):
        opengrid.engines.NoSuchEngine  # noqa: B018

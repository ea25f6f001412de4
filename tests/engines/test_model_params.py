"""The parameter count a worker announces (``ModelOffer.n_params``) is llama.cpp's, and the catalog pins
the same number for its models (it prices their tokens, spec/ledger.md §7)."""

from __future__ import annotations

import pathlib

from opengrid.engines import LlamaEngine, ModelInfo, sha256_file
from opengrid.engines.catalog import pinned_params


def test_the_engine_counts_the_parameters_the_catalog_pins(tiny_model_path: pathlib.Path) -> None:
    info = ModelInfo(name="tiny", path=tiny_model_path, sha256=sha256_file(tiny_model_path))
    with LlamaEngine(info, n_threads=1) as engine:
        assert engine.n_params == pinned_params()[info.sha256] == 129_600

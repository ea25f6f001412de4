"""Inference engines (a driver ring): load a GGUF model and generate tokens under a decoding contract.

- :mod:`.base`: the :class:`Engine` and :class:`ScoringEngine` protocols and their plain data
  (``ModelInfo``, ``GenerationRequest``, ``Generation``, ``ScoreRequest``, ``Scoring``);
- :mod:`.llama`: :class:`LlamaEngine`, llama.cpp in this process;
- :mod:`.http`: :class:`HttpEngine` over an OpenAI-compatible server (llama_cpp.server, vLLM) and
  :class:`ManagedServer`, which runs one as a child process;
- :mod:`.catalog`: the model catalog as data, and ``pick_model_for_memory``;
- :mod:`.models`: resolving and loading (``resolve_model``, ``load_engine``, ``sha256_file``) and model
  management (``list_models``, ``pull_model``, ``remove_model``);
- :mod:`.tiny_model`: a seeded 2-layer GGUF for tests;
- :mod:`.adversarial`: :class:`WrongTokensEngine`, a cheater for demos and verification tests.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opengrid.engines.adversarial import LazyEngine, SwappedModelEngine, WrongTokensEngine
    from opengrid.engines.base import (
        DEFAULT_N_CTX,
        Engine,
        FinishReason,
        Generation,
        GenerationRequest,
        ModelInfo,
        ScoreRequest,
        Scoring,
        ScoringEngine,
    )
    from opengrid.engines.catalog import CATALOG, CatalogEntry, catalog_entry, pick_model_for_memory
    from opengrid.engines.http import BACKENDS, HttpBackend, HttpEngine, ManagedServer
    from opengrid.engines.llama import LlamaEngine
    from opengrid.engines.models import (
        DEFAULT_MODEL,
        KNOWN_MODELS,
        InstalledModel,
        default_cache_dir,
        list_models,
        load_engine,
        pull_model,
        remove_model,
        resolve_model,
        sha256_file,
    )
    from opengrid.engines.tiny_model import TINY_MODEL_NAME, write_tiny_gguf

# Names are imported on first use (PEP 562), not with the package: llama.cpp, numpy and httpx cost ~25 MiB
# of RSS, and a coordinator, which never runs a model, imports this package for its plain data
# (issue 3: RSS per idle node).
_SUBMODULE = {
    **dict.fromkeys(["LazyEngine", "SwappedModelEngine", "WrongTokensEngine"], "adversarial"),
    **dict.fromkeys(
        [
            "DEFAULT_N_CTX",
            "Engine",
            "FinishReason",
            "Generation",
            "GenerationRequest",
            "ModelInfo",
            "ScoreRequest",
            "Scoring",
            "ScoringEngine",
        ],
        "base",
    ),
    **dict.fromkeys(["CATALOG", "CatalogEntry", "catalog_entry", "pick_model_for_memory"], "catalog"),
    **dict.fromkeys(["BACKENDS", "HttpBackend", "HttpEngine", "ManagedServer"], "http"),
    "LlamaEngine": "llama",
    **dict.fromkeys(
        [
            "DEFAULT_MODEL",
            "KNOWN_MODELS",
            "InstalledModel",
            "default_cache_dir",
            "list_models",
            "load_engine",
            "pull_model",
            "remove_model",
            "resolve_model",
            "sha256_file",
        ],
        "models",
    ),
    **dict.fromkeys(["TINY_MODEL_NAME", "write_tiny_gguf"], "tiny_model"),
}


def __getattr__(name: str) -> Any:
    submodule = _SUBMODULE.get(name)
    if submodule is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{submodule}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


__all__ = [
    "BACKENDS",
    "CATALOG",
    "DEFAULT_MODEL",
    "DEFAULT_N_CTX",
    "KNOWN_MODELS",
    "TINY_MODEL_NAME",
    "CatalogEntry",
    "Engine",
    "FinishReason",
    "Generation",
    "GenerationRequest",
    "HttpBackend",
    "HttpEngine",
    "InstalledModel",
    "LazyEngine",
    "LlamaEngine",
    "ManagedServer",
    "ModelInfo",
    "ScoreRequest",
    "Scoring",
    "ScoringEngine",
    "SwappedModelEngine",
    "WrongTokensEngine",
    "catalog_entry",
    "default_cache_dir",
    "list_models",
    "load_engine",
    "pick_model_for_memory",
    "pull_model",
    "remove_model",
    "resolve_model",
    "sha256_file",
    "write_tiny_gguf",
]

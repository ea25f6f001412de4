"""Inference engines (a driver ring): load a GGUF model and generate tokens under a decoding contract.

- :mod:`.base`: the :class:`Engine` protocol and its plain data (``ModelInfo``, ``GenerationRequest``,
  ``Generation``);
- :mod:`.llama`: :class:`LlamaEngine`, llama.cpp in this process;
- :mod:`.models`: the catalog (``resolve_model``, ``load_engine``, ``sha256_file``);
- :mod:`.tiny_model`: a seeded 2-layer GGUF for tests;
- :mod:`.adversarial`: :class:`WrongTokensEngine`, a cheater for demos and verification tests.
"""

from opengrid.engines.adversarial import WrongTokensEngine
from opengrid.engines.base import Engine, FinishReason, Generation, GenerationRequest, ModelInfo
from opengrid.engines.llama import DEFAULT_N_CTX, LlamaEngine
from opengrid.engines.models import (
    DEFAULT_MODEL,
    KNOWN_MODELS,
    default_cache_dir,
    load_engine,
    resolve_model,
    sha256_file,
)
from opengrid.engines.tiny_model import TINY_MODEL_NAME, write_tiny_gguf

__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_N_CTX",
    "KNOWN_MODELS",
    "TINY_MODEL_NAME",
    "Engine",
    "FinishReason",
    "Generation",
    "GenerationRequest",
    "LlamaEngine",
    "ModelInfo",
    "WrongTokensEngine",
    "default_cache_dir",
    "load_engine",
    "resolve_model",
    "sha256_file",
    "write_tiny_gguf",
]

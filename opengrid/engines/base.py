"""The engine seam: what a node needs from an inference backend, as plain data and one protocol.

An engine is blocking and not thread-safe for concurrent use: the node calls :meth:`Engine.generate` in
``trio.to_thread.run_sync`` with a limiter of one. Engines raise :class:`opengrid.errors.EngineError`
(never a backend's own exception).
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from opengrid.wire.contract import DecodingContract

__all__ = ["DEFAULT_N_CTX", "Engine", "FinishReason", "Generation", "GenerationRequest", "ModelInfo"]

DEFAULT_N_CTX = 2048
"""Context window (prompt + generated tokens) an engine is loaded with unless told otherwise."""

FinishReason = Literal["stop", "length"]
"""``"stop"``: the model emitted an end-of-generation token; ``"length"``: max_tokens was reached."""


@dataclass(frozen=True)
class ModelInfo:
    """A model file on this machine, named and identified by its content hash."""

    name: str
    """Catalog name (``"smollm2-135m-instruct"``, ``"tiny"``) or the file stem for a path."""
    path: pathlib.Path
    """The GGUF file."""
    sha256: str
    """Lower-case hex sha256 of the file: what jobs and contracts name, not ``name``."""


@dataclass(frozen=True)
class ChatTemplate:
    """A model's chat template (Jinja, as stored in its GGUF) and the special strings it refers to."""

    template: str
    bos_token: str
    eos_token: str


@dataclass(frozen=True)
class GenerationRequest:
    """One completion: a raw prompt (chat templates are applied by the caller) and a token budget."""

    prompt: str
    max_tokens: int
    """Number of tokens to generate at most; must be >= 1."""
    add_bos: bool = True
    """Prepend the model's BOS token. False for prompts rendered from a chat template, which carry their
    own special tokens (llama.cpp's chat completion tokenizes them the same way)."""


@runtime_checkable
class StreamingEngine(Protocol):
    """An engine that can report text as it is generated (the node streams it to clients)."""

    def generate_streaming(
        self, request: GenerationRequest, on_text: Callable[[str], None] | None
    ) -> Generation:
        """Like ``Engine.generate``, calling ``on_text(delta)`` from the generating thread."""
        ...


@dataclass(frozen=True)
class Generation:
    """The result of a completion under the engine's decoding contract."""

    tokens: tuple[int, ...]
    """Generated token ids, prompt excluded; an end-of-generation token is not included."""
    text: str
    """``tokens`` decoded as one byte string (UTF-8, invalid sequences replaced by U+FFFD)."""
    finish_reason: FinishReason


@runtime_checkable
class Engine(Protocol):
    """A loaded model that generates deterministically under a pinned :class:`DecodingContract`."""

    @property
    def model(self) -> ModelInfo:
        """The model file this engine runs."""
        ...

    @property
    def contract(self) -> DecodingContract:
        """The decoding settings every :meth:`generate` call uses: the job's numerical class."""
        ...

    def generate(self, request: GenerationRequest) -> Generation:
        """Run one completion; blocking. Raises :class:`~opengrid.errors.EngineError` on failure."""
        ...

    def close(self) -> None:
        """Free the model; idempotent. ``generate`` raises ``EngineError`` afterwards."""
        ...

"""The engine seam: what a node needs from an inference backend, as plain data and one protocol.

An engine is blocking and not thread-safe for concurrent use: the node calls :meth:`Engine.generate` in
``trio.to_thread.run_sync`` with a limiter of one. Engines raise :class:`opengrid.errors.EngineError`
(never a backend's own exception).
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

from opengrid.core.audit import PositionEvidence, SamplingParams
from opengrid.wire.contract import DecodingContract

__all__ = [
    "DEFAULT_N_CTX",
    "Engine",
    "FinishReason",
    "Generation",
    "GenerationRequest",
    "ModelInfo",
    "ScoreRequest",
    "Scoring",
    "ScoringEngine",
]

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
    sampling: SamplingParams = field(default_factory=SamplingParams)
    """How tokens are chosen (spec/verification.md §11); the default is greedy. Engines that choose with
    ``opengrid.core.sampling`` honour every field; others support greedy only."""
    job_id: bytes = b""
    """The job's id: with ``sampling.seed`` it fixes the sampling noise, so an auditor can recompute it."""


@runtime_checkable
class StreamingEngine(Protocol):
    """An engine that can report text as it is generated (the node streams it to clients)."""

    def generate_streaming(
        self,
        request: GenerationRequest,
        on_text: Callable[[str], None] | None,
        on_token: Callable[[int, str], None] | None = None,
    ) -> Generation:
        """Like ``Engine.generate``, calling ``on_text(delta)`` with new text and ``on_token(token,
        piece)`` once per generated token (``piece``: the text it completed, "" while it ends inside a
        multi-byte character) from the generating thread; the pieces join to a prefix of the text."""
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


@dataclass(frozen=True)
class ScoreRequest:
    """An audit: what the model thinks of a claimed output of ``prompt`` (spec/verification.md §12)."""

    prompt: str
    """The job's prompt, tokenized by the auditor exactly as :class:`GenerationRequest` is."""
    tokens: tuple[int, ...]
    """The claimed output tokens (no end-of-generation token)."""
    stopped: bool
    """The claim ended with an end-of-generation token (``finish_reason == "stop"``): one more position
    is scored, whose claimed token is the best-scoring end-of-generation token."""
    sampling: SamplingParams = field(default_factory=SamplingParams)
    job_id: bytes = b""
    add_bos: bool = True
    end: int = 0
    """Score output positions ``0 .. end - 1`` only (a partial audit, spec/verification.md §13.5): the
    forward pass stops at the last of them. 0, or at least :attr:`positions`, scores every position."""

    @property
    def positions(self) -> int:
        """Positions the claim has: its tokens, plus the end-of-generation position when it stopped."""
        return len(self.tokens) + (1 if self.stopped else 0)

    @property
    def rows(self) -> int:
        """Positions this request scores: :attr:`positions`, or ``end`` when that is fewer."""
        return self.positions if self.end <= 0 else min(self.end, self.positions)


@dataclass(frozen=True)
class Scoring:
    """Per-position evidence of one audit: ``evidence[i]`` is output position ``i``."""

    evidence: tuple[PositionEvidence, ...]
    prompt_tokens: int
    """Tokens the prompt took (the auditor's tokenization)."""


@runtime_checkable
class ScoringEngine(Protocol):
    """An engine that can audit: one forward pass over prompt + claimed tokens, evidence per position."""

    def score(self, request: ScoreRequest) -> Scoring:
        """Score a claimed output; blocking. Raises :class:`~opengrid.errors.EngineError` when it cannot
        run, :class:`~opengrid.errors.VerificationError` when the claim is malformed (ids outside the
        vocabulary)."""
        ...

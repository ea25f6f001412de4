"""Deterministic engines for protocol tests: no model file, no llama.cpp, microseconds a job.

``EchoEngine`` computes its tokens from the prompt alone (a sha256 stream), so every honest replica of a
job agrees, and a test can say which tokens a job must return (``EchoEngine.expected``).
``CheatingEchoEngine`` claims the same model and contract and returns wrong tokens in the second half,
as ``opengrid.engines.adversarial.WrongTokensEngine`` does to a real engine: only comparing replicas
reveals it.

The node runs an engine in a worker thread (``trio.to_thread.run_sync``) whatever it is; under a
``MockClock`` use ``opengrid.testing.memnet.clock_stops_for_threads`` so virtual time stands still
while it computes. They score nothing: audit-mode tests need a real engine (``ScoringEngine``).
"""

from __future__ import annotations

import hashlib
import itertools
import pathlib
from collections.abc import Callable

from opengrid.engines.base import Generation, GenerationRequest, ModelInfo
from opengrid.errors import EngineError
from opengrid.wire.contract import DecodingContract

__all__ = ["CheatingEchoEngine", "EchoEngine"]

VOCABULARY = 256
"""Token ids run 0..255; token ``t`` reads as the piece ``" t<t>"``."""


def _piece(token: int) -> str:
    return f" t{token}"


class EchoEngine:
    """An ``Engine`` and ``StreamingEngine`` whose output is a function of the prompt and ``max_tokens``.

    ``name`` names the model; its sha256 (what contracts and jobs name) is derived from the name, so two
    engines of one name serve the same model."""

    def __init__(self, name: str = "echo") -> None:
        sha256 = hashlib.sha256(b"opengrid.testing.engines\x00" + name.encode()).hexdigest()
        self._model = ModelInfo(name=name, path=pathlib.Path(f"/nonexistent/{name}.gguf"), sha256=sha256)
        self._contract = DecodingContract(model_sha256=sha256, backend="opengrid-testing")
        self.closed = False
        self.generations = 0
        """Completions run so far (tests count a worker's work with it)."""

    @property
    def model(self) -> ModelInfo:
        return self._model

    @property
    def contract(self) -> DecodingContract:
        return self._contract

    @staticmethod
    def expected(prompt: str, max_tokens: int) -> tuple[tuple[int, ...], str]:
        """The tokens and text an honest ``EchoEngine`` returns for ``prompt``."""
        stream = itertools.cycle(hashlib.sha256(prompt.encode()).digest())
        tokens = tuple(itertools.islice(stream, max_tokens))
        return tokens, "".join(_piece(t) for t in tokens)

    def _tokens(self, request: GenerationRequest) -> tuple[int, ...]:
        if self.closed:
            raise EngineError(f"the {self._model.name} test engine is closed")
        if request.max_tokens < 1:
            raise EngineError(f"max_tokens must be >= 1, got {request.max_tokens}")
        self.generations += 1
        return self.expected(request.prompt, request.max_tokens)[0]

    def generate(self, request: GenerationRequest) -> Generation:
        tokens = self._tokens(request)
        return Generation(tokens=tokens, text="".join(_piece(t) for t in tokens), finish_reason="length")

    def generate_streaming(
        self,
        request: GenerationRequest,
        on_text: Callable[[str], None] | None,
        on_token: Callable[[int, str], None] | None = None,
    ) -> Generation:
        tokens = self._tokens(request)
        for token in tokens:
            if on_token is not None:
                on_token(token, _piece(token))
            if on_text is not None:
                on_text(_piece(token))
        return Generation(tokens=tokens, text="".join(_piece(t) for t in tokens), finish_reason="length")

    def close(self) -> None:
        self.closed = True


class CheatingEchoEngine(EchoEngine):
    """Claims ``EchoEngine``'s model and contract; every token after the first half is wrong (its
    neighbour), text re-decoded to match."""

    def _tokens(self, request: GenerationRequest) -> tuple[int, ...]:
        honest = super()._tokens(request)
        half = len(honest) // 2
        return honest[:half] + tuple((t + 1) % VOCABULARY for t in honest[half:])

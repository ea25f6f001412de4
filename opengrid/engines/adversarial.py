"""A cheating engine, to demonstrate and test that redundant verification catches wrong results.

It exists for the demo and the tests only; nothing uses it unless explicitly asked to.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from opengrid.engines.base import Engine, Generation, GenerationRequest, ModelInfo
from opengrid.wire.contract import DecodingContract

__all__ = ["WrongTokensEngine"]

# Plausible filler: any tokenizer turns it into ordinary in-vocabulary tokens.
_DECOY_TEXT = " the quick brown fox jumps over the lazy dog and then it rains again"


@runtime_checkable
class _TokenCodec(Protocol):
    def tokenize(self, text: str) -> tuple[int, ...]: ...
    def detokenize(self, tokens: Sequence[int]) -> str: ...


class _Impostor:
    """An engine that claims to be ``inner``: same model, same contract; closing it closes ``inner``."""

    def __init__(self, inner: Engine) -> None:
        self._inner = inner

    @property
    def model(self) -> ModelInfo:
        """The inner engine's model (the cheater claims to have run it)."""
        return self._inner.model

    @property
    def contract(self) -> DecodingContract:
        """The inner engine's contract (the cheater claims to honour it)."""
        return self._inner.contract

    def close(self) -> None:
        """Close the inner engine."""
        self._inner.close()


class WrongTokensEngine(_Impostor):
    """Runs ``inner`` honestly, then returns plausible but wrong tokens, claiming to be ``inner``.

    The first ``n // 2`` tokens are the honest ones; every later position is replaced by a different
    token, chosen deterministically from the tokenization of a fixed decoy sentence. The length and
    ``finish_reason`` are the honest ones, and ``model``/``contract`` are ``inner``'s, so only comparing
    the tokens with another replica's reveals the cheat.

    When ``inner`` can tokenize and detokenize (as :class:`~opengrid.engines.llama.LlamaEngine` can), the
    decoy tokens come from its vocabulary and the text is re-decoded from the wrong tokens, so tokens and
    text agree. Otherwise each replaced token is ``token ^ 1`` (a neighbouring id) and the text is left
    honest: tokens and text then disagree, which a checker may also notice.

    An empty honest output has nothing to replace and is returned unchanged.
    """

    def __init__(self, inner: Engine) -> None:
        """Wrap ``inner``; it is closed by :meth:`close`."""
        super().__init__(inner)
        self._decoys: tuple[int, ...] | None = None

    def generate(self, request: GenerationRequest) -> Generation:
        """The honest generation with its last half (rounded up) replaced by other tokens."""
        honest = self._inner.generate(request)
        n = len(honest.tokens)
        keep = n // 2
        codec = self._inner if isinstance(self._inner, _TokenCodec) else None
        if codec is not None:
            decoys = self._decoy_tokens(codec)
            wrong = [_pick(decoys, i, t) for i, t in enumerate(honest.tokens[keep:])]
        else:
            wrong = [t ^ 1 for t in honest.tokens[keep:]]
        tokens = (*honest.tokens[:keep], *wrong)
        text = codec.detokenize(tokens) if codec is not None and n else honest.text
        return Generation(tokens=tokens, text=text, finish_reason=honest.finish_reason)

    def _decoy_tokens(self, codec: _TokenCodec) -> tuple[int, ...]:
        if self._decoys is None:
            prompt_tokens = codec.tokenize("")  # BOS (or nothing): not part of the decoy text
            tokens = codec.tokenize(_DECOY_TEXT)[len(prompt_tokens) :]
            self._decoys = tuple(dict.fromkeys(tokens))  # distinct, in order
        return self._decoys


def _pick(decoys: tuple[int, ...], i: int, honest: int) -> int:
    """The i-th decoy token, or the next one when it happens to equal the honest token."""
    candidate = decoys[i % len(decoys)]
    return candidate if candidate != honest else decoys[(i + 1) % len(decoys)]


class LazyEngine(_Impostor):
    """An adversary that does no work: it returns random tokens of the right length, claiming the
    honest model's contract. Exists to test canaries and replication; never used unless asked for."""

    def __init__(self, inner: Engine, *, seed: int = 0) -> None:
        super().__init__(inner)
        self._rng = random.Random(seed)

    def generate(self, request: GenerationRequest) -> Generation:
        tokens = tuple(self._rng.randrange(3, 200) for _ in range(request.max_tokens))
        detokenize = getattr(self._inner, "detokenize", None)
        text = detokenize(tokens) if detokenize is not None else "".join(chr(97 + t % 26) for t in tokens)
        return Generation(tokens=tokens, text=text, finish_reason="length")


class SwappedModelEngine(_Impostor):
    """An adversary that runs a different (cheaper) model while announcing the honest one's name and
    contract — a model swap. Exists to test canaries and replication; never used unless asked for."""

    def __init__(self, claimed: Engine, actual: Engine) -> None:
        super().__init__(claimed)
        self._actual = actual

    def generate(self, request: GenerationRequest) -> Generation:
        return self._actual.generate(request)

    def close(self) -> None:
        super().close()
        self._actual.close()

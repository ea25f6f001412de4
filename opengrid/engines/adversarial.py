"""Cheating engines, to demonstrate and test that verification (replicas, audits, canaries) catches them.

They exist for the demo and the tests only (the node's hidden ``--adversary`` flag); nothing uses them
unless explicitly asked to. As provers: wrong tokens in the second half (:class:`WrongTokensEngine`),
random tokens (:class:`LazyEngine`), another model (:class:`SwappedModelEngine`), one token in ``n``
changed (:class:`OneInNEngine`), honest until trusted then cheating on a schedule
(:class:`IntermittentEngine`). As an auditor: a pass for every claim without scoring it
(:class:`RubberStampEngine`).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from opengrid.core.audit import PositionEvidence
from opengrid.engines.base import Engine, Generation, GenerationRequest, ModelInfo, ScoreRequest, Scoring
from opengrid.wire.contract import DecodingContract

__all__ = [
    "IntermittentEngine",
    "LazyEngine",
    "OneInNEngine",
    "RubberStampEngine",
    "SwappedModelEngine",
    "WrongTokensEngine",
]

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


class OneInNEngine(_Impostor):
    """Runs ``inner`` honestly, then changes one token in ``n``: positions ``n - 1``, ``2n - 1``, ...
    get another in-vocabulary token (the decoy sentence's, as :class:`WrongTokensEngine` picks them),
    and the text is re-decoded from the changed tokens when ``inner`` can (so text and tokens agree).
    The cheat an auditor's first ``audit_min_positions`` (20) always catch (spec/verification.md §13.5)."""

    def __init__(self, inner: Engine, *, n: int = 20) -> None:
        """Wrap ``inner`` (closed by :meth:`close`); ``n`` >= 1."""
        super().__init__(inner)
        self._n = max(1, n)
        self._decoys = WrongTokensEngine(inner)

    def generate(self, request: GenerationRequest) -> Generation:
        """The honest generation with every ``n``-th token changed."""
        honest = self._inner.generate(request)
        codec = self._inner if isinstance(self._inner, _TokenCodec) else None
        decoys = self._decoys._decoy_tokens(codec) if codec is not None else ()
        tokens = list(honest.tokens)
        for i in range(self._n - 1, len(tokens), self._n):
            tokens[i] = _pick(decoys, i, tokens[i]) if decoys else tokens[i] ^ 1
        text = codec.detokenize(tokens) if codec is not None and tokens else honest.text
        return Generation(tokens=tuple(tokens), text=text, finish_reason=honest.finish_reason)


class IntermittentEngine(_Impostor):
    """Honest until trusted, then cheating now and then, on a fixed schedule (deterministic, so a test
    sees its cheats in a bounded run): its generations number ``honest_first``, ``honest_first +
    every``, ``honest_first + 2 * every``, ... (counted from 0) are ``cheat``'s, every other one is
    ``inner``'s. ``cheats`` counts the cheats so far."""

    def __init__(self, inner: Engine, cheat: Engine, *, honest_first: int = 10, every: int = 20) -> None:
        """Wrap ``inner`` and ``cheat`` (``cheat`` usually wraps ``inner`` too: only ``inner`` is
        closed)."""
        super().__init__(inner)
        self._cheat = cheat
        self._honest_first = max(0, honest_first)
        self._every = max(1, every)
        self.generations = 0
        """Generations so far."""
        self.cheats = 0
        """Cheating generations so far."""

    def cheats_on(self, number: int) -> bool:
        """Whether generation ``number`` (0-based) is a cheat."""
        return number >= self._honest_first and (number - self._honest_first) % self._every == 0

    def generate(self, request: GenerationRequest) -> Generation:
        """``cheat``'s generation on the schedule, ``inner``'s otherwise."""
        number = self.generations
        self.generations += 1
        if self.cheats_on(number):
            self.cheats += 1
            return self._cheat.generate(request)
        return self._inner.generate(request)


class RubberStampEngine(_Impostor):
    """Generates honestly (so its record as a prover stays clean) but, as an auditor, scores nothing: its
    evidence puts every claimed token at the model's top (gap 0), so its report passes any claim and
    collects the audit's pay for no work. Canary audits and second audits catch it
    (spec/verification.md §13.6). ``stamped`` counts the claims it passed so."""

    def __init__(self, inner: Engine) -> None:
        """Wrap ``inner``; it is closed by :meth:`close`."""
        super().__init__(inner)
        self.stamped = 0

    def generate(self, request: GenerationRequest) -> Generation:
        """The honest generation."""
        return self._inner.generate(request)

    def score(self, request: ScoreRequest) -> Scoring:
        """Evidence of a perfect claim for every position asked for, without running the model."""
        self.stamped += 1
        tokens = [*request.tokens, 0][: request.rows]  # the end-of-generation position names no token
        evidence = tuple(
            PositionEvidence(token=t, logprob=0.0, gap=0.0, rank=0, mask_margin=0.0) for t in tokens
        )
        return Scoring(evidence=evidence, prompt_tokens=0)

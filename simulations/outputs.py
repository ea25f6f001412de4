"""What a simulated model "generates": token ids derived from a hash, so honest replicas agree.

Real inference under a pinned decoding contract is a deterministic function of (weights, prompt,
settings); the simulator keeps that property and nothing else: the tokens are SHAKE-256 of the prompt and
the contract digest. A different contract (a swapped model) or a lazy worker gives different tokens.
"""

from __future__ import annotations

import hashlib
import random

VOCAB = 32_000


def tokens_from(seed: bytes, n: int) -> tuple[int, ...]:
    """``n`` token ids in ``[0, VOCAB)`` derived from ``seed``."""
    raw = hashlib.shake_256(seed).digest(4 * n)
    return tuple(int.from_bytes(raw[i : i + 4], "big") % VOCAB for i in range(0, 4 * n, 4))


def honest_tokens(prompt: str, contract_digest: bytes, n: int) -> tuple[int, ...]:
    """What every honest worker running this contract returns."""
    return tokens_from(b"model\x00" + contract_digest + prompt.encode(), n)


def random_tokens(rng: random.Random, n: int) -> tuple[int, ...]:
    """Garbage: what a lazy worker returns instead of running the model."""
    return tuple(rng.randrange(VOCAB) for _ in range(n))

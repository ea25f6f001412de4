"""How a simulated worker answers a job: honest, or one of the adversary plug-ins.

A behaviour decides the tokens a worker returns and how much real work it spends; it never touches the
protocol. Add one by writing a class with ``name``, ``work_fraction`` and ``answer`` and listing it in
:func:`make_behaviour`.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Protocol

from simulations.outputs import honest_tokens, random_tokens, tokens_from


class Behaviour(Protocol):
    """A worker's answering strategy."""

    name: str
    work_fraction: float
    """Share of honest inference time it spends (a lazy worker returns almost at once)."""

    def answer(
        self, prompt: str, contract_digest: bytes, n: int, rng: random.Random
    ) -> tuple[int, ...] | None:
        """The tokens to return, or None to never answer."""
        ...


@dataclass(frozen=True)
class Honest:
    """Runs the pinned model: its output matches every other honest replica."""

    name: str = "honest"
    work_fraction: float = 1.0

    def answer(
        self, prompt: str, contract_digest: bytes, n: int, rng: random.Random
    ) -> tuple[int, ...] | None:
        return honest_tokens(prompt, contract_digest, n)


@dataclass(frozen=True)
class Lazy:
    """Skips inference and returns random tokens to collect points for nothing."""

    name: str = "lazy"
    work_fraction: float = 0.02

    def answer(
        self, prompt: str, contract_digest: bytes, n: int, rng: random.Random
    ) -> tuple[int, ...] | None:
        return random_tokens(rng, n)


@dataclass(frozen=True)
class ModelSwap:
    """Announces the pinned contract but runs a cheaper model: swappers agree with one another."""

    name: str = "model_swap"
    work_fraction: float = 0.3

    def answer(
        self, prompt: str, contract_digest: bytes, n: int, rng: random.Random
    ) -> tuple[int, ...] | None:
        swapped = hashlib.sha256(b"cheaper model\x00" + contract_digest).digest()
        return honest_tokens(prompt, swapped, n)


@dataclass(frozen=True)
class Colluding:
    """Members of ``group`` return the same wrong output, hoping to be picked together and win the vote."""

    group: str = "cartel"
    name: str = "colluding"
    work_fraction: float = 0.02

    def answer(
        self, prompt: str, contract_digest: bytes, n: int, rng: random.Random
    ) -> tuple[int, ...] | None:
        return tokens_from(b"collude\x00" + self.group.encode() + b"\x00" + prompt.encode(), n)


@dataclass(frozen=True)
class Withholding:
    """Accepts jobs and never answers, tying up a replica until the coordinator's timeout."""

    name: str = "withholding"
    work_fraction: float = 0.0

    def answer(
        self, prompt: str, contract_digest: bytes, n: int, rng: random.Random
    ) -> tuple[int, ...] | None:
        return None


def make_behaviour(name: str, group: str = "cartel") -> Behaviour:
    """The behaviour called ``name`` (one of scenario.BEHAVIOURS)."""
    match name:
        case "honest":
            return Honest()
        case "lazy":
            return Lazy()
        case "model_swap":
            return ModelSwap()
        case "colluding":
            return Colluding(group=group)
        case "withholding":
            return Withholding()
    raise ValueError(f"unknown behaviour {name!r}")

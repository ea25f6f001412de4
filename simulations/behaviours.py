"""How a simulated worker answers a job: honest, or one of the adversary plug-ins.

A behaviour decides the tokens a worker returns and how much real work it spends; it never touches the
protocol. Add one by writing a class with ``name``, ``work_fraction`` and ``answer`` and listing it in
:func:`make_behaviour`.

As an auditor (audit mode, spec/verification.md §13) a worker scores claims honestly unless its behaviour
says otherwise through :func:`audit_passes_anyway`: a lying auditor passes every claim, a member of an
audit cartel passes its partners' wrong claims (it recognises them: the cartel shares its cheat) and
audits everyone else honestly, to keep its own record clean.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Protocol

from simulations.outputs import VOCAB, honest_tokens, random_tokens, tokens_from


class Behaviour(Protocol):
    """A worker's answering strategy."""

    # Read-only (properties), so the frozen dataclasses below satisfy it.
    @property
    def name(self) -> str: ...

    @property
    def work_fraction(self) -> float:
        """Share of honest inference time it spends (a lazy worker returns almost at once)."""
        ...

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


@dataclass(frozen=True)
class Intermittent:
    """Honest until trusted, then cheats now and then: after ``trusted_after`` answers it returns random
    tokens on a ``cheat_rate`` share of its jobs (the rare cheater of issue 14) and the honest output
    otherwise, so its reputation keeps growing between cheats."""

    cheat_rate: float = 0.05
    trusted_after: int = 10
    cheat_tail: int = 0
    """0: a cheat is random tokens throughout. k > 0: a cheat is the honest output with its last k tokens
    changed, the cheat a prover that knows partial audits score a prefix would choose."""
    name: str = "intermittent"
    work_fraction: float = 1.0
    """It runs the model for its honest answers; a cheat (random tokens) costs it next to nothing, but
    which is which is decided before it starts, so the simulator charges the full time either way."""

    def answer(
        self, prompt: str, contract_digest: bytes, n: int, rng: random.Random
    ) -> tuple[int, ...] | None:
        """Always honest: the simulator calls :meth:`answer_nth`, which knows how many came before."""
        return honest_tokens(prompt, contract_digest, n)

    def answer_nth(
        self, answered: int, prompt: str, contract_digest: bytes, n: int, rng: random.Random
    ) -> tuple[int, ...] | None:
        """The answer to this worker's job number ``answered`` (0-based)."""
        if answered >= self.trusted_after and rng.random() < self.cheat_rate:
            if self.cheat_tail <= 0:
                return random_tokens(rng, n)
            honest = honest_tokens(prompt, contract_digest, n)
            keep = max(0, n - self.cheat_tail)  # every changed token differs from the honest one
            return honest[:keep] + tuple((t + 1 + rng.randrange(VOCAB - 1)) % VOCAB for t in honest[keep:])
        return honest_tokens(prompt, contract_digest, n)


@dataclass(frozen=True)
class LyingAuditor:
    """Generates honestly (so its reputation stays clean) but, as an auditor, says "pass" to every claim
    without scoring it: it collects audit pay for no work and lets any cheat through."""

    name: str = "lying_auditor"
    work_fraction: float = 1.0

    def answer(
        self, prompt: str, contract_digest: bytes, n: int, rng: random.Random
    ) -> tuple[int, ...] | None:
        return honest_tokens(prompt, contract_digest, n)


@dataclass(frozen=True)
class AuditCartel:
    """A colluding prover + auditor pair (or more): as provers, members cheat like :class:`Intermittent`
    but with the cartel's own wrong output (``cartel_tokens``); as auditors they pass any claim that is the
    cartel's output and audit everything else honestly. They win only when a member's claim is audited by
    members alone."""

    group: str = "cartel"
    cheat_rate: float = 0.05
    trusted_after: int = 10
    name: str = "audit_cartel"
    work_fraction: float = 1.0

    def answer(
        self, prompt: str, contract_digest: bytes, n: int, rng: random.Random
    ) -> tuple[int, ...] | None:
        return honest_tokens(prompt, contract_digest, n)

    def answer_nth(
        self, answered: int, prompt: str, contract_digest: bytes, n: int, rng: random.Random
    ) -> tuple[int, ...] | None:
        """The answer to this worker's job number ``answered``: the cartel's output on a cheat."""
        if answered >= self.trusted_after and rng.random() < self.cheat_rate:
            return cartel_tokens(self.group, prompt, n)
        return honest_tokens(prompt, contract_digest, n)


def cartel_tokens(group: str, prompt: str, n: int) -> tuple[int, ...]:
    """The wrong output cartel ``group`` agrees on for ``prompt`` (members recognise it as auditors)."""
    return tokens_from(b"audit cartel\x00" + group.encode() + b"\x00" + prompt.encode(), n)


def audit_passes_anyway(behaviour: Behaviour, prompt: str, claim: tuple[int, ...]) -> bool:
    """Whether this worker, as an auditor, reports "pass" on ``claim`` whatever the model says: always
    for a lying auditor, on its partners' output for a cartel member, never for anyone else."""
    if isinstance(behaviour, LyingAuditor):
        return True
    if isinstance(behaviour, AuditCartel):
        return claim == cartel_tokens(behaviour.group, prompt, len(claim))
    return False


def make_behaviour(
    name: str,
    group: str = "cartel",
    *,
    cheat_rate: float = 0.05,
    trusted_after: int = 10,
    cheat_tail: int = 0,
) -> Behaviour:
    """The behaviour called ``name`` (one of scenario.BEHAVIOURS); ``cheat_rate`` and ``trusted_after``
    tune the intermittent cheaters (``intermittent``, ``audit_cartel``), ``cheat_tail`` where an
    intermittent cheater changes its output."""
    match name:
        case "intermittent":
            return Intermittent(cheat_rate=cheat_rate, trusted_after=trusted_after, cheat_tail=cheat_tail)
        case "lying_auditor":
            return LyingAuditor()
        case "audit_cartel":
            return AuditCartel(group=group, cheat_rate=cheat_rate, trusted_after=trusted_after)
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

"""Which workers run a job: a pure policy over plain data (spec/verification.md §Selection).

Replicas of one job go to distinct workers serving the same numerical class: distinct keys *and* distinct
operators (a non-empty ``Candidate.operator``, e.g. the address a worker connects from, counts once per
job). They are chosen at random so that no worker can predict its partner and collude with it; the draw is
weighted (spec/verification-adaptive.md §Selection): reputation, measured speed and round-trip time tilt
the odds, within bounds, but never make a choice certain.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from opengrid.wire.contract import DecodingContract

T = TypeVar("T")


class RandomSource(Protocol):
    """The slice of ``random.Random`` the core needs; injected so runs are reproducible."""

    def sample(self, population: Sequence[T], k: int) -> list[T]: ...

    def random(self) -> float:
        """A float uniformly drawn from [0, 1)."""
        ...


@dataclass(frozen=True)
class Candidate:
    """A live worker that serves the requested model under ``contract``."""

    peer: str
    key: bytes
    model_name: str
    contract: DecodingContract
    reputation: float = 0.0
    """Scheduling score in [-1, 1] (``Reputation.score``): 0 unknown, negative on probation."""
    tokens_per_s: float = 0.0
    """Measured generation speed on verified results; 0 when not measured yet."""
    rtt_s: float = 0.0
    """Measured round-trip time to the worker; 0 when unknown."""
    speed_claimed: bool = False
    """``tokens_per_s`` is the worker's own start-up claim, not measured on its verified results: it may
    lower the worker's odds (an honest slow machine), never raise them (a liar gains nothing)."""
    operator: str = ""
    """Who runs the worker, as far as the coordinator can tell (e.g. its IP address); candidates sharing
    a non-empty operator never run replicas of one job together. Empty: unknown, counted apart."""


MAX_REPUTATION_FACTOR = 4.0
"""Weight of a long-trusted worker relative to a new one (a worker on probation gets the inverse)."""
SPEED_FACTOR = 2.0
"""Measured speed and RTT each move a weight by at most this factor either way, against the pool median."""


def _median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def _clamp(value: float, low: float, high: float) -> float:
    return min(high, max(low, value))


def candidate_weight(candidate: Candidate, *, median_tokens_per_s: float, median_rtt_s: float) -> float:
    """Relative odds of picking ``candidate``: ``4 ** reputation`` (1/4 to 4), times its speed and its
    RTT against the pool's medians, each clamped to [1/2, 2] (a claimed speed to [1/2, 1]). Unmeasured
    fields count as the median."""
    weight: float = MAX_REPUTATION_FACTOR ** _clamp(candidate.reputation, -1.0, 1.0)
    if candidate.tokens_per_s > 0 and median_tokens_per_s > 0:
        most = 1.0 if candidate.speed_claimed else SPEED_FACTOR
        weight *= _clamp(candidate.tokens_per_s / median_tokens_per_s, 1 / SPEED_FACTOR, most)
    if candidate.rtt_s > 0 and median_rtt_s > 0:
        weight *= _clamp(median_rtt_s / candidate.rtt_s, 1 / SPEED_FACTOR, SPEED_FACTOR)
    return weight


def weights(candidates: Sequence[Candidate]) -> list[float]:
    """``candidate_weight`` of each candidate, against the medians of ``candidates``. The speed median is
    over measured speeds only: claims would let liars raise it and so lower honest workers' odds."""
    tps = _median([c.tokens_per_s for c in candidates if c.tokens_per_s > 0 and not c.speed_claimed])
    rtt = _median([c.rtt_s for c in candidates if c.rtt_s > 0])
    return [candidate_weight(c, median_tokens_per_s=tps, median_rtt_s=rtt) for c in candidates]


def capacity(candidates: Iterable[Candidate]) -> int:
    """How many replicas of one job ``candidates`` can run: distinct keys, a non-empty operator once."""
    return len(_distinct(sorted(candidates, key=lambda c: c.peer), (), ()))


def choose_class(candidates: Iterable[Candidate]) -> list[Candidate]:
    """One candidate per worker of the numerical class with the most distinct workers (ties: smallest
    class digest).

    Replicas are only comparable within one class, so a job never mixes classes; workers are counted,
    not offers, so a worker announcing one model under several names still counts once.
    """
    by_class: dict[bytes, dict[str, Candidate]] = {}
    for candidate in sorted(candidates, key=lambda c: (c.peer, c.model_name)):
        by_class.setdefault(candidate.contract.digest(), {}).setdefault(candidate.peer, candidate)
    if not by_class:
        return []
    best = min(by_class, key=lambda digest: (-len(by_class[digest]), digest))
    return sorted(by_class[best].values(), key=lambda c: c.peer)


def _distinct(
    ordered: Iterable[Candidate],
    exclude: Iterable[str],
    exclude_operators: Iterable[str],
    *,
    one_per_operator: bool = True,
) -> list[Candidate]:
    """Walk ``ordered`` keeping the first candidate of each key (and of each non-empty operator)."""
    excluded = set(exclude)
    operators = {op for op in exclude_operators if op}
    keys: set[bytes] = set()
    kept: list[Candidate] = []
    for candidate in ordered:
        if candidate.peer in excluded or candidate.key in keys or candidate.operator in operators:
            continue
        keys.add(candidate.key)
        if candidate.operator and one_per_operator:
            operators.add(candidate.operator)
        kept.append(candidate)
    return kept


def pick_workers(
    candidates: Sequence[Candidate],
    count: int,
    *,
    exclude: Iterable[str],
    rng: RandomSource,
    exclude_operators: Iterable[str] = (),
) -> list[Candidate]:
    """Pick up to ``count`` workers not in ``exclude``, with distinct keys and operators, at random.

    The result is in draw order (the first is the job's lead replica). When every candidate weighs the
    same and no two share an operator, this is a uniform ``rng.sample``; otherwise it is weighted sampling
    without replacement (Efraimidis-Spirakis: each candidate draws ``u ** (1 / weight)`` and the highest
    draws win), walking the draws in order and skipping a key or operator already taken. Candidates are
    sorted before drawing so the same seed gives the same choice whatever order the caller passed.
    """
    ordered = sorted(candidates, key=lambda c: c.peer)
    banned = {op for op in exclude_operators if op}
    pool = _distinct(ordered, exclude, banned, one_per_operator=False)
    if count <= 0 or not pool:
        return []
    pool_weights = weights(pool)
    operators = [c.operator for c in pool if c.operator]
    if len(set(pool_weights)) == 1 and len(set(operators)) == len(operators):
        return rng.sample(pool, min(count, len(pool)))
    keys = [math.log(u) / w if (u := rng.random()) > 0 else -math.inf for w in pool_weights]
    drawn = [pool[i] for i in sorted(range(len(pool)), key=lambda i: (-keys[i], pool[i].peer))]
    return _distinct(drawn, (), banned)[:count]

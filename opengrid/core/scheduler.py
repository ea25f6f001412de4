"""Which workers run a job: a pure policy over plain data (spec/verification.md §Selection).

Replicas of one job go to distinct workers (distinct keys) serving the same numerical class, chosen at
random so that no worker can predict its partner and collude with it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from opengrid.wire.contract import DecodingContract

T = TypeVar("T")


class RandomSource(Protocol):
    """The slice of ``random.Random`` the core needs; injected so runs are reproducible."""

    def sample(self, population: Sequence[T], k: int) -> list[T]: ...


@dataclass(frozen=True)
class Candidate:
    """A live worker that serves the requested model under ``contract``."""

    peer: str
    key: bytes
    model_name: str
    contract: DecodingContract


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


def pick_workers(
    candidates: Sequence[Candidate], count: int, *, exclude: Iterable[str], rng: RandomSource
) -> list[Candidate]:
    """Pick up to ``count`` distinct workers not in ``exclude``, uniformly at random.

    Candidates are sorted before sampling so the same seed gives the same choice whatever order the
    caller's dict iteration produced.
    """
    excluded = set(exclude)
    seen_keys: set[bytes] = set()
    pool: list[Candidate] = []
    for candidate in sorted(candidates, key=lambda c: c.peer):
        if candidate.peer in excluded or candidate.key in seen_keys:
            continue
        seen_keys.add(candidate.key)
        pool.append(candidate)
    if count <= 0 or not pool:
        return []
    return rng.sample(pool, min(count, len(pool)))

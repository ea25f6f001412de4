"""A coordinator's memory of the jobs it answered lately: how many a minute, how fast (the dashboard).

Bounded: the newest ``MAX_KEPT`` answers, nothing else; it keeps no prompt, no text and no client, only when
each job ended, how long it took from submission to answer and whether it was verified. Times are the
caller's (``trio.current_time()`` on a node), so a test can feed any clock.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

MAX_KEPT = 2000
"""Answers kept (oldest dropped first): a busy coordinator's last minutes, a quiet one's last days."""


@dataclass(frozen=True)
class Answered:
    """One job's end as the coordinator saw it."""

    at: float
    """When it was answered (the caller's clock, seconds)."""
    latency_s: float
    """Seconds from its submission here to its answer."""
    verified: bool
    """True for a verified answer (a receipt), False for an error reply."""


class JobLog:
    """The newest answered jobs, oldest first (at most ``MAX_KEPT``)."""

    def __init__(self, kept: int = MAX_KEPT) -> None:
        self._answered: deque[Answered] = deque(maxlen=kept)
        self.total = 0
        """Jobs answered since the node started (verified or not)."""
        self.failed = 0
        """Of those, the ones answered with an error."""

    def record(self, *, at: float, latency_s: float, verified: bool) -> None:
        """Note that a job was answered at ``at`` after ``latency_s`` seconds."""
        self._answered.append(Answered(at=at, latency_s=max(0.0, latency_s), verified=verified))
        self.total += 1
        self.failed += 0 if verified else 1

    def recent(self, now: float, window_s: float) -> list[Answered]:
        """Answers within the last ``window_s`` seconds before ``now``, oldest first."""
        return [a for a in self._answered if now - window_s < a.at <= now]

    def per_minute(self, now: float, minutes: int) -> list[int]:
        """Jobs answered in each of the last ``minutes`` whole minutes before ``now``, oldest minute first
        (the last item is the minute that ends now)."""
        counts = [0] * minutes
        for answer in self._answered:
            age = now - answer.at
            if 0 <= age < minutes * 60:
                counts[minutes - 1 - int(age // 60)] += 1
        return counts


def percentile(values: list[float], fraction: float) -> float | None:
    """The ``fraction`` quantile of ``values`` (nearest rank; None when there are none)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))
    return ordered[rank]

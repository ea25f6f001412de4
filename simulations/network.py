"""Message delay, loss and partitions between simulated nodes.

Each node gets a point on a unit square (a stand-in for geography), a last-mile latency and a last-mile
bandwidth. A message takes: distance x span + both last miles + exponential jitter + size / bandwidth of
the slower end. Loss and partitions drop messages between workers and coordinators; clients are assumed
to retry, so their messages are never dropped.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from simulations.engine import NS_PER_S
from simulations.scenario import NetworkSpec


@dataclass(frozen=True)
class Place:
    """Where a node sits on the latency map."""

    x: float
    y: float
    last_mile_ms: float
    bandwidth_bps: float


class Network:
    """Latency model plus the set of nodes currently cut off by a partition."""

    def __init__(self, spec: NetworkSpec, rng: random.Random) -> None:
        self.spec = spec
        self._rng = rng
        self._mean_jitter_ns = spec.jitter_ms * 1e6
        self.isolated: set[int] = set()
        """Node ids that cannot reach the other side right now (partition)."""
        self.dropped = 0

    def place(self, rng: random.Random, *, server: bool = False) -> Place:
        """A random place for a new node; servers (coordinators) get the best last mile."""
        low, high = self.spec.last_mile_ms
        bw_low, bw_high = self.spec.bandwidth_mbps
        return Place(
            x=rng.random(),
            y=rng.random(),
            last_mile_ms=low if server else rng.uniform(low, high),
            bandwidth_bps=(bw_high if server else rng.uniform(bw_low, bw_high)) * 1e6,
        )

    def delay_ns(self, a: Place, b: Place, size_bytes: int) -> int:
        """One-way delay of a ``size_bytes`` message from ``a`` to ``b`` (always >= 1 ns)."""
        distance = math.hypot(a.x - b.x, a.y - b.y)
        ms = distance * self.spec.span_ms + a.last_mile_ms + b.last_mile_ms
        jitter = self._rng.expovariate(1.0 / self._mean_jitter_ns) if self._mean_jitter_ns > 0 else 0.0
        transfer = size_bytes * 8 * NS_PER_S / min(a.bandwidth_bps, b.bandwidth_bps)
        return max(1, round(ms * 1e6 + jitter + transfer))

    def delivers(self, worker: int) -> bool:
        """Whether a worker<->coordinator message gets through (partition, then random loss)."""
        if worker in self.isolated or (self.spec.loss > 0 and self._rng.random() < self.spec.loss):
            self.dropped += 1
            return False
        return True

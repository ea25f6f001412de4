"""Job arrivals: a Poisson process, optionally modulated by a day/night cycle (by thinning)."""

from __future__ import annotations

import math
import random

from simulations.scenario import WorkloadSpec

_MAX_THINNING_TRIES = 10_000  # acceptance is >= (1-a)/(1+a) per try, so this bound is never reached


def rate_at(spec: WorkloadSpec, t_s: float) -> float:
    """Arrival rate (jobs/s) at simulated time ``t_s``."""
    phase = 2.0 * math.pi * t_s / spec.diurnal_period_s
    return spec.rate_per_s * (1.0 + spec.diurnal_amplitude * math.sin(phase))


def next_arrival(spec: WorkloadSpec, t_s: float, rng: random.Random) -> float:
    """Time of the next job after ``t_s`` (Lewis-Shedler thinning of a homogeneous process)."""
    amplitude = min(max(spec.diurnal_amplitude, 0.0), 1.0)
    peak = spec.rate_per_s * (1.0 + amplitude)
    for _ in range(_MAX_THINNING_TRIES):
        t_s += rng.expovariate(peak)
        if amplitude == 0.0 or rng.random() * peak <= rate_at(spec, t_s):
            return t_s
    return t_s


def max_tokens(spec: WorkloadSpec, rng: random.Random) -> int:
    """Length of the next job's answer."""
    low, high = spec.max_tokens
    return rng.randint(low, high)

"""Volunteer churn as an on/off renewal process: each worker alternates online and offline periods."""

from __future__ import annotations

import math
import random

from simulations.scenario import DurationSpec


def sample_duration(spec: DurationSpec, rng: random.Random) -> float:
    """One period length in seconds, with mean ``spec.mean_s``."""
    if spec.dist == "exponential":
        return rng.expovariate(1.0 / spec.mean_s)
    if spec.dist == "weibull":
        # Scale chosen so the mean is mean_s whatever the shape: mean = scale * Γ(1 + 1/k).
        scale = spec.mean_s / math.gamma(1.0 + 1.0 / spec.shape)
        return rng.weibullvariate(scale, spec.shape)
    raise ValueError(f"unknown duration distribution {spec.dist!r}; use 'exponential' or 'weibull'")

"""Independent, named random streams derived from one seed.

Each model (latency jitter, churn, workload, ...) draws from its own stream, so adding draws to one model
does not shift every other model's numbers. ``random.Random`` seeded with a str hashes it with sha512,
which does not depend on PYTHONHASHSEED: the streams are the same in every process.
"""

from __future__ import annotations

import random


def stream(seed: int, name: str) -> random.Random:
    """The random stream called ``name`` of run ``seed``."""
    return random.Random(f"opengrid-sim/{seed}/{name}")

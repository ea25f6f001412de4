"""Small scenarios shared by the simulator tests (kept tiny: the whole folder runs in seconds)."""

from __future__ import annotations

from typing import Any

from simulations.scenario import Scenario, parse

SMALL: dict[str, Any] = {
    "name": "small",
    "duration_s": 30,
    "fidelity": "hybrid",
    "real_fraction": 0.3,
    "workers": 24,
    "coordinators": 2,
    # Exact replication: most simulator tests are about it (audit mode is the core default).
    "coordinator": {"heartbeat_s": 5.0, "replica_timeout_s": 20.0, "verify": "replicate"},
    "workload": {"rate_per_s": 3.0, "replicas": 2, "max_tokens": [8, 24]},
    "hardware": [
        {"name": "gpu", "share": 0.5, "tokens_per_s": 60},
        {"name": "cpu", "share": 0.5, "tokens_per_s": 15, "failure_rate": 0.02},
    ],
}


def small(**changes: Any) -> Scenario:
    """The small scenario with top-level keys replaced."""
    return parse({**SMALL, **changes})

"""A ≈1k-node network for one simulated minute runs quickly and gives sane metrics (CI smoke test)."""

from __future__ import annotations

from conftest import small

from simulations.metrics import summarize
from simulations.simulation import simulate


def test_a_thousand_nodes_for_a_simulated_minute() -> None:
    scenario = small(workers=1000, coordinators=8, duration_s=60, real_fraction=0.01)
    run = simulate(scenario, 3)
    m = summarize(run)
    outcomes = m["jobs"]["outcomes"]
    assert len(run.workers) == 1000
    assert m["jobs"]["submitted"] > 100
    assert outcomes["accepted"] >= 0.85 * m["jobs"]["submitted"]
    assert m["detection"]["accepted_bad"] == 0
    assert 1.0 <= m["replicas_per_accepted_job"] <= 3.0
    assert 0 < m["latency_s"]["p50"] <= m["latency_s"]["p99"] < 30
    assert m["ledger_convergence"]["converged_fraction"] > 0.9
    assert sum(1 for w in run.workers if w.full) > 0  # the sampled real workers ran
    assert 0.0 <= m["fairness"]["points_gini"] < 1.0

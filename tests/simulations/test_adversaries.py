"""Adversary plug-ins move the metrics in the expected direction: detection works."""

from __future__ import annotations

from typing import Any

from conftest import small

from simulations.metrics import summarize
from simulations.simulation import simulate


def metrics(**changes: Any) -> dict[str, Any]:
    return summarize(simulate(small(duration_s=40, **changes), 11))


def test_lazy_workers_are_caught_earn_nothing_and_no_bad_answer_is_accepted() -> None:
    base = metrics()
    lazy = metrics(adversaries=[{"kind": "lazy", "fraction": 0.2}])
    assert base["detection"]["bad_replicas"] == 0
    det = lazy["detection"]
    assert det["bad_replicas"] > 5
    assert det["accepted_bad"] == 0  # replicas >= 2: random tokens never reach quorum
    assert det["recall"] == 1.0
    assert det["precision"] is not None and det["precision"] > 0.5
    shares = lazy["fairness"]["by_behaviour"]
    assert shares["lazy"]["points"] == 0
    assert shares["honest"]["points_share"] == 1.0
    assert lazy["fairness"]["points_gini"] > base["fairness"]["points_gini"]


def test_a_cartel_can_win_votes_when_two_members_meet() -> None:
    cartel = metrics(adversaries=[{"kind": "colluding", "fraction": 0.5}])
    det = cartel["detection"]
    assert det["bad_replicas"] > 0
    assert det["accepted_bad"] > 0  # the weakness replication alone leaves: measured, not hidden
    assert det["recall"] < 1.0


def test_withholding_workers_cost_time_not_correctness() -> None:
    base = metrics()
    held = metrics(adversaries=[{"kind": "withholding", "fraction": 0.3}])
    assert held["detection"]["accepted_bad"] == 0
    assert held["counters"].get("results_withheld", 0) > 0
    assert held["latency_s"]["p90"] > base["latency_s"]["p90"]


def test_a_sybil_wave_joins_at_its_time() -> None:
    wave = metrics(adversaries=[{"kind": "sybil_wave", "at_s": 10, "count": 24, "behaviour": "lazy"}])
    assert wave["counters"]["sybils_joined"] == 24
    assert wave["fairness"]["by_behaviour"]["lazy"]["workers"] == 24
    assert wave["fairness"]["by_behaviour"]["lazy"]["points"] == 0


def test_a_partition_drops_messages_and_heals() -> None:
    split = metrics(network={"partitions": [{"start_s": 5, "end_s": 20, "fraction": 0.4}]})
    assert split["counters"]["messages_dropped"] > 0
    assert split["jobs"]["outcomes"]["accepted"] > 0

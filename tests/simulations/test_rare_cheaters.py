"""Issue 14's adversaries of audit mode in the simulator: intermittent cheaters (honest until trusted),
lying auditors and colluding prover + auditor cartels; and the rare-cheater scenario, audit mode against
adaptive replication on one seed (spec/verification.md §13, simulations/README.md)."""

from __future__ import annotations

import pathlib
import random
from typing import Any

import pytest
from conftest import SMALL, small

from simulations.behaviours import AuditCartel, Intermittent, LyingAuditor, audit_passes_anyway, cartel_tokens
from simulations.metrics import summarize
from simulations.outputs import honest_tokens
from simulations.scenario import load
from simulations.simulation import RunOutput, simulate

SCENARIOS = pathlib.Path(__file__).parents[2] / "simulations" / "scenarios"
AUDIT = {
    **SMALL["coordinator"],
    "verify": "audit",
    "canary_rate": 0.0,
    "weighted": False,
    "audit_full_rate": 1.0,
    "audit_second_rate": 0.0,
}
"""Uniform draws: a caught cheater keeps being drawn (reputation-weighted draws would shun it), so a small
run sees enough cheats."""
HALF = {"workers": 20, "workload.rate_per_s": 2.0}
"""The scenarios' networks at half size: 20 workers, not 40, at 2 jobs/s, not 4 (a third of the time).
Each worker's load (0.1 job/s), so when a cheater is trusted, cheats and is caught, stays the same; the
counts of jobs, cheats and catches halve (the bounds below are half the full network's)."""


def run(adversaries: list[dict[str, Any]], **coordinator: Any) -> RunOutput:
    return simulate(small(duration_s=40, coordinator={**AUDIT, **coordinator}, adversaries=adversaries), 11)


def wrong_accepted(out: RunOutput) -> list[tuple[str, ...]]:
    """The credited workers (prover first, then its auditors) of every wrong answer accepted."""
    return [j.credited for j in out.jobs if j.outcome == "accepted" and j.correct is False]


def kinds(out: RunOutput) -> dict[str, str]:
    return {w.peer: w.behaviour.name for w in out.workers}


def test_an_intermittent_cheater_is_honest_until_trusted_then_cheats_at_its_rate() -> None:
    cheater, rng = Intermittent(cheat_rate=0.25, trusted_after=10), random.Random(3)
    honest = honest_tokens("p", b"c", 8)
    assert all(cheater.answer_nth(i, "p", b"c", 8, rng) == honest for i in range(10))
    cheats = sum(cheater.answer_nth(10 + i, "p", b"c", 8, rng) != honest for i in range(2000))
    assert 400 < cheats < 600  # 25 % of 2000


def test_a_tail_cheater_changes_only_the_last_tokens_of_the_honest_output() -> None:
    cheater, rng = Intermittent(cheat_rate=1.0, trusted_after=0, cheat_tail=3), random.Random(3)
    honest = honest_tokens("p", b"c", 40)
    for _ in range(200):
        claim = cheater.answer_nth(0, "p", b"c", 40, rng)
        assert claim is not None and claim[:37] == honest[:37]
        assert all(a != b for a, b in zip(claim[37:], honest[37:], strict=True))
    short = cheater.answer_nth(0, "p", b"c", 2, rng)  # shorter than its tail: every token changed
    assert short is not None and all(a != b for a, b in zip(short, honest[:2], strict=True))


def test_only_lying_auditors_and_cartel_members_on_their_partners_claims_pass_anyway() -> None:
    claim = cartel_tokens("c1", "p", 8)
    assert audit_passes_anyway(LyingAuditor(), "p", honest_tokens("p", b"c", 8))
    assert audit_passes_anyway(AuditCartel(group="c1"), "p", claim)
    assert not audit_passes_anyway(AuditCartel(group="c2"), "p", claim)
    assert not audit_passes_anyway(AuditCartel(group="c1"), "p", honest_tokens("p", b"c", 8))
    assert not audit_passes_anyway(Intermittent(), "p", claim)


def test_a_lying_auditor_lets_a_cheat_through_when_it_is_the_only_auditor() -> None:
    out = run(
        [
            {"kind": "intermittent", "fraction": 0.25, "cheat_rate": 0.5, "trusted_after": 0},
            {"kind": "lying_auditor", "fraction": 0.5},
        ]
    )
    role = kinds(out)
    wrong = wrong_accepted(out)
    assert wrong, "no cheat got through a lying auditor"
    assert all(role[c[0]] == "intermittent" and role[c[1]] == "lying_auditor" for c in wrong)
    assert out.counters["audits_lied"] >= len(wrong)
    assert out.counters["audits_failed"] > 0  # the honest auditors still caught the others


def test_colluders_are_caught_when_another_auditor_is_drawn() -> None:
    cartel = [{"kind": "audit_cartel", "fraction": 0.3, "cheat_rate": 0.5, "trusted_after": 0}]
    alone, paired = run(cartel, auditors=1), run(cartel, auditors=2)
    for out in (alone, paired):
        role = kinds(out)
        # A cartel's wrong answer is accepted only when every auditor drawn was a member.
        assert all({role[p] for p in credited} == {"audit_cartel"} for credited in wrong_accepted(out))
        assert out.counters["audits_failed"] > 0  # claims audited by an outsider were rejected
    assert wrong_accepted(alone), "the cartel never drew its own member as the auditor"
    assert len(wrong_accepted(paired)) < len(wrong_accepted(alone)) / 2
    # With two auditors, members did pass their partners' cheats, and the outsider drawn beside them
    # failed those claims.
    assert paired.counters["audits_lied"] > len(wrong_accepted(paired))


def test_audit_mode_accepts_fewer_wrong_answers_than_adaptive_replication_on_one_seed() -> None:
    overrides = {"duration_s": 500, "adversaries.intermittent.cheat_rate": 0.2, **HALF}
    audited = summarize(simulate(load(SCENARIOS / "rare-cheaters-audit.toml", overrides), 5))
    adaptive = summarize(simulate(load(SCENARIOS / "rare-cheaters-adaptive.toml", overrides), 5))
    assert audited["detection"]["accepted_jobs"] > 750 and adaptive["detection"]["accepted_jobs"] > 750
    assert audited["detection"]["accepted_bad"] == 0 < adaptive["detection"]["accepted_bad"]
    # A generation per job (plus re-runs of caught cheats) and one audit at the measured audit_cost (0.24,
    # the bf16 scoring copy; was 0.44); adaptive replication is cheaper and lets cheats through.
    units = audited["compute_units"]
    assert units["audit_per_job"] == pytest.approx(0.24, abs=0.02)
    assert 1.0 < units["generation_per_job"] < 1.1
    assert adaptive["compute_units"]["per_job"] < units["per_job"]


def test_the_node_default_audit_policy_meets_the_rare_cheater_goal() -> None:
    """Scenario rare-cheaters-default: every [coordinator] key but verify at CoordinatorConfig's default
    and audits at the measured 0.24 (benchmarks/README.md "Rare cheaters": 10,500 jobs, 1.22-1.24 units,
    0 random-token cheats accepted). Here 500 s, 20 % cheat rate, half the network (``HALF``)."""
    overrides = {"duration_s": 500, "adversaries.intermittent.cheat_rate": 0.2, **HALF}
    scenario = load(SCENARIOS / "rare-cheaters-default.toml", overrides)
    assert scenario.coordinator == {"verify": "audit"} and scenario.audit_cost == 0.24
    out = simulate(scenario, 5)
    summary = summarize(out)
    assert summary["detection"]["accepted_jobs"] > 750
    assert out.counters["audits_failed"] > 10  # the cheats were there, and were caught
    assert summary["detection"]["accepted_bad"] == 0
    assert summary["compute_units"]["per_job"] < 1.35


def test_exact_replication_of_two_costs_two_units_per_job() -> None:
    plain = {**SMALL["coordinator"], "adaptive": False, "canary_rate": 0.0}
    units = summarize(simulate(small(duration_s=30, coordinator=plain), 11))["compute_units"]
    assert units["audit"] == 0.0
    assert units["per_job"] == pytest.approx(2.0, abs=0.1)


def test_adaptive_audits_cost_less_and_windows_miss_only_tail_cheats() -> None:
    """Partial windows (spec/verification.md §13.5): random-token cheats are caught by every window, so
    none is accepted at well under a full audit per job; a cheater that changes only the last token gets
    through a window that stops before it, which only full audits catch."""
    scenario = SCENARIOS / "rare-cheaters-audit-adaptive.toml"
    base = {"duration_s": 500, "adversaries.intermittent.cheat_rate": 0.2, **HALF}
    windows = summarize(simulate(load(scenario, base), 5))
    assert windows["detection"]["accepted_jobs"] > 750 and windows["detection"]["accepted_bad"] == 0
    assert windows["compute_units"]["audit_per_job"] < 0.8 * 0.24  # under 80 % of a full audit each
    no_full = {**base, "adversaries.intermittent.cheat_tail": 1, "coordinator.audit_full_rate": 0.0}
    no_full["coordinator.audit_second_rate"] = 0.0
    tail = summarize(simulate(load(scenario, no_full), 5))
    assert tail["detection"]["accepted_bad"] > 0


def test_second_audits_and_canary_audits_catch_lying_auditors_and_cartels() -> None:
    """spec/verification.md §13.6, scenario auditor-checks: 15 % lying auditors, 15 % prover + auditor
    cartel members, 10 % intermittent cheaters. With second audits (10 %, and every claim of a prover
    caught once), canary audits (10 % of claims) and the auditor draw that skips a caught auditor, every
    liar is caught and the wrong answers accepted stop early; with the checks off they go on all run. Half
    the network (``HALF``: 3 lying auditors, 3 cartel members, 2 cheaters)."""
    scenario = SCENARIOS / "auditor-checks.toml"
    duration = 1500.0
    on = simulate(load(scenario, {"duration_s": duration, **HALF}), 1)
    off_settings = {
        **HALF,
        "duration_s": duration,
        "coordinator.audit_second_rate": 0.0,
        "coordinator.audit_canary_rate": 0.0,
        "coordinator.audit_offender_second": False,
    }
    off = simulate(load(scenario, off_settings), 1)
    checked, unchecked = summarize(on), summarize(off)
    assert checked["detection"]["accepted_jobs"] > 2750
    assert on.counters["lying_auditors_caught"] == on.counters["lying_auditors"] == 3
    assert on.counters["audit_cartels_caught"] >= 2  # of 3
    assert on.counters["canary_audits"] > 250
    # A caught auditor is never drawn again; the few audits it still scored were sent before its catch.
    assert on.counters.get("audits_by_caught_liars", 0) <= 5
    assert off.counters.get("lying_auditors_caught", 0) == 0 == off.counters.get("audit_cartels_caught", 0)
    wrong_on = [j.submit_ns / 1e9 for j in wrong_accepted_jobs(on)]
    wrong_off = [j.submit_ns / 1e9 for j in wrong_accepted_jobs(off)]
    assert len(wrong_on) * 2 < len(wrong_off)
    # Early: the last at 387 s of 1,500 with audits at 0.24 (381 s on the full network; the bound was a
    # quarter when audits cost 0.44: an audit's simulated time moves every later draw).
    assert max(wrong_on, default=0.0) < duration / 3, "the liars are caught early; later cheats fail"
    assert max(wrong_off) > duration / 2
    # What the checks cost: second audits, offenders' second audits and canary audits (0.24 each).
    assert checked["compute_units"]["per_job"] < unchecked["compute_units"]["per_job"] + 0.3


def wrong_accepted_jobs(out: RunOutput) -> list[Any]:
    return [j for j in out.jobs if j.outcome == "accepted" and j.correct is False]

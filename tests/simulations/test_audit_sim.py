"""Audit mode in the simulator (spec/verification.md §13): the simulator executes DispatchAudit with
honest auditors (every worker audits honestly: lying auditors are not modelled yet), so a scenario can
compare audit mode with replication on the same workload."""

from __future__ import annotations

from typing import Any

from conftest import SMALL, small

from simulations.metrics import summarize
from simulations.simulation import RunOutput, simulate

LAZY = [{"kind": "lazy", "fraction": 0.2}]
PLAIN = {**SMALL["coordinator"], "adaptive": False, "canary_rate": 0.0, "audit_second_rate": 0.0}


def run(**coordinator: Any) -> RunOutput:
    return simulate(small(duration_s=40, coordinator={**PLAIN, **coordinator}, adversaries=LAZY), 11)


def test_audit_mode_generates_once_per_job_and_never_pays_or_accepts_a_lazy_prover() -> None:
    audited = run(verify="audit")
    replicated = summarize(run())
    metrics = summarize(audited)
    counters = metrics["counters"]
    assert counters["audit_dispatches"] > 20 and counters["audits_failed"] > 0
    assert metrics["jobs"]["outcomes"]["accepted"] > 20
    det = metrics["detection"]
    assert det["bad_replicas"] > 0 and det["accepted_bad"] == 0
    lazy = {w.peer for w in audited.workers if w.behaviour.name == "lazy"}
    accepted = [j for j in audited.jobs if j.outcome == "accepted"]
    assert all(j.credited[0] not in lazy for j in accepted), "a lazy prover's answer was accepted"
    assert any(set(j.credited[1:]) & lazy for j in accepted)  # lazy provers still audit honestly here
    # One generation per job, plus re-runs after caught cheats; replication runs two or more.
    assert metrics["replicas_per_accepted_job"] < 1.5 < replicated["replicas_per_accepted_job"]

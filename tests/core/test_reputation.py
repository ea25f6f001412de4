"""Reputation: a pure fold over verified outcomes; slow to earn, fast to lose; rebuilt from the ledger."""

from __future__ import annotations

import itertools
import random

from grid_harness import HONEST, NETWORK, Grid, cheat, signing_key
from opengrid_ledger import Evidence, LedgerState, decode_body

from opengrid.core.coordinator import Coordinator, CoordinatorConfig
from opengrid.core.reputation import (
    PROBATION_JOBS,
    Reputation,
    fold_outcomes,
    replication_probability,
    reputation_from_ledger,
    required_streak,
)
from opengrid.core.worker import Output
from opengrid.wire.messages import JobAccepted, RunJob


def after(*outcomes: str, start: Reputation | None = None) -> Reputation:
    reputation = start or Reputation()
    for outcome in outcomes:
        assert outcome in ("valid", "invalid", "timeout")
        reputation = reputation.update(outcome)  # type: ignore[arg-type]
    return reputation


def test_a_new_identity_has_no_reputation_at_all() -> None:
    fresh = Reputation()
    assert (fresh.streak, fresh.trust, fresh.score) == (0, 0.0, 0.0)
    assert replication_probability(fresh, min_trust_streak=10, min_rate=0.05) == 1.0


def test_trust_is_slow_to_earn_with_diminishing_returns() -> None:
    trust = [after(*["valid"] * n).trust for n in range(0, 101)]
    gains = [b - a for a, b in itertools.pairwise(trust)]
    assert all(g > 0 for g in gains)
    assert all(later < earlier for earlier, later in itertools.pairwise(gains))
    assert trust[10] == 0.5
    assert trust[100] < 0.91


def test_one_invalid_result_loses_everything_at_once() -> None:
    veteran = after(*["valid"] * 200)
    caught = veteran.update("invalid")
    assert (caught.streak, caught.valid, caught.invalid, caught.probation) == (0, 200, 1, PROBATION_JOBS)
    assert caught.score == -1.0  # below a brand-new identity
    assert caught.score < Reputation().score
    assert replication_probability(caught, min_trust_streak=10, min_rate=0.05) == 1.0


def test_probation_is_paid_back_by_verified_results_only() -> None:
    caught = after("invalid")
    assert after(*["valid"] * 5, start=caught).score == -0.5
    assert after(*["timeout"] * 5, start=caught).score == -1.0
    assert after(*["valid"] * PROBATION_JOBS, start=caught).score > 0


def test_each_offence_doubles_the_streak_needed_for_trust_up_to_eight_times() -> None:
    needed = [required_streak(Reputation(invalid=n), 10) for n in range(6)]
    assert needed == [10, 20, 40, 80, 80, 80]
    once = after("invalid", *["valid"] * 19)
    assert replication_probability(once, min_trust_streak=10, min_rate=0.0) == 1.0
    assert replication_probability(once.update("valid"), min_trust_streak=10, min_rate=0.0) == 1 / 20


def test_timeouts_lower_the_score_but_are_not_cheating() -> None:
    steady = after(*["valid"] * 30)
    flaky = steady.update("timeout")
    assert flaky.streak == steady.streak  # a crash is not evidence of a wrong answer
    assert flaky.score < steady.score
    assert after("timeout", "timeout").score < 0
    assert after(*["timeout"] * 50).flaky == 8
    assert after("timeout", "valid").score == after("valid").score


def test_replication_probability_is_boinc_one_over_n_with_a_floor() -> None:
    rate = {
        n: replication_probability(Reputation(streak=n), min_trust_streak=10, min_rate=0.05)
        for n in (9, 10, 20, 40)
    }
    assert rate == {9: 1.0, 10: 0.1, 20: 0.05, 40: 0.05}
    assert replication_probability(Reputation(streak=40), min_trust_streak=10, min_rate=0.0) == 1 / 40
    assert replication_probability(Reputation(streak=99), min_trust_streak=0, min_rate=0.0) == 1.0


def test_fold_outcomes_applies_pairs_in_order_without_touching_the_start() -> None:
    start = {b"a": Reputation(streak=3)}
    table = fold_outcomes([(b"a", "valid"), (b"b", "invalid"), (b"a", "invalid"), (b"a", "valid")], start)
    assert start == {b"a": Reputation(streak=3)}
    assert table[b"a"].streak == 1 and table[b"a"].invalid == 1
    assert table[b"b"] == Reputation(invalid=1, probation=PROBATION_JOBS)


def test_reputation_is_rebuilt_from_the_ledger_at_start() -> None:
    config = CoordinatorConfig(verify="replicate", canary_rate=0.0, adaptive=False)
    grid = Grid(n=4, config=config)
    grid.register()
    for job in range(1, 13):
        grid.run_job(job, lambda peer, run: cheat(1) if peer == "w3" and run.job_id[-1] % 2 else HONEST)
    live = grid.coordinator.reputation
    assert live[grid.key("w3")].invalid > 0
    assert sum(r.valid for r in live.values()) >= 24

    restarted = Coordinator(
        network=NETWORK,
        signing_key=signing_key("coordinator"),
        ledger=grid.coordinator.ledger,
        rng=random.Random(1),
        config=config,
    )
    assert restarted.reputation == live
    assert reputation_from_ledger(grid.coordinator.ledger) == live
    assert reputation_from_ledger(grid.coordinator.ledger, author=b"\x01" * 32) == {}


def test_timeouts_and_failed_checks_survive_a_restart_through_evidence_entries() -> None:
    config = CoordinatorConfig(verify="replicate", canary_rate=0.0, adaptive=False)
    grid = Grid(n=4, config=config)
    grid.register()

    def behaviour(peer: str, run: RunJob) -> Output | None:
        if peer == "w2":
            return None  # fails every replica: a timeout-like failure
        return HONEST

    for job in range(1, 13):
        grid.run_job(job, behaviour, now=float(job))
        grid.register(now=float(job))  # the failing worker beats again and is picked again
    live = grid.coordinator.reputation
    assert live[grid.key("w2")].timeouts > 0
    payloads = [decode_body(e.body).payload for e in grid.coordinator.ledger.entries()]
    assert any(isinstance(p, Evidence) for p in payloads)  # one per job that had a failure
    restarted = Coordinator(
        network=NETWORK,
        signing_key=signing_key("coordinator"),
        ledger=grid.coordinator.ledger,
        rng=random.Random(1),
        config=config,
    )
    assert restarted.reputation[grid.key("w2")].timeouts == live[grid.key("w2")].timeouts
    assert restarted.reputation == live


def test_a_single_credit_receipt_proves_nothing_on_rebuild() -> None:
    grid = Grid(n=2, config=CoordinatorConfig(verify="replicate", canary_rate=0.0))
    grid.register()
    reply = [e for e in grid.run_job(1, lambda p, r: HONEST, replicas=1)]
    assert any(isinstance(getattr(e, "reply", None), JobAccepted) for e in reply)
    assert len(grid.coordinator.ledger) == 1
    assert reputation_from_ledger(grid.coordinator.ledger) == {} == grid.coordinator.reputation


def test_the_ledger_of_another_coordinator_does_not_vouch_for_workers() -> None:
    grid = Grid(n=2, config=CoordinatorConfig(verify="replicate", canary_rate=0.0))
    grid.register()
    grid.run_job(1, lambda p, r: HONEST)
    synced = LedgerState(NETWORK, minters=[grid.coordinator.public_key])
    for entry in grid.coordinator.ledger.entries():
        synced.apply(entry)
    assert reputation_from_ledger(synced) != {}
    other = Coordinator(
        network=NETWORK,
        signing_key=signing_key("another coordinator"),
        ledger=synced,
        rng=random.Random(1),
    )
    assert other.reputation == {}

"""The adaptive audit policy (spec/verification.md §13.5): every claim is audited; the plan decides how many
auditors and how long a window of positions, and its stated detection probabilities hold."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest
from grid_harness import NETWORK, OFFERS, signing_key
from opengrid_ledger import LedgerState

from opengrid.core.audit import PositionEvidence
from opengrid.core.audit_policy import (
    AuditPlan,
    AuditPlanConfig,
    detection_probability,
    plan,
    window_survival,
)
from opengrid.core.reputation import Reputation
from opengrid.core.worker import WorkerLogic
from opengrid.errors import ConfigError
from opengrid.wire.messages import AuditJob

TRUSTED = Reputation(streak=50, valid=50)
NEW = Reputation()
CAUGHT_ONCE = Reputation(streak=15, valid=80, invalid=1)  # needs 20 in a row after one offence
REFORMED = Reputation(streak=25, valid=90, invalid=1)  # has rebuilt the doubled streak
POLICY = AuditPlanConfig(full_rate=0.1, second_rate=0.02, min_positions=20)


class NoDraws:
    """A random source that must not be used: plans that leave no choice draw nothing."""

    def random(self) -> float:
        raise AssertionError("the plan drew a random number where no choice was left")


def plans(
    config: AuditPlanConfig, n: int, reputation: Reputation, count: int, seed: int = 1
) -> list[AuditPlan]:
    rng = random.Random(seed)
    return [plan(config, n, reputation, rng) for _ in range(count)]


def test_the_default_scores_every_position_once_and_draws_nothing() -> None:
    for reputation in (NEW, TRUSTED):
        p = plan(AuditPlanConfig(), 64, reputation, NoDraws())
        assert (p.auditors, p.end, p.full, p.score_end, p.fraction) == (1, 64, True, 0, 1.0)


def test_untrusted_and_short_claims_are_scored_in_full() -> None:
    never_full = AuditPlanConfig(full_rate=0.0, min_positions=20)
    for reputation in (NEW, CAUGHT_ONCE, Reputation(streak=9, valid=9)):
        p = plan(never_full, 64, reputation, NoDraws())
        assert (p.end, p.reason) == (64, "untrusted")
    p = plan(never_full, 20, TRUSTED, NoDraws())
    assert (p.end, p.reason) == (20, "short")


def test_an_offender_is_scored_in_full_for_good_unless_forgiven() -> None:
    never_full = AuditPlanConfig(full_rate=0.0, min_positions=20)
    assert plan(never_full, 64, REFORMED, NoDraws()).reason == "untrusted"
    forgiving = AuditPlanConfig(full_rate=0.0, min_positions=20, suspect_offenders=False)
    assert {p.reason for p in plans(forgiving, 64, REFORMED, 100)} == {"window"}
    assert plan(forgiving, 64, CAUGHT_ONCE, NoDraws()).reason == "untrusted"


def test_every_claim_is_checked_and_windows_start_at_the_first_position() -> None:
    for n in (1, 21, 64, 513):
        for p in plans(AuditPlanConfig(full_rate=0.0, second_rate=0.0, min_positions=20), n, TRUSTED, 2000):
            assert p.auditors >= 1
            assert min(n, 20) <= p.end <= n
            assert p.score_end == (0 if p.end == n else p.end)


def test_window_ends_are_uniform_beyond_the_minimum() -> None:
    n, m = 30, 20
    ends = Counter(p.end for p in plans(AuditPlanConfig(full_rate=0.0, min_positions=m), n, TRUSTED, 22_000))
    assert sorted(ends) == list(range(m, n + 1))  # every end from the minimum to the whole claim
    for count in ends.values():
        assert abs(count - 2000) < 5 * math.sqrt(2000)


def test_second_audits_add_an_auditor_and_score_everything_for_any_prover() -> None:
    config = AuditPlanConfig(auditors=1, full_rate=1.0, second_rate=0.1)
    for reputation in (NEW, TRUSTED):
        drawn = plans(config, 64, reputation, 10_000)
        second = [p for p in drawn if p.reason == "second"]
        assert all(p.auditors == 2 and p.full for p in second)
        assert all(p.auditors == 1 and p.full for p in drawn if p.reason != "second")
        assert abs(len(second) - 1000) < 5 * math.sqrt(900)


def test_the_same_draws_give_the_same_plans() -> None:
    assert plans(POLICY, 64, TRUSTED, 500, seed=7) == plans(POLICY, 64, TRUSTED, 500, seed=7)


@pytest.mark.parametrize("config", [POLICY, AuditPlanConfig(full_rate=0.05, min_positions=8, skew=2.0)])
@pytest.mark.parametrize("first_wrong", [0, 19, 20, 40, 63])
def test_stated_detection_probability_matches_the_draws(config: AuditPlanConfig, first_wrong: int) -> None:
    n, count = 64, 20_000
    caught = sum(p.end > first_wrong for p in plans(config, n, TRUSTED, count, seed=first_wrong))
    expected = detection_probability(config, n, first_wrong)
    sigma = math.sqrt(count * expected * (1 - expected)) or 1.0
    assert abs(caught - count * expected) < 5 * sigma


def test_one_token_in_twenty_changed_is_always_caught() -> None:
    # Whatever the claim's length, its first change is among the first 20 positions: always scored.
    for n in (20, 21, 64, 128, 4096):
        for offset in range(20):
            assert detection_probability(POLICY, n, offset) == 1.0
    assert all(p.end >= 20 for p in plans(POLICY, 4096, TRUSTED, 2000))


def test_a_tail_cheat_is_caught_about_as_often_as_the_full_rate_plus_its_share() -> None:
    q = POLICY.full_rate + POLICY.second_rate
    last = detection_probability(POLICY, 64, 63)
    assert last == pytest.approx(q + (1 - q) / 45)  # k + 1 = 45 window ends
    half = detection_probability(POLICY, 64, 32)
    assert half == pytest.approx(q + (1 - q) * (1 - 13 / 45))
    assert detection_probability(POLICY, 64, 63, prover_trusted=False) == 1.0
    assert window_survival(POLICY, 64, 64) == 0.0


@pytest.mark.parametrize(
    ("field", "value"),
    [("auditors", 0), ("full_rate", 1.5), ("second_rate", -0.1), ("min_positions", 0), ("skew", 0.5)],
)
def test_bad_knobs_are_config_errors_that_name_the_value(field: str, value: float) -> None:
    with pytest.raises(ConfigError, match=str(value)):
        AuditPlanConfig(**{field: value})  # type: ignore[arg-type]


def test_an_auditor_reports_its_window_only() -> None:
    """An engine that scored the whole claim (the HTTP engine does) reports the plan's window: a cheat past
    it is not the auditor's to see, and the count is the one the coordinator expects."""
    worker = WorkerLogic(
        network=NETWORK, signing_key=signing_key("auditor"), offers=OFFERS, ledger=LedgerState(NETWORK)
    )
    tokens = list(range(100, 130))
    gaps = [0.05] * 25 + [12.0] * 5  # the claim departs from the model at position 25

    def report(score_end: int) -> tuple[str, int]:
        audit = AuditJob(
            job_id=bytes(16),
            contract=OFFERS[0].contract,
            prompt="p",
            tokens=tokens,
            text="t",
            finish_reason="length",
            score_end=score_end,
        )
        evidence = [PositionEvidence(t, -g, g, 0, 0.0) for t, g in zip(tokens, gaps, strict=True)]
        r = worker.report(audit, evidence)
        return r.verdict, r.n_scored

    assert report(0) == ("fail", 30)
    assert report(25) == ("pass", 25)
    assert report(26) == ("fail", 26)
    assert report(31) == ("fail", 30)

"""Honest divergence (spec/verification.md §9): an outvoted result that agreed with the winner for at least
its first half, from a worker whose record affords it, costs the streak but is not an offence."""

from __future__ import annotations

from grid_harness import HONEST, Grid, finished, open_receipt
from hypothesis import given
from hypothesis import strategies as st

from opengrid.core.coordinator import CoordinatorConfig
from opengrid.core.effects import Effect, Penalize
from opengrid.core.reputation import (
    DIVERGENCE_MIN_VALID,
    PROBATION_JOBS,
    VALID_PER_DIVERGENCE,
    Reputation,
    affords_divergence,
    agreed_prefix,
    looks_like_honest_divergence,
)
from opengrid.core.worker import Output
from opengrid.wire.messages import JobAccepted

PLAIN = CoordinatorConfig.plain()
"""Every job replicated as asked, uniform choice, no canaries: the test decides who runs what."""
ROUNDED = Output(tokens=(101, 202, 303, 777, 888), text=" the quick brown cat", finish_reason="length")
"""HONEST's first three tokens, then another path: what a build that rounds differently produces."""
EARLY = Output(tokens=(101, 999, 303, 404, 505), text=" the slow brown fox", finish_reason="length")
"""Differs at the second token: not honest-looking."""


def test_the_shape_of_an_honest_divergence() -> None:
    assert agreed_prefix([1, 2, 3], [1, 2, 4]) == 2 and agreed_prefix([], [1]) == 0
    assert looks_like_honest_divergence([1, 2, 3, 4], [1, 2, 9, 9])  # half agreed
    assert looks_like_honest_divergence([1, 2, 3, 4, 5], [1, 2, 3, 9])  # ceil(5/2) = 3 agreed
    assert not looks_like_honest_divergence([1, 2, 3, 4, 5], [1, 2, 9, 9, 9])
    assert not looks_like_honest_divergence([1], [1, 2])  # too short to tell anything
    assert not looks_like_honest_divergence([1, 2, 3, 4], [7, 2, 3, 4])  # a lazy first token


def test_only_a_track_record_affords_a_divergence() -> None:
    assert not affords_divergence(Reputation())  # a fresh key buys no leniency
    assert not affords_divergence(Reputation(valid=DIVERGENCE_MIN_VALID - 1, streak=DIVERGENCE_MIN_VALID - 1))
    veteran = Reputation(valid=3 * VALID_PER_DIVERGENCE, streak=3 * VALID_PER_DIVERGENCE)
    assert affords_divergence(veteran)
    assert affords_divergence(Reputation(valid=60, divergent=2))
    assert not affords_divergence(Reputation(valid=60, divergent=3))  # one per 20 valid at most
    after = veteran.update("divergent")
    assert (after.streak, after.divergent, after.invalid, after.probation) == (0, 1, 0, 0)


@given(st.integers(min_value=0, max_value=200), st.integers(min_value=0, max_value=20))
def test_a_divergence_is_never_harsher_than_nothing_nor_milder_than_a_valid(
    valid: int, divergent: int
) -> None:
    reputation = Reputation(valid=valid, streak=valid, divergent=divergent)
    after = reputation.update("divergent")
    assert after.streak == 0 and after.invalid == reputation.invalid and after.probation == 0
    assert after.score <= reputation.update("valid").score


def dissent_once(grid: Grid, peer: str, output: Output) -> list[Effect]:
    """Run jobs (``peer`` answers ``output``, everyone else the honest answer) until ``peer`` was outvoted
    once; every effect of that job."""
    for job in range(1, 50):
        effects = grid.run_job(job, lambda p, r: output if p == peer else HONEST, now=float(job))
        if any(isinstance(e, Penalize) and e.peer == peer for e in effects):
            return effects
    raise AssertionError(f"{peer} was never picked")


def veteran(grid: Grid, peer: str, valid: int = 3 * VALID_PER_DIVERGENCE) -> None:
    grid.coordinator.reputation[grid.key(peer)] = Reputation(streak=valid, valid=valid)


def outcome_of(grid: Grid, peer: str, output: Output) -> tuple[Reputation, list[Effect]]:
    effects = dissent_once(grid, peer, output)
    reply = finished(effects)
    assert isinstance(reply, JobAccepted) and reply.tokens == list(HONEST.tokens)
    _, receipt = open_receipt(reply.receipt)
    assert grid.key(peer) in receipt.dissenters
    assert grid.key(peer) not in {c.account for c in receipt.credits}  # never paid
    return grid.coordinator.reputation[grid.key(peer)], effects


def test_a_veteran_that_rounds_differently_loses_its_streak_but_is_not_punished() -> None:
    grid = Grid(n=3, config=PLAIN)
    grid.register()
    veteran(grid, "w0")
    reputation, effects = outcome_of(grid, "w0", ROUNDED)
    assert (reputation.streak, reputation.invalid, reputation.probation, reputation.divergent) == (0, 0, 0, 1)
    assert any(isinstance(e, Penalize) and "honest rounding" in e.why for e in effects)


def test_the_same_output_from_a_new_worker_is_an_offence() -> None:
    grid = Grid(n=3, config=PLAIN)
    grid.register()
    reputation, _ = outcome_of(grid, "w0", ROUNDED)
    assert (reputation.invalid, reputation.probation, reputation.divergent) == (1, PROBATION_JOBS, 0)


def test_a_veteran_whose_output_differs_early_is_an_offence() -> None:
    grid = Grid(n=3, config=PLAIN)
    grid.register()
    veteran(grid, "w0")
    reputation, _ = outcome_of(grid, "w0", EARLY)
    assert (reputation.invalid, reputation.probation, reputation.divergent) == (1, PROBATION_JOBS, 0)


def test_frequent_divergence_becomes_an_offence() -> None:
    grid = Grid(n=3, config=PLAIN)
    grid.register()
    grid.coordinator.reputation[grid.key("w0")] = Reputation(valid=40, streak=5, divergent=2)
    reputation, _ = outcome_of(grid, "w0", ROUNDED)
    assert (reputation.invalid, reputation.divergent) == (1, 2)

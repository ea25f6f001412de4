"""Adaptive audits: how many auditors a claim gets and how much of it they score (spec/verification.md §13.5).

Pure policy over plain data, like ``reputation.replication_probability``: the coordinator calls
:func:`plan` once per claim, **after** the prover has committed to it (its ReplicaResult and attestation
are in), with the prover's :class:`~opengrid.core.reputation.Reputation`, the number of positions an audit
of the claim would score (claimed tokens, plus one when it stopped: spec §12.1) and its injected random
source. Every claim is audited: the plan decides how many auditors and how long a window of positions they
score, never whether the claim is checked.

Why a *prefix* window: an auditor's forward pass is causal, so scoring output position ``j`` needs the
prompt and every claimed token before ``j`` evaluated anyway. What a partial audit saves is the prefill past
its last scored position; positions before it cost only their output rows. So a window is always
``[0, end)``, and the compute it costs is the prompt plus ``end`` rows.

The plan (``AuditPlanConfig``; ``n`` positions, ``m = min_positions``, ``k = n - m``):

1. *Second audit*: with probability ``second_rate`` (any prover), and with ``offender_second`` always for
   a prover with an invalid result on record, the claim gets ``auditors + 1`` auditors and every position
   is scored: a lying auditor or a prover + auditor cartel meets an independent full audit this often.
2. *Untrusted prover*: a prover whose streak of verified valid results is below ``required_streak``
   (new keys, anyone caught in the last ``min_trust_streak << invalid`` jobs), or, with
   ``suspect_offenders`` (the default), any prover with an invalid result on record, is scored in full.
   A cheater that knows the policy gets, per identity, the free cheats it can make before its first
   full audit (``(1 - q) / q`` on average, below) and none after; a fresh key costs it
   ``min_trust_streak`` fully audited honest jobs first.
3. *Short claim* (``n <= m``): scored in full.
4. Otherwise, with probability ``full_rate`` the claim is scored in full, else on the window
   ``end = m + floor((k + 1) * u ** skew)`` with ``u`` uniform in [0, 1): ``end`` lies in ``m..n``.

The draws come from the coordinator's random source after the claim is committed, so a prover cannot
know which positions will be scored when it chooses its tokens.

Detection (a claim whose first wrong position is ``j``, counted from 0; ``q = min(1, full_rate +
second_rate)``). Untrusted prover or ``n <= m``: caught with probability 1. Trusted prover:

    P(caught) = q + (1 - q) * P(end > j),   P(end > j) = 1 for j < m,
                                            1 - ((j - m + 1) / (k + 1)) ** (1 / skew) for j >= m.

:func:`detection_probability` computes it. Consequences, for example with ``min_positions = 20``,
``full_rate = 0.3``, ``second_rate = 0.02`` and ``skew = 1`` (so ``q = 0.32``):

- a cheat anywhere in the first 20 positions is caught with probability 1: so is **any** claim that
  changes 1 token in 20 or more (its first change is at a position below 20), and any random-token or
  other-model claim;
- a cheat confined to the tail is caught with probability ``q + (1 - q) * s / (k + 1)`` when its first
  wrong position is ``s`` from the end (``skew = 1``): a prover that skips the last half of a 64-token
  output is caught with probability 0.80 (256 tokens: 0.69), one that changes only the last token with
  0.335 (256 tokens: 0.323), i.e. about ``q``. Such a prover saves little compute (it ran the model for
  the rest). With ``suspect_offenders`` its first catch ends its partial audits for good: per identity
  it gets on average ``(1 - q) / q`` wrong claims through (2.1 at ``q = 0.32``), and each identity first
  costs it ``min_trust_streak`` fully audited honest jobs.

The expected cost of an audit, in full audits: ``1`` for untrusted provers, else
``q + (1 - q) * E[end] / n`` (``E[end] = m + k / 2`` roughly for ``skew = 1``; ``m + k / 3`` for 2), and
``second_rate`` of a full audit more for second audits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Protocol

from opengrid.core.reputation import Reputation, required_streak
from opengrid.errors import ConfigError

__all__ = [
    "AuditPlan",
    "AuditPlanConfig",
    "PlanReason",
    "UniformSource",
    "detection_probability",
    "plan",
    "scored_positions",
    "trusted",
    "window_survival",
]


class UniformSource(Protocol):
    """The slice of ``random.Random`` a plan needs (the coordinator passes its own injected source)."""

    def random(self) -> float:
        """A float uniformly drawn from [0, 1)."""
        ...


PlanReason = Literal["untrusted", "short", "full", "second", "window"]
"""Why a plan scores what it scores: an untrusted prover, a claim no longer than the minimum window, a
random full audit, a random second audit (one more auditor, full), or a random window."""


@dataclass(frozen=True)
class AuditPlanConfig:
    """The adaptive audit policy's knobs. The defaults of the coordinator (``CoordinatorConfig``) keep
    today's behaviour: ``full_rate = 1`` (every audit scores everything) and no second audits."""

    auditors: int = 1
    """Auditors per claim (at least 1); a second audit adds one."""
    full_rate: float = 1.0
    """Probability that a trusted prover's claim is scored in full; 1 scores every claim in full."""
    second_rate: float = 0.0
    """Probability, per claim of any prover, of one more auditor and a full window (a second audit)."""
    min_positions: int = 20
    """A window scores at least this many positions (the first ones): any cheat in them is caught."""
    skew: float = 1.0
    """Shape of the window's end beyond ``min_positions``: 1 uniform; larger is shorter (cheaper) on
    average and catches a tail-only cheat less often (``detection_probability``)."""
    min_trust_streak: int = 10
    """Verified valid results in a row before a prover may get a partial window (doubled per invalid
    result it ever returned, ``reputation.required_streak``); 0 treats every prover as trusted."""
    suspect_offenders: bool = True
    """A prover with any invalid result on record (a failed audit, an outvoted result, a failed canary) is
    scored in full for good. False: only until it has rebuilt ``required_streak``."""
    offender_second: bool = False
    """A prover with any invalid result on record gets a second audit (one more auditor, full window) on
    every claim: a caught cheater's later cheats pass only if every auditor drawn colludes with it, and an
    auditor that passes one beside an honest failure is caught by the tie-break (spec/verification.md
    §13.6). False: offenders get second audits at ``second_rate`` like everyone."""

    def __post_init__(self) -> None:
        if self.auditors < 1:
            raise ConfigError(f"an audit needs at least one auditor, got auditors = {self.auditors}")
        for name in ("full_rate", "second_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name} is a probability in [0, 1], got {value}")
        if self.min_positions < 1:
            raise ConfigError(
                f"min_positions must be at least 1 (a window scores something), got {self.min_positions}"
            )
        if not (self.skew >= 1.0 and math.isfinite(self.skew)):
            raise ConfigError(f"skew must be a finite number >= 1 (1 = uniform window ends), got {self.skew}")
        if self.min_trust_streak < 0:
            raise ConfigError(f"min_trust_streak must be >= 0, got {self.min_trust_streak}")


@dataclass(frozen=True)
class AuditPlan:
    """What the auditors of one claim score: positions ``[0, end)`` of ``n_positions``, by ``auditors``."""

    auditors: int
    end: int
    """Positions scored, from the first: ``n_positions`` for a full audit, at least 1 (or 0 for nothing
    to score, which the auditor refuses)."""
    n_positions: int
    """Positions the claim has (claimed tokens, plus one when it stopped)."""
    reason: PlanReason

    @property
    def full(self) -> bool:
        """Every position is scored."""
        return self.end >= self.n_positions

    @property
    def score_end(self) -> int:
        """The value for ``AuditJob.score_end``: 0 (every position, what an old auditor does) for a full
        audit, else ``end``."""
        return 0 if self.full else self.end

    @property
    def fraction(self) -> float:
        """Share of the claim's positions scored (1.0 for a claim with nothing to score)."""
        return self.end / self.n_positions if self.n_positions else 1.0


def trusted(reputation: Reputation, min_trust_streak: int, *, suspect_offenders: bool = True) -> bool:
    """Whether a prover's record affords it a partial window: its streak reaches ``required_streak`` and,
    with ``suspect_offenders``, it never returned an invalid result."""
    if suspect_offenders and reputation.invalid > 0:
        return False
    return min_trust_streak <= 0 or reputation.streak >= required_streak(reputation, min_trust_streak)


def plan(config: AuditPlanConfig, n_positions: int, reputation: Reputation, rng: UniformSource) -> AuditPlan:
    """The audit of one committed claim. Draws from ``rng`` only where a choice is left: one draw when
    second audits are on or a partial window is possible, a second one for a window's end; none with the
    defaults (every audit full), so a coordinator that does not use the policy draws as before."""
    n = max(0, n_positions)
    m = config.min_positions
    if config.offender_second and reputation.invalid > 0:
        return AuditPlan(auditors=config.auditors + 1, end=n, n_positions=n, reason="second")
    is_trusted = trusted(reputation, config.min_trust_streak, suspect_offenders=config.suspect_offenders)
    reason: PlanReason = "untrusted" if not is_trusted else ("short" if n <= m else "full")
    partial_possible = is_trusted and n > m and config.full_rate < 1.0
    if config.second_rate <= 0.0 and not partial_possible:
        return AuditPlan(auditors=config.auditors, end=n, n_positions=n, reason=reason)
    mode = rng.random()
    if mode < config.second_rate:
        return AuditPlan(auditors=config.auditors + 1, end=n, n_positions=n, reason="second")
    if not partial_possible or mode < config.second_rate + config.full_rate:
        return AuditPlan(auditors=config.auditors, end=n, n_positions=n, reason=reason)
    k = n - m
    end = m + min(k, math.floor((k + 1) * rng.random() ** config.skew))
    return AuditPlan(auditors=config.auditors, end=end, n_positions=n, reason="window")


def scored_positions(n_positions: int, score_end: int) -> int:
    """Positions an audit with ``AuditJob.score_end = score_end`` scores on a claim of ``n_positions``:
    all of them when ``score_end`` is 0 or at least ``n_positions``, else ``score_end``."""
    return n_positions if score_end <= 0 else min(score_end, n_positions)


def window_survival(config: AuditPlanConfig, n_positions: int, position: int) -> float:
    """P(a partial window scores ``position``), i.e. P(end > position), for a claim of ``n_positions``."""
    m, n = config.min_positions, n_positions
    if position < m or n <= m:
        return 1.0 if position < n else 0.0
    if position >= n:
        return 0.0
    k = n - m
    return 1.0 - float(((position - m + 1) / (k + 1)) ** (1.0 / config.skew))


def detection_probability(
    config: AuditPlanConfig, n_positions: int, first_wrong: int, *, prover_trusted: bool = True
) -> float:
    """Probability that an honest auditor scores a claim's first wrong position ``first_wrong`` (0-based),
    and so rejects it: 1 for an untrusted prover or a claim of at most ``min_positions``, else
    ``q + (1 - q) * window_survival`` with ``q = min(1, full_rate + second_rate)``."""
    if first_wrong >= n_positions or first_wrong < 0:
        return 0.0
    if not prover_trusted or n_positions <= config.min_positions or config.full_rate >= 1.0:
        return 1.0
    q = min(1.0, config.full_rate + config.second_rate)
    return q + (1.0 - q) * window_survival(config, n_positions, first_wrong)

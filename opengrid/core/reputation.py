"""Reputation: what a coordinator has verified about one worker key, and the replication rate it earns.

Pure policy over plain data (spec/verification-adaptive.md §Reputation). A ``Reputation`` is a fold over
*verified* outcomes of one worker key:

- ``valid``: the worker's output agreed with at least one other worker's in a quorum of two or more, or
  matched a canary's known answer. A result accepted on trust alone (a trusted single result, or a job the
  client asked to run once) proves nothing and is *not* an outcome: otherwise a trusted worker's undetected
  cheats would raise the very trust that lets them go undetected.
- ``invalid``: the worker was outvoted (a dissenter), failed a canary, or returned a result that failed its
  checks (bad attestation, too many tokens).
- ``timeout``: the worker failed, vanished or did not answer in time.
- ``divergent``: the worker was outvoted, but its output looks like an honest divergence (spec/verification.md
  §9): same tokens as the winner for at least the first half, and a track record that affords it
  (``affords_divergence``). It earns nothing and loses its streak (so it is replicated again), but it is
  not an offence: no probation, no doubling of the streak it needs.

Slow to earn, fast to lose: trust grows by one step per verified valid result with diminishing returns;
one invalid result resets the streak to zero, puts the worker on probation and doubles (up to 8x) the
streak it needs before its results may be accepted unreplicated. A new key starts with nothing, so a Sybil
gains nothing by changing identity.

``reputation_from_ledger`` rebuilds the table from receipts (credits in a receipt with two or more credits
are valid outcomes, dissenters invalid ones) and from the coordinator's EVIDENCE entries (replicas that
failed their checks, failed or timed out). Canary outcomes leave no ledger entry (a canary must stay
indistinguishable, even afterwards): they live in memory only.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from opengrid_ledger import Evidence, LedgerState, Receipt, decode_body

Outcome = Literal["valid", "invalid", "timeout", "divergent"]

TRUST_HALF_STREAK = 10
"""Streak at which ``trust`` reaches one half (it approaches 1 with diminishing returns)."""
PROBATION_JOBS = 10
"""Verified valid results an invalid one costs before the worker ranks like a new one again."""
MAX_FLAKY = 8
"""Unpaid timeouts counted at most (each verified valid result pays one back)."""
MAX_OFFENCE_DOUBLINGS = 3
"""An invalid result doubles the streak needed for trust, at most this many times (8x)."""
DIVERGENCE_MIN_VALID = 20
"""Verified valid results a worker needs before a divergence can be taken for honest rounding."""
VALID_PER_DIVERGENCE = 20
"""...and at most one honest-looking divergence per this many valid results (more is an offence)."""


@dataclass(frozen=True)
class Reputation:
    """Verified history of one worker key; ``update`` is the only way it changes."""

    streak: int = 0
    """Verified valid results in a row since the last invalid one (BOINC's ``consecutive_valid``)."""
    valid: int = 0
    """Verified valid results, ever."""
    invalid: int = 0
    """Invalid results, ever (outvoted, failed canary, failed checks)."""
    timeouts: int = 0
    """Failures and timeouts, ever."""
    probation: int = 0
    """Verified valid results still owed since the last invalid one."""
    flaky: int = 0
    """Timeouts not yet paid back by verified valid results (capped at ``MAX_FLAKY``)."""
    divergent: int = 0
    """Outvoted results that looked like honest divergence, ever."""

    def update(self, outcome: Outcome) -> Reputation:
        """The reputation after one more outcome."""
        if outcome == "valid":
            return replace(
                self,
                streak=self.streak + 1,
                valid=self.valid + 1,
                probation=max(0, self.probation - 1),
                flaky=max(0, self.flaky - 1),
            )
        if outcome == "invalid":
            return replace(self, streak=0, invalid=self.invalid + 1, probation=PROBATION_JOBS)
        if outcome == "divergent":
            return replace(self, streak=0, divergent=self.divergent + 1)
        return replace(self, timeouts=self.timeouts + 1, flaky=min(MAX_FLAKY, self.flaky + 1))

    @property
    def trust(self) -> float:
        """In [0, 1): ``streak / (streak + TRUST_HALF_STREAK)``; 0 for a new or just-caught worker."""
        return self.streak / (self.streak + TRUST_HALF_STREAK)

    @property
    def score(self) -> float:
        """Scheduling score in [-1, 1): negative on probation or when flaky, 0 when unknown, up to ~1 when
        long trusted. The scheduler turns it into a weight (``scheduler.candidate_weight``)."""
        if self.probation:
            return -self.probation / PROBATION_JOBS
        flaky = self.flaky / (1 + self.flaky)
        return self.trust * (1 - flaky) - 0.5 * flaky


def affords_divergence(reputation: Reputation) -> bool:
    """Whether one more divergence may be taken for honest rounding: the worker has at least
    ``DIVERGENCE_MIN_VALID`` verified valid results and, counting this one, at most one divergence per
    ``VALID_PER_DIVERGENCE`` of them. A new worker never does: it cannot buy leniency with a fresh key."""
    return (
        reputation.valid >= DIVERGENCE_MIN_VALID
        and (reputation.divergent + 1) * VALID_PER_DIVERGENCE <= reputation.valid
    )


def agreed_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens ``a`` and ``b`` share."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def looks_like_honest_divergence(winner: Sequence[int], dissenter: Sequence[int]) -> bool:
    """Two greedy runs of one contract that round differently agree until a near-tie, then go their own
    ways: the dissenter shares at least the first half of the winner's tokens (and the winner has at least
    two). A lazy worker (random tokens) or a different model differs from the first tokens."""
    return len(winner) >= 2 and agreed_prefix(winner, dissenter) >= (len(winner) + 1) // 2


def required_streak(reputation: Reputation, min_trust_streak: int) -> int:
    """The streak a worker needs before its results may go unreplicated: ``min_trust_streak``, doubled
    for each invalid result it ever returned (at most 8x), so intermittent cheating gets dearer."""
    return min_trust_streak << min(reputation.invalid, MAX_OFFENCE_DOUBLINGS)


def replication_probability(reputation: Reputation, *, min_trust_streak: int, min_rate: float) -> float:
    """Probability that a job whose first-picked worker has ``reputation`` is replicated (BOINC adaptive
    replication): 1 until the worker is trusted, then ``max(min_rate, 1 / streak)``.

    ``min_trust_streak <= 0`` disables trust altogether (always 1).
    """
    if min_trust_streak <= 0 or reputation.streak < required_streak(reputation, min_trust_streak):
        return 1.0
    return min(1.0, max(min_rate, 1.0 / reputation.streak))


def fold_outcomes(
    outcomes: Iterable[tuple[bytes, Outcome]], start: dict[bytes, Reputation] | None = None
) -> dict[bytes, Reputation]:
    """Apply ``(worker key, outcome)`` pairs in order on top of ``start`` (not modified)."""
    table = dict(start or {})
    for key, outcome in outcomes:
        table[key] = table.get(key, Reputation()).update(outcome)
    return table


def receipt_outcomes(receipt: Receipt) -> list[tuple[bytes, Outcome]]:
    """Outcomes a receipt proves: every credited key is valid when two or more agreed (a single credit is
    a result nobody checked; a split group's members, ``Receipt.members``, ran the same result and are not
    counted as agreeing), every dissenter is invalid (an outvoted split group's members are dissenters
    too: spec/split.md §6). Dissenters come first: an entry is one instant."""
    outcomes: list[tuple[bytes, Outcome]] = [(key, "invalid") for key in receipt.dissenters]
    members = set(receipt.members)
    if sum(1 for credit in receipt.credits if credit.account not in members) >= 2:
        outcomes += [(credit.account, "valid") for credit in receipt.credits]
    return outcomes


def reputation_from_ledger(ledger: LedgerState, *, author: bytes | None = None) -> dict[bytes, Reputation]:
    """Rebuild reputations from the ledger's applied receipts and EVIDENCE, in the order they were applied.

    Only receipts authored by ``author`` count when it is given: a coordinator trusts its own verification.
    Applied entries were verified when applied, so bodies are decoded without checking signatures again.
    """
    outcomes: list[tuple[bytes, Outcome]] = []
    for entry in ledger.entries():
        body = decode_body(entry.body)
        if author is not None and body.author != author:
            continue
        if isinstance(body.payload, Receipt):
            outcomes += receipt_outcomes(body.payload)
        elif isinstance(body.payload, Evidence):
            outcomes += evidence_outcomes(body.payload)
    return fold_outcomes(outcomes)


def evidence_outcomes(evidence: Evidence) -> list[tuple[bytes, Outcome]]:
    """Outcomes an EVIDENCE entry records, in a fixed order (valid, invalid, timeout)."""
    outcomes: list[tuple[bytes, Outcome]] = [(key, "valid") for key in evidence.valid]
    outcomes += [(key, "invalid") for key in evidence.invalid]
    outcomes += [(key, "timeout") for key in evidence.timeout]
    return outcomes

"""The audit rule (spec/verification.md §12): tolerance in logits, first failure reported with its values,
and the evidence commitment an auditor signs."""

from __future__ import annotations

import math

import pytest

from opengrid.core.audit import DEFAULT_GAP_TOLERANCE, AuditPolicy, AuditVerdict, evidence_commitment, judge
from opengrid.core.sampling import PositionEvidence, SamplingParams
from opengrid.errors import JobError

JOB = b"\x07" * 32


def ev(gap: float, token: int = 5, margin: float = 0.0, rank: int = 0) -> PositionEvidence:
    return PositionEvidence(token=token, logprob=-1.25, gap=gap, rank=rank, mask_margin=margin)


def test_accepts_when_every_gap_is_within_tolerance() -> None:
    verdict = judge([ev(0.0), ev(0.44), ev(0.12)])
    assert verdict == AuditVerdict(accepted=True, positions=3, max_gap=0.44)


def test_rejects_at_the_first_position_over_tolerance_with_its_values() -> None:
    over = DEFAULT_GAP_TOLERANCE + 0.01
    evidence = [ev(0.1), ev(over, token=77, rank=3), ev(9.0)]
    verdict = judge(evidence)
    assert not verdict.accepted
    assert (verdict.first_failure, verdict.failure, verdict.max_gap) == (1, evidence[1], 9.0)
    assert "position 1" in verdict.reason and "token 77" in verdict.reason and f"{over:.3f}" in verdict.reason


def test_the_tolerance_is_configurable() -> None:
    assert judge([ev(0.9)], AuditPolicy(gap_tolerance=1.0)).accepted
    assert not judge([ev(0.9)], AuditPolicy(gap_tolerance=0.5)).accepted
    with pytest.raises(JobError):
        AuditPolicy(gap_tolerance=-1.0)
    with pytest.raises(JobError):
        AuditPolicy(gap_tolerance=math.inf)


def test_a_token_outside_the_mask_fails_unless_it_is_a_near_tie_at_the_boundary() -> None:
    assert judge([ev(0.0, margin=0.3)]).accepted
    verdict = judge([ev(0.0, margin=2.0)])
    assert not verdict.accepted and "outside the top_k/top_p mask" in verdict.reason


def test_nothing_scored_or_nan_is_a_rejection() -> None:
    assert not judge([]).accepted
    verdict = judge([ev(0.0), ev(math.nan)])
    assert (verdict.accepted, verdict.first_failure) == (False, 1)


def test_commitment_binds_every_value_the_params_and_the_job() -> None:
    params = SamplingParams(temperature=0.8, top_p=0.9, seed=3)
    evidence = [ev(0.1), ev(0.2, token=9)]
    base = evidence_commitment(JOB, params, evidence)
    assert len(base) == 32 and base == evidence_commitment(JOB, params, list(evidence))
    variants = [
        evidence_commitment(JOB[:31] + b"\x08", params, evidence),
        evidence_commitment(JOB, SamplingParams(temperature=0.8, top_p=0.9, seed=4), evidence),
        evidence_commitment(JOB, params, evidence[:1]),
        evidence_commitment(JOB, params, [ev(0.1), ev(0.2, token=10)]),
        evidence_commitment(JOB, params, [ev(0.1), ev(0.2000001, token=9)]),
        evidence_commitment(JOB, params, [ev(0.1), ev(0.2, token=9, rank=1)]),
        evidence_commitment(JOB, params, [ev(0.1), ev(0.2, token=9, margin=0.1)]),
    ]
    assert len({base, *variants}) == len(variants) + 1


def test_commitment_vector() -> None:
    # spec/verification.md §12.4 pins these bytes; another implementation must reproduce them.
    evidence = [PositionEvidence(token=1, logprob=-0.5, gap=0.0, rank=0, mask_margin=0.0)]
    assert evidence_commitment(b"\x01" * 32, SamplingParams(), evidence).hex() == (
        "7db9f4f9cd7fc24e79a172414c4c6d8f7f9014e6aca07fd34eac560c4203ec84"
    )

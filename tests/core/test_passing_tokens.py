"""``passing_tokens`` (spec/verification.md §14.2, the first position judged in advance) lists exactly the
tokens among the ``limit`` best by score that ``score_position`` + ``judge`` would pass, for greedy,
Gumbel-max and masked (top-k, top-p) sampling: checked token by token on random logits."""

from __future__ import annotations

import numpy as np
import pytest

from opengrid.core.audit import AuditPolicy, SamplingParams, judge
from opengrid.core.sampling import passing_tokens, perturbed_scores, score_position

JOB = bytes(range(16))


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(),
        SamplingParams(temperature=0.8, seed=7),
        SamplingParams(temperature=0.7, top_k=5, seed=3),
        SamplingParams(temperature=1.2, top_p=0.6, seed=11),
    ],
    ids=["greedy", "gumbel", "top-k", "top-p"],
)
@pytest.mark.parametrize("tolerance", [0.0, 0.75, 3.0])
def test_passing_tokens_are_what_score_position_passes_among_the_best(
    params: SamplingParams, tolerance: float
) -> None:
    rng = np.random.default_rng(5)
    policy = AuditPolicy(gap_tolerance=tolerance)
    for trial in range(8):
        n = 300
        logits = (rng.standard_normal(n) * (0.5 + trial % 4)).astype(np.float32)
        logits[rng.integers(0, n, 3)] = logits.max()  # ties at the top
        scores = perturbed_scores(logits, params, JOB, trial)
        ranked = sorted(range(n), key=lambda t: (-scores[t], t))
        passes = {t: judge([score_position(logits, t, params, JOB, trial)], policy).accepted for t in ranked}
        for limit in (1, 4, 16, n):
            listed = passing_tokens(logits, params, JOB, trial, tolerance, limit)
            assert listed == [t for t in ranked[:limit] if passes[t]], (trial, limit)
        assert passing_tokens(logits, params, JOB, trial, tolerance, 0) == []


def test_a_nan_row_passes_nothing() -> None:
    logits = np.full(10, np.nan, dtype=np.float32)
    assert passing_tokens(logits, SamplingParams(), JOB, 0, 0.75, 5) == []

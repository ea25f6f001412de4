"""The sampler of spec/verification.md §11: exact vectors, masks against a brute-force reading of the spec,
Gumbel-max's distribution, and the evidence an auditor computes from logits."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import pytest

from opengrid.core.sampling import (
    SamplingParams,
    candidate_mask,
    choose,
    gumbel_noise,
    noise_key,
    perturbed_scores,
    score_position,
    score_positions,
    uniforms,
)
from opengrid.errors import JobError, VerificationError

JOB = bytes(range(32))


def test_splitmix64_vector() -> None:
    # SplitMix64 seeded with 0 outputs 0xE220A8397B1DCDAF first (the published reference sequence).
    assert uniforms(0, 1)[0] == ((0xE220A8397B1DCDAF >> 12) + 0.5) * 2.0**-52
    assert uniforms(0, 3).tolist() == [0.8833108082136426, 0.4315279970485101, 0.026433771592597854]


def test_noise_key_vector_and_inputs() -> None:
    assert noise_key(b"\x01" * 32, 42, 7) == 0x7DD932DB6F8E9D8A
    keys = {noise_key(JOB, 1, 0), noise_key(JOB, 2, 0), noise_key(JOB, 1, 1), noise_key(JOB[:31], 1, 0)}
    assert len(keys) == 4  # job, seed and position all enter the key
    assert gumbel_noise(b"\x01" * 32, 42, 7, 3).tolist() == pytest.approx(
        [-1.5907477336851763, -0.5779255149254546, 0.9791446360818787], abs=1e-15
    )


def test_uniforms_are_inside_the_open_interval_and_look_uniform() -> None:
    u = uniforms(noise_key(JOB, 0, 0), 200_000)
    assert 0.0 < u.min() and u.max() < 1.0
    assert abs(u.mean() - 0.5) < 0.005
    counts = np.histogram(u, bins=10, range=(0.0, 1.0))[0]
    assert counts.min() > 19_000 and counts.max() < 21_000


def test_greedy_is_argmax_with_ties_to_the_lowest_id() -> None:
    logits = np.array([1.0, 3.0, 2.0, 3.0], dtype=np.float32)
    assert choose(logits, SamplingParams(), JOB, 0) == 1
    # Seed and masks do not matter at temperature 0.
    assert choose(logits, SamplingParams(seed=9, top_k=2, top_p=0.1), JOB, 5) == 1


def _reference_mask(logits: npt.NDArray[np.float32], params: SamplingParams) -> set[int]:
    """spec §11.3 read literally, with a full sort and plain Python sums."""
    order = sorted(range(len(logits)), key=lambda i: (-float(logits[i]), i))
    if params.top_k:
        order = order[: params.top_k]
    if params.top_p < 1.0:
        scaled = [float(logits[i]) / params.temperature for i in order]
        top = max(scaled)
        weights = [math.exp(s - top) for s in scaled]
        total = sum(weights)
        running = 0.0
        kept = []
        for i, w in zip(order, weights, strict=True):
            kept.append(i)
            running += w / total
            if running >= params.top_p:
                break
        order = kept
    return set(order)


@pytest.mark.parametrize("top_k", [0, 1, 3, 40, 500])
@pytest.mark.parametrize("top_p", [1.0, 0.95, 0.5, 0.01])
@pytest.mark.parametrize("temperature", [0.3, 1.0, 2.0])
def test_masks_match_a_literal_reading_of_the_spec(top_k: int, top_p: float, temperature: float) -> None:
    rng = np.random.default_rng(top_k * 1000 + int(top_p * 100) + int(temperature * 10))
    # Rounded logits make ties, which the order breaks by id.
    logits = np.round(rng.normal(size=300) * 2, 1).astype(np.float32)
    params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, seed=1)
    mask = candidate_mask(logits, params)
    expected = _reference_mask(logits, params)
    # Float sums may settle the exact top_p boundary one token apart; everything else is exact.
    got = set(np.flatnonzero(mask).tolist())
    assert len(got ^ expected) <= 1
    if top_p == 1.0:
        assert got == expected


def test_the_chosen_token_is_always_inside_the_mask() -> None:
    rng = np.random.default_rng(5)
    params = SamplingParams(temperature=1.5, top_k=5, top_p=0.7, seed=3)
    for position in range(200):
        logits = rng.normal(size=64).astype(np.float32)
        token = choose(logits, params, JOB, position)
        assert candidate_mask(logits, params)[token]


def test_gumbel_max_samples_from_the_softmax() -> None:
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05])).astype(np.float32)
    params = SamplingParams(temperature=1.0, seed=11)
    counts = np.bincount([choose(logits, params, JOB, p) for p in range(20_000)], minlength=4)
    assert counts / 20_000 == pytest.approx([0.5, 0.3, 0.15, 0.05], abs=0.012)
    # Temperature sharpens: at T = 0.25 the favourite's share is 0.5**4 / sum(p**4) = 0.879, not 0.5.
    cold = SamplingParams(temperature=0.25, seed=11)
    assert sum(choose(logits, cold, JOB, p) == 0 for p in range(4_000)) / 4_000 == pytest.approx(
        0.879, abs=0.02
    )


def test_same_job_and_seed_give_the_same_choices_another_seed_does_not() -> None:
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(64, 500)).astype(np.float32)
    params = SamplingParams(temperature=0.8, top_p=0.95, seed=123)

    def run(p: SamplingParams, job: bytes = JOB) -> list[int]:
        return [choose(rows[i], p, job, i) for i in range(64)]

    assert run(params) == run(params)
    assert sum(a != b for a, b in zip(run(params), run(SamplingParams(0.8, 0, 0.95, 124)), strict=True)) > 32
    assert sum(a != b for a, b in zip(run(params), run(params, JOB[::-1]), strict=True)) > 32


def test_params_are_validated() -> None:
    for bad in [
        {"temperature": -0.1},
        {"temperature": float("nan")},
        {"temperature": 11.0},
        {"top_k": -1},
        {"top_p": 0.0},
        {"top_p": 1.5},
        {"seed": -1},
        {"seed": 2**64},
    ]:
        with pytest.raises(JobError):
            SamplingParams(**bad)  # type: ignore[arg-type]
    with pytest.raises(JobError, match="job id"):
        noise_key(b"x" * 256, 0, 0)


def test_evidence_of_the_auditors_own_choice_has_no_gap() -> None:
    rng = np.random.default_rng(2)
    logits = rng.normal(size=1000).astype(np.float32) * 3
    for params in [SamplingParams(), SamplingParams(temperature=0.7, seed=5, top_k=50, top_p=0.9)]:
        token = choose(logits, params, JOB, 9)
        evidence = score_position(logits, token, params, JOB, 9)
        assert evidence.gap == 0.0 and evidence.mask_margin == 0.0
        assert evidence.logprob == pytest.approx(
            float(logits[token]) - math.log(float(np.exp(logits.astype(np.float64)).sum())), abs=1e-6
        )


def test_evidence_of_another_token_measures_its_distance_in_logits() -> None:
    logits = np.array([0.0, 2.0, 1.5, -1.0], dtype=np.float32)
    greedy = score_position(logits, 2, SamplingParams(), JOB, 0)
    assert (greedy.gap, greedy.rank, greedy.mask_margin) == (0.5, 1, 0.0)
    # Gumbel-max: the gap is T x the perturbed-score difference, so it is in logits at any temperature.
    params = SamplingParams(temperature=0.5, seed=1)
    scores = perturbed_scores(logits, params, JOB, 3)
    worst = int(np.argmin(scores))
    evidence = score_position(logits, worst, params, JOB, 3)
    assert evidence.gap == pytest.approx(0.5 * (scores.max() - scores[worst]))
    # A token the top_k mask drops reports how far below the mask's lowest logit it lies.
    masked = score_position(logits, 3, SamplingParams(temperature=1.0, top_k=2, seed=1), JOB, 0)
    assert masked.mask_margin == pytest.approx(1.5 + 1.0)
    assert masked.rank == 3


def test_score_positions_equals_score_position_row_by_row() -> None:
    rng = np.random.default_rng(3)
    rows = rng.normal(size=(20, 300)).astype(np.float32)
    claimed = rng.integers(0, 300, size=20).tolist()
    for params in [
        SamplingParams(),
        SamplingParams(temperature=0.8, seed=4),
        SamplingParams(temperature=0.8, seed=4, top_p=0.9),
    ]:
        assert score_positions(rows, claimed, params, JOB, 7) == [
            score_position(rows[j], claimed[j], params, JOB, 7 + j) for j in range(20)
        ]


def test_a_claimed_token_outside_the_vocabulary_is_a_verification_error() -> None:
    rows = np.zeros((2, 10), dtype=np.float32)
    with pytest.raises(VerificationError, match="outside the vocabulary"):
        score_positions(rows, [1, 10], SamplingParams(), JOB)
    with pytest.raises(VerificationError, match="outside the vocabulary"):
        score_position(rows[0], -1, SamplingParams(), JOB, 0)

"""Worker selection: pure functions over candidates, with the randomness injected."""

from __future__ import annotations

import dataclasses
import random
from collections import Counter

from opengrid.core.scheduler import (
    Candidate,
    candidate_weight,
    capacity,
    choose_class,
    pick_workers,
    weights,
)
from opengrid.wire.contract import DecodingContract

CLASS_A = DecodingContract(model_sha256="aa" * 32)
CLASS_B = DecodingContract(model_sha256="aa" * 32, flash_attn=True)


def candidate(n: int, contract: DecodingContract = CLASS_A, *, key: int | None = None) -> Candidate:
    return Candidate(
        peer=f"peer{n:02d}",
        key=bytes([key if key is not None else n]) * 32,
        model_name="tiny",
        contract=contract,
    )


POOL = [candidate(n) for n in range(10)]


def test_pick_workers_never_returns_an_excluded_peer() -> None:
    excluded = {"peer01", "peer03", "peer05", "peer07"}
    for seed in range(20):
        chosen = pick_workers(POOL, 6, exclude=excluded, rng=random.Random(seed))
        assert len(chosen) == 6
        assert not {c.peer for c in chosen} & excluded


def test_pick_workers_counts_a_key_seen_twice_once() -> None:
    twins = [candidate(1, key=1), candidate(2, key=1), candidate(3, key=3)]
    for seed in range(20):
        chosen = pick_workers(twins, 3, exclude=(), rng=random.Random(seed))
        assert len(chosen) == 2
        assert len({c.key for c in chosen}) == len({c.peer for c in chosen}) == 2


def test_pick_workers_with_a_duplicated_candidate_returns_it_once() -> None:
    chosen = pick_workers([POOL[0], POOL[0], POOL[1]], 3, exclude=(), rng=random.Random(7))
    assert sorted(c.peer for c in chosen) == ["peer00", "peer01"]


def test_pick_workers_same_seed_same_choice_whatever_the_input_order() -> None:
    shuffled = list(POOL)
    random.Random(99).shuffle(shuffled)
    assert shuffled != POOL
    first = pick_workers(POOL, 3, exclude={"peer04"}, rng=random.Random(7))
    second = pick_workers(shuffled, 3, exclude={"peer04"}, rng=random.Random(7))
    assert first == second


def test_pick_workers_uses_the_randomness_it_is_given() -> None:
    choices = {
        tuple(c.peer for c in pick_workers(POOL, 2, exclude=(), rng=random.Random(s))) for s in range(20)
    }
    assert len(choices) > 5


def test_pick_workers_returns_fewer_when_the_pool_is_short() -> None:
    chosen = pick_workers(POOL[:4], 3, exclude={"peer00", "peer01"}, rng=random.Random(7))
    assert sorted(c.peer for c in chosen) == ["peer02", "peer03"]
    assert pick_workers(POOL[:2], 3, exclude={"peer00", "peer01"}, rng=random.Random(7)) == []
    assert pick_workers(POOL, 0, exclude=(), rng=random.Random(7)) == []


def test_choose_class_keeps_the_biggest_class_and_never_mixes() -> None:
    mixed = [candidate(0, CLASS_B), candidate(1, CLASS_A), candidate(2, CLASS_B), candidate(3, CLASS_A)]
    mixed.append(candidate(4, CLASS_B))
    chosen = choose_class(mixed)
    assert [c.peer for c in chosen] == ["peer00", "peer02", "peer04"]
    assert {c.contract for c in chosen} == {CLASS_B}


def test_choose_class_breaks_ties_the_same_way_whatever_the_order() -> None:
    tied = [candidate(0, CLASS_A), candidate(1, CLASS_B), candidate(2, CLASS_A), candidate(3, CLASS_B)]
    chosen = choose_class(tied)
    assert chosen == choose_class(list(reversed(tied)))
    assert len({c.contract for c in chosen}) == 1
    assert len(chosen) == 2


def test_choose_class_of_nothing_is_empty() -> None:
    assert choose_class([]) == []


def test_choose_class_counts_distinct_workers_not_offers() -> None:
    one_worker_three_names = [
        Candidate(peer="peer00", key=b"\x00" * 32, model_name=name, contract=CLASS_A)
        for name in ("a", "b", "c")
    ]
    two_workers = [candidate(1, CLASS_B), candidate(2, CLASS_B)]
    chosen = choose_class(one_worker_three_names + two_workers)
    assert {c.contract for c in chosen} == {CLASS_B}


# ── weighting and operators (spec/verification-adaptive.md §Selection) ─────────────────────────────


def scored(n: int, **fields: object) -> Candidate:
    return dataclasses.replace(candidate(n), **fields)  # type: ignore[arg-type]


def test_equal_weights_and_no_operators_draw_exactly_like_a_uniform_sample() -> None:
    for seed in range(10):
        expected = random.Random(seed).sample(POOL, 3)
        assert pick_workers(POOL, 3, exclude=(), rng=random.Random(seed)) == expected


def test_reputation_tilts_the_odds_without_making_any_choice_certain() -> None:
    pool = [scored(0, reputation=1.0), scored(1), scored(2, reputation=-1.0)]
    firsts = Counter(pick_workers(pool, 1, exclude=(), rng=random.Random(s))[0].peer for s in range(3000))
    assert firsts["peer00"] > 2 * firsts["peer01"] > 4 * firsts["peer02"] > 0
    # expected shares 4 : 1 : 1/4 of 5.25
    assert abs(firsts["peer00"] / 3000 - 4 / 5.25) < 0.04


def test_weighted_draws_are_reproducible_and_order_independent() -> None:
    pool = [scored(n, reputation=n / 10, tokens_per_s=10.0 + n, rtt_s=0.01 * (n + 1)) for n in range(8)]
    shuffled = list(reversed(pool))
    for seed in range(10):
        first = pick_workers(pool, 4, exclude={"peer03"}, rng=random.Random(seed))
        assert first == pick_workers(shuffled, 4, exclude={"peer03"}, rng=random.Random(seed))
        assert len({c.peer for c in first}) == 4 and "peer03" not in {c.peer for c in first}


def test_weights_are_bounded_and_unmeasured_fields_count_as_the_median() -> None:
    pool = [
        scored(0, tokens_per_s=1000.0, rtt_s=0.001),
        scored(1, tokens_per_s=10.0, rtt_s=0.1),
        scored(2, tokens_per_s=10.0, rtt_s=0.1),
        scored(3),
        scored(4, tokens_per_s=1.0, rtt_s=10.0),
    ]
    fast, median, _, unknown, slow = weights(pool)
    assert fast == 4.0  # speed and RTT each capped at 2x
    assert median == unknown == 1.0
    assert slow == 0.25
    assert candidate_weight(scored(0, reputation=5.0), median_tokens_per_s=0, median_rtt_s=0) == 4.0
    assert candidate_weight(scored(0, reputation=-1.0), median_tokens_per_s=0, median_rtt_s=0) == 0.25


def test_replicas_never_share_an_operator() -> None:
    pool = [scored(n, operator=f"10.0.0.{n % 3}") for n in range(9)]
    assert capacity(pool) == 3
    for seed in range(50):
        chosen = pick_workers(pool, 5, exclude=(), rng=random.Random(seed))
        assert len(chosen) == 3
        assert len({c.operator for c in chosen}) == 3
    spread = Counter(
        c.peer for s in range(300) for c in pick_workers(pool, 3, exclude=(), rng=random.Random(s))
    )
    assert set(spread) == {c.peer for c in pool}  # sharing an address hides no one: each still gets work


def test_excluded_operators_and_unknown_operators() -> None:
    pool = [scored(0, operator="a"), scored(1, operator="a"), scored(2, operator="b"), scored(3), scored(4)]
    assert capacity(pool) == 4  # unknown operators count apart
    for seed in range(30):
        chosen = pick_workers(pool, 4, exclude=(), rng=random.Random(seed), exclude_operators={"a"})
        assert sorted(c.peer for c in chosen) == ["peer02", "peer03", "peer04"]

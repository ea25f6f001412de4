"""The split planner (opengrid/core/split_plan.py, spec/split.md §3): fewest members, layers in proportion
to memory, nobody over what it offered, the RTT bound, re-planning when a member leaves."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from opengrid.core.split_plan import (
    MAX_NEIGHBOUR_RTT_MS,
    ModelFootprint,
    SplitCandidate,
    plan_split,
    replan,
)
from opengrid.errors import NoCapacityError

MIB = 1024 * 1024


def footprint(n_layers: int = 30, layer: int = 3 * MIB, output: int = 0) -> ModelFootprint:
    return ModelFootprint(
        input_bytes=20 * MIB, layer_bytes=(layer,) * n_layers, output_bytes=output, overhead_bytes=8 * MIB
    )


def check_plan_fits(fp: ModelFootprint, plan, offers: dict[str, int]) -> None:
    """Every layer placed once, contiguously, and nobody over its offer."""
    n_units = fp.n_layers
    first = plan.head_layers
    for m in plan.members:
        assert m.first == first and m.count >= 1
        used = sum(fp.unit_bytes(u) for u in range(m.first, m.first + m.count)) + fp.overhead_bytes
        assert m.bytes == used <= offers[m.peer]
        first += m.count
    assert first == n_units
    assert plan.head_bytes <= offers[plan.head]
    assert plan.offloaded == (n_units - plan.head_layers + 1 if plan.members else 0)


def test_fewest_members_that_fit_largest_first() -> None:
    fp = footprint()  # 20 input + 90 of layers + 8 scratch = 118 MiB in one process
    head = SplitCandidate("head", 70 * MIB)  # room for layers: 70 - 20 input - 8 scratch = 42 MiB
    cands = [SplitCandidate("a", 40 * MIB), SplitCandidate("b", 80 * MIB), SplitCandidate("c", 50 * MIB)]
    plan = plan_split(fp, head, cands)
    assert plan.peers == ("b",)  # 42 + 72 >= 90 MiB of layers: b alone with the head, the biggest
    check_plan_fits(fp, plan, {"head": 70 * MIB, "a": 40 * MIB, "b": 80 * MIB, "c": 50 * MIB})
    # With a smaller head, two members are needed, still the biggest first.
    plan = plan_split(fp, SplitCandidate("head", 40 * MIB), cands)  # 12 + 72 < 90
    assert plan.peers == ("b", "c")


def test_three_way_when_no_pair_fits() -> None:
    fp = footprint()
    head = SplitCandidate("head", 40 * MIB)
    cands = [SplitCandidate(p, 40 * MIB) for p in ("a", "b", "c")]
    plan = plan_split(fp, head, cands)
    check_plan_fits(fp, plan, {"head": 40 * MIB, "a": 40 * MIB, "b": 40 * MIB, "c": 40 * MIB})
    # Fewest: the head's 12 MiB of room and 2 x 32 = 76 MiB < 90 needed -> three members.
    assert len(plan.members) == 3


def test_layers_in_proportion_to_memory() -> None:
    fp = footprint(n_layers=100, layer=1 * MIB)  # 100 equal layers of 1 MiB
    head = SplitCandidate("head", 28 * MIB + 10 * MIB)  # 20 input + 8 scratch + room for 10 units
    cands = [SplitCandidate("a", 8 * MIB + 60 * MIB), SplitCandidate("b", 8 * MIB + 30 * MIB)]
    plan = plan_split(fp, head, cands)  # needs all three: 10 + 60 + 30 = 100
    shares = {m.peer: m.count for m in plan.members}
    assert (plan.head_layers, shares["a"], shares["b"]) == (10, 60, 30)
    check_plan_fits(fp, plan, {"head": 38 * MIB, "a": 68 * MIB, "b": 38 * MIB})
    # More memory than needed: still in proportion (rooms 20 : 120 : 60 of 200 -> 10 : 60 : 30).
    big = plan_split(
        fp, SplitCandidate("head", 48 * MIB), [SplitCandidate("a", 128 * MIB), SplitCandidate("b", 68 * MIB)]
    )
    assert len(big.members) == 1  # fewest first: a alone with the head holds it
    assert big.head_layers == round(100 * 20 / 140)


def test_rtt_bound_excludes_far_members_and_says_so() -> None:
    fp = footprint()
    head = SplitCandidate("head", 60 * MIB)
    near = SplitCandidate("near", 40 * MIB, rtt_ms=10)
    far = SplitCandidate("far", 500 * MIB, rtt_ms=MAX_NEIGHBOUR_RTT_MS + 1)
    with pytest.raises(NoCapacityError, match="round-trip bound"):
        plan_split(fp, head, [near, far])
    plan = plan_split(fp, head, [near, far, SplitCandidate("near2", 80 * MIB, rtt_ms=79)])
    assert "far" not in plan.peers


def test_no_capacity_names_what_is_missing() -> None:
    fp = footprint()
    with pytest.raises(NoCapacityError, match="needs 118 MiB") as info:
        plan_split(fp, SplitCandidate("head", 40 * MIB), [SplitCandidate("a", 30 * MIB)])
    assert "--max-memory" in str(info.value)
    with pytest.raises(NoCapacityError, match="input and output layers"):
        plan_split(fp, SplitCandidate("head", 10 * MIB), [SplitCandidate("a", 300 * MIB)])


def test_replan_after_a_member_leaves() -> None:
    fp = footprint()
    head = SplitCandidate("head", 40 * MIB)
    cands = [SplitCandidate(p, 50 * MIB) for p in ("a", "b", "c", "d")]
    plan = plan_split(fp, head, cands)
    gone = plan.peers[1]
    again = replan(plan, fp, head, cands, {gone})
    assert gone not in again.peers
    check_plan_fits(fp, again, {"head": 40 * MIB, **{c.peer: c.free_bytes for c in cands}})
    with pytest.raises(NoCapacityError):
        replan(plan, fp, head, cands, {"a", "b", "c"})
    with pytest.raises(NoCapacityError, match="head"):
        replan(plan, fp, head, cands, {"head"})


def test_plan_is_reproducible_whatever_the_candidate_order() -> None:
    fp = footprint()
    head = SplitCandidate("head", 40 * MIB)
    cands = [SplitCandidate(p, 50 * MIB, rtt_ms=r) for p, r in (("a", 5), ("b", 1), ("c", 5), ("d", 3))]
    assert plan_split(fp, head, cands) == plan_split(fp, head, list(reversed(cands)))
    # equal memory: the nearer ones first
    assert set(plan_split(fp, head, cands).peers) == {"b", "d"}


def test_credit_shares() -> None:
    fp = footprint()
    plan = plan_split(fp, SplitCandidate("head", 60 * MIB), [SplitCandidate("a", 200 * MIB)])
    assert plan.layer_share("head") + plan.layer_share("a") == fp.n_layers
    assert plan.layer_share("stranger") == 0
    # llama.cpp's view: the member's layers, then the output layer (kept on the head by an override)
    assert plan.tensor_split == (float(plan.layer_share("a") + 1),)
    assert plan.offloaded == plan.layer_share("a") + 1
    alone = plan_split(fp, SplitCandidate("head", 500 * MIB), [])
    assert alone.members == () and alone.offloaded == 0 and alone.head_layers == fp.n_layers


@settings(max_examples=200, deadline=None)
@given(
    n_layers=st.integers(1, 80),
    layer=st.integers(1, 8 * MIB),
    output=st.integers(0, 40 * MIB),
    head_free=st.integers(0, 200 * MIB),
    offers=st.lists(st.integers(0, 300 * MIB), min_size=0, max_size=6),
)
def test_any_plan_fits_every_offer(
    n_layers: int, layer: int, output: int, head_free: int, offers: list[int]
) -> None:
    fp = ModelFootprint(
        input_bytes=MIB, layer_bytes=(layer,) * n_layers, output_bytes=output, overhead_bytes=MIB
    )
    cands = [SplitCandidate(f"m{i}", free) for i, free in enumerate(offers)]
    try:
        plan = plan_split(fp, SplitCandidate("head", head_free), cands)
    except NoCapacityError:
        # Refused only when the memory really does not suffice (or placement failed on the margin).
        room = max(0, head_free - 2 * MIB - output) + sum(max(0, o - MIB) for o in offers)
        needed = n_layers * layer
        assert room < needed + layer * (len(offers) + 1) or head_free < 2 * MIB + output
        return
    check_plan_fits(fp, plan, {"head": head_free, **{c.peer: c.free_bytes for c in cands}})

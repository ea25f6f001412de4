"""The quorum rule and the judge: pure functions over peer -> commitment maps."""

from __future__ import annotations

import pytest

from opengrid.core.verifier import Agreement, judge, quorum

A, B, C = b"A" * 32, b"B" * 32, b"C" * 32


@pytest.mark.parametrize(("replicas", "needed"), [(1, 1), (2, 2), (3, 2), (4, 3), (5, 3), (8, 5)])
def test_quorum_is_a_strict_majority_of_the_requested_replicas(replicas: int, needed: int) -> None:
    assert quorum(replicas) == needed


def test_two_agreeing_results_win() -> None:
    assert judge({"p1": A, "p2": A}, 2) == Agreement(commitment=A, peers=("p1", "p2"), dissenters=())


def test_one_against_one_has_no_winner() -> None:
    assert judge({"p1": A, "p2": B}, 2) is None


def test_two_against_one_wins_and_lists_the_dissenter() -> None:
    assert judge({"p3": A, "p1": B, "p2": A}, 2) == Agreement(
        commitment=A, peers=("p2", "p3"), dissenters=("p1",)
    )


def test_two_against_two_has_no_winner() -> None:
    assert judge({"p1": A, "p2": A, "p3": B, "p4": B}, 2) is None


def test_two_of_four_split_three_ways_is_not_a_majority() -> None:
    assert judge({"p1": A, "p2": A, "p3": B, "p4": C}, 2) is None


def test_a_single_result_is_not_enough_for_two_replicas() -> None:
    assert judge({"p1": A}, 2) is None


def test_a_single_result_wins_when_one_replica_was_asked_for() -> None:
    assert judge({"p1": A}, 1) == Agreement(commitment=A, peers=("p1",), dissenters=())


def test_three_replicas_accept_two_agreeing_before_the_third_arrives() -> None:
    assert judge({"p1": A, "p2": A}, 3) == Agreement(commitment=A, peers=("p1", "p2"), dissenters=())


def test_no_results_no_winner() -> None:
    assert judge({}, 1) is None


def test_judgement_does_not_depend_on_insertion_order() -> None:
    forward = {"p1": B, "p2": A, "p3": A, "p4": A, "p5": C}
    backward = dict(reversed(forward.items()))
    assert judge(forward, 4) == judge(backward, 4) == Agreement(A, ("p2", "p3", "p4"), ("p1", "p5"))

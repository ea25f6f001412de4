"""A client reads its balance from a coordinator's NodeStatus (``listed_balance``) before it signs a
HOLD: a missing account has no points only when the list was not cut (spec/limits.md §4)."""

from __future__ import annotations

from opengrid.wire.messages import (
    MAX_STATUS_BALANCES,
    NodeStatus,
    WorkerSummary,
    bounded_status,
    listed_balance,
)

ME = b"\x01" * 32
WORKER = WorkerSummary(peer_id="w", public_key=b"k" * 32, models=["tiny"], online=True)


def _status(balances: dict[str, int], *, workers: bool = True) -> NodeStatus:
    return NodeStatus(
        "c", b"k" * 32, "coordinator", [], 0, 0, workers=[WORKER] if workers else [], balances=balances
    )


def test_a_listed_account_has_its_points_and_a_missing_one_none_when_the_list_is_whole() -> None:
    assert listed_balance(_status({ME.hex(): 7, "ab" * 32: 3}), ME) == 7
    assert listed_balance(_status({"ab" * 32: 3}), ME) == 0  # only nonzero balances are listed


def test_a_missing_account_is_unknown_when_the_list_may_have_been_cut() -> None:
    full = {f"{i:064x}": i + 1 for i in range(MAX_STATUS_BALANCES + 10)}
    cut = bounded_status(_status(full))
    assert len(cut.balances) == MAX_STATUS_BALANCES and listed_balance(cut, ME) is None
    # bounded_status cuts balances only once workers and peers are gone: then nothing is certain.
    assert listed_balance(_status({"ab" * 32: 3}, workers=False), ME) is None

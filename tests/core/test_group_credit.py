"""A split group's receipt credits the head and every member by the layers each ran (spec/split.md §8),
and a group share that does not attest the head's output is refused: coordinator machines fed real
WorkerLogic results, no sockets."""

from __future__ import annotations

import msgspec
import pytest
from grid_harness import HONEST, NETWORK, Grid, dispatches, finished, open_receipt, signing_key
from hypothesis import given
from hypothesis import strategies as st
from opengrid_ledger import Attestation, Credit, sign_attestation
from opengrid_ledger.payloads import check_receipt

from opengrid.core.coordinator import CoordinatorConfig
from opengrid.core.coordinator.group_credit import split_points
from opengrid.core.coordinator.payments import payouts
from opengrid.core.effects import Penalize
from opengrid.core.reputation import receipt_outcomes
from opengrid.errors import InvalidEntryError
from opengrid.wire.codec import decode_message, encode_message
from opengrid.wire.messages import ErrorReply, GroupShare, JobAccepted, ReplicaResult, SplitShares

MEMBERS = ("m0", "m1")


def co_signed(result: ReplicaResult, head_layers: int, layers: list[int], **changes: object) -> ReplicaResult:
    """``result`` as a split head sends it: each member's attestation of the same output (optionally with
    one field changed) and its layers, through the real wire codec."""
    head = msgspec.msgpack.decode(result.attestation, type=Attestation)
    fields = {
        "job_id": head.job_id,
        "contract_hash": head.contract_hash,
        "output_commitment": head.output_commitment,
        "n_tokens": head.n_tokens,
        **changes,
    }
    shares = [
        GroupShare(
            msgspec.msgpack.encode(sign_attestation(signing_key(name), NETWORK, **fields)),  # type: ignore[arg-type]
            n,
        )
        for name, n in zip(MEMBERS, layers, strict=True)
    ]
    decoded = decode_message(
        encode_message(msgspec.structs.replace(result, group=SplitShares(head_layers, shares)))
    )
    assert isinstance(decoded, ReplicaResult)
    return decoded


def member_key(name: str) -> bytes:
    return bytes(signing_key(name).verify_key)


@pytest.mark.parametrize("verify", ["replicate", "audit"])
def test_a_groups_points_go_to_head_and_members_by_layers(verify: str) -> None:
    config = (
        CoordinatorConfig(verify="replicate")
        if verify == "replicate"
        else CoordinatorConfig(verify="audit", audit_full_rate=1.0)
    )
    grid = Grid(n=2, config=config)
    grid.register()
    (first,) = dispatches(grid.submit(replicas=1, max_tokens=16))
    result = co_signed(grid.result(first, HONEST), head_layers=0, layers=[14, 16])
    effects = grid.deliver(first, result)
    if verify == "audit":
        (audit,) = [e for e in effects if type(e).__name__ == "DispatchAudit"]
        effects = grid.audit(audit, gap=0.0)  # type: ignore[arg-type]
    reply = finished(effects)
    assert isinstance(reply, JobAccepted), reply
    _, receipt = open_receipt(reply.receipt)
    check_receipt(receipt, NETWORK)  # the ledger's own rule: one matching attestation per credited account
    credits = {c.account: c.points for c in receipt.credits}
    # 5 tokens x weight 1 = 5 points over weights head 0+1, members 14 and 16 (31): floors 0, 2, 2; the
    # remainder 1 goes to the head
    head = grid.key(first.peer)
    assert (credits[head], credits[member_key("m0")], credits[member_key("m1")]) == (1, 2, 2)
    assert grid.coordinator.ledger.balance(member_key("m1")) == 2
    # The members are marked as such: a rebuild from the ledger does not count them as agreeing replicas
    # (one unchecked group result is no verification), while an audited one is valid for everyone.
    assert receipt.members == (member_key("m0"), member_key("m1"))
    valid = {key for key, outcome in receipt_outcomes(receipt) if outcome == "valid"}
    assert valid == (set(credits) if verify == "audit" else set())
    assert {k for k, r in grid.coordinator.reputation.items() if r.valid} == valid  # the same in memory
    with pytest.raises(InvalidEntryError, match="member twice or one it does not credit"):
        check_receipt(msgspec.structs.replace(receipt, members=(member_key("m2"),)), NETWORK)
    assert reply.workers[0] == first.peer and len(reply.workers) == (2 if verify == "audit" else 1)


def test_a_member_attesting_another_output_makes_the_result_invalid() -> None:
    grid = Grid(n=2)
    grid.register()
    (first, _) = dispatches(grid.submit(replicas=2))
    result = co_signed(grid.result(first, HONEST), 0, [1, 1], output_commitment=b"\x07" * 32)
    effects = grid.deliver(first, result)
    assert [p.peer for p in effects if isinstance(p, Penalize)] == [first.peer]
    assert not isinstance(finished(effects), JobAccepted | ErrorReply)  # replaced, the job goes on


def test_a_head_cannot_list_itself_as_its_member() -> None:
    grid = Grid(n=2)
    grid.register()
    (first, _) = dispatches(grid.submit(replicas=2))
    honest = grid.result(first, HONEST)
    own = GroupShare(honest.attestation, 3)
    result = msgspec.structs.replace(honest, group=SplitShares(0, [own]))
    penalties = [p for p in grid.deliver(first, result) if isinstance(p, Penalize)]
    assert len(penalties) == 1 and "listed twice, or is the head" in penalties[0].why


@given(
    st.integers(1, 10**6),
    st.integers(0, 64),
    st.lists(st.integers(1, 64), min_size=1, max_size=16),
)
def test_shares_add_up_and_the_head_always_gets_some(points: int, head: int, members: list[int]) -> None:
    shares = split_points(points, head, members)
    assert sum(shares) == points and shares[0] >= 1 and min(shares) >= 0
    total = head + 1 + sum(members)
    for share, weight in zip(shares[1:], members, strict=True):
        assert share == points * weight // total  # members get their floor exactly


def test_a_paid_groups_members_are_paid_their_credit_in_full() -> None:
    head, m0, m1 = (bytes([i]) * 32 for i in (1, 2, 3))
    group = (Credit(account=head, points=6), Credit(account=m0, points=5), Credit(account=m1, points=5))
    assert payouts(group, 16) == group  # one replica's hold pays its whole group
    # Replicas as before: their credits fit the hold and are paid in full; extra replicas split it evenly.
    two = (Credit(account=head, points=5), Credit(account=m0, points=5))
    assert payouts(two, 32) == two
    assert [c.points for c in payouts((*two, Credit(account=m1, points=5)), 10)] == [3, 3, 3]

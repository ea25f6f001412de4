"""One writer per chain (spec/ledger.md §4): the node's FRAUD path, its ADMIT path and its coordinator core
append to the node's own chain through one ``ChainWriter``, so the coordinator's view of its chain has no
gaps and the next receipt is chained after what the node wrote.

The real parts: a closed-genesis ledger opened from its SQLite store, the real ``CoordinatorAdmission``
writing our ADMIT, the real ``LedgerService.report_forks`` writing our FRAUD, the real ``Coordinator`` signing
the receipt. Only gossip is a recorder (no libp2p host is needed to see what would be published).
"""

from __future__ import annotations

import pathlib
import random

import pytest
import trio
import trio.testing
from opengrid_ledger import (
    Admit,
    ChainWriter,
    Cosignature,
    Entry,
    Evidence,
    Fraud,
    LedgerState,
    Receipt,
    decode_body,
    decode_entry,
    encode_entry,
    sign_admit,
    sign_entry,
)
from opengrid_ledger.genesis import Genesis

from opengrid.core.coordinator import Coordinator
from opengrid.errors import InvalidEntryError
from opengrid.node.config import NodeConfig
from opengrid.node.context import NodeContext
from opengrid.node.coordinator_admission import CoordinatorAdmission
from opengrid.node.ledger_service import LedgerService
from opengrid.store.ledger_store import open_ledger
from opengrid.wire.messages import Message
from tests.ledger.ledger_factory import (
    COORDINATOR,
    NETWORK,
    OTHER_COORDINATOR,
    WORKERS,
    job_id,
    key,
    make_receipt,
    pub,
)

CANDIDATE = key(40)
"""The node under test: a candidate coordinator of a network whose genesis names two others."""


class _Gossip:
    """Records what the node would publish on the ledger gossip topic."""

    def __init__(self) -> None:
        self.published: list[bytes] = []

    async def publish_ledger(self, data: bytes) -> None:
        self.published.append(data)


class _Membership:
    def __init__(self) -> None:
        self.gossip = _Gossip()


async def _never(peer: str, message: Message) -> Message:
    raise AssertionError("the test writes the ADMIT directly: nobody is asked")


def _fork() -> tuple[Entry, Entry]:
    """Two different entries of ``COORDINATOR`` with seq 1: a fork."""
    one = Evidence(job_id=job_id(1), valid=(pub(WORKERS[0]),))
    two = Evidence(job_id=job_id(2), valid=(pub(WORKERS[0]),))
    ledger = LedgerState(NETWORK, [pub(COORDINATOR)])
    return (
        sign_entry(COORDINATOR, ledger.next_body(pub(COORDINATOR), one)),
        sign_entry(COORDINATOR, ledger.next_body(pub(COORDINATOR), two)),
    )


async def test_fraud_and_admit_written_by_the_node_are_followed_by_the_coordinators_next_receipt(
    tmp_path: pathlib.Path,
) -> None:
    genesis = Genesis(NETWORK, (pub(COORDINATOR), pub(OTHER_COORDINATOR)))
    ledger, store = open_ledger(tmp_path, NETWORK, genesis=genesis, closed=True)
    ctx = NodeContext(
        config=NodeConfig(data_dir=tmp_path, role="coordinator", network=NETWORK), key=CANDIDATE
    )
    ctx.ledger, ctx.store, ctx.chain = ledger, store, ChainWriter(ledger, CANDIDATE)
    membership = _Membership()
    ctx.membership = membership  # type: ignore[assignment]  # only its gossip's publish_ledger is used
    service = LedgerService(ctx)
    coordinator = Coordinator(
        network=NETWORK, signing_key=CANDIDATE, ledger=ledger, rng=random.Random(1), chain=ctx.chain
    )
    ctx.coordinator = coordinator

    async with trio.open_nursery() as nursery:
        ctx.nursery = nursery
        # 1. The node's ADMIT (coordinator_admission.py), co-signed by both genesis coordinators.
        stored: list[Entry] = []
        admission = CoordinatorAdmission(
            network=NETWORK,
            signing_key=CANDIDATE,
            chain=ctx.chain,
            data_dir=tmp_path,
            request=_never,
            coordinators=list,
            append=lambda applied, entry: stored.extend(applied),
            period_s=1.0,
        )
        votes = {
            pub(k): Cosignature(pub(k), sign_admit(k, NETWORK, 0, pub(CANDIDATE)).signature)
            for k in (COORDINATOR, OTHER_COORDINATOR)
        }
        assert admission._write_admit(0, votes)
        assert pub(CANDIDATE) in ledger.minters()

        # 2. A genesis coordinator forks; the node's FRAUD proof (ledger_service.py) goes on our chain.
        first, second = _fork()
        ledger.apply(first)
        with pytest.raises(InvalidEntryError):  # the fork: refused, and the author is frozen
            ledger.apply(second)
        assert pub(COORDINATOR) in ledger.proven()
        service.report_forks()

        # 3. The coordinator core's next receipt (chain.py), as results.py signs it.
        receipt = coordinator._sign_own(make_receipt(job_id(9), [(WORKERS[1], 42)]))
        await trio.testing.wait_all_tasks_blocked()

    ours = [decode_body(decode_entry(e).body) for e in coordinator._notice_for("w1").entries]
    assert [type(b.payload) for b in ours] == [Admit, Fraud, Receipt]  # no gap in the coordinator's view
    assert [b.seq for b in ours] == [1, 2, 3]
    assert decode_body(receipt.body).prev == ledger.entries_by_author(pub(CANDIDATE))[1].id
    assert membership.gossip.published == [encode_entry(ledger.entries_by_author(pub(CANDIDATE))[1])]

    # Everything our chain holds applies, in order, on a fresh ledger of the network.
    fresh = LedgerState(NETWORK, genesis=genesis, closed=True)
    for data in coordinator._notice_for("w2").entries:
        assert fresh.apply(decode_entry(data)), "each of our entries applies at once"
    assert fresh.head(pub(CANDIDATE)) == ledger.head(pub(CANDIDATE))
    assert fresh.balance(pub(WORKERS[1])) == 42


def test_a_fraud_is_not_written_while_the_node_has_no_standing(tmp_path: pathlib.Path) -> None:
    """A candidate (no standing) that sees a fork does not write a FRAUD: it would wait, and its ADMIT
    behind it would never apply (spec/ledger.md §5.9, §6.3)."""
    genesis = Genesis(NETWORK, (pub(COORDINATOR), pub(OTHER_COORDINATOR)))
    ledger, store = open_ledger(tmp_path, NETWORK, genesis=genesis, closed=True)
    ctx = NodeContext(
        config=NodeConfig(data_dir=tmp_path, role="coordinator", network=NETWORK), key=CANDIDATE
    )
    ctx.ledger, ctx.store, ctx.chain = ledger, store, ChainWriter(ledger, CANDIDATE)
    first, second = _fork()
    ledger.apply(first)
    with pytest.raises(InvalidEntryError):
        ledger.apply(second)
    ctx.nursery = object()  # type: ignore[assignment]  # report_forks returns before starting any task
    LedgerService(ctx).report_forks()
    assert ctx.chain.head() is None
    assert ledger.head(pub(CANDIDATE)) is None

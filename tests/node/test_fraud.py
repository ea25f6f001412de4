"""A fork seen by one node reaches every node: it publishes a FRAUD proof on the ledger gossip topic.

Two coordinators on the in-memory network (virtual time; gossip through the nodes' own validators) share
a genesis whose minters are A and X, a key the test holds (a proof is stored only if its author has
standing, spec/ledger.md §6.3: A's is being a minter). A is given both branches of X's fork at seq 1 (two
receipts with one seq); node B only the first, so B alone could not know. A freezes X, authors a FRAUD
entry and gossips it; B applies the proof and cuts X too: X's receipt no longer counts anywhere, and B
does not publish a second proof.
"""

from __future__ import annotations

import pathlib

import trio
from opengrid_ledger import Fraud, decode_body, encode_entry
from opengrid_ledger.genesis import Genesis, encode_genesis
from trio.testing import MockClock

from opengrid.node.config import NodeConfig
from opengrid.node.service import Node
from opengrid.testing.memnet import MemoryNetwork
from tests.ledger.ledger_factory import COORDINATOR, NETWORK, WORKERS, Author, job_id, make_receipt, pub
from tests.waiting import until


def frauds(node: Node) -> list[bytes]:
    """Authors of the FRAUD entries in the node's ledger."""
    assert node.ledger is not None
    return [
        decode_body(e.body).author
        for e in node.ledger.entries()
        if isinstance(decode_body(e.body).payload, Fraud)
    ]


async def test_a_fork_one_node_saw_freezes_the_forker_on_a_node_that_saw_one_branch(
    tmp_path: pathlib.Path, memnet: MemoryNetwork, memnet_clock: MockClock
) -> None:
    genesis = tmp_path / "genesis.json"
    honest, forked = Author(COORDINATOR), Author(COORDINATOR)
    first = honest.append(make_receipt(job_id(1), [(WORKERS[0], 5)]))
    second = forked.append(make_receipt(job_id(2), [(WORKERS[1], 5)]))  # the same seq, another entry

    def config(name: str, bootstrap: Node | None = None) -> NodeConfig:
        addrs = () if bootstrap is None or bootstrap.host is None else (bootstrap.host.addrs()[0],)
        return NodeConfig(
            data_dir=tmp_path / name,
            role="coordinator",
            network=NETWORK,
            genesis=genesis,
            bootstrap=addrs,
            announce_s=0.3,
            heartbeat_s=60.0,  # no periodic ledger sync within the test: gossip must carry the proof
        )

    async with trio.open_nursery() as nursery:
        a = Node(config("a"), transport=memnet)
        minters = (pub(COORDINATOR), a.public_key)
        genesis.write_bytes(encode_genesis(Genesis(network=NETWORK, coordinators=minters)))
        await nursery.start(a.run)
        b = Node(config("b", bootstrap=a), transport=memnet)
        await nursery.start(b.run)
        assert a.ledger is not None and b.ledger is not None
        await until(
            lambda: b.membership is not None and a.host is not None and len(b.status().peers) == 1, 10
        )

        b.ledger_service.take_gossiped_entry("test", encode_entry(first))
        assert b.ledger.balance(pub(WORKERS[0])) == 5 and not b.ledger.frozen()

        a.ledger_service.take_gossiped_entry("test", encode_entry(first))
        a.ledger_service.take_gossiped_entry("test", encode_entry(second))
        assert a.ledger.is_frozen(pub(COORDINATOR)) and frauds(a) == [a.public_key]

        await until(lambda: b.ledger is not None and b.ledger.is_frozen(pub(COORDINATOR)), 10)
        assert b.ledger.balance(pub(WORKERS[0])) == 0  # the cut undoes the forker's receipt
        assert frauds(b) == [a.public_key]  # B applied A's proof and did not author its own
        nursery.cancel_scope.cancel()

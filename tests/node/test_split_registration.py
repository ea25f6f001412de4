"""A split group's registration gives the coordinator its members' accounts (spec/split.md §6): the keys
inlined in ``RegisterWorker.split_members``' peer ids, by which the group's standing is weighed; a member
id that carries no key refuses the registration as malformed. A coordinator node on the in-memory network
in virtual time; the head is a bare host that registers as a split group's head does."""

from __future__ import annotations

import pathlib
import secrets

import msgspec
import trio
from nacl.signing import SigningKey
from trio.testing import MockClock

from opengrid.core.coordinator import CoordinatorConfig
from opengrid.net.keys import peer_id_of, public_key_of
from opengrid.node.config import NodeConfig
from opengrid.node.service import Node
from opengrid.testing.memnet import MemoryNetwork
from opengrid.wire.contract import DecodingContract
from opengrid.wire.messages import ErrorReply, ModelOffer, Registered, RegisterWorker


async def test_a_heads_registration_lists_its_members_accounts_and_a_bad_member_id_is_refused(
    tmp_path: pathlib.Path, memnet: MemoryNetwork, memnet_clock: MockClock
) -> None:
    config = NodeConfig(data_dir=tmp_path / "c", role="coordinator", heartbeat_s=0.2)
    coordinator = Node(config, coordinator_config=CoordinatorConfig.plain(heartbeat_s=0.2), transport=memnet)
    member = bytes(SigningKey(secrets.token_bytes(32)).verify_key)
    async with trio.open_nursery() as nursery:
        await nursery.start(coordinator.run)
        assert coordinator.host is not None and coordinator.coordinator is not None
        async with memnet.open_host(secrets.token_bytes(32)) as head:
            peer = await head.connect(coordinator.host.addrs()[0])
            offer = ModelOffer(
                name="tiny", contract=DecodingContract(model_sha256="ab" * 32, backend="llama.cpp+rpc")
            )
            message = RegisterWorker(
                network=config.network,
                public_key=public_key_of(head.peer_id),
                listen_addrs=head.addrs(),
                models=[offer],
                split_members=[peer_id_of(member)],
            )
            with trio.fail_after(10):
                assert isinstance(await head.request(peer, message), Registered)
            assert coordinator.coordinator.workers[head.peer_id].members == (member,)
            forged = msgspec.structs.replace(message, split_members=["QmNotAPeerId"])
            with trio.fail_after(10):
                reply = await head.request(peer, forged)
            assert isinstance(reply, ErrorReply) and reply.code == "malformed", reply
            assert "split_members" in reply.message and "QmNotAPeerId" in reply.message
            assert coordinator.coordinator.workers[head.peer_id].members == (member,)  # unchanged
        nursery.cancel_scope.cancel()

"""A peer cannot crash a node through a stream (issue 15, item 1).

A handler's failure ends its stream, never the node: an idle ``/opengrid/ledger-sync/1`` stream used to
let its exchange deadline's ``trio.TooSlowError`` escape the handler, and py-libp2p runs handlers in the
host's own nursery, so the whole process exited. These tests attack a real node on 127.0.0.1 and then
check that it still answers.
"""

from __future__ import annotations

import pathlib
import secrets

import pytest
import trio
from libp2p.custom_types import TProtocol

from opengrid.errors import TransportError
from opengrid.net.host import FrameStream, Host, open_host, quiet_libp2p_logging
from opengrid.node import ledger_service
from opengrid.node.config import NodeConfig
from opengrid.node.ledger_sync import SYNC_PROTOCOL
from opengrid.node.service import Node
from opengrid.wire.messages import NodeStatus, StatusRequest
from tests.node.workers import client_host


async def test_an_idle_ledger_sync_stream_times_out_and_the_node_lives_on(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ledger_service, "_SYNC_TIMEOUT_S", 0.5)
    async with trio.open_nursery() as nursery:
        node = Node(NodeConfig(data_dir=tmp_path / "c", role="coordinator", network="hostile"))
        await nursery.start(node.run)
        assert node.host is not None
        attacker: Host = await nursery.start(client_host)
        peer = await attacker.connect(node.host.addrs()[0])
        stream = await attacker.open_stream(peer, TProtocol(SYNC_PROTOCOL))
        with trio.fail_after(10), pytest.raises(TransportError):  # sends nothing: the node resets it
            await stream.receive_body()
        await trio.sleep(0.5)  # were the timeout to escape, the node's nursery would be failing by now
        with trio.fail_after(10):
            reply = await attacker.request(peer, StatusRequest())
        assert isinstance(reply, NodeStatus)
        nursery.cancel_scope.cancel()


async def test_a_handler_that_raises_ends_its_stream_not_the_host() -> None:
    quiet_libp2p_logging()
    protocol = TProtocol("/opengrid/test-broken/1")

    async def broken(stream: FrameStream) -> None:
        raise RuntimeError("a bug in a handler")

    async with open_host(secrets.token_bytes(32)) as server, open_host(secrets.token_bytes(32)) as client:
        server.set_handler(broken, protocol)

        async def status(stream: FrameStream) -> None:
            await stream.receive()
            await stream.send(NodeStatus(server.peer_id, b"", "worker", [], 0, 0))

        server.set_handler(status)
        peer = await client.connect(server.addrs()[0])
        for _ in range(3):
            # The reset may come before the client has read the protocol's acknowledgement: then opening
            # the stream fails rather than reading from it. Either way the stream ended, the host lives.
            with trio.fail_after(10), pytest.raises(TransportError):
                stream = await client.open_stream(peer, protocol)
                await stream.receive_body()
        with trio.fail_after(10):
            assert isinstance(await client.request(peer, StatusRequest()), NodeStatus)

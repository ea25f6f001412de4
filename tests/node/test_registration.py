"""A worker's registration heartbeats (spec/job-protocol.md §6.1): they ride one kept stream, the
coordinator's registration channel; against a coordinator that answers late or never, the connection is
kept through a late answer — re-dialling an overloaded coordinator only adds a handshake to its load — and
dropped for a fresh one after three beats without any answer.

Nodes on the in-memory network in virtual time (``memnet``, ``memnet_clock``), the worker with a test
engine; the silent coordinator is a bare host that reads every RegisterWorker and never replies.
"""

from __future__ import annotations

import pathlib
import secrets

import pytest
import trio
from trio.testing import MockClock

from opengrid.core.coordinator import CoordinatorConfig
from opengrid.net.host import BEAT_PROTOCOL, FrameStream
from opengrid.node import registration
from opengrid.node.config import NodeConfig
from opengrid.node.service import Node
from opengrid.testing.engines import EchoEngine
from opengrid.testing.memnet import MemoryNetwork
from opengrid.wire.messages import ErrorReply, RegisterWorker, StatusRequest

TIMEOUT_S = 1.5
"""The registration timeout for this test (the product's is at least 5 s): long enough for a stream to open
on a loaded machine, so every timeout is a registration left unanswered."""


async def test_a_silent_coordinator_keeps_its_connection_for_three_beats_then_gets_a_fresh_one(
    tmp_path: pathlib.Path, memnet: MemoryNetwork, monkeypatch: pytest.MonkeyPatch, memnet_clock: MockClock
) -> None:
    monkeypatch.setattr(registration, "_registration_timeout", lambda heartbeat_s: TIMEOUT_S)
    connections: list[object] = []
    """The connection each registration arrived on, in order (the connection objects themselves: an id()
    could be reused once a closed connection is collected)."""

    async def never_answer(stream: FrameStream) -> None:
        if isinstance(await stream.receive(), RegisterWorker):  # (the worker also asks for our status)
            connections.append(stream._stream._connection)
            await trio.sleep_forever()  # the worker gives up on it (and resets the stream)

    async with memnet.open_host(secrets.token_bytes(32)) as silent, trio.open_nursery() as nursery:
        silent.set_handler(never_answer)
        worker = Node(
            NodeConfig(
                data_dir=tmp_path / "w",
                role="worker",
                bootstrap=(silent.addrs()[0],),
                heartbeat_s=0.2,
            ),
            engine=EchoEngine("tiny"),
            transport=memnet,
        )
        await nursery.start(worker.run)
        with trio.fail_after(60):
            while len(connections) < 7:
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()

    first, second, third = connections[:3], connections[3:6], connections[6]
    assert all(c is first[0] for c in first), connections  # three unanswered beats on one connection ...
    assert all(c is second[0] for c in second) and second[0] is not first[0], connections  # ... a fresh one
    assert third is not second[0], connections
    assert not worker.registered.is_set()


async def test_registration_heartbeats_ride_one_kept_stream_which_carries_nothing_else(
    tmp_path: pathlib.Path, memnet: MemoryNetwork, memnet_clock: MockClock
) -> None:
    coordinator = Node(
        NodeConfig(data_dir=tmp_path / "c", role="coordinator", heartbeat_s=0.2),
        coordinator_config=CoordinatorConfig.plain(heartbeat_s=0.2),
        transport=memnet,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(coordinator.run)
        assert coordinator.host is not None and coordinator.coordinator is not None
        worker = Node(
            NodeConfig(
                data_dir=tmp_path / "w",
                role="worker",
                bootstrap=(coordinator.host.addrs()[0],),
                heartbeat_s=0.2,
            ),
            engine=EchoEngine("tiny"),
            transport=memnet,
        )
        await nursery.start(worker.run)
        beats = worker.registration.beats
        assert beats is not None
        with trio.fail_after(30):
            while beats.reused < 5:
                await trio.sleep(0.05)
        assert beats.opened == 1  # every later beat reused the first stream
        assert worker.host is not None
        assert coordinator.coordinator.workers[worker.host.peer_id].online

        async with memnet.open_host(secrets.token_bytes(32)) as client:
            peer = await client.connect(coordinator.host.addrs()[0])
            stream = await client.open_stream(peer, BEAT_PROTOCOL)
            await stream.send(StatusRequest())
            reply = await stream.receive()
            await stream.aclose()
        assert isinstance(reply, ErrorReply) and reply.code == "malformed"
        assert "RegisterWorker only" in reply.message
        nursery.cancel_scope.cancel()

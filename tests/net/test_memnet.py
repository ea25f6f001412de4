"""The in-memory network (opengrid.testing.memnet) behaves as the real host does where tests rely on it:
frame bounds, protocol refusal, caps and deadlines, a peer that leaves, gossip validation, the DHT's
record validation. Virtual time (``memnet_clock``): the 10 s deadline test takes milliseconds."""

from __future__ import annotations

import secrets
import struct
from collections.abc import AsyncIterator, Iterator

import pytest
import trio
from multiaddr import Multiaddr
from nacl.signing import SigningKey
from trio.testing import MockClock

from opengrid.errors import (
    FrameTooLargeError,
    IncompatiblePeerError,
    PeerTooSlowError,
    TransportError,
)
from opengrid.net import host as real_host
from opengrid.net.discovery import encode_value_record, role_key, value_key
from opengrid.net.host import BEAT_PROTOCOL, FIRST_FRAME_S, JOB_PROTOCOL, FrameStream
from opengrid.net.keys import peer_id_of
from opengrid.net.transport import LIBP2P, StreamHost, Transport
from opengrid.testing.memnet import MemoryHost, MemoryNetwork, address_of, clock_stops_for_threads
from opengrid.wire.codec import MAX_FRAME_BYTES
from opengrid.wire.messages import ErrorReply, NodeStatus, StatusRequest


@pytest.fixture
async def pair(memnet: MemoryNetwork) -> AsyncIterator[tuple[MemoryHost, MemoryHost]]:
    async with (
        memnet.open_host(secrets.token_bytes(32)) as server,
        memnet.open_host(secrets.token_bytes(32)) as client,
    ):
        yield server, client


def _recording(seen: list[BaseException | object]) -> real_host.Handler:
    async def handler(stream: FrameStream) -> None:
        try:
            seen.append(await stream.receive())
        except BaseException as exc:
            seen.append(exc)
            raise
        await stream.send(ErrorReply(code="malformed", message="answered"))

    return handler


def test_a_memory_host_is_a_stream_host(memnet: MemoryNetwork) -> None:
    host: StreamHost = MemoryHost(memnet, "peer", None, nursery=None)  # type: ignore[arg-type]
    (address,) = host.addrs()
    assert address == address_of("peer") and address.endswith("/p2p/peer")
    real = peer_id_of(bytes(range(32)))
    assert str(Multiaddr(address_of(real))) == address_of(real)  # a valid multiaddr: configs take it


async def test_a_frame_over_the_bound_is_refused_before_its_body_is_read(
    pair: tuple[MemoryHost, MemoryHost],
    memnet_clock: MockClock,
) -> None:
    server, client = pair
    seen: list[BaseException | object] = []
    server.set_handler(_recording(seen))
    await client.connect(server.addrs()[0])
    stream = await client.open_stream(server.peer_id)
    await stream._stream.write(struct.pack(">I", MAX_FRAME_BYTES + 1))  # a hostile length, no body
    with pytest.raises(TransportError):
        await stream.receive()  # the server reset the stream
    assert len(seen) == 1 and isinstance(seen[0], FrameTooLargeError)


async def test_an_unknown_protocol_is_refused_with_the_real_hosts_error(
    pair: tuple[MemoryHost, MemoryHost],
    memnet_clock: MockClock,
) -> None:
    server, client = pair
    server.set_handler(_recording([]))
    await client.connect(server.addrs()[0])
    with pytest.raises(IncompatiblePeerError, match="speaks none of /opengrid/beat/1"):
        await client.open_stream(server.peer_id, BEAT_PROTOCOL)
    # a fallback it serves is taken, and the stream says which
    stream = await client.open_stream(server.peer_id, BEAT_PROTOCOL, fallbacks=(JOB_PROTOCOL,))
    assert stream.protocol == JOB_PROTOCOL
    await stream.aclose()


async def test_a_peer_that_leaves_makes_streams_fail_with_a_transport_error(
    memnet: MemoryNetwork, memnet_clock: MockClock
) -> None:
    async with memnet.open_host(secrets.token_bytes(32)) as client:
        async with memnet.open_host(secrets.token_bytes(32)) as server:
            gate = trio.Event()

            async def hold(stream: FrameStream) -> None:
                await gate.wait()

            server.set_handler(hold)
            peer = await client.connect(server.addrs()[0])
            held = await client.open_stream(peer)
        assert not client.is_connected(peer) and peer not in memnet.peers()
        with pytest.raises(TransportError):
            await held.receive()  # the open stream was reset
        with pytest.raises(TransportError, match="could not open a stream"):
            await client.open_stream(peer)  # and no new one opens
        with pytest.raises(TransportError, match="could not connect"):
            await client.connect(memnet_address(peer))


def memnet_address(peer: str) -> str:
    return address_of(peer)


async def test_a_silent_stream_is_ended_after_the_first_frame_deadline(
    pair: tuple[MemoryHost, MemoryHost], memnet_clock: MockClock
) -> None:
    server, client = pair
    seen: list[BaseException | object] = []
    server.set_handler(_recording(seen))
    await client.connect(server.addrs()[0])
    stream = await client.open_stream(server.peer_id)
    started = trio.current_time()
    with pytest.raises(TransportError):
        await stream.receive()  # we send nothing; the server gives up
    assert trio.current_time() - started == pytest.approx(FIRST_FRAME_S)
    assert len(seen) == 1 and isinstance(seen[0], PeerTooSlowError)


async def test_streams_over_the_per_protocol_cap_are_reset_and_counted(
    pair: tuple[MemoryHost, MemoryHost],
    memnet_clock: MockClock,
) -> None:
    server, client = pair
    gate = trio.Event()

    async def hold(stream: FrameStream) -> None:
        await gate.wait()

    server.set_handler(hold, BEAT_PROTOCOL)
    await client.connect(server.addrs()[0])
    cap = real_host.MAX_STREAMS_PER_PEER[BEAT_PROTOCOL]
    streams = [await client.open_stream(server.peer_id, BEAT_PROTOCOL) for _ in range(cap + 1)]
    await trio.testing.wait_all_tasks_blocked()
    assert [s.reusable for s in streams] == [True] * cap + [False]
    assert server.refusals.count == 1


async def test_gossip_delivers_only_what_the_receivers_validators_accept(
    memnet: MemoryNetwork, memnet_clock: MockClock
) -> None:
    """An announcement signed by another key is dropped by the receiver's real validator (counted as a
    rejection); a good one reaches the directory of a peer two hops away."""
    keys = [SigningKey.generate() for _ in range(3)]
    async with (
        memnet.open_host(bytes(keys[0])) as a,
        memnet.open_host(bytes(keys[1])) as b,
        memnet.open_host(bytes(keys[2])) as c,
        trio.open_nursery() as nursery,
    ):
        gossips = [
            memnet.gossip(h, network="t", signing_key=k, beat_s=1.0)
            for h, k in zip((a, b, c), keys, strict=True)
        ]
        for gossip in gossips:
            await nursery.start(gossip.run)
        await a.connect(b.addrs()[0])
        await b.connect(c.addrs()[0])  # a and c are not connected: c hears a through b
        await gossips[0].announce_now()
        await trio.testing.wait_all_tasks_blocked()
        assert a.peer_id in gossips[2].directory
        forged = gossips[0]
        forged._key = keys[2]  # a signs with c's key: its announcement no longer matches its peer id
        await forged.announce_now()
        await trio.testing.wait_all_tasks_blocked()
        assert gossips[1].rejections.get(a.peer_id, 0) >= 1
        nursery.cancel_scope.cancel()


async def test_the_dht_finds_providers_through_a_server_and_refuses_forged_values(
    memnet: MemoryNetwork,
    memnet_clock: MockClock,
) -> None:
    keys = [SigningKey.generate() for _ in range(3)]
    async with (
        memnet.open_host(bytes(keys[0])) as server_host,
        memnet.open_host(bytes(keys[1])) as provider_host,
        memnet.open_host(bytes(keys[2])) as seeker_host,
        trio.open_nursery() as nursery,
    ):
        server = memnet.discovery(server_host, network="t", signing_key=keys[0])
        provider = memnet.discovery(provider_host, network="t", signing_key=keys[1], server=False)
        seeker = memnet.discovery(seeker_host, network="t", signing_key=keys[2], server=False)
        for d in (server, provider, seeker):
            await nursery.start(d.run)
        key = role_key("t", "coordinator")
        assert await seeker.find_providers(key) == []
        assert await provider.bootstrap(server_host.addrs()) == [server_host.peer_id]
        assert await seeker.bootstrap(server_host.addrs()) == [server_host.peer_id]
        assert await seeker.add_peer(provider_host.peer_id) is False  # a DHT client is never in a table
        await provider.provide(key)
        found = await seeker.find_providers(key)
        assert [p.peer_id for p in found] == [provider_host.peer_id]
        assert seeker_host.known_addrs(provider_host.peer_id) == provider_host.addrs()

        name = value_key("t", "motd")
        await provider.put_value(name, b"hello", seq=1)
        record = await seeker.get_value(name)
        assert record is not None and record.value == b"hello"
        # a record for another network is refused by the real validator at the server
        forged = encode_value_record("other", name, b"evil", 2, keys[1])
        server._store_value(name, forged)
        record = await seeker.get_value(name)
        assert record is not None and record.value == b"hello" and server.validator.rejected == 1
        nursery.cancel_scope.cancel()


async def test_a_node_answers_status_on_the_memory_network(
    memnet: MemoryNetwork, tmp_path, memnet_clock: MockClock
) -> None:  # type: ignore[no-untyped-def]
    from opengrid.node.config import NodeConfig
    from opengrid.node.service import Node

    node = Node(NodeConfig(data_dir=tmp_path / "c", role="coordinator"), transport=memnet)
    async with trio.open_nursery() as nursery, memnet.open_host(secrets.token_bytes(32)) as client:
        await nursery.start(node.run)
        assert node.host is not None and node.auto_relay is None
        peer = await client.connect(node.host.addrs()[0])
        reply = await client.request(peer, StatusRequest())
        assert isinstance(reply, NodeStatus) and reply.peer_id == node.host.peer_id
        nursery.cancel_scope.cancel()


# ── the same scenarios on both transports: the in-memory network answers as the real host does ──────────
@pytest.fixture(params=["memory", "libp2p"])
def transport(request: pytest.FixtureRequest, memnet: MemoryNetwork) -> Transport:
    return memnet if request.param == "memory" else LIBP2P


@pytest.fixture
def virtual_time(transport: Transport) -> Iterator[MockClock | None]:
    """Virtual time on the memory network; real time on libp2p (real sockets)."""
    if transport is LIBP2P:
        yield None
        return
    with clock_stops_for_threads(MockClock(autojump_threshold=0)) as clock:
        yield clock


async def test_both_transports_refuse_bad_frames_unknown_protocols_and_gone_peers_alike(
    transport: Transport, virtual_time: MockClock | None
) -> None:
    seen: list[BaseException | object] = []
    async with (
        transport.open_host(secrets.token_bytes(32), ["/ip4/127.0.0.1/tcp/0"]) as server,
        transport.open_host(secrets.token_bytes(32), ["/ip4/127.0.0.1/tcp/0"]) as client,
    ):
        server.set_handler(_recording(seen))
        peer = await client.connect(server.addrs()[0])
        stream = await client.open_stream(peer)
        await stream._stream.write(struct.pack(">I", MAX_FRAME_BYTES + 1))
        with pytest.raises(TransportError):
            await stream.receive()
        assert len(seen) == 1 and isinstance(seen[0], FrameTooLargeError)
        with pytest.raises(IncompatiblePeerError, match="speaks none of /opengrid/beat/1"):
            await client.open_stream(peer, BEAT_PROTOCOL)
        reply = await client.request(peer, StatusRequest())
        assert isinstance(reply, ErrorReply) and reply.message == "answered"
        gone = server.addrs()[0]
    async with transport.open_host(secrets.token_bytes(32), ["/ip4/127.0.0.1/tcp/0"]) as late:
        with pytest.raises(TransportError, match="could not connect"):
            await late.connect(gone)

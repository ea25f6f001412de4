"""No peer can hold, fill or poison a node through its streams (issue 15, items 2, 3 and 5).

Each test attacks a real coordinator the way the issue's probe did, under the node's real bounds, and then
shows the node unharmed: it still answers a legitimate client. The node runs on the in-memory network in
virtual time (``memnet``, ``memnet_clock``: its inbound streams are served by the real host's
``_serve_framed`` within the same ``stream_bounds`` and caps), so a 10 s or 300 s bound costs no real
time; streams never negotiated are libp2p's own (yamux), so that test runs on real hosts on 127.0.0.1.

- A frame that dribbles in (one byte at a time) is cut off once its deadline passes, on ``/opengrid/job/1``
  and on the ``/opengrid/beat/1`` channel; a stream that never sends its request is closed; an idle
  registration channel is closed after a few heartbeats.
- A worker closes a run channel left idle too long; the coordinator's next job opens another.
- One peer's hundreds of idle streams hit the per-peer caps (per protocol, and before negotiation) and are
  reset; another client's status request still gets its answer.
- A registration with a multi-megabyte model name is refused, and workers that stop beating are forgotten,
  so NodeStatus stays small and every status request keeps working.
"""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import pytest
import trio
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID
from trio.testing import MockClock

from opengrid.core.coordinator import CoordinatorConfig
from opengrid.engines import LlamaEngine, ModelInfo, sha256_file
from opengrid.errors import TransportError
from opengrid.net import host as host_module
from opengrid.net.host import BEAT_PROTOCOL, JOB_PROTOCOL, FrameStream, Host, beat_idle_s, frame_deadline_s
from opengrid.net.keys import public_key_of
from opengrid.net.transport import LIBP2P, StreamHost, Transport
from opengrid.node.config import NodeConfig
from opengrid.node.service import Node
from opengrid.testing.memnet import MemoryNetwork
from opengrid.wire.contract import DecodingContract
from opengrid.wire.messages import (
    ErrorReply,
    JobAccepted,
    ModelOffer,
    NodeStatus,
    Registered,
    RegisterWorker,
    StatusRequest,
)
from tests.node.workers import client_host

NETWORK = "hostile"


@asynccontextmanager
async def coordinator_and_attacker(
    tmp_path: pathlib.Path, transport: Transport = LIBP2P, heartbeat_s: float = 0.5, **coordinator: float
) -> AsyncIterator[tuple[Node, StreamHost, StreamHost, str]]:
    """A running coordinator, an attacker's host and a legitimate client's host, both connected to it."""
    async with trio.open_nursery() as nursery:
        config = NodeConfig(
            data_dir=tmp_path / "c", role="coordinator", network=NETWORK, heartbeat_s=heartbeat_s
        )
        node = Node(
            config,
            coordinator_config=CoordinatorConfig.plain(heartbeat_s=heartbeat_s, **coordinator),
            transport=transport,
        )
        await nursery.start(node.run)
        assert node.host is not None
        attacker: StreamHost = await nursery.start(partial(client_host, transport=transport))
        client: StreamHost = await nursery.start(partial(client_host, transport=transport))
        peer = await attacker.connect(node.host.addrs()[0])
        await client.connect(node.host.addrs()[0])
        yield node, attacker, client, peer
        nursery.cancel_scope.cancel()


async def _status(client: StreamHost, peer: str) -> NodeStatus:
    with trio.fail_after(10):
        reply = await client.request(peer, StatusRequest())
    assert isinstance(reply, NodeStatus)
    return reply


async def _raw_stream(attacker: StreamHost, peer: str, protocol: TProtocol) -> FrameStream:
    return await attacker.open_stream(peer, protocol)


@pytest.mark.parametrize("protocol", [JOB_PROTOCOL, BEAT_PROTOCOL])
async def test_a_frame_sent_one_byte_at_a_time_is_cut_off(
    tmp_path: pathlib.Path, memnet: MemoryNetwork, memnet_clock: MockClock, protocol: TProtocol
) -> None:
    bound = frame_deadline_s(64)  # FRAME_BASE_S (10 s) and a little for 64 bytes
    async with coordinator_and_attacker(tmp_path, memnet) as (_, attacker, client, peer):
        stream = await _raw_stream(attacker, peer, protocol)
        raw = stream._stream  # the attacker writes bytes, not frames
        header = (64).to_bytes(4, "big")
        cut_off = trio.Event()

        async def dribble() -> None:
            # The probe's one byte every 5 s, faster: 0.2 s a byte would take 13.6 s for this frame.
            assert bound < 0.2 * (len(header) + 64)
            for byte in header + b"x" * 64:
                if cut_off.is_set():
                    return
                try:
                    await raw.write(bytes([byte]))
                except Exception:  # the node reset the stream: stop
                    return
                await trio.sleep(0.2)

        started = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(dribble)
            with trio.fail_after(bound + 10):
                reply = await stream.receive()
                with pytest.raises(TransportError):  # then the node ends the stream
                    await stream.receive()
            cut_off.set()
        took = trio.current_time() - started
        assert isinstance(reply, ErrorReply) and reply.code == "malformed"
        assert "of a 64-byte frame" in reply.message and f"{bound:.1f} s" in reply.message, reply.message
        assert bound <= took < bound + 0.5, f"cut off after {took:.2f} s, the bound is {bound:.1f} s"
        await _status(client, peer)  # the node goes on


async def test_a_job_stream_that_never_sends_its_request_is_closed(
    tmp_path: pathlib.Path, memnet: MemoryNetwork, memnet_clock: MockClock
) -> None:
    bound = host_module.FIRST_FRAME_S
    async with coordinator_and_attacker(tmp_path, memnet) as (_, attacker, client, peer):
        stream = await _raw_stream(attacker, peer, JOB_PROTOCOL)
        started = trio.current_time()
        with trio.fail_after(bound + 10):
            reply = await stream.receive()
        assert isinstance(reply, ErrorReply) and f"sent no request within {bound:.1f} s" in reply.message
        assert bound <= trio.current_time() - started < bound + 0.5
        await _status(client, peer)


async def test_an_idle_registration_channel_is_closed_after_a_few_heartbeats(
    tmp_path: pathlib.Path, memnet: MemoryNetwork, memnet_clock: MockClock
) -> None:
    # heartbeat 10 s: 4 beats = 40 s of idleness (above the 20 s floor, BEAT_IDLE_MIN_S)
    heartbeat_s = 10.0
    bound = beat_idle_s(heartbeat_s)
    assert bound == 4 * heartbeat_s > host_module.BEAT_IDLE_MIN_S
    async with coordinator_and_attacker(tmp_path, memnet, heartbeat_s) as (_, attacker, client, peer):
        stream = await _raw_stream(attacker, peer, BEAT_PROTOCOL)
        started = trio.current_time()
        with trio.fail_after(bound + 10), pytest.raises(TransportError):  # closed quietly: no reply, an end
            await stream.receive()
        took = trio.current_time() - started
        assert bound <= took < bound + 0.5, f"closed after {took:.2f} s; the idle bound is {bound:.0f} s"
        await _status(client, peer)


async def test_hundreds_of_idle_job_streams_from_one_peer_hit_its_cap(
    tmp_path: pathlib.Path, memnet: MemoryNetwork, memnet_clock: MockClock
) -> None:
    cap = host_module.MAX_STREAMS_PER_PEER[str(JOB_PROTOCOL)]  # 256
    tries = cap + 160
    async with coordinator_and_attacker(tmp_path, memnet) as (node, attacker, client, peer):
        assert node.host is not None
        opened, failed = [], 0
        started = trio.current_time()
        for _ in range(tries):
            try:
                opened.append(await _raw_stream(attacker, peer, JOB_PROTOCOL))
            except TransportError:  # over the cap: reset as soon as it opened
                failed += 1
        with trio.fail_after(10):
            while node.host.refusals.count < tries - cap:
                await trio.sleep(0.05)
        assert node.host.refusals.count == tries - cap
        # all within the streams' first-frame bound: they were idle, not yet timed out, when refused
        assert trio.current_time() - started < host_module.FIRST_FRAME_S
        with trio.fail_after(1), pytest.raises(TransportError):  # the streams past the cap were reset
            await opened[-1].receive()
        assert failed + len(opened) == tries
        status = await _status(client, peer)  # another client is served at once
        assert status.peer_id == node.host.peer_id
        for stream in opened:
            await stream.reset()


async def test_streams_never_negotiated_count_against_the_peer_too(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cap = 100
    monkeypatch.setattr(host_module, "MAX_INBOUND_STREAMS_PER_PEER", cap)
    async with coordinator_and_attacker(tmp_path) as (node, attacker, client, peer):
        assert node.host is not None and isinstance(attacker, Host)
        # Yamux streams opened on the connection, never starting multistream-select: py-libp2p keeps each
        # for its 10 s negotiation timeout, and counts it against its global 10,000-stream cap meanwhile.
        conn = attacker.libp2p.get_network().get_connections(ID.from_base58(peer))[0]
        muxed = conn.muxed_conn
        opened = [await muxed.open_stream() for _ in range(250)]
        with trio.fail_after(10):
            while node.host.refusals.count < 250 - cap:
                await trio.sleep(0.05)
        assert node.host.refusals.count == 250 - cap
        status = await _status(client, peer)
        assert status.peer_id == node.host.peer_id
        for stream in opened:
            await stream.reset()


def _registration(attacker: StreamHost, name: str) -> RegisterWorker:
    offer = ModelOffer(name=name, contract=DecodingContract(model_sha256="ab" * 32))
    return RegisterWorker(
        network=NETWORK,
        public_key=public_key_of(attacker.peer_id),
        listen_addrs=attacker.addrs(),
        models=[offer],
    )


async def test_a_worker_with_a_huge_model_name_is_refused_and_status_keeps_working(
    tmp_path: pathlib.Path, memnet: MemoryNetwork, memnet_clock: MockClock
) -> None:
    async with coordinator_and_attacker(tmp_path, memnet) as (_, attacker, client, peer):
        # The probe's 3.8 MB name: two such registrations pushed NodeStatus past the frame limit for good.
        with trio.fail_after(20):
            reply = await attacker.request(peer, _registration(attacker, "m" * 3_800_000))
        assert isinstance(reply, ErrorReply) and reply.code == "malformed"
        assert "256" in reply.message, reply.message
        status = await _status(client, peer)
        assert status.workers == []


async def test_workers_that_stop_beating_are_forgotten(
    tmp_path: pathlib.Path, memnet: MemoryNetwork, memnet_clock: MockClock
) -> None:
    async with coordinator_and_attacker(tmp_path, memnet, forget_after_s=1.0) as (
        node,
        attacker,
        client,
        peer,
    ):
        assert node.coordinator is not None
        with trio.fail_after(10):
            assert isinstance(await attacker.request(peer, _registration(attacker, "fake")), Registered)
        assert [w.peer_id for w in (await _status(client, peer)).workers] == [attacker.peer_id]
        # It never beats again: offline after 3 beats (1.5 s), forgotten 1 s after its last beat once the
        # registry is next looked at (its timers, or the next new worker's registration: here, the client).
        await trio.sleep(1.6)
        with trio.fail_after(10):
            assert isinstance(await client.request(peer, _registration(client, "honest")), Registered)
        assert attacker.peer_id not in node.coordinator.workers
        assert [w.peer_id for w in (await _status(client, peer)).workers] == [client.peer_id]


async def test_an_idle_run_channel_is_closed_and_the_next_job_opens_another(
    tmp_path: pathlib.Path, tiny_model_path: pathlib.Path, memnet: MemoryNetwork, memnet_clock: MockClock
) -> None:
    # The coordinator opens a run channel as the worker joins and keeps it; the worker closes it once idle
    # for RUN_IDLE_S (300 s), and the coordinator's pool then opens a fresh one for the next job.
    info = ModelInfo(name="tiny", path=tiny_model_path, sha256=sha256_file(tiny_model_path))
    async with coordinator_and_attacker(tmp_path, memnet) as (coordinator, _, _, _):
        assert coordinator.host is not None
        async with trio.open_nursery() as nursery:
            config = NodeConfig(
                data_dir=tmp_path / "w",
                role="worker",
                network=NETWORK,
                bootstrap=(coordinator.host.addrs()[0],),
                heartbeat_s=0.5,
            )
            worker = Node(config, engine=LlamaEngine(info, n_threads=1), transport=memnet)
            await nursery.start(worker.run)
            pool = coordinator.coordinator_driver.runs
            assert pool is not None and worker.host is not None
            peer = worker.host.peer_id
            with trio.fail_after(host_module.RUN_IDLE_S + 30):
                await worker.registered.wait()
                while pool.idle(peer) < 1:
                    await trio.sleep(0.01)
                (idle,) = pool._idle[peer]
                kept = trio.current_time()
                while idle.reusable:  # the worker ends it after RUN_IDLE_S without a RunJob
                    await trio.sleep(1)
                assert trio.current_time() - kept >= host_module.RUN_IDLE_S - 1
                reply = await coordinator.api_submit(
                    prompt="hello", model="tiny", max_tokens=2, replicas=1, format="text"
                )
            assert isinstance(reply, JobAccepted), reply
            assert pool.opened == 2 and worker.jobs_run == 1
            nursery.cancel_scope.cancel()

"""No peer can hold, fill or poison a node through its streams (issue 15, items 2, 3 and 5).

Each test attacks a real coordinator on 127.0.0.1 the way the issue's probe did, with the bound under test
shortened (monkeypatch), and then shows the node unharmed: it still answers a legitimate client.

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

import pytest
import trio
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID

from opengrid.core.coordinator import CoordinatorConfig
from opengrid.engines import LlamaEngine, ModelInfo, sha256_file
from opengrid.errors import TransportError
from opengrid.net import host as host_module
from opengrid.net.host import BEAT_PROTOCOL, JOB_PROTOCOL, FrameStream, Host
from opengrid.net.keys import public_key_of
from opengrid.node.config import NodeConfig
from opengrid.node.service import Node
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
    tmp_path: pathlib.Path, **coordinator: float
) -> AsyncIterator[tuple[Node, Host, Host, str]]:
    """A running coordinator, an attacker's host and a legitimate client's host, both connected to it."""
    async with trio.open_nursery() as nursery:
        config = NodeConfig(data_dir=tmp_path / "c", role="coordinator", network=NETWORK, heartbeat_s=0.5)
        node = Node(config, coordinator_config=CoordinatorConfig.plain(heartbeat_s=0.5, **coordinator))
        await nursery.start(node.run)
        assert node.host is not None
        attacker: Host = await nursery.start(client_host)
        client: Host = await nursery.start(client_host)
        peer = await attacker.connect(node.host.addrs()[0])
        await client.connect(node.host.addrs()[0])
        yield node, attacker, client, peer
        nursery.cancel_scope.cancel()


async def _status(client: Host, peer: str) -> NodeStatus:
    with trio.fail_after(10):
        reply = await client.request(peer, StatusRequest())
    assert isinstance(reply, NodeStatus)
    return reply


async def _raw_stream(attacker: Host, peer: str, protocol: TProtocol) -> FrameStream:
    return await attacker.open_stream(peer, protocol)


@pytest.mark.parametrize("protocol", [JOB_PROTOCOL, BEAT_PROTOCOL])
async def test_a_frame_sent_one_byte_at_a_time_is_cut_off(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, protocol: TProtocol
) -> None:
    monkeypatch.setattr(host_module, "FRAME_BASE_S", 1.0)
    async with coordinator_and_attacker(tmp_path) as (_, attacker, client, peer):
        stream = await _raw_stream(attacker, peer, protocol)
        raw = stream._stream  # the attacker writes bytes, not frames
        header = (64).to_bytes(4, "big")
        cut_off = trio.Event()

        async def dribble() -> None:
            # The probe's one byte every 5 s, faster: 0.2 s a byte would take 13.6 s for this frame.
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
            with trio.fail_after(10):
                reply = await stream.receive()
                with pytest.raises(TransportError):  # then the node ends the stream
                    await stream.receive()
            cut_off.set()
        took = trio.current_time() - started
        assert isinstance(reply, ErrorReply) and reply.code == "malformed"
        assert "of a 64-byte frame" in reply.message and "1.0 s" in reply.message, reply.message
        assert 0.9 <= took < 5.0, f"cut off after {took:.2f} s, the bound is 1 s"
        await _status(client, peer)  # the node goes on


async def test_a_job_stream_that_never_sends_its_request_is_closed(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(host_module, "FIRST_FRAME_S", 0.5)
    async with coordinator_and_attacker(tmp_path) as (_, attacker, client, peer):
        stream = await _raw_stream(attacker, peer, JOB_PROTOCOL)
        started = trio.current_time()
        with trio.fail_after(10):
            reply = await stream.receive()
        assert isinstance(reply, ErrorReply) and "sent no request within 0.5 s" in reply.message
        assert trio.current_time() - started < 5.0
        await _status(client, peer)


async def test_an_idle_registration_channel_is_closed_after_a_few_heartbeats(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # heartbeat 0.5 s: 4 beats = 2 s of idleness (the floor lowered to let it show)
    monkeypatch.setattr(host_module, "BEAT_IDLE_MIN_S", 0.1)
    async with coordinator_and_attacker(tmp_path) as (_, attacker, client, peer):
        stream = await _raw_stream(attacker, peer, BEAT_PROTOCOL)
        started = trio.current_time()
        with trio.fail_after(15), pytest.raises(TransportError):  # closed quietly: no reply, an end
            await stream.receive()
        took = trio.current_time() - started
        assert 1.5 <= took < 8.0, f"closed after {took:.2f} s; the idle bound is 2 s"
        await _status(client, peer)


async def test_hundreds_of_idle_job_streams_from_one_peer_hit_its_cap(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cap = 40
    monkeypatch.setitem(host_module.MAX_STREAMS_PER_PEER, str(JOB_PROTOCOL), cap)
    monkeypatch.setattr(host_module, "FIRST_FRAME_S", 120.0)  # the streams stay idle for the whole test
    async with coordinator_and_attacker(tmp_path) as (node, attacker, client, peer):
        assert node.host is not None
        opened, failed = [], 0
        for _ in range(200):
            try:
                opened.append(await _raw_stream(attacker, peer, JOB_PROTOCOL))
            except TransportError:  # reset by the node as soon as negotiated: over the cap
                failed += 1
        assert failed > 0
        with trio.fail_after(10):
            while node.host.refusals.count < 200 - cap:  # the muxer hands streams over one by one
                await trio.sleep(0.05)
        assert node.host.refusals.count == 200 - cap
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
        assert node.host is not None
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


def _registration(attacker: Host, name: str) -> RegisterWorker:
    offer = ModelOffer(name=name, contract=DecodingContract(model_sha256="ab" * 32))
    return RegisterWorker(
        network=NETWORK,
        public_key=public_key_of(attacker.peer_id),
        listen_addrs=attacker.addrs(),
        models=[offer],
    )


async def test_a_worker_with_a_huge_model_name_is_refused_and_status_keeps_working(
    tmp_path: pathlib.Path,
) -> None:
    async with coordinator_and_attacker(tmp_path) as (_, attacker, client, peer):
        # The probe's 3.8 MB name: two such registrations pushed NodeStatus past the frame limit for good.
        with trio.fail_after(20):
            reply = await attacker.request(peer, _registration(attacker, "m" * 3_800_000))
        assert isinstance(reply, ErrorReply) and reply.code == "malformed"
        assert "256" in reply.message, reply.message
        status = await _status(client, peer)
        assert status.workers == []


async def test_workers_that_stop_beating_are_forgotten(tmp_path: pathlib.Path) -> None:
    async with coordinator_and_attacker(tmp_path, forget_after_s=1.0) as (node, attacker, client, peer):
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
    tmp_path: pathlib.Path, tiny_model_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The coordinator opens a run channel as the worker joins and keeps it; the worker closes it once idle
    # for RUN_IDLE_S (here 1 s), and the coordinator's pool then opens a fresh one for the next job.
    monkeypatch.setattr(host_module, "RUN_IDLE_S", 1.0)
    info = ModelInfo(name="tiny", path=tiny_model_path, sha256=sha256_file(tiny_model_path))
    async with coordinator_and_attacker(tmp_path) as (coordinator, _, _, _):
        assert coordinator.host is not None
        async with trio.open_nursery() as nursery:
            config = NodeConfig(
                data_dir=tmp_path / "w",
                role="worker",
                network=NETWORK,
                bootstrap=(coordinator.host.addrs()[0],),
                heartbeat_s=0.5,
            )
            worker = Node(config, engine=LlamaEngine(info, n_threads=1))
            await nursery.start(worker.run)
            pool = coordinator.coordinator_driver.runs
            assert pool is not None and worker.host is not None
            peer = worker.host.peer_id
            with trio.fail_after(30):
                await worker.registered.wait()
                while pool.idle(peer) < 1:
                    await trio.sleep(0.01)
                (idle,) = pool._idle[peer]
                while idle.reusable:  # the worker ends it after 1 s without a RunJob
                    await trio.sleep(0.05)
                reply = await coordinator.api_submit(
                    prompt="hello", model="tiny", max_tokens=2, replicas=1, format="text"
                )
            assert isinstance(reply, JobAccepted), reply
            assert pool.opened == 2 and worker.jobs_run == 1
            nursery.cancel_scope.cancel()

"""A node (SQLite ledger) against raw streams and the SDK's requests.

Bad input must give a typed error reply and leave the node serving; identities and ledgers persist. On the
in-memory network in virtual time (``memnet``, ``memnet_clock``: the same framing, bounds and handlers
as on libp2p), except what is about the transport: dialling a dead address, and measuring RTT (real
libp2p on 127.0.0.1).
"""

from __future__ import annotations

import pathlib
import secrets
import struct
import time
from collections.abc import AsyncIterator

import pytest
import trio
from nacl.signing import SigningKey
from trio.testing import MockClock

from opengrid.core.coordinator import CoordinatorConfig
from opengrid.engines import LlamaEngine, ModelInfo, sha256_file
from opengrid.errors import ConfigError, TransportError
from opengrid.net.host import JOB_PROTOCOL, open_host
from opengrid.net.transport import StreamHost
from opengrid.node.config import NodeConfig
from opengrid.node.service import Node
from opengrid.testing.engines import EchoEngine
from opengrid.testing.memnet import MemoryNetwork
from opengrid.wire.codec import MAX_FRAME_BYTES, encode_frame
from opengrid.wire.contract import DecodingContract
from opengrid.wire.control import control_signing_bytes
from opengrid.wire.messages import (
    ControlRequest,
    ErrorReply,
    JobAccepted,
    NodeStatus,
    RunJob,
    StatusRequest,
    SubmitJob,
)


@pytest.fixture
async def coordinator(tmp_path: pathlib.Path, memnet: MemoryNetwork) -> AsyncIterator[Node]:
    node = Node(NodeConfig(data_dir=tmp_path / "coordinator", role="coordinator"), transport=memnet)
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        yield node
        nursery.cancel_scope.cancel()


@pytest.fixture
async def client(memnet: MemoryNetwork) -> AsyncIterator[StreamHost]:
    async with memnet.open_host(secrets.token_bytes(32)) as host:
        yield host


async def _raw_exchange(client: StreamHost, node: Node, data: bytes) -> object:
    """Write raw bytes on a fresh job stream and read the node's one framed reply."""
    assert node.host is not None
    peer = await client.connect(node.host.addrs()[0])
    stream = await client.open_stream(peer)
    await stream._stream.write(data)  # bypass our encoder on purpose: this is the hostile peer
    try:
        return await stream.receive()
    finally:
        await stream.aclose()


async def _status_still_served(client: StreamHost, node: Node) -> None:
    assert node.host is not None
    reply = await client.request(node.host.peer_id, StatusRequest())
    assert isinstance(reply, NodeStatus) and reply.peer_id == node.host.peer_id


async def test_status_reports_identity_and_role(
    coordinator: Node, client: StreamHost, memnet_clock: MockClock
) -> None:
    assert coordinator.host is not None
    peer = await client.connect(coordinator.host.addrs()[0])
    reply = await client.request(peer, StatusRequest())
    assert isinstance(reply, NodeStatus)
    assert reply.role == "coordinator"
    assert reply.public_key == coordinator.public_key
    assert (reply.points, reply.jobs_done, reply.workers) == (0, 0, [])


async def test_oversized_frame_gets_a_typed_error_and_node_keeps_serving(
    coordinator: Node, client: StreamHost, memnet_clock: MockClock
) -> None:
    header = struct.pack(">I", MAX_FRAME_BYTES + 1)
    reply = await _raw_exchange(client, coordinator, header)
    assert isinstance(reply, ErrorReply)
    assert reply.code == "malformed" and "limit" in reply.message
    await _status_still_served(client, coordinator)


async def test_malformed_frame_gets_a_typed_error_and_node_keeps_serving(
    coordinator: Node, client: StreamHost, memnet_clock: MockClock
) -> None:
    garbage = b"\xc1\xff\x00not msgpack"
    reply = await _raw_exchange(client, coordinator, struct.pack(">I", len(garbage)) + garbage)
    assert isinstance(reply, ErrorReply) and reply.code == "malformed"
    await _status_still_served(client, coordinator)


async def test_message_for_another_role_is_refused(
    coordinator: Node, client: StreamHost, memnet_clock: MockClock
) -> None:
    run = RunJob(
        job_id=b"j" * 16, contract=DecodingContract(model_sha256="00" * 32), prompt="hi", max_tokens=4
    )
    reply = await _raw_exchange(client, coordinator, encode_frame(run))
    assert isinstance(reply, ErrorReply) and reply.code == "malformed"
    assert "RunJob" in reply.message


async def test_job_for_a_model_nobody_serves_fails_clearly(
    coordinator: Node, client: StreamHost, memnet_clock: MockClock
) -> None:
    job = SubmitJob(job_id=secrets.token_bytes(16), model="no-such-model", prompt="hi", max_tokens=4)
    reply = await _raw_exchange(client, coordinator, encode_frame(job))
    assert isinstance(reply, ErrorReply)
    assert reply.code == "unknown_model" and "no-such-model" in reply.message


async def test_identity_and_ledger_survive_a_restart(
    tmp_path: pathlib.Path, memnet: MemoryNetwork, memnet_clock: MockClock
) -> None:
    config = NodeConfig(data_dir=tmp_path / "n", role="coordinator")
    peer_ids = []
    for _ in range(2):
        node = Node(config, transport=memnet)
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)
            assert node.host is not None
            peer_ids.append(node.host.peer_id)
            nursery.cancel_scope.cancel()
    assert peer_ids[0] == peer_ids[1]
    assert (tmp_path / "n" / "identity.key").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "n" / "ledger.sqlite3").exists()


async def test_dialling_a_dead_address_is_a_transport_error() -> None:
    async with open_host(secrets.token_bytes(32)) as other:
        address = other.addrs()[0]
    async with open_host(secrets.token_bytes(32), dial_retries=0) as client:  # one try is enough to fail
        with pytest.raises(TransportError):
            await client.connect(address)


def test_worker_without_bootstrap_is_a_config_error(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ConfigError, match="--bootstrap"):
        NodeConfig(data_dir=tmp_path, role="worker").validated()


def test_auto_role_resolves_from_bootstrap(tmp_path: pathlib.Path) -> None:
    assert NodeConfig(data_dir=tmp_path).validated().role == "coordinator"
    boot = "/ip4/127.0.0.1/tcp/1/p2p/12D3KooWN5TM5CbW1QRMfb4Rui58doGzeD2AvdHtagrxTSGtCyCo"  # a real peer id
    assert NodeConfig(data_dir=tmp_path, bootstrap=(boot,)).validated().role == "worker"


def test_the_job_protocol_id_is_versioned() -> None:
    assert JOB_PROTOCOL == "/opengrid/job/1"


def _control(node: Node, action: str, seed: bytes, issued_at_ms: int) -> ControlRequest:
    assert node.host is not None
    signed = control_signing_bytes(node.config.network, node.host.peer_id, action, issued_at_ms)
    return ControlRequest(
        action=action, issued_at_ms=issued_at_ms, signature=SigningKey(seed).sign(signed).signature
    )  # type: ignore[arg-type]


async def test_only_the_owner_can_pause_and_a_paused_node_takes_no_work(
    coordinator: Node, client: StreamHost, memnet_clock: MockClock
) -> None:
    assert coordinator.host is not None
    peer = await client.connect(coordinator.host.addrs()[0])
    owner_seed = (coordinator.config.data_dir / "identity.key").read_bytes()
    now_ms = time.time_ns() // 1_000_000

    stranger = await client.request(peer, _control(coordinator, "pause", secrets.token_bytes(32), now_ms))
    assert isinstance(stranger, ErrorReply) and "identity key" in stranger.message
    assert not coordinator.paused

    pause = _control(coordinator, "pause", owner_seed, now_ms)
    status = await client.request(peer, pause)
    assert isinstance(status, NodeStatus) and status.paused
    replayed = await client.request(peer, pause)
    assert isinstance(replayed, ErrorReply) and "replayed" in replayed.message

    job = SubmitJob(job_id=secrets.token_bytes(16), model="tiny", prompt="hi", max_tokens=4)
    busy = await client.request(peer, job)
    assert isinstance(busy, ErrorReply) and busy.code == "busy"

    resumed = await client.request(peer, _control(coordinator, "resume", owner_seed, now_ms + 1))
    assert isinstance(resumed, NodeStatus) and not resumed.paused
    stale = await client.request(peer, _control(coordinator, "pause", owner_seed, now_ms - 10 * 60 * 1000))
    assert isinstance(stale, ErrorReply) and not coordinator.paused


async def test_receipts_survive_a_restart_of_coordinator_and_worker(
    tmp_path: pathlib.Path, memnet: MemoryNetwork, memnet_clock: MockClock
) -> None:
    """Points are in each node's SQLite ledger; after both restart, the same balances come back."""
    coordinator_config = NodeConfig(data_dir=tmp_path / "c", role="coordinator", heartbeat_s=0.5)

    async def run_network(jobs: int) -> tuple[dict[str, int], int]:
        coordinator = Node(
            coordinator_config, coordinator_config=CoordinatorConfig.plain(heartbeat_s=0.5), transport=memnet
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(coordinator.run)
            assert coordinator.host is not None
            workers = []
            for name in ("w1", "w2"):
                config = NodeConfig(
                    data_dir=tmp_path / name,
                    role="worker",
                    bootstrap=(coordinator.host.addrs()[0],),
                    heartbeat_s=0.5,
                )
                worker = Node(config, engine=EchoEngine("tiny"), transport=memnet)
                await nursery.start(worker.run)
                workers.append(worker)
            with trio.fail_after(30):
                for worker in workers:
                    await worker.registered.wait()
            for i in range(jobs):
                job = SubmitJob(job_id=secrets.token_bytes(16), model="tiny", prompt=f"job {i}", max_tokens=4)
                reply = await coordinator.api_submit(
                    prompt=job.prompt, model="tiny", max_tokens=4, replicas=2, format="text"
                )
                assert isinstance(reply, JobAccepted)
            with trio.fail_after(30):  # receipts reach the workers' own ledgers
                while any(w.points() != 4 * jobs for w in workers) and jobs:
                    await trio.sleep(0.05)
            balances = coordinator.status().balances
            points = workers[0].points()
            nursery.cancel_scope.cancel()
        return balances, points

    before = await run_network(jobs=2)
    after = await run_network(jobs=0)
    assert before == after and before[1] == 8 and sorted(before[0].values()) == [8, 8]


async def test_a_worker_outside_its_working_hours_takes_no_work(
    tmp_path: pathlib.Path,
    memnet: MemoryNetwork,
    coordinator: Node,
    client: StreamHost,
    memnet_clock: MockClock,
) -> None:
    now = time.localtime()
    start = (now.tm_hour * 60 + now.tm_min + 120) % (24 * 60)  # a window that starts in two hours
    hours = f"{start // 60:02d}:{start % 60:02d}-{(start + 60) // 60 % 24:02d}:{start % 60:02d}"
    assert coordinator.host is not None
    config = NodeConfig(
        data_dir=tmp_path / "w", role="worker", bootstrap=(coordinator.host.addrs()[0],), work_hours=hours
    )
    worker = Node(config, engine=EchoEngine("tiny"), transport=memnet)
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.run)
        with trio.fail_after(10):
            while not worker.paused:
                await trio.sleep(0.01)
        assert "outside working hours" in worker.pause_reason
        assert worker.status().paused
        assert worker.host is not None
        run = RunJob(job_id=b"j" * 16, contract=worker.worker.offers[0].contract, prompt="hi", max_tokens=4)  # type: ignore[union-attr]
        reply = await client.request(await client.connect(worker.host.addrs()[0]), run)
        assert isinstance(reply, ErrorReply) and reply.code == "busy" and "working hours" in reply.message
        nursery.cancel_scope.cancel()


async def test_the_coordinator_measures_rtt_to_its_workers(
    tmp_path: pathlib.Path, tiny_model_path: pathlib.Path
) -> None:
    coordinator = Node(NodeConfig(data_dir=tmp_path / "c", role="coordinator", heartbeat_s=0.5))
    info = ModelInfo(name="tiny", path=tiny_model_path, sha256=sha256_file(tiny_model_path))
    async with trio.open_nursery() as nursery:
        await nursery.start(coordinator.run)
        assert coordinator.host is not None and coordinator.coordinator is not None
        config = NodeConfig(
            data_dir=tmp_path / "w", role="worker", bootstrap=(coordinator.host.addrs()[0],), heartbeat_s=0.5
        )
        worker = Node(config, engine=LlamaEngine(info, n_threads=1))
        await nursery.start(worker.run)
        assert worker.host is not None
        with trio.fail_after(20):
            while coordinator.coordinator.workers.get(worker.host.peer_id) is None or (
                coordinator.coordinator.workers[worker.host.peer_id].rtt_s == 0.0
            ):
                await trio.sleep(0.05)
        rtt = coordinator.coordinator.workers[worker.host.peer_id].rtt_s
        assert 0.0 < rtt < 1.0  # loopback: milliseconds
        nursery.cancel_scope.cancel()

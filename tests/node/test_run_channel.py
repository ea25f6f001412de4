"""The coordinator's run channel to a worker (``RUN_PROTOCOL``, spec/job-protocol.md §6.4): opened when the
worker joins, then every replica reuses that one pooled stream; a broken stream is replaced; a worker that
serves only ``/opengrid/job/1`` still gets one stream per replica; the timing trace pairs each dispatch
with its engine start.

The grid runs on the in-memory network in virtual time (``memnet``, ``memnet_clock``); the fallback to
``/opengrid/job/1`` is negotiated by real libp2p hosts."""

from __future__ import annotations

import pathlib
import secrets
from collections.abc import AsyncIterator

import pytest
import trio
from trio.testing import MockClock

from opengrid.core.coordinator import CoordinatorConfig
from opengrid.net.host import JOB_PROTOCOL, RUN_PROTOCOL, FrameStream, open_host
from opengrid.net.pool import StreamPool
from opengrid.node.config import NodeConfig
from opengrid.node.service import Node
from opengrid.node.timing import dispatches, read_trace
from opengrid.testing.engines import EchoEngine
from opengrid.testing.memnet import MemoryNetwork
from opengrid.wire.messages import JobAccepted, NodeStatus, StatusRequest


@pytest.fixture
async def grid(tmp_path: pathlib.Path, memnet: MemoryNetwork) -> AsyncIterator[tuple[Node, Node]]:
    """A coordinator and one worker, both writing a timing trace."""
    coordinator = Node(
        NodeConfig(data_dir=tmp_path / "c", role="coordinator", heartbeat_s=0.5),
        coordinator_config=CoordinatorConfig.plain(heartbeat_s=0.5),
        trace_timing=tmp_path / "c.timing.jsonl",
        transport=memnet,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(coordinator.run)
        assert coordinator.host is not None
        config = NodeConfig(
            data_dir=tmp_path / "w", role="worker", bootstrap=(coordinator.host.addrs()[0],), heartbeat_s=0.5
        )
        worker = Node(
            config, engine=EchoEngine("tiny"), trace_timing=tmp_path / "w.timing.jsonl", transport=memnet
        )
        await nursery.start(worker.run)
        with trio.fail_after(30):
            await worker.registered.wait()
            # the coordinator opens a run channel to a worker as it joins, before any job needs it
            runs = coordinator.coordinator_driver.runs
            assert runs is not None and worker.host is not None
            while runs.idle(worker.host.peer_id) < 1:
                await trio.sleep(0.01)
        yield coordinator, worker
        nursery.cancel_scope.cancel()


async def _job(coordinator: Node, i: int) -> None:
    reply = await coordinator.api_submit(
        prompt=f"job {i}", model="tiny", max_tokens=2, replicas=1, format="text"
    )
    assert isinstance(reply, JobAccepted), reply


async def test_replicas_reuse_one_stream_and_the_trace_times_each_dispatch(
    grid: tuple[Node, Node], tmp_path: pathlib.Path, memnet_clock: MockClock
) -> None:
    coordinator, worker = grid
    runs = coordinator.coordinator_driver.runs
    assert runs is not None and worker.host is not None
    for i in range(25):
        await _job(coordinator, i)
    assert (runs.opened, runs.reused) == (1, 25)  # opened when the worker joined
    assert runs.idle(worker.host.peer_id) == 1
    assert worker.jobs_run == 25

    coordinator.timing.close()
    worker.timing.close()
    marks = [*read_trace(tmp_path / "c.timing.jsonl"), *read_trace(tmp_path / "w.timing.jsonl")]
    found = dispatches(marks)
    assert len(found) == 25
    for d in found:
        assert d.worker == worker.host.peer_id
        order = ["dispatch", "stream_ready", "sent", "received", "engine_start", "engine_end", "reply"]
        assert list(d.stages) == order  # every point, in the order a replica passes them
        assert 0 <= d.to_engine_s < 5


async def test_a_broken_run_stream_is_replaced(grid: tuple[Node, Node], memnet_clock: MockClock) -> None:
    coordinator, worker = grid
    pool = coordinator.coordinator_driver.runs
    assert pool is not None and worker.host is not None
    peer = worker.host.peer_id
    await _job(coordinator, 0)
    (idle,) = pool._idle[peer]
    await idle.reset()  # broken while idle (seen by the pool's check)
    await _job(coordinator, 1)
    assert pool.opened == 2

    # Dead, though the muxer's state does not show it yet (a race): the job goes to a fresh stream.
    (idle,) = pool._idle[peer]
    await idle.reset()
    pool._idle[peer] = [_LooksAlive(idle._stream, peer=peer)]
    await _job(coordinator, 2)
    assert pool.opened == 3 and pool.idle(peer) == 1
    assert worker.jobs_run == 3


class _LooksAlive(FrameStream):
    """A stream whose death the muxer has not reported yet."""

    @property
    def reusable(self) -> bool:
        return True


async def test_a_peer_without_the_run_channel_gets_one_stream_per_exchange() -> None:
    async with open_host(secrets.token_bytes(32)) as old, open_host(secrets.token_bytes(32)) as new:

        async def answer_once(stream: FrameStream) -> None:  # a /opengrid/job/1-only node
            await stream.receive()
            await stream.send(
                NodeStatus(peer_id="x", public_key=b"k" * 32, role="worker", addrs=[], points=0, jobs_done=0)
            )

        old.set_handler(answer_once)
        peer = await new.connect(old.addrs()[0])
        pool = StreamPool(new, RUN_PROTOCOL, fallbacks=(JOB_PROTOCOL,))
        for _ in range(3):
            stream, reused = await pool.take(peer)
            assert stream.protocol == JOB_PROTOCOL and not reused
            await stream.send(StatusRequest())
            assert isinstance(await stream.receive(), NodeStatus)
            await pool.give_back(stream)
            assert pool.idle(peer) == 0  # a job/1 stream carries one exchange: closed, never pooled
        assert (pool.opened, pool.reused) == (3, 0)


def test_the_run_protocol_id_is_versioned() -> None:
    assert RUN_PROTOCOL == "/opengrid/run/1"

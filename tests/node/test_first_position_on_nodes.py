"""The first position judged in advance, on nodes (spec/verification.md §14.2): an auditor of a streaming
job sends the coordinator a FirstPositionVerdict once its session has evaluated the prompt, and the
coordinator forwards the prover's first token as verified the moment its frame arrives — before any
auditor judged that chunk — while the auditor still judges it and the job ends as before. The chunked
audit runs on the auditor's pooled run channel (job-protocol.md §6.4), kept for reuse after its report.

llama.cpp on the tiny model; the nodes run on the in-memory network in virtual time. The prover waits to
generate until the coordinator has the auditor's list (its frames trace shows it), so the order checked
below is the protocol's, not a race's."""

from __future__ import annotations

import pathlib
import secrets
import time
from collections.abc import Callable
from functools import partial
from typing import TypeVar

import trio
from trio.testing import MockClock

from opengrid.core.coordinator import CoordinatorConfig
from opengrid.engines import Engine, Generation, GenerationRequest, LlamaEngine, ModelInfo, sha256_file
from opengrid.net.transport import StreamHost
from opengrid.node.config import NodeConfig
from opengrid.node.service import Node
from opengrid.node.timing import read_trace
from opengrid.testing.memnet import MemoryNetwork
from opengrid.wire.codec import FrameBuffer, decode_message
from opengrid.wire.messages import FirstPositionVerdict, JobAccepted, JobProgress, Message, SubmitJob
from tests.node.test_audit_mode import _Preferring, _workers
from tests.node.test_audit_streaming import _MidStreamLiar
from tests.node.workers import client_host

T = TypeVar("T")
PROMPT = "Once upon a time"
MAX_TOKENS = 12


class _Gated(LlamaEngine):
    """Generates the test's job only once the coordinator has received a FirstPositionVerdict (its frames
    trace shows one; polled from the engine's thread, 60 s at most), as a prover whose prefill takes
    longer than its auditor's would. (A trio task could not wait for it: the virtual clock stands
    still while this thread runs.)"""

    frames: pathlib.Path | None = None

    def generate_streaming(
        self,
        request: GenerationRequest,
        on_text: Callable[[str], None] | None,
        on_token: Callable[[int, str], None] | None = None,
    ) -> Generation:
        if request.prompt == PROMPT and self.frames is not None:  # the job's, not the speed test's
            deadline = time.monotonic() + 60
            while not any(isinstance(m, FirstPositionVerdict) for m in _received(self.frames)):
                if time.monotonic() > deadline:
                    raise AssertionError("no FirstPositionVerdict reached the coordinator in 60 s")
                time.sleep(0.01)
        return super().generate_streaming(request, on_text, on_token)


def _coordinator(
    base: pathlib.Path,
    memnet: MemoryNetwork,
    rng: _Preferring,
    *,
    trace_frames: pathlib.Path | None = None,
    trace_timing: pathlib.Path | None = None,
) -> Node:
    return Node(
        NodeConfig(data_dir=base / "c", role="coordinator", heartbeat_s=0.5, verify="audit"),
        coordinator_config=CoordinatorConfig.plain(heartbeat_s=0.5, verify="audit"),
        rng=rng,
        transport=memnet,
        trace_frames=trace_frames,
        trace_timing=trace_timing,
    )


async def _streamed(client: StreamHost, coordinator: Node) -> tuple[SubmitJob, Message, list[str]]:
    """Submit a streaming job through ``client``: the job, its final reply and the verified texts."""
    assert coordinator.host is not None
    peer = await client.connect(coordinator.host.addrs()[0])
    job = SubmitJob(
        job_id=secrets.token_bytes(16), model="tiny", prompt=PROMPT, max_tokens=MAX_TOKENS, stream=True
    )
    verified: list[str] = []
    stream = await client.open_stream(peer)
    with trio.fail_after(90):
        await stream.send(job)
        for _ in range(2 * MAX_TOKENS + 2):
            reply = await stream.receive()
            if not isinstance(reply, JobProgress):
                break
            if reply.verified:
                verified.append(reply.text)
    await stream.aclose()
    return job, reply, verified


def _received(trace: pathlib.Path) -> list[Message]:
    """The messages in a ``--trace-frames`` file, in the order the node received them."""
    buffer = FrameBuffer()
    buffer.feed(trace.read_bytes())
    messages = []
    for _ in range(100_000):
        body = buffer.next_body()
        if body is None:
            break
        messages.append(decode_message(body))
    return messages


async def test_the_first_token_is_forwarded_on_the_auditors_list_before_it_judges_the_chunk(
    tmp_path: pathlib.Path, tiny_model_path: pathlib.Path, memnet: MemoryNetwork, memnet_clock: MockClock
) -> None:
    info = ModelInfo(name="tiny", path=tiny_model_path, sha256=sha256_file(tiny_model_path))
    rng = _Preferring(5)
    frames = tmp_path / "coordinator-frames.bin"
    coordinator = _coordinator(tmp_path, memnet, rng, trace_frames=frames, trace_timing=tmp_path / "c.timing")
    async with trio.open_nursery() as nursery:
        await nursery.start(coordinator.run)
        assert coordinator.host is not None
        workers: dict[str, Node] = {}
        for name in ("prover", "auditor"):
            config = NodeConfig(
                data_dir=tmp_path / name,
                role="worker",
                bootstrap=(coordinator.host.addrs()[0],),
                heartbeat_s=0.5,
            )
            engine = _Gated(info, n_threads=1)
            engine.frames = frames
            workers[name] = Node(
                config, engine=engine, transport=memnet, trace_timing=tmp_path / f"{name}.timing"
            )
            await nursery.start(workers[name].run)
        with trio.fail_after(30):
            for node in workers.values():
                await node.registered.wait()
        prover, auditor = workers["prover"], workers["auditor"]
        assert prover.host is not None and auditor.host is not None
        rng.prefer = [prover.host.peer_id, auditor.host.peer_id]

        client: StreamHost = await nursery.start(partial(client_host, transport=memnet))
        job, reply, verified = await _streamed(client, coordinator)
        runs = coordinator.coordinator_driver.runs
        assert runs is not None
        channels = (runs.opened, runs.reused, runs.idle(auditor.host.peer_id))
        nursery.cancel_scope.cancel()

    assert isinstance(reply, JobAccepted), reply
    assert reply.workers == [prover.host.peer_id, auditor.host.peer_id] and not reply.failed
    assert "".join(verified) == reply.text and len(verified) >= 2
    lists = [m for m in _received(frames) if isinstance(m, FirstPositionVerdict)]
    assert len(lists) == 1 and lists[0].job_id == job.job_id
    assert reply.tokens[0] in lists[0].tokens, "the prover's first token was on the auditor's list"

    forwarded = [m.t for m in read_trace(tmp_path / "c.timing") if m.point == "forwarded"]
    judged = [m.t for m in read_trace(tmp_path / "auditor.timing") if m.point == "chunk_verdict"]
    assert forwarded and judged
    assert min(forwarded) < min(judged), "the first text went out before the auditor judged its chunk"
    assert len(judged) >= 2, "and the auditor judged every chunk all the same"
    # The chunked audit ran on the auditor's run channel (job-protocol.md §6.4): no stream was opened
    # for it (each worker's channel was opened when it joined), and it was given back after the report.
    assert channels == (2, 2, 1), channels


class _LiarEarly(_MidStreamLiar):
    LIE_AT = 6


async def test_a_chunked_audit_that_fails_on_a_run_channel_leaves_the_auditor_serving(
    tmp_path: pathlib.Path, tiny_model_path: pathlib.Path, memnet: MemoryNetwork, memnet_clock: MockClock
) -> None:
    """A prover caught mid-stream by its auditor's chunk verdict, on the auditor's run channel: the
    channel is reset (chunks sent before the verdict was read may still be in flight, job-protocol.md
    §6.4), and the auditor serves the re-run on a fresh one; the client gets the honest answer. (That
    the channel is not given back is the code's rule; a reused one would often look the same here, as
    the pool replaces a channel that dies before its worker answers.)"""
    info = ModelInfo(name="tiny", path=tiny_model_path, sha256=sha256_file(tiny_model_path))
    rng = _Preferring(5)
    coordinator = _coordinator(tmp_path, memnet, rng)
    async with trio.open_nursery() as nursery:
        await nursery.start(coordinator.run)
        assert coordinator.host is not None
        engines: dict[str, Engine] = {
            "liar": _LiarEarly(info, n_threads=1),
            "w1": LlamaEngine(info, n_threads=1),
            "w2": LlamaEngine(info, n_threads=1),
        }
        workers = await _workers(nursery, tmp_path, coordinator, engines, memnet)
        peers = {name: node.host.peer_id for name, node in workers.items() if node.host is not None}
        rng.prefer = [peers["liar"], peers["w1"]]  # the liar proves, w1 audits it
        runs = coordinator.coordinator_driver.runs
        assert runs is not None and runs.opened == 3, "one channel per worker, opened as it joined"

        client: StreamHost = await nursery.start(partial(client_host, transport=memnet))
        _, reply, _ = await _streamed(client, coordinator)
        nursery.cancel_scope.cancel()

    assert isinstance(reply, JobAccepted), reply
    assert peers["liar"] in reply.failed and peers["w1"] in reply.workers
    with LlamaEngine(info, n_threads=1) as honest:
        expected = honest.generate(GenerationRequest(prompt=PROMPT, max_tokens=MAX_TOKENS)).tokens
    assert list(reply.tokens) == list(expected), "the client got the honest answer"

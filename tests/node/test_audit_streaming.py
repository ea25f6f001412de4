"""Verified streaming in audit mode on nodes (issue 14 item 5; spec/verification.md §14.2): a
coordinator with ``verify="audit"`` and its OpenAI API, workers running the tiny model in llama.cpp. The
prover streams its tokens; the coordinator cuts them into chunks; the auditor scores each chunk as it
arrives in a scoring session that keeps its KV cache; a chunk's text reaches the client once it passed.

The nodes run on the in-memory network in virtual time (``memnet``, ``memnet_clock``: the clock stands
still while an engine computes in its thread). The tiny model generates ~1,000 tokens a second, faster
than any chunk's audit round trip, so the workers' engines are paced (``_Paced``: a real llama.cpp engine
that waits ``PACE_S`` of the loop's time after each token, standing in for a larger model on a CPU) to
make "before generation ends" observable; in virtual time that pacing costs no real time. Clients that
wait on a stream from a thread (the OpenAI client, the SDK's ``stream``) run in ``run_sync_waiting``
threads, which let virtual time flow while they wait.
"""

from __future__ import annotations

import pathlib
import secrets
from collections.abc import Callable
from functools import partial
from typing import Any

import openai
import trio
from opengrid_sdk import Client, Completion
from trio.testing import MockClock

from opengrid.core.audit import SamplingParams
from opengrid.core.coordinator import CoordinatorConfig
from opengrid.core.reputation import Reputation
from opengrid.engines import Engine, GenerationRequest, LlamaEngine, ModelInfo, sha256_file
from opengrid.engines.base import Generation
from opengrid.net.host import FrameStream
from opengrid.net.transport import StreamHost
from opengrid.node.api import ApiSettings
from opengrid.node.audit_driver import MAX_SCORING_SESSIONS
from opengrid.node.config import NodeConfig
from opengrid.node.service import Node
from opengrid.testing.memnet import MemoryNetwork, run_sync_waiting
from opengrid.wire.messages import (
    AuditChunk,
    AuditJob,
    ChunkVerdict,
    ErrorReply,
    FirstPositionVerdict,
    JobAccepted,
    JobProgress,
    SubmitJob,
)
from tests.node.test_audit_mode import _Preferring, _workers
from tests.node.workers import client_host
from tests.waiting import until

PROMPT = "Once upon a time"
MAX_TOKENS = 96
PACE_S = 0.02
"""Seconds (of the loop's clock) per token of the paced engines: 96 tokens take ~2 s."""


def _loop_time() -> float:
    """The trio run's clock, from a worker thread of that run (virtual time under MockClock)."""
    return trio.from_thread.run_sync(trio.current_time)


class _Paced(LlamaEngine):
    """A real llama.cpp engine that takes ``PACE_S`` of the loop's time per generated token and records
    when each of its generations began and ended (``trio.current_time()``). It waits in the loop
    (``trio.from_thread.run``), so in virtual time the wait costs no real time, and the thread does not
    hold the clock still meanwhile (memnet's ``clock_stops_for_threads``)."""

    began: list[float]
    ended: list[float]

    def generate_streaming(
        self,
        request: GenerationRequest,
        on_text: Callable[[str], None] | None,
        on_token: Callable[[int, str], None] | None = None,
    ) -> Generation:
        def paced(token: int, piece: str) -> None:
            trio.from_thread.run(trio.sleep, PACE_S)
            if on_token is not None:
                on_token(token, piece)

        self.began = [*getattr(self, "began", []), _loop_time()]
        try:
            return super().generate_streaming(request, on_text, paced)
        finally:
            self.ended = [*getattr(self, "ended", []), _loop_time()]


class _MidStreamLiar(_Paced):
    """Paced, and from output position ``LIE_AT`` on it claims other tokens than the model chose (in its
    progress frames and in its result alike, so the frames do not contradict the result: only an audit
    catches it). It counts the tokens it generated before it was stopped."""

    LIE_AT = 12
    generated = 0

    def generate_streaming(
        self,
        request: GenerationRequest,
        on_text: Callable[[str], None] | None,
        on_token: Callable[[int, str], None] | None = None,
    ) -> Generation:
        claimed: list[int] = []
        text = ""

        def lie(token: int, piece: str) -> None:
            nonlocal text
            self.generated += 1
            if len(claimed) >= self.LIE_AT:
                token = (token + 7) % self.n_vocab
                # Inside the engine's lock (on_token runs in its decode loop): its unlocked decoder.
                full = self._detokenize(self._require_open(), [*claimed, token])
                piece = full[len(text) :] if full.startswith(text) else ""
            claimed.append(token)
            text += piece
            if on_token is not None:
                on_token(token, piece)

        honest = super().generate_streaming(request, on_text, lie)
        return Generation(
            tokens=tuple(claimed), text=self.detokenize(claimed), finish_reason=honest.finish_reason
        )


def _info(path: pathlib.Path) -> ModelInfo:
    return ModelInfo(name="tiny", path=path, sha256=sha256_file(path))


def _coordinator(
    base: pathlib.Path, memnet: MemoryNetwork, rng: _Preferring | None = None, *, api: bool = False
) -> Node:
    return Node(
        NodeConfig(data_dir=base / "c", role="coordinator", heartbeat_s=0.5, verify="audit"),
        coordinator_config=CoordinatorConfig.plain(heartbeat_s=0.5, verify="audit"),
        rng=rng,
        api=ApiSettings(address="127.0.0.1:0") if api else None,
        transport=memnet,
    )


async def _local(info: ModelInfo, job_id: bytes, sampling: SamplingParams) -> str:
    def generate() -> str:
        with LlamaEngine(info, n_threads=1) as engine:
            request = GenerationRequest(PROMPT, MAX_TOKENS, sampling=sampling, job_id=job_id)
            return engine.generate(request).text

    return await trio.to_thread.run_sync(generate)


async def test_openai_stream_in_audit_mode_gets_verified_chunks_before_generation_ends(
    tmp_path: pathlib.Path, tiny_model_path: pathlib.Path, memnet: MemoryNetwork, memnet_clock: MockClock
) -> None:
    info = _info(tiny_model_path)
    coordinator = _coordinator(tmp_path, memnet, api=True)
    async with trio.open_nursery() as nursery:
        await nursery.start(coordinator.run)
        engines = {"w1": _Paced(info, n_threads=1), "w2": _Paced(info, n_threads=1)}
        await _workers(nursery, tmp_path, coordinator, dict(engines), memnet)
        base = coordinator.api_urls[0] + "/v1"

        def stream(**sampling: Any) -> tuple[str, str, float, float, int]:
            """Streamed text, job id, first content chunk and end (the loop's clock), chunks."""
            client = openai.OpenAI(base_url=base, api_key="unused", max_retries=0, timeout=60)
            first = 0.0
            parts: list[str] = []
            job = ""
            with client.completions.create(
                model="tiny", prompt=PROMPT, max_tokens=MAX_TOKENS, stream=True, **sampling
            ) as events:
                for event in events:
                    job = event.id
                    text = event.choices[0].text if event.choices else ""
                    if text and not first:
                        first = _loop_time()
                    parts.append(text)
            return "".join(parts), job, first, _loop_time(), sum(1 for p in parts if p)

        def whole(**sampling: Any) -> str:
            client = openai.OpenAI(base_url=base, api_key="unused", max_retries=0, timeout=60)
            answer = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=MAX_TOKENS, **sampling)
            return answer.choices[0].text

        text, _, first, end, chunks = await run_sync_waiting(lambda: stream(temperature=0, seed=5))
        # The job's generation (its prover's last): timed from its start, not from the request's, as the
        # clock runs on while the client thread computes before its request goes out.
        began, generation_ended = max(
            (e.began[-1], e.ended[-1]) for e in engines.values() if getattr(e, "ended", None)
        )
        assert first and first < generation_ended, "a verified chunk arrived while the prover still generated"
        assert first - began < 0.5 * (end - began), (first - began, end - began)
        assert chunks >= 3, "the answer came in several verified chunks, not one at the end"
        assert text == await run_sync_waiting(lambda: whole(temperature=0, seed=5))
        assert text == await _local(info, bytes(16), SamplingParams())  # greedy: any job id
        greedy_text = text
        print(
            f"audit-mode streaming, {MAX_TOKENS} tokens at {PACE_S * 1000:.0f} ms/token: first verified "
            f"chunk {first - began:.2f} s after generation began, answer complete {end - began:.2f} s, "
            f"{chunks} chunks"
        )

        # A sampled job: the streamed text is the sample this job's id and seed fix (spec §11), which
        # the non-streamed answer of another job with the same seed is not (another id, other noise).
        sampled = SamplingParams(temperature=0.8, seed=7)
        text, job, *_ = await run_sync_waiting(lambda: stream(temperature=0.8, seed=7))
        assert text == await _local(info, bytes.fromhex(job.removeprefix("cmpl-")), sampled)

        # The SDK's stream yields the same verified chunks, then the Completion that starts with them.
        assert coordinator.host is not None
        address = coordinator.host.addrs()[0]

        def through_the_sdk() -> tuple[list[str], Completion]:
            with Client([address], timeout=60, transport=memnet) as sdk:
                items = list(sdk.stream(PROMPT, model="tiny", max_tokens=MAX_TOKENS))
            done = items[-1]
            assert isinstance(done, Completion)
            return [i for i in items[:-1] if isinstance(i, str)], done

        pieces, done = await run_sync_waiting(through_the_sdk)
        assert len(pieces) >= 3 and "".join(pieces) == done.text == greedy_text
        nursery.cancel_scope.cancel()


async def test_a_prover_lying_mid_stream_is_caught_at_that_chunk_and_never_streamed(
    tmp_path: pathlib.Path, tiny_model_path: pathlib.Path, memnet: MemoryNetwork, memnet_clock: MockClock
) -> None:
    info = _info(tiny_model_path)
    rng = _Preferring(5)
    coordinator = _coordinator(tmp_path, memnet, rng)
    async with trio.open_nursery() as nursery:
        await nursery.start(coordinator.run)
        assert coordinator.host is not None and coordinator.coordinator is not None
        liar_engine = _MidStreamLiar(info, n_threads=1)
        engines = {"liar": liar_engine, "w1": _Paced(info, n_threads=1), "w2": _Paced(info, n_threads=1)}
        workers = await _workers(nursery, tmp_path, coordinator, dict(engines), memnet)
        liar = workers["liar"]
        assert liar.host is not None
        rng.prefer = [liar.host.peer_id]  # the liar proves first

        client: StreamHost = await nursery.start(partial(client_host, transport=memnet))
        peer = await client.connect(coordinator.host.addrs()[0])
        job = SubmitJob(
            job_id=secrets.token_bytes(16), model="tiny", prompt=PROMPT, max_tokens=MAX_TOKENS, stream=True
        )
        verified: list[str] = []
        stream = await client.open_stream(peer)
        with trio.fail_after(90):
            await stream.send(job)
            for _ in range(2 * MAX_TOKENS + 1):
                reply = await stream.receive()
                if not isinstance(reply, JobProgress):
                    break
                if reply.verified:
                    verified.append(reply.text)
        await stream.aclose()

        assert isinstance(reply, JobAccepted), reply
        honest = await _local(info, job.job_id, SamplingParams())
        assert reply.text == honest, "the client got the honest answer from another prover"
        streamed = "".join(verified)
        assert streamed and honest.startswith(streamed), "every verified chunk is honest text"
        assert liar_engine.generated < MAX_TOKENS, "the liar was stopped mid-generation, at its chunk"
        assert liar.host.peer_id in reply.failed and liar.host.peer_id not in reply.workers
        record = coordinator.coordinator.reputation.get(liar.public_key, Reputation())
        assert record.invalid == 1
        nursery.cancel_scope.cancel()


async def test_a_worker_holds_chunked_audits_to_their_rules_and_bounds(
    tmp_path: pathlib.Path, tiny_model_path: pathlib.Path, memnet: MemoryNetwork, memnet_clock: MockClock
) -> None:
    """Anyone may open a chunked audit with a worker (as any audit): it scores well-formed chunks, answers
    a chunk out of order with ``malformed`` and ends that exchange, keeps at most MAX_SCORING_SESSIONS
    open (``busy`` beyond), frees a session whose stream ends, and serves jobs as before afterwards."""
    info = _info(tiny_model_path)
    coordinator = _coordinator(tmp_path, memnet)
    async with trio.open_nursery() as nursery:
        await nursery.start(coordinator.run)
        engine = LlamaEngine(info, n_threads=1)
        engines: dict[str, Engine] = {"w1": engine, "w2": LlamaEngine(info)}
        workers = await _workers(nursery, tmp_path, coordinator, engines, memnet)
        worker = workers["w1"]
        assert worker.host is not None and worker.worker is not None and coordinator.host is not None
        contract = worker.worker.offers[0].contract
        tokens = list(
            await trio.to_thread.run_sync(lambda: engine.generate(GenerationRequest(PROMPT, 8)).tokens)
        )
        client: StreamHost = await nursery.start(partial(client_host, transport=memnet))
        peer = await client.connect(worker.host.addrs()[0])

        async def opened(job_id: bytes) -> FrameStream:
            stream = await client.open_stream(peer)
            await stream.send(
                AuditJob(
                    job_id=job_id, contract=contract, prompt=PROMPT, tokens=[], text="", finish_reason="",
                    chunked=True,
                )
            )  # fmt: skip
            return stream

        with trio.fail_after(60):
            ids = [secrets.token_bytes(16) for _ in range(MAX_SCORING_SESSIONS + 1)]
            streams = [await opened(job_id) for job_id in ids[:MAX_SCORING_SESSIONS]]
            first = await streams[0].receive()  # its session is open: what it would pass at position 0
            assert isinstance(first, FirstPositionVerdict) and tokens[0] in first.tokens, first
            await streams[0].send(AuditChunk(job_id=ids[0], offset=0, tokens=tokens[:4], pieces=[]))
            verdict = await streams[0].receive()
            assert isinstance(verdict, ChunkVerdict) and (verdict.verdict, verdict.end) == ("pass", 4)
            await until(lambda: worker.worker_driver.sessions == MAX_SCORING_SESSIONS, 30)
            extra = await opened(ids[-1])
            refused = await extra.receive()
            assert isinstance(refused, ErrorReply) and refused.code == "busy", refused
            await extra.aclose()

            await streams[0].send(AuditChunk(job_id=ids[0], offset=9, tokens=tokens[4:6], pieces=[]))
            wrong = await streams[0].receive()
            assert isinstance(wrong, ErrorReply) and wrong.code == "malformed" and "offset 9" in wrong.message
            for stream in streams:
                await stream.aclose()
            await until(lambda: worker.worker_driver.sessions == 0, 30)

        # The worker is unharmed: a job it proves or audits still completes.
        job = SubmitJob(job_id=secrets.token_bytes(16), model="tiny", prompt=PROMPT, max_tokens=8)
        stream = await client.open_stream(await client.connect(coordinator.host.addrs()[0]))
        with trio.fail_after(60):
            await stream.send(job)
            reply = await stream.receive()
        assert isinstance(reply, JobAccepted) and list(reply.tokens) == tokens
        nursery.cancel_scope.cancel()

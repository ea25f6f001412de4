"""The worker driver: runs the replicas coordinators send (``RunJob``) on the engine, in a thread, and
answers with the worker logic's attestation (opengrid/core/worker.py). Streaming jobs send preview text as
they generate; a job whose coordinator leaves stops generating at once. Sealed streams (spec/verification.md
§14.3): a sealed prover asked for chunks (``RunJob.chunk_first``) sends each sealed to the client and to its
readers (``SealedProgress``) instead of plaintext frames. Audits (``AuditJob``) are the auditor driver's
(opengrid/node/audit_driver.py), on the same engine and limiter."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence

import msgspec
import trio

from opengrid.core.stream_chunks import ChunkPolicy, cut
from opengrid.core.worker import Output, job_sampling
from opengrid.engines import Engine, GenerationRequest
from opengrid.engines.base import Generation, StreamingEngine
from opengrid.errors import (
    BadRequestError,
    ConfigError,
    EngineError,
    OpenGridError,
    RemoteProtocolError,
)
from opengrid.net.host import FrameStream
from opengrid.node.audit_driver import AuditDriver
from opengrid.node.context import NodeContext
from opengrid.node.split_group import GroupEngine
from opengrid.wire.messages import (
    MAX_PIECE_CHARS,
    MAX_PROGRESS_CHARS,
    MAX_PROGRESS_TOKENS,
    ErrorReply,
    Message,
    ReplicaProgress,
    RunJob,
    SealedProgress,
)
from opengrid.wire.sealed import seal_output

log = logging.getLogger("opengrid.node")


class WorkerDriver:
    """Runs replicas on this node's engine, one at a time."""

    def __init__(self, ctx: NodeContext) -> None:
        self._ctx = ctx
        self._engine_limiter = trio.CapacityLimiter(1)
        self.jobs_run = 0
        self.running = 0
        """Jobs this worker is generating right now."""
        self.replying = 0
        """RunJob streams whose result is not sent yet (``Node.drain`` waits for them)."""
        self.tokens_out = 0
        self.busy_s = 0.0
        self.audits = AuditDriver(ctx, self)
        """The auditor's side: ``AuditJob``s scored on the same engine, in the same limiter."""

    @property
    def engine_limiter(self) -> trio.CapacityLimiter:
        """One engine call at a time, generation and scoring alike."""
        return self._engine_limiter

    @property
    def audits_run(self) -> int:
        """Audits this worker scored (``AuditJob``); ``jobs_run`` counts generations only."""
        return self.audits.audits_run

    @property
    def sessions(self) -> int:
        """Chunked audits open now (each holds a llama.cpp context: at most ``MAX_SCORING_SESSIONS``)."""
        return self.audits.sessions

    async def serve_run(self, stream: FrameStream, message: RunJob) -> None:
        """Run one replica and send its result on ``stream``."""
        self.replying += 1  # until the result is sent: a draining node must not stop before that
        try:
            await stream.send(await self.on_run(message, stream))
        finally:
            self.replying -= 1

    async def on_run(self, run: RunJob, stream: FrameStream | None = None) -> Message:
        """Run one replica: its result, or why it was refused or failed (previews on ``stream``)."""
        worker, engine = self._ctx.worker, self._ctx.engine
        assert worker is not None and engine is not None
        refusal = worker.accept(run)
        if refusal is not None:
            return refusal
        prompt, salt = run.prompt, b""
        if run.sealed_prompt:
            try:
                opened = worker.open_sealed(run)
            except RemoteProtocolError as exc:
                return ErrorReply("malformed", str(exc), run.job_id)
            prompt, salt = opened.prompt, opened.salt
        log.info(
            "running %sjob %s: %d tokens max",
            "sealed " if run.sealed_prompt else "",
            run.job_id.hex()[:8],
            run.max_tokens,
        )
        request = GenerationRequest(
            prompt=prompt,
            max_tokens=run.max_tokens,
            add_bos=run.format == "text",
            sampling=job_sampling(run.contract),  # checked by ``accept``
            job_id=run.job_id,
        )
        self.running += 1
        try:
            return await self._run_and_attest(run, stream, engine, request, salt)
        finally:
            self.running -= 1

    async def _run_and_attest(
        self, run: RunJob, stream: FrameStream | None, engine: Engine, request: GenerationRequest, salt: bytes
    ) -> Message:
        ctx = self._ctx
        worker = ctx.worker
        assert worker is not None
        started = trio.current_time()
        engine_started: list[float] = []  # time.monotonic() when the engine's thread took the job

        def timed(generate: Callable[..., Generation]) -> Callable[..., Generation]:
            def in_engine_thread(*args: object) -> Generation:
                engine_started.append(time.monotonic())
                return generate(*args)

            return in_engine_thread if ctx.timing.enabled else generate

        chunker: _SealedChunker | None = None
        if run.sealed_prompt and run.readers and run.chunk_first and stream is not None:
            # Sealed chunked streaming (spec/verification.md §14.3): chunks sealed to the client and the
            # auditors, cut as the coordinator's policy says; never plaintext previews.
            try:
                policy = ChunkPolicy(first=run.chunk_first, largest=run.chunk_max)
            except ConfigError as exc:
                return ErrorReply("malformed", f"bad chunk sizes: {exc}", run.job_id)
            chunker = _SealedChunker(
                policy, lambda at, tokens, pieces: worker.seal_chunk(run, at, tokens, pieces, salt=salt)
            )
        try:
            if stream is not None and isinstance(engine, StreamingEngine):
                # Never stream a sealed job in plaintext: the previews would show the coordinator the text.
                previews = run.stream and not run.sealed_prompt
                generation = await self._generate_watched(
                    engine, request, run.job_id, stream, previews, timed=timed, chunker=chunker
                )
            else:
                generation = await trio.to_thread.run_sync(
                    timed(engine.generate), request, limiter=self._engine_limiter
                )
        except _JobAbandoned:
            log.info("job %s abandoned by the coordinator: stopped generating", run.job_id.hex()[:8])
            return ErrorReply("busy", "stopped: nobody was waiting for this job any more", run.job_id)
        except BadRequestError as exc:  # the client's fault: say so, and keep our standing
            log.info("job %s refused: %s", run.job_id.hex()[:8], exc)
            return ErrorReply("malformed", str(exc), run.job_id)
        except EngineError as exc:
            log.warning("job %s failed in the engine: %s", run.job_id.hex()[:8], exc)
            return ErrorReply("engine_error", str(exc), run.job_id)
        finally:
            if engine_started:  # marked here, not in the engine's thread: the trace is not thread-safe
                peer = stream.peer if stream is not None else ""
                ctx.timing.mark("engine_start", run.job_id, peer, t=engine_started[0])
                ctx.timing.mark("engine_end", run.job_id, peer)
        self.jobs_run += 1
        self.tokens_out += len(generation.tokens)
        self.busy_s += trio.current_time() - started
        log.info("ran job %s: %d tokens", run.job_id.hex()[:8], len(generation.tokens))
        output = Output(
            tokens=generation.tokens, text=generation.text, finish_reason=generation.finish_reason
        )
        result = worker.attest(run, output, salt=salt)
        if isinstance(engine, GroupEngine):  # a split group: its members co-sign, to be credited
            result = await engine.group.co_sign(result)
        if ctx.config.adversary == "sealed-lie" and run.sealed_prompt:
            # Demo/test adversary: attest the true output, but seal a different one to the client.
            lie = seal_output(
                list(output.tokens),
                output.text + " (forged)",
                output.finish_reason,
                job_id=run.job_id,
                client_box_key=run.client_box_key,
                signing_key=ctx.key,
            )
            result = msgspec.structs.replace(result, sealed_output=lie)
        return result

    async def _generate_watched(
        self,
        engine: StreamingEngine,
        request: GenerationRequest,
        job_id: bytes,
        stream: FrameStream,
        previews: bool,
        *,
        timed: Callable[[Callable[..., Generation]], Callable[..., Generation]] = lambda f: f,
        chunker: _SealedChunker | None = None,
    ) -> Generation:
        """Run the engine in a thread; send its tokens and text as ReplicaProgress frames if ``previews``;
        stop it as soon as the coordinator abandons the job (its stream ends: the job was settled or
        cancelled). With a ``chunker`` (a sealed job streamed in chunks) the tokens go out as its sealed
        chunks instead, the last one once the engine is done.

        Every token goes out, in order (the coordinator verifies the stream token by token, spec
        §14): the engine's thread appends to ``generated`` and wakes the forwarder, which sends all that
        is new in one frame, so a slow coordinator gets fewer, larger frames rather than gaps."""
        wake_send, wake = trio.open_memory_channel[None](1)
        abandoned = threading.Event()
        stopped = threading.Event()  # a piece too long for a frame: no more progress (gaps would lie)
        lock = threading.Lock()
        generated: list[tuple[int, str]] = []  # (token, piece) not sent yet; taken by the forwarder
        wake_due = [False]  # under ``lock``: a wake-up is scheduled and the forwarder has not taken yet
        loop = trio.lowlevel.current_trio_token()

        def wake_up() -> None:  # in trio's thread
            # Full: a wake-up is already queued; closed: the engine is done and the rest goes at once.
            with contextlib.suppress(trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
                wake_send.send_nowait(None)

        def on_token(token: int, piece: str) -> None:  # called in the engine's thread, once per token
            if abandoned.is_set():
                raise _JobAbandoned
            if len(piece) > MAX_PIECE_CHARS and chunker is None:  # no tokenizer has one: stop streaming
                stopped.set()  # rather than cut it (a sealed chunk's ciphertext carries it whole)
            if (previews or chunker is not None) and not stopped.is_set():
                with lock:
                    generated.append((token, piece))
                    if wake_due[0]:
                        return
                    wake_due[0] = True
                # Schedule the wake-up without waiting for trio's thread to run it: the engine goes on
                # with the next token at once (trio.from_thread.run_sync would block it for a round trip
                # to the event loop every token, which a loaded machine makes milliseconds).
                with contextlib.suppress(trio.RunFinishedError):
                    loop.run_sync_soon(wake_up)

        sent_one = [False]  # the first progress frame is a timing point (node/timing.py)

        async def send_new(*, final: bool = False) -> None:
            with lock:
                new = generated[:]
                generated.clear()
                wake_due[0] = False
            frames: Sequence[Message] = (
                _progress_frames(job_id, new) if chunker is None else chunker.take(new, final=final)
            )
            for frame in frames:
                await stream.send(frame)
                if not sent_one[0]:
                    sent_one[0] = True
                    self._ctx.timing.mark("first_frame", job_id, stream.peer)

        generated_all = trio.Event()  # the engine is done: stop pacing, send the rest at once

        async def forward() -> None:
            with contextlib.suppress(OpenGridError):  # the coordinator may stop listening; keep working
                async for _ in wake:
                    await send_new()
                    # Pace: at most one frame per PROGRESS_INTERVAL_S. A fast engine's tokens then go in
                    # batches (measured: one frame per token made a 128-token streamed job 2.5-5x slower
                    # end to end with the tiny model, the frames' handling dwarfing its generation).
                    with trio.move_on_after(PROGRESS_INTERVAL_S):
                        await generated_all.wait()
                await send_new(final=failure is None)  # what came after the last wake-up

        watching = trio.CancelScope()

        async def watch_coordinator() -> None:
            with watching:  # cancelled once the job is done: then nothing is abandoned
                with contextlib.suppress(OpenGridError):
                    await stream.receive()  # the coordinator sends nothing more: any event means it left
                abandoned.set()

        generation: Generation | None = None
        failure: EngineError | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(forward)
            nursery.start_soon(watch_coordinator)
            try:  # errors are kept, not raised here: raising inside a nursery wraps them in a group
                generation = await trio.to_thread.run_sync(
                    timed(engine.generate_streaming), request, None, on_token, limiter=self._engine_limiter
                )
            except EngineError as exc:
                failure = exc
            finally:
                wake_send.close()  # the forwarder sends what is left, then ends
                generated_all.set()
                watching.cancel()
        if failure is not None:
            if isinstance(failure.__cause__, _JobAbandoned):
                raise _JobAbandoned from failure
            raise failure
        assert generation is not None
        return generation


def _progress_frames(job_id: bytes, generated: list[tuple[int, str]]) -> list[ReplicaProgress]:
    """``generated`` (pieces of at most ``MAX_PIECE_CHARS``) as frames within the wire's limits: tokens
    and characters per frame."""
    frames: list[ReplicaProgress] = []
    tokens: list[int] = []
    pieces: list[str] = []
    chars = 0
    for token, piece in generated:
        if len(tokens) == MAX_PROGRESS_TOKENS or chars + len(piece) > MAX_PROGRESS_CHARS:
            frames.append(ReplicaProgress(job_id=job_id, text="".join(pieces), tokens=tokens, pieces=pieces))
            tokens, pieces, chars = [], [], 0
        tokens.append(token)
        pieces.append(piece)
        chars += len(piece)
    if tokens:
        frames.append(ReplicaProgress(job_id=job_id, text="".join(pieces), tokens=tokens, pieces=pieces))
    return frames


class _SealedChunker:
    """A sealed streaming prover's chunks (spec/verification.md §14.3): the tokens generated so far, cut by
    the coordinator's policy (``stream_chunks.cut``, as an open stream is cut), each full chunk sealed by
    ``seal(offset, tokens, pieces)`` as it fills, the rest at the end."""

    def __init__(
        self, policy: ChunkPolicy, seal: Callable[[int, list[int], list[str]], SealedProgress]
    ) -> None:
        self._policy = policy
        self._seal = seal
        self._ends: list[int] = []
        self._tokens: list[int] = []
        self._pieces: list[str] = []

    def take(self, generated: list[tuple[int, str]], *, final: bool) -> list[SealedProgress]:
        """Add ``generated`` and return the chunks now full (all that is left when ``final``)."""
        for token, piece in generated:
            self._tokens.append(token)
            self._pieces.append(piece)
        return [
            self._seal(start, self._tokens[start:end], self._pieces[start:end])
            for start, end in cut(self._policy, self._ends, len(self._tokens), final=final)
        ]


PROGRESS_INTERVAL_S = 0.05
"""Least time between two progress frames of one replica: adds at most this to the first verified text
of a batch, and keeps a fast engine's frames (hundreds of tokens a second) to 20 a second."""


class _JobAbandoned(Exception):
    """Raised inside the engine's thread to stop generating a job nobody waits for any more."""

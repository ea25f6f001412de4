"""The worker driver: runs the replicas coordinators send (``RunJob``) on the engine, in a thread, and
answers with the worker logic's attestation (opengrid/core/worker.py). Streaming jobs send preview text as
they generate; a job whose coordinator leaves stops generating at once. In audit mode it also answers
``AuditJob``: the engine re-scores a claimed output in one forward pass (``ScoringEngine.score``, in the
same thread and limiter as generation) and the worker logic judges it (spec/verification.md §13)."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable

import msgspec
import trio

from opengrid.core.audit import SamplingParams
from opengrid.core.worker import Output, job_sampling
from opengrid.engines import Engine, GenerationRequest
from opengrid.engines.base import Generation, ScoreRequest, Scoring, ScoringEngine, StreamingEngine
from opengrid.errors import (
    BadRequestError,
    EngineError,
    JobError,
    OpenGridError,
    RemoteProtocolError,
    VerificationError,
)
from opengrid.net.host import FrameStream
from opengrid.node.context import NodeContext
from opengrid.wire.messages import (
    MAX_PIECE_CHARS,
    MAX_PROGRESS_CHARS,
    MAX_PROGRESS_TOKENS,
    AuditJob,
    ErrorReply,
    Message,
    ReplicaProgress,
    RunJob,
)
from opengrid.wire.sealed import SealedOutput, seal_output

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
        self.audits_run = 0
        """Audits this worker scored (``AuditJob``); ``jobs_run`` counts generations only."""

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

    async def on_audit(self, audit: AuditJob) -> Message:
        """Score a prover's claim on this node's engine and report the verdict (an ``AuditReport``), or
        why it cannot (``unknown_model``: other weights; ``engine_error``: the engine cannot score, or
        failed)."""
        worker, engine = self._ctx.worker, self._ctx.engine
        assert worker is not None and engine is not None
        refusal = worker.accept_audit(audit)
        if refusal is not None:
            return refusal
        if not isinstance(engine, ScoringEngine):
            return ErrorReply(
                "engine_error",
                f"this worker's engine ({type(engine).__name__}) cannot score a claimed output, so it "
                "cannot audit; audits need a llama.cpp or OpenAI-compatible (echo + logprobs) engine",
                audit.job_id,
            )
        try:
            sampling = SamplingParams(
                temperature=audit.temperature, top_k=audit.top_k, top_p=audit.top_p, seed=audit.seed
            )
        except JobError as exc:
            return ErrorReply("malformed", f"bad sampling parameters: {exc}", audit.job_id)
        prompt, tokens, finish_reason, claimed_text = (
            audit.prompt,
            audit.tokens,
            audit.finish_reason,
            audit.text,
        )
        claim: SealedOutput | None = None
        salt = b""
        if audit.sealed_prompt:  # a sealed audit: open the client's prompt and the prover's claim ourselves
            try:
                opened = worker.open_sealed_audit(audit)
            except RemoteProtocolError as exc:
                return ErrorReply("malformed", str(exc), audit.job_id)
            if isinstance(opened, str):  # the prover's claim is not what it attested: it fails unscored
                log.info("sealed audit of job %s fails: %s", audit.job_id.hex()[:8], opened)
                self.audits_run += 1
                return worker.report(audit, (), problem=opened)
            sealed_prompt, claim = opened
            prompt, tokens, finish_reason, claimed_text = (
                sealed_prompt.prompt,
                claim.tokens,
                claim.finish_reason,
                claim.text,
            )
            salt = sealed_prompt.salt
            if len(tokens) > worker.max_tokens_limit:
                return ErrorReply(
                    "busy",
                    f"the claim has {len(tokens)} tokens, above this worker's limit of "
                    f"{worker.max_tokens_limit}",
                    audit.job_id,
                )
        request = ScoreRequest(
            prompt=prompt,
            tokens=tuple(tokens),
            stopped=finish_reason == "stop",
            sampling=sampling,
            job_id=audit.job_id,
            add_bos=audit.format == "text",
            end=audit.score_end,
        )

        def score_and_decode() -> tuple[Scoring | None, str]:
            """In the engine's thread: the evidence, and why the claim fails whatever it says ("")."""
            try:
                scoring = engine.score(request)
            except VerificationError as exc:  # the claim is not an output of this model at all
                return None, str(exc)
            detokenize = getattr(engine, "detokenize", None)
            if callable(detokenize) and detokenize(request.tokens) != claimed_text:
                return scoring, "the claimed text is not what the claimed tokens decode to"
            return scoring, ""

        log.info(
            "auditing job %s: %d claimed tokens, %d of %d positions scored",
            audit.job_id.hex()[:8],
            len(tokens),
            request.rows,
            request.positions,
        )
        self.running += 1
        try:
            scoring, problem = await trio.to_thread.run_sync(score_and_decode, limiter=self._engine_limiter)
        except EngineError as exc:
            log.warning("audit of job %s failed in the engine: %s", audit.job_id.hex()[:8], exc)
            return ErrorReply("engine_error", str(exc), audit.job_id)
        finally:
            self.running -= 1
        self.audits_run += 1
        report = worker.report(
            audit, scoring.evidence if scoring is not None else (), problem=problem, claim=claim, salt=salt
        )
        log.info(
            "audited job %s: %s (%d positions, max gap %.3f)",
            audit.job_id.hex()[:8],
            report.verdict,
            report.n_scored,
            report.max_gap,
        )
        return report

    async def _run_and_attest(
        self, run: RunJob, stream: FrameStream | None, engine: Engine, request: GenerationRequest, salt: bytes
    ) -> Message:
        ctx = self._ctx
        assert ctx.worker is not None
        started = trio.current_time()
        engine_started: list[float] = []  # time.monotonic() when the engine's thread took the job

        def timed(generate: Callable[..., Generation]) -> Callable[..., Generation]:
            def in_engine_thread(*args: object) -> Generation:
                engine_started.append(time.monotonic())
                return generate(*args)

            return in_engine_thread if ctx.timing.enabled else generate

        try:
            if stream is not None and isinstance(engine, StreamingEngine):
                # Never stream a sealed job: the previews would show the coordinator the plaintext.
                previews = run.stream and not run.sealed_prompt
                generation = await self._generate_watched(
                    engine, request, run.job_id, stream, previews, timed=timed
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
        result = ctx.worker.attest(run, output, salt=salt)
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
    ) -> Generation:
        """Run the engine in a thread; send its tokens and text as ReplicaProgress frames if ``previews``;
        stop it as soon as the coordinator abandons the job (its stream ends: the job was settled or
        cancelled).

        Every token goes out, in order (the coordinator verifies the stream token by token, spec
        §14): the engine's thread appends to ``generated`` and wakes the forwarder, which sends all that
        is new in one frame, so a slow coordinator gets fewer, larger frames rather than gaps."""
        wake_send, wake = trio.open_memory_channel[None](1)
        abandoned = threading.Event()
        stopped = threading.Event()  # a piece too long for a frame: no more progress (gaps would lie)
        lock = threading.Lock()
        generated: list[tuple[int, str]] = []  # (token, piece) not sent yet; taken by the forwarder

        def on_token(token: int, piece: str) -> None:  # called in the engine's thread, once per token
            if abandoned.is_set():
                raise _JobAbandoned
            if len(piece) > MAX_PIECE_CHARS:  # no tokenizer has one: stop streaming rather than cut it
                stopped.set()
            if previews and not stopped.is_set():
                with lock:
                    generated.append((token, piece))
                with contextlib.suppress(trio.WouldBlock, trio.RunFinishedError):
                    trio.from_thread.run_sync(wake_send.send_nowait, None)  # full: a wake-up is due

        async def send_new() -> None:
            with lock:
                new = generated[:]
                generated.clear()
            for frame in _progress_frames(job_id, new):
                await stream.send(frame)

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
                await send_new()  # what came after the last wake-up

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


PROGRESS_INTERVAL_S = 0.05
"""Least time between two progress frames of one replica: adds at most this to the first verified text
of a batch, and keeps a fast engine's frames (hundreds of tokens a second) to 20 a second."""


class _JobAbandoned(Exception):
    """Raised inside the engine's thread to stop generating a job nobody waits for any more."""

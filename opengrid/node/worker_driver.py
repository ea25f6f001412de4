"""The worker driver: runs the replicas coordinators send (``RunJob``) on the engine, in a thread, and
answers with the worker logic's attestation (opengrid/core/worker.py). Streaming jobs send preview text as
they generate; a job whose coordinator leaves stops generating at once. In audit mode it also answers
``AuditJob``: the engine re-scores a claimed output in one forward pass (``ScoringEngine.score``, in the
same thread and limiter as generation) and the worker logic judges it (spec/verification.md §13). A
chunked AuditJob (a streaming job's claim, §14.2) keeps its stream: the claim arrives in AuditChunks,
scored one by one in a ``ScoringSession`` (its own llama.cpp context, KV cache kept between chunks) and
answered with a ChunkVerdict each, the final chunk with the AuditReport over the whole claim. Sealed
streams (§14.3): a sealed prover asked for chunks (``RunJob.chunk_first``) sends each sealed to the client
and to its readers (``SealedProgress``) instead of plaintext frames; a sealed chunked audit opens each
chunk itself and checks it against the commitment the coordinator relayed."""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
import trio

from opengrid.core.audit import PositionEvidence, SamplingParams
from opengrid.core.stream_chunks import ChunkPolicy, chunk_verdict, cut
from opengrid.core.worker import Output, job_sampling
from opengrid.engines import Engine, GenerationRequest
from opengrid.engines.base import Generation, ScoreRequest, Scoring, ScoringEngine, StreamingEngine
from opengrid.errors import (
    BadRequestError,
    ConfigError,
    EngineError,
    JobError,
    OpenGridError,
    RemoteProtocolError,
    VerificationError,
)
from opengrid.net.host import FrameStream
from opengrid.node.context import NodeContext
from opengrid.node.split_group import GroupEngine
from opengrid.wire.messages import (
    MAX_PIECE_CHARS,
    MAX_PROGRESS_CHARS,
    MAX_PROGRESS_TOKENS,
    MAX_TOKENS_LIMIT,
    AuditChunk,
    AuditJob,
    ErrorReply,
    Message,
    ReplicaProgress,
    RunJob,
    SealedProgress,
)
from opengrid.wire.sealed import SealedOutput, SealedPrompt, seal_output

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
        self.sessions = 0
        """Chunked audits open now (each holds a llama.cpp context: at most ``MAX_SCORING_SESSIONS``)."""

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

    async def serve_chunked_audit(self, stream: FrameStream, audit: AuditJob) -> None:
        """A chunked audit (spec/verification.md §14.2): score the claim chunk by chunk as the coordinator
        sends it, on a ``ScoringSession`` that keeps its KV cache, answering each chunk with a ChunkVerdict
        and the final one with the AuditReport over the whole claim. Bounded: at most
        ``MAX_SCORING_SESSIONS`` at once, ``CHUNK_IDLE_S`` between chunks, one frame per claimed token."""
        reply = await self._open_session(audit)
        if isinstance(reply, ErrorReply):
            await stream.send(reply)
            return
        session, sealed = reply
        self.sessions += 1
        try:
            await self._score_chunks(stream, audit, session, sealed)
        finally:
            self.sessions -= 1
            with trio.CancelScope(shield=True):  # free the context even when cancelled
                await trio.to_thread.run_sync(session.close, limiter=self._engine_limiter)

    async def _open_session(self, audit: AuditJob) -> Any:
        """A ``ScoringSession`` for ``audit`` (its prompt evaluated) and a sealed stream's opened prompt
        (None for an open one), or the ErrorReply to answer instead."""
        worker, engine = self._ctx.worker, self._ctx.engine
        assert worker is not None and engine is not None
        refusal = worker.accept_audit(audit)
        if refusal is not None:
            return refusal
        if audit.tokens or audit.text or audit.finish_reason or audit.score_end:
            return ErrorReply(
                "malformed",
                "a chunked AuditJob carries no claim: its tokens come in AuditChunks",
                audit.job_id,
            )
        llama = sys.modules.get("opengrid.engines.llama")  # loaded iff this node runs a llama.cpp engine
        if llama is None or not isinstance(engine, llama.LlamaEngine):
            return ErrorReply(
                "engine_error",
                f"this worker's engine ({type(engine).__name__}) cannot keep a scoring session, so it "
                "cannot audit a streaming claim chunk by chunk; chunked audits need a llama.cpp engine",
                audit.job_id,
            )
        if self.sessions >= MAX_SCORING_SESSIONS:
            return ErrorReply(
                "busy",
                f"{self.sessions} chunked audits are open here (the limit); try another auditor",
                audit.job_id,
            )
        from opengrid.engines.scoring_session import ScoringSession  # llama.cpp is loaded: see above

        sampling = SamplingParams(
            temperature=audit.temperature, top_k=audit.top_k, top_p=audit.top_p, seed=audit.seed
        )  # checked by ``accept_audit``
        prompt = audit.prompt
        sealed: SealedPrompt | None = None
        if audit.sealed_prompt:  # a sealed stream (spec/verification.md §14.3): its prompt is ours to open
            try:
                sealed = worker.open_sealed_stream_audit(audit)
            except RemoteProtocolError as exc:
                return ErrorReply("malformed", str(exc), audit.job_id)
            prompt = sealed.prompt

        def open_session() -> ScoringSession:
            return ScoringSession(
                engine,
                prompt=prompt,
                sampling=sampling,
                job_id=audit.job_id,
                add_bos=audit.format == "text",
                max_tokens=None,  # as the context holds: the job's own limit is not in the AuditJob
            )

        try:
            session = await trio.to_thread.run_sync(open_session, limiter=self._engine_limiter)
        except EngineError as exc:  # BadRequestError included: the prompt does not fit this context
            return ErrorReply("engine_error", str(exc), audit.job_id)
        return session, sealed

    async def _score_chunks(
        self, stream: FrameStream, audit: AuditJob, session: Any, sealed: SealedPrompt | None
    ) -> None:
        worker = self._ctx.worker
        assert worker is not None
        job = audit.job_id.hex()[:8]
        log.info("chunked audit of job %s opened", job)
        for _ in range(MAX_TOKENS_LIMIT + 2):  # every chunk but the final one carries a token
            with trio.move_on_after(CHUNK_IDLE_S) as idle:
                chunk = await stream.receive()
            if idle.cancelled_caught:
                log.info("chunked audit of job %s: no chunk for %.0f s, closed", job, CHUNK_IDLE_S)
                return
            if not isinstance(chunk, AuditChunk) or chunk.job_id != audit.job_id:
                await stream.send(
                    ErrorReply("malformed", "expected the audit's next AuditChunk", audit.job_id)
                )
                return
            problem = _chunk_problem(chunk, len(session.tokens), sealed=sealed is not None)
            if problem:
                await stream.send(ErrorReply("malformed", problem, audit.job_id))
                return
            # as accept_audit for a claim (a sealed chunk declares its end)
            if max(chunk.end, chunk.offset + len(chunk.tokens)) > worker.max_tokens_limit:
                why = f"the claim passes this worker's limit of {worker.max_tokens_limit} tokens"
                await stream.send(ErrorReply("busy", why, audit.job_id))
                return
            if chunk.final:
                await stream.send(await self._final_report(audit, chunk, session, sealed))
                return
            tokens, pieces = list(chunk.tokens), list(chunk.pieces) or None
            if (
                sealed is not None
            ):  # open our copy; it must be the chunk the coordinator holds a commitment of
                opened = worker.open_sealed_chunk(audit, chunk, sealed.salt)
                if isinstance(opened, str):  # the prover's fault: the chunk fails unscored
                    failed = chunk_verdict(
                        audit.job_id,
                        chunk.offset,
                        [],
                        audit.tolerance,
                        problem=opened,
                        problem_at=chunk.offset,
                    )
                    await stream.send(msgspec.structs.replace(failed, commitment=chunk.commitment))
                    log.info("sealed chunked audit of job %s: failed at %d: %s", job, chunk.offset, opened)
                    return
                tokens, pieces = opened
            try:
                scored = await trio.to_thread.run_sync(
                    session.score_chunk, chunk.offset, tokens, pieces, limiter=self._engine_limiter
                )
            except VerificationError as exc:  # a token outside the vocabulary: the claim fails here
                verdict = chunk_verdict(
                    audit.job_id, chunk.offset, [], audit.tolerance, problem=str(exc), problem_at=chunk.offset
                )
            except EngineError as exc:
                log.warning("chunked audit of job %s failed in the engine: %s", job, exc)
                await stream.send(ErrorReply("engine_error", str(exc), audit.job_id))
                return
            else:
                verdict = chunk_verdict(
                    audit.job_id,
                    chunk.offset,
                    scored.evidence,
                    audit.tolerance,
                    problem=scored.problem,
                    problem_at=scored.problem_at,
                )
            if sealed is not None:  # bound to the commitment of the chunk it judged (§14.3)
                verdict = msgspec.structs.replace(verdict, commitment=chunk.commitment)
            await stream.send(verdict)
            if verdict.verdict == "fail":
                log.info(
                    "chunked audit of job %s: failed at %d: %s", job, verdict.first_failure, verdict.reason
                )
                return
        await stream.send(ErrorReply("malformed", "more audit chunks than a claim has tokens", audit.job_id))

    async def _final_report(
        self, audit: AuditJob, chunk: AuditChunk, session: Any, sealed: SealedPrompt | None
    ) -> Message:
        """The AuditReport over the whole claim: the end position scored if it stopped, its text checked.
        A sealed claim comes whole in the final chunk, sealed to us: it must be what the prover attested
        and the tokens its chunks held; the report is then a sealed audit's (spec/sealed-mode.md §11)."""
        worker, engine = self._ctx.worker, self._ctx.engine
        assert worker is not None and engine is not None
        claim: SealedOutput | None = None
        finish_reason, text = chunk.finish_reason, chunk.text
        if sealed is not None:
            whole_claim = msgspec.structs.replace(
                audit, sealed_claim=chunk.sealed_claim, claim_attestation=chunk.claim_attestation
            )
            opened = worker.open_sealed_audit(whole_claim)
            if isinstance(opened, str) or list(opened[1].tokens) != list(session.tokens):
                why = (
                    opened if isinstance(opened, str) else "the prover's claim is not the chunks it streamed"
                )
                self.audits_run += 1
                return worker.report(whole_claim, (), problem=why)
            claim = opened[1]
            finish_reason, text = claim.finish_reason, claim.text
        stopped = finish_reason == "stop"

        def finish() -> tuple[list[PositionEvidence], str]:
            problem = ""
            try:
                if stopped:
                    session.score_stop()
            except VerificationError as exc:
                problem = str(exc)
            if engine.detokenize(session.tokens) != text:  # type: ignore[attr-defined]
                problem = problem or "the claimed text is not what the claimed tokens decode to"
            return list(session.evidence), problem

        try:
            evidence, problem = await trio.to_thread.run_sync(finish, limiter=self._engine_limiter)
        except EngineError as exc:
            return ErrorReply("engine_error", str(exc), audit.job_id)
        whole = msgspec.structs.replace(
            audit,
            tokens=list(session.tokens),
            text=text,
            finish_reason=finish_reason,
            chunked=False,
        )
        salt = sealed.salt if sealed is not None else b""
        report = worker.report(whole, evidence, problem=problem, claim=claim, salt=salt)
        self.audits_run += 1
        log.info(
            "audited job %s in chunks: %s (%d positions, max gap %.3f)",
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


def _chunk_problem(chunk: AuditChunk, scored: int, *, sealed: bool = False) -> str:
    """Why ``chunk`` breaks the chunked-audit rules (job-protocol.md §5.16), or "". A sealed stream's
    chunks carry their tokens sealed (spec/verification.md §14.3): at least one, ``end - offset`` of them."""
    if chunk.offset != scored:
        return f"audit chunk at offset {chunk.offset}, but {scored} tokens were sent before"
    if chunk.final and chunk.tokens:
        return "the final audit chunk carries no tokens"
    if sealed != bool(chunk.sealed_chunk or chunk.sealed_claim):
        return "a sealed audit's chunks are sealed, an open audit's are not"
    if sealed and chunk.tokens:
        return "a sealed audit chunk carries its tokens sealed, not in the clear"
    if sealed and not chunk.final and (chunk.end <= chunk.offset or len(chunk.commitment) != 32):
        return f"a sealed audit chunk ending at {chunk.end}, from {chunk.offset}, with no 32-byte commitment"
    if sealed:
        return ""
    if not chunk.final and not chunk.tokens:
        return "an audit chunk that is not final carries at least one token"
    if chunk.pieces and len(chunk.pieces) != len(chunk.tokens):
        return f"{len(chunk.pieces)} pieces for {len(chunk.tokens)} tokens"
    return ""


MAX_SCORING_SESSIONS = 4
"""Chunked audits one worker keeps open at once: each holds a llama.cpp context (a KV cache of n_ctx)."""

CHUNK_IDLE_S = 300.0
"""Longest wait for a chunked audit's next chunk (as for a run channel's next RunJob): a coordinator
that stops sending without closing the stream frees the session after this."""

PROGRESS_INTERVAL_S = 0.05
"""Least time between two progress frames of one replica: adds at most this to the first verified text
of a batch, and keeps a fast engine's frames (hundreds of tokens a second) to 20 a second."""


class _JobAbandoned(Exception):
    """Raised inside the engine's thread to stop generating a job nobody waits for any more."""

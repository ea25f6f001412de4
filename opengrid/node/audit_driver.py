"""The auditor's side of a worker (spec/verification.md §13-§14): it answers ``AuditJob``. The engine
re-scores a claimed output in one forward pass (``ScoringEngine.score``, in the same thread and limiter as
the worker's generation) and the worker logic judges it. A chunked AuditJob (a streaming job's claim,
§14.2) keeps its stream: the claim arrives in AuditChunks, scored one by one in a ``ScoringSession`` (its
own llama.cpp context, KV cache kept between chunks) and answered with a ChunkVerdict each, the final chunk
with the AuditReport over the whole claim. A sealed chunked audit (§14.3) opens each chunk itself and
checks it against the commitment the coordinator relayed."""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, Any

import msgspec
import trio

from opengrid.core.audit import PositionEvidence, SamplingParams
from opengrid.core.stream_chunks import chunk_verdict
from opengrid.engines.base import ScoreRequest, Scoring, ScoringEngine
from opengrid.errors import EngineError, JobError, RemoteProtocolError, VerificationError
from opengrid.net.host import FrameStream
from opengrid.node.context import NodeContext
from opengrid.wire.messages import (
    MAX_FIRST_OPTIONS,
    MAX_TOKENS_LIMIT,
    AuditChunk,
    AuditJob,
    AuditReport,
    ErrorReply,
    FirstPositionVerdict,
    Message,
)
from opengrid.wire.sealed import SealedOutput, SealedPrompt

if TYPE_CHECKING:
    from opengrid.node.worker_driver import WorkerDriver

log = logging.getLogger("opengrid.node")

MAX_SCORING_SESSIONS = 4
"""Chunked audits one worker keeps open at once: each holds a llama.cpp context (a KV cache of n_ctx)."""

CHUNK_IDLE_S = 300.0
"""Longest wait for a chunked audit's next chunk (as for a run channel's next RunJob): a coordinator
that stops sending without closing the stream frees the session after this."""


class AuditDriver:
    """Scores claims for coordinators on the worker's engine, one engine call at a time."""

    def __init__(self, ctx: NodeContext, worker: WorkerDriver) -> None:
        self._ctx = ctx
        self._worker = worker
        self.audits_run = 0
        """Audits this worker scored (``AuditJob``)."""
        self.sessions = 0
        """Chunked audits open now (each holds a llama.cpp context: at most ``MAX_SCORING_SESSIONS``)."""

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
        self._worker.running += 1
        try:
            scoring, problem = await trio.to_thread.run_sync(
                score_and_decode, limiter=self._worker.engine_limiter
            )
        except EngineError as exc:
            log.warning("audit of job %s failed in the engine: %s", audit.job_id.hex()[:8], exc)
            return ErrorReply("engine_error", str(exc), audit.job_id)
        finally:
            self._worker.running -= 1
        self.audits_run += 1
        report = worker.report(
            audit, scoring.evidence if scoring is not None else (), problem=problem, claim=claim, salt=salt
        )
        _log_report(report, audit.job_id, "")
        return report

    async def serve_chunked_audit(self, stream: FrameStream, audit: AuditJob) -> None:
        """A chunked audit (spec/verification.md §14.2): score the claim chunk by chunk as the coordinator
        sends it, on a ``ScoringSession`` that keeps its KV cache, answering each chunk with a ChunkVerdict
        and the final one with the AuditReport over the whole claim. Bounded: at most
        ``MAX_SCORING_SESSIONS`` at once, ``CHUNK_IDLE_S`` between chunks, one frame per claimed token."""
        self._ctx.timing.mark("audit_received", audit.job_id, stream.peer)
        reply = await self._open_session(audit)
        if isinstance(reply, ErrorReply):
            await stream.send(reply)
            return
        session, sealed, first = reply
        self._ctx.timing.mark("audit_ready", audit.job_id, stream.peer)
        self.sessions += 1
        try:
            if first:  # spec/verification.md §14.2: the first position judged in advance (open jobs)
                tokens, pieces = [t for t, _ in first], [p for _, p in first]
                await stream.send(FirstPositionVerdict(job_id=audit.job_id, tokens=tokens, pieces=pieces))
                self._ctx.timing.mark("first_position", audit.job_id, stream.peer)
            await self._score_chunks(stream, audit, session, sealed)
        finally:
            self.sessions -= 1
            with trio.CancelScope(shield=True):  # free the context even when cancelled
                await trio.to_thread.run_sync(session.close, limiter=self._worker.engine_limiter)

    async def _open_session(self, audit: AuditJob) -> Any:
        """A ``ScoringSession`` for ``audit`` (its prompt evaluated), a sealed stream's opened prompt (None
        for an open one) and, for an open one, the (token, piece) pairs the session passes at position 0
        (the FirstPositionVerdict to send before any chunk: a first token among them reaches the client
        without its chunk's round trip through here); or the ErrorReply to answer instead."""
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

        def open_session() -> tuple[ScoringSession, list[tuple[int, str]] | None]:
            session = ScoringSession(
                engine,
                prompt=prompt,
                sampling=sampling,
                job_id=audit.job_id,
                add_bos=audit.format == "text",
                max_tokens=None,  # as the context holds: the job's own limit is not in the AuditJob
            )
            if sealed is not None:  # a sealed job's tokens are not the coordinator's to see
                return session, None
            try:  # in the same thread call: no second hop before the list goes out
                return session, session.first_position_options(audit.tolerance, MAX_FIRST_OPTIONS)
            except BaseException:
                session.close()
                raise

        try:
            session, first = await trio.to_thread.run_sync(open_session, limiter=self._worker.engine_limiter)
        except EngineError as exc:  # BadRequestError included: the prompt does not fit this context
            return ErrorReply("engine_error", str(exc), audit.job_id)
        return session, sealed, first

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
                    session.score_chunk, chunk.offset, tokens, pieces, limiter=self._worker.engine_limiter
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
            self._ctx.timing.mark("chunk_verdict", audit.job_id, stream.peer)
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
            evidence, problem = await trio.to_thread.run_sync(finish, limiter=self._worker.engine_limiter)
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
        _log_report(report, audit.job_id, " in chunks")
        return report


def _log_report(report: AuditReport, job_id: bytes, how: str) -> None:
    log.info(
        "audited job %s%s: %s (%d positions, max gap %.3f)",
        job_id.hex()[:8],
        how,
        report.verdict,
        report.n_scored,
        report.max_gap,
    )


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

"""The coordinator driver: feeds the sans-IO coordinator (opengrid/core/coordinator/) its events and
carries out the effects it returns — replicas sent to workers on their run channels, jobs answered, entries
stored and gossiped, receipts pushed to workers — and wakes it at its deadlines.

In audit mode (``CoordinatorConfig.verify``) it also sends ``AuditJob``s to auditors, each on its own
stream of the job protocol (one request, one reply), and feeds their reports back. A chunked audit (a
streaming job's claim, spec/verification.md §14.2) runs on the auditor's run channel: the machine's
``SendAuditChunk``s go down it in order, its FirstPositionVerdict comes back as ``FirstPositionJudged``,
each ChunkVerdict as ``ChunkAudited``, the final AuditReport as ``AuditReturned``. The exchanges
themselves are ``audit_exchanges.py``'s.

The simulator (simulations/) drives the same machine from an event heap; tests/simulations/
test_same_decisions.py proves both make the same decisions.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import msgspec
import trio

from opengrid.core.effects import (
    AppendEntry,
    CancelReplica,
    DispatchAudit,
    DispatchReplica,
    Effect,
    FinishJob,
    ForwardVerified,
    Penalize,
    SendAuditChunk,
    SendReceipt,
)
from opengrid.core.events import (
    AuditFailed,
    Event,
    JobCancelled,
    JobSubmitted,
    ReplicaFailed,
    ReplicaProgressed,
    ReplicaReturned,
    SealedChunkReported,
)
from opengrid.errors import OpenGridError, RemoteProtocolError
from opengrid.net.host import FrameStream
from opengrid.net.pool import StreamPool
from opengrid.node.audit_exchanges import exchange_audit, exchange_chunked_audit
from opengrid.node.context import PROGRESS_BUFFER, NodeContext, TaskStatus, short
from opengrid.node.job_log import JobLog
from opengrid.node.ledger_service import LedgerService
from opengrid.store.job_store import JobStore
from opengrid.wire.messages import (
    AuditChunk,
    AuditJob,
    ErrorReply,
    JobAccepted,
    JobProgress,
    Message,
    ReceiptNotice,
    ReplicaProgress,
    ReplicaResult,
    RunJob,
    Sealed,
    SealedProgress,
    SubmitJob,
)

log = logging.getLogger("opengrid.node")


@dataclass
class _PendingJob:
    done: trio.Event = field(default_factory=trio.Event)
    reply: JobAccepted | ErrorReply | None = None
    progress: Callable[[str, bool], None] | None = None
    """Streaming jobs: where to put ``(text, verified)``: verified text as the machine forwards it
    (``ForwardVerified``), and preview text from ``streamer`` only."""
    streamer: str | None = None
    """The first replica that sent progress; only its preview reaches the client."""
    sealed_progress: Callable[[Sealed, bytes], None] | None = None
    """Sealed streaming jobs: where each verified chunk's ciphertext for the client goes (§14.3)."""


class CoordinatorDriver:
    """Runs a coordinator node's jobs: events in, effects out."""

    def __init__(self, ctx: NodeContext, ledger: LedgerService) -> None:
        self._ctx = ctx
        self._ledger = ledger
        self.jobs: dict[bytes, _PendingJob] = {}
        """Jobs submitted here and not answered yet."""
        self._replicas: dict[tuple[bytes, str], trio.CancelScope] = {}
        self._audit_chunks: dict[tuple[bytes, str], trio.MemorySendChannel[AuditChunk]] = {}
        """Chunked audits running: (job, auditor) -> where its chunks go, in order, to its stream."""
        self.runs: StreamPool | None = None
        """Idle run-channel streams to workers, reused by later replicas (set once the host is up)."""
        self.job_store: JobStore | None = None
        """Accepted jobs, kept across a restart (set when the coordinator starts)."""
        self._timer_changed = trio.Event()
        self.job_log = JobLog()
        """Jobs answered here lately, how many and how fast (the dashboard, opengrid/node/dashboard.py)."""

    def resume(self, saved: Sequence[JobSubmitted]) -> None:
        """Take back the jobs accepted before the last stop."""
        assert self._ctx.coordinator is not None
        log.info("resuming %d job(s) accepted before the last stop", len(saved))
        self.execute(self._ctx.coordinator.resume(saved, trio.current_time()))

    # ── events in, effects out ───────────────────────────────────────────────────────────────────────
    def feed(self, event: Event) -> None:
        """Hand ``event`` to the coordinator machine and carry out what it decides."""
        assert self._ctx.coordinator is not None
        self.execute(self._ctx.coordinator.handle(event, trio.current_time()))

    def execute(self, effects: Sequence[Effect]) -> None:
        """Carry out the coordinator machine's effects."""
        ctx = self._ctx
        assert ctx.nursery is not None and ctx.store is not None
        for effect in effects:
            match effect:
                case DispatchReplica(peer=peer, run=run):
                    ctx.timing.mark("dispatch", run.job_id, peer)
                    scope = trio.CancelScope()
                    self._replicas[(run.job_id, peer)] = scope
                    ctx.nursery.start_soon(self._run_replica, peer, run, scope)
                case DispatchAudit(peer=peer, audit=audit):
                    scope = trio.CancelScope()
                    self._replicas[(audit.job_id, peer)] = scope  # CancelReplica stops audits too
                    if audit.chunked:
                        # Unbounded as a channel, bounded in use: at most one chunk per claimed token + 1.
                        chunks, receive = trio.open_memory_channel[AuditChunk](math.inf)
                        self._audit_chunks[(audit.job_id, peer)] = chunks
                        ctx.nursery.start_soon(self._run_chunked_audit, peer, audit, scope, receive)
                    else:
                        ctx.nursery.start_soon(self._run_audit, peer, audit, scope)
                case SendAuditChunk(peer=peer, chunk=chunk):
                    channel = self._audit_chunks.get((chunk.job_id, peer))
                    if channel is not None:
                        # The exchange may have just ended (its report or error is on its way in).
                        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                            channel.send_nowait(chunk)
                case CancelReplica(peer=peer, job_id=job_id):
                    running = self._replicas.pop((job_id, peer), None)
                    if running is not None:
                        running.cancel()
                    channel = self._audit_chunks.pop((job_id, peer), None)
                    if channel is not None:
                        channel.close()
                case FinishJob(job_id=job_id, reply=reply):
                    _log_outcome(job_id, reply)
                    if self.job_store is not None:  # kept before the client hears it: never lost
                        self.job_store.finish(job_id, reply, now_ms=time.time_ns() // 1_000_000)
                    pending = self.jobs.get(job_id)
                    if pending is not None:
                        pending.reply = reply
                        pending.done.set()
                case AppendEntry(entry=entry):
                    self._ledger.append(entry)
                case SendReceipt(peer=peer, notice=notice):
                    ctx.nursery.start_soon(self._send_receipt, peer, notice)
                case ForwardVerified(job_id=job_id, text=text, sealed=sealed, commitment=commitment):
                    ctx.timing.mark("forwarded", job_id, "")
                    pending = self.jobs.get(job_id)
                    if pending is not None and sealed is not None and pending.sealed_progress is not None:
                        pending.sealed_progress(sealed, commitment)
                    elif pending is not None and pending.progress is not None:
                        pending.progress(text, True)
                case Penalize(peer=peer, why=why):
                    log.info("worker %s penalised: %s", short(peer), why)  # handled: nothing to do
        self._ledger.report_forks()  # e.g. a client that signed two HOLDs with one seq
        self._timer_changed.set()

    async def timer_loop(self) -> None:
        """Wake the coordinator machine at its next deadline (or sooner, when effects moved it)."""
        assert self._ctx.coordinator is not None
        while True:
            deadline = self._ctx.coordinator.next_deadline()
            with trio.move_on_at(deadline if deadline is not None else math.inf):
                await self._timer_changed.wait()
            self._timer_changed = trio.Event()
            effects = self._ctx.coordinator.on_timer(trio.current_time())
            if effects:
                self.execute(effects)

    # ── a client's job ───────────────────────────────────────────────────────────────────────────────
    async def serve_job(self, stream: FrameStream, message: SubmitJob) -> None:
        """Run a client's job; forward preview text if it streams; cancel the job if the client leaves.

        The client sends nothing after its SubmitJob, so anything arriving on the stream — normally the
        end of the stream, when the client gave up, timed out or died — cancels the job and its replicas.
        """
        # Unbounded as a channel, bounded in use: a verified chunk holds at least one token of the job
        # (at most max_tokens of them) and is never dropped; a preview is dropped when PROGRESS_BUFFER
        # frames wait for a slow client (it loses preview text, never verified text nor the answer).
        send, receive = trio.open_memory_channel[tuple[str, bool, Sealed | None, bytes]](math.inf)

        def offer(text: str, verified: bool) -> None:
            if verified or send.statistics().current_buffer_used < PROGRESS_BUFFER:
                send.send_nowait((text, verified, None, b""))

        def offer_sealed(sealed: Sealed, commitment: bytes) -> None:  # verified: never dropped
            send.send_nowait(("", True, sealed, commitment))

        async def forward() -> None:
            async for text, verified, sealed, commitment in receive:
                progress = JobProgress(
                    job_id=message.job_id,
                    text=text,
                    verified=verified,
                    sealed_chunk=sealed,
                    chunk_commitment=commitment,
                )
                await stream.send(progress)

        async def watch_client(*, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            task_status.started()
            with contextlib.suppress(OpenGridError):
                await stream.receive()
            if message.job_id in self.jobs and self._ctx.coordinator is not None:
                log.info("client of job %s went away: cancelling it", message.job_id.hex()[:8])
                self.feed(JobCancelled(job_id=message.job_id, client=stream.peer))

        async with trio.open_nursery() as outer:
            await outer.start(watch_client)
            async with trio.open_nursery() as nursery:
                if message.stream:
                    nursery.start_soon(forward)
                try:
                    reply = await self.submit(
                        stream.peer,
                        message,
                        progress=offer if message.stream else None,
                        sealed_progress=offer_sealed if message.stream else None,
                    )
                finally:
                    send.close()  # the forwarder drains what is queued, then ends
            outer.cancel_scope.cancel()  # the answer is in: stop watching
        await stream.send(reply)

    async def submit(
        self,
        peer: str,
        message: SubmitJob,
        *,
        progress: Callable[[str, bool], None] | None = None,
        sealed_progress: Callable[[Sealed, bytes], None] | None = None,
    ) -> JobAccepted | ErrorReply:
        """Run ``peer``'s job here and return its answer; for a streaming job, ``progress(text,
        verified)`` gets verified text as a quorum agrees on it and one replica's preview text, and
        ``sealed_progress`` a sealed job's verified chunks (ciphertexts for the client)."""
        if message.job_id in self.jobs:  # never let a second submission hijack a running job's answer
            return ErrorReply("malformed", "this job id is already running; pick a fresh one", message.job_id)
        kept = self.job_store.answer(message.job_id, peer) if self.job_store is not None else None
        if kept is not None:  # its client lost the answer (our crash, its connection): the same again
            log.info(
                "job %s from %s: answered again from the job store", message.job_id.hex()[:8], short(peer)
            )
            return kept
        assert self._ctx.coordinator is not None
        submitted = trio.current_time()
        pending = _PendingJob(progress=progress, sealed_progress=sealed_progress)
        resumed = self._ctx.coordinator.is_running(message.job_id)  # taken back after a restart: wait for it
        self.jobs[message.job_id] = pending
        log.info(
            "job %s from %s: model %s, %d tokens, %d replicas",
            message.job_id.hex()[:8],
            short(peer),
            message.model,
            message.max_tokens,
            message.replicas,
        )
        try:
            if not resumed:
                event = JobSubmitted(client=peer, request=message, wall_ms=time.time_ns() // 1_000_000)
                if self.job_store is not None:
                    self.job_store.put(event)  # before any work: a restart must not lose it
                self.feed(event)
            await pending.done.wait()
        finally:
            self.jobs.pop(message.job_id, None)
        assert pending.reply is not None
        answered = trio.current_time()
        self.job_log.record(
            at=answered, latency_s=answered - submitted, verified=isinstance(pending.reply, JobAccepted)
        )
        return pending.reply

    # ── replicas ─────────────────────────────────────────────────────────────────────────────────────
    async def _run_replica(self, peer: str, run: RunJob, scope: trio.CancelScope) -> None:
        event: Event | None = None
        with scope:
            try:
                reply = await self._exchange_replica(peer, run)
            except OpenGridError as exc:
                event = ReplicaFailed(job_id=run.job_id, peer=peer, reason=str(exc))
            else:
                if isinstance(reply, ReplicaResult):
                    event = ReplicaReturned(job_id=run.job_id, peer=peer, result=reply)
                elif isinstance(reply, ErrorReply):
                    event = ReplicaFailed(
                        job_id=run.job_id,
                        peer=peer,
                        reason=f"{reply.code}: {reply.message}",
                        # input the worker cannot run (too long for the context, empty, a sealed prompt
                        # that does not open) is the client's doing, not the worker's
                        client_fault=reply.code == "malformed",
                    )
                else:
                    event = ReplicaFailed(
                        job_id=run.job_id, peer=peer, reason=f"unexpected {type(reply).__name__}"
                    )
        if self._replicas.get((run.job_id, peer)) is scope:
            del self._replicas[(run.job_id, peer)]
        if event is not None and not scope.cancel_called:
            if isinstance(event, ReplicaFailed):
                log.info("worker %s failed job %s: %s", short(peer), run.job_id.hex()[:8], event.reason)
            self.feed(event)

    async def _exchange_replica(self, peer: str, run: RunJob) -> Message:
        """Send ``run`` to ``peer``; for streaming jobs pass its preview frames on; return its final reply.

        The exchange runs on the worker's run channel (``RUN_PROTOCOL``, a pooled stream that earlier
        replicas used) when one is idle; ``StreamPool.exchange`` replaces one found dead before the worker
        said anything, and without a connection the worker is gone and the replica fails at once.
        """
        assert self.runs is not None
        timing = self._ctx.timing
        pending = self.jobs.get(run.job_id)
        message = (
            run if pending is None or pending.progress is None else msgspec.structs.replace(run, stream=True)
        )

        async def talk(stream: FrameStream) -> Message:
            timing.mark("stream_ready", run.job_id, peer)
            await stream.send(message)
            timing.mark("sent", run.job_id, peer)
            for _ in range(run.max_tokens + 1):  # at most one progress frame per token, then the answer
                reply = await stream.receive()
                self._ctx.trace(reply)
                if isinstance(reply, SealedProgress):  # a sealed stream's chunk (verification.md §14.3)
                    if reply.job_id == run.job_id and self._ctx.coordinator is not None:
                        self.feed(SealedChunkReported(run.job_id, peer, reply))
                    continue
                if not isinstance(reply, ReplicaProgress):
                    timing.mark("reply", run.job_id, peer)
                    answered = reply.job_id if isinstance(reply, ReplicaResult | ErrorReply) else b""
                    if answered not in (run.job_id, b""):
                        raise RemoteProtocolError("the answer is for another job", peer=peer)
                    return reply
                if reply.job_id != run.job_id:
                    continue
                if reply.tokens and self._ctx.coordinator is not None:  # verified as a quorum agrees
                    event = ReplicaProgressed(run.job_id, peer, tuple(reply.tokens), tuple(reply.pieces))
                    effects = self._ctx.coordinator.handle(event, trio.current_time())
                    if effects:  # most frames change nothing: skip the timer wake-up ``execute`` does
                        self.execute(effects)
                if pending is not None and pending.progress is not None:
                    if pending.streamer in (None, peer):
                        pending.streamer = peer
                        pending.progress(reply.text, False)
            raise RemoteProtocolError("more progress frames than tokens", peer=peer)

        return await self.runs.exchange(peer, talk)

    # ── audits ───────────────────────────────────────────────────────────────────────────────────────
    async def _run_audit(self, peer: str, audit: AuditJob, scope: trio.CancelScope) -> None:
        """Send ``audit`` to ``peer`` and feed its report (or its failure) back; the machine's own deadline
        cancels it (``CancelReplica``)."""
        assert self._ctx.coordinator is not None
        limit = self._ctx.coordinator.config.replica_timeout_s + 10.0
        event: Event | None = None
        with scope:
            event = await exchange_audit(self._ctx, peer, audit, limit)
        self._audit_ended(peer, audit.job_id, scope, event)

    async def _run_chunked_audit(
        self,
        peer: str,
        audit: AuditJob,
        scope: trio.CancelScope,
        chunks: trio.MemoryReceiveChannel[AuditChunk],
    ) -> None:
        """A chunked audit with ``peer`` (``exchange_chunked_audit``) on its run channel: its verdicts
        are fed back as they come, its end (report or failure) last; the machine's deadlines cancel it."""
        assert self.runs is not None
        event: Event | None = None
        with scope:
            try:
                event = await exchange_chunked_audit(self._ctx, self.runs, self.feed, peer, audit, chunks)
            finally:
                chunks.close()
        if self._replicas.get((audit.job_id, peer)) is scope:
            self._audit_chunks.pop((audit.job_id, peer), None)
        self._audit_ended(peer, audit.job_id, scope, event)

    def _audit_ended(self, peer: str, job_id: bytes, scope: trio.CancelScope, event: Event | None) -> None:
        if self._replicas.get((job_id, peer)) is scope:
            del self._replicas[(job_id, peer)]
        if event is not None and not scope.cancel_called:
            if isinstance(event, AuditFailed):
                log.warning("auditor %s failed job %s: %s", short(peer), job_id.hex()[:8], event.reason)
            self.feed(event)

    async def _send_receipt(self, peer: str, notice: ReceiptNotice) -> None:
        assert self._ctx.host is not None
        stream = None
        try:
            with trio.fail_after(10):
                stream = await self._ctx.host.open_stream(peer)
                await stream.send(notice)
        except (OpenGridError, trio.TooSlowError) as exc:
            log.info("could not deliver a receipt to %s (ledger sync will): %s", short(peer), exc)
        finally:
            if stream is not None:
                await stream.aclose()

    async def warm_run_channel(self, peer: str) -> None:
        """Open a run channel to a worker that just joined and keep it idle in the pool, so its first
        replica does not wait for a stream to open and its protocol to be negotiated (most of the time
        from dispatch decision to engine start at 50 nodes, where each worker sees its first job late).
        Best effort: a worker that cannot be reached now gets a stream at dispatch, as before."""
        assert self.runs is not None
        try:
            with trio.fail_after(10):
                stream, _ = await self.runs.take(peer)
        except (OpenGridError, trio.TooSlowError) as exc:
            log.debug("no run channel to worker %s yet: %s", short(peer), exc)
            return
        await self.runs.give_back(stream)


def _log_outcome(job_id: bytes, reply: JobAccepted | ErrorReply) -> None:
    if isinstance(reply, JobAccepted):
        log.info(
            "job %s verified: %d agreeing worker(s), %d dissenter(s), %d token(s); receipt signed",
            job_id.hex()[:8],
            len(reply.workers),
            len(reply.dissenters),
            len(reply.tokens),
        )
    else:
        log.info("job %s failed (%s): %s", job_id.hex()[:8], reply.code, reply.message)  # the client is told

"""A coordinator's audit exchanges with its auditors (spec/verification.md §13-§14; job-protocol.md §6.8):
one AuditJob and its report on a fresh stream, or a chunked audit of a streaming job's claim on the
auditor's run channel. Each returns the event that ends it (the report, or the failure) for the
coordinator driver to feed; a chunked audit feeds its verdicts on the way.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import trio

from opengrid.core.events import (
    AuditFailed,
    AuditReturned,
    ChunkAudited,
    Event,
    FirstPositionJudged,
)
from opengrid.errors import OpenGridError, TransportError
from opengrid.net.host import FrameStream
from opengrid.net.pool import StreamPool
from opengrid.node.context import NodeContext
from opengrid.wire.messages import (
    MAX_TOKENS_LIMIT,
    AuditChunk,
    AuditJob,
    AuditReport,
    ChunkVerdict,
    ErrorReply,
    FirstPositionVerdict,
    Message,
)


async def exchange_audit(ctx: NodeContext, peer: str, audit: AuditJob, limit_s: float) -> Event:
    """Send ``audit`` to ``peer`` on a fresh stream; its report, or why there is none (within
    ``limit_s``)."""
    assert ctx.host is not None
    stream = None
    try:
        with trio.fail_after(limit_s):
            stream = await ctx.host.open_stream(peer)
            await stream.send(audit)
            reply = await stream.receive()
        ctx.trace(reply)
    except (OpenGridError, trio.TooSlowError) as exc:
        return AuditFailed(job_id=audit.job_id, peer=peer, reason=str(exc) or "audit timed out")
    finally:
        if stream is not None:
            with trio.CancelScope(shield=True):
                await stream.aclose()
    return _ended(audit.job_id, peer, reply)


async def exchange_chunked_audit(
    ctx: NodeContext,
    runs: StreamPool,
    feed: Callable[[Event], None],
    peer: str,
    audit: AuditJob,
    chunks: trio.MemoryReceiveChannel[AuditChunk],
) -> Event | None:
    """A chunked audit with ``peer`` (spec/verification.md §14.2): send ``audit``, then every chunk the
    machine hands over, while feeding back its FirstPositionVerdict and each ChunkVerdict; end at the
    AuditReport (returned), a failing verdict (None: fed already) or an error (returned).

    It runs on the worker's run channel (job-protocol.md §6.4, a pooled stream: no stream to open and
    negotiate before the auditor can start evaluating the prompt, which is what a streaming job's first
    verified text waits for). The channel is given back only when the exchange ended with the
    AuditReport (the final chunk sent, nothing in flight); any other end resets it, since chunks sent
    before a fail or a refusal was read may still be on their way."""
    job_id = audit.job_id

    async def send_chunks(stream: FrameStream) -> None:
        with contextlib.suppress(OpenGridError):  # a broken stream shows on the reading side too
            async for chunk in chunks:
                await stream.send(chunk)

    async def talk(stream: FrameStream) -> Event:
        with trio.fail_after(10):
            await stream.send(audit)  # a dead idle channel fails here: the pool may open a fresh one
        try:
            return await converse(stream)
        except TransportError as exc:  # chunks were taken from the machine: no second try
            raise _ChannelSpent(AuditFailed(job_id=job_id, peer=peer, reason=str(exc))) from exc

    async def converse(stream: FrameStream) -> Event:
        ended: Event | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_chunks, stream)
            advance = False
            # a verdict per chunk (>= 1 token), a report, at most one FirstPositionVerdict
            for _ in range(MAX_TOKENS_LIMIT + 3):
                reply = await stream.receive()
                ctx.trace(reply)
                if isinstance(reply, FirstPositionVerdict) and not advance:
                    advance = True
                    feed(FirstPositionJudged(job_id=job_id, peer=peer, verdict=reply))
                    continue
                if isinstance(reply, ChunkVerdict):
                    feed(ChunkAudited(job_id=job_id, peer=peer, verdict=reply))
                    if reply.verdict == "pass":
                        continue
                else:
                    ended = _ended(job_id, peer, reply)
                break
            else:
                ended = AuditFailed(job_id=job_id, peer=peer, reason="more verdicts than chunks")
            nursery.cancel_scope.cancel()
        if not isinstance(ended, AuditReturned):  # chunks may be in flight: reset, never reuse
            raise _ChannelSpent(ended)
        return ended

    try:
        return await runs.exchange(peer, talk)
    except _ChannelSpent as spent:
        return spent.event
    except (OpenGridError, trio.TooSlowError) as exc:
        return AuditFailed(job_id=job_id, peer=peer, reason=str(exc) or "audit stream timed out")


def _ended(job_id: bytes, peer: str, reply: Message) -> Event:
    """The event an auditor's final frame makes: its report, a refusal, or a frame it should not send."""
    if isinstance(reply, AuditReport):
        return AuditReturned(job_id=job_id, peer=peer, report=reply)
    if isinstance(reply, ErrorReply):
        return AuditFailed(job_id=job_id, peer=peer, reason=f"{reply.code}: {reply.message}")
    return AuditFailed(job_id=job_id, peer=peer, reason=f"unexpected {type(reply).__name__}")


class _ChannelSpent(Exception):
    """A chunked audit on a run channel ended otherwise than with its AuditReport: ``event`` says how
    (None: a failing verdict, already fed). Raised out of the pooled exchange so that the channel is
    reset rather than reused (``StreamPool.exchange`` resets on any exception)."""

    def __init__(self, event: Event | None) -> None:
        super().__init__("chunked audit ended before its report")
        self.event = event

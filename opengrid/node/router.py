"""The message router: a node's inbound streams, and a table of handlers keyed by message type.

A stream on the default protocol carries one request; jobs (``SubmitJob`` to a coordinator, ``RunJob`` to
a worker) keep their stream for previews and cancellation, a dial-back needs the requester's address, and
every other request gets one reply from ``answer``. The run channel (``RUN_PROTOCOL``) and registration
channel (``BEAT_PROTOCOL``) carry one kind of request after another on one kept stream. A handler decides
from the node's state (does it coordinate, serve a model, take work now) what to answer.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from opengrid.errors import FrameTooLargeError, OpenGridError, RemoteProtocolError
from opengrid.net.host import BEAT_PROTOCOL, RUN_PROTOCOL, FrameStream
from opengrid.net.keys import public_key_of
from opengrid.net.reachability import MAX_CONCURRENT_DIALS, check_addresses
from opengrid.node.availability import Availability
from opengrid.node.context import NodeContext
from opengrid.node.coordinator_driver import CoordinatorDriver
from opengrid.node.coordinator_requests import CoordinatorRequests
from opengrid.node.ledger_service import LedgerService
from opengrid.node.worker_driver import WorkerDriver
from opengrid.wire.messages import (
    AccountRequest,
    AdmitRequest,
    AuditJob,
    ControlRequest,
    DialBackReport,
    DialBackRequest,
    ErrorReply,
    GrantRequest,
    History,
    HistoryRequest,
    Message,
    ModelsRequest,
    NodeStatus,
    OwnerTransfer,
    QuoteRequest,
    ReceiptNotice,
    ReceiptRequest,
    RegisterWorker,
    RunJob,
    StatusRequest,
    SubmitJob,
    TransferRequest,
)

log = logging.getLogger("opengrid.node")

_Handler = Callable[[str, Any, str], Awaitable[Message | None]]
"""Answers (peer, request, the peer's operator) with a reply, or None when none is due."""
_StreamHandler = Callable[[FrameStream, Any], Awaitable[None]]
"""Serves a request that needs its stream (to keep talking, or to see the requester's address)."""
"""The request a channel carries, one after another (run channel, registration channel)."""


class Router:
    """Turns a node's inbound streams into calls on its parts."""

    def __init__(
        self,
        ctx: NodeContext,
        *,
        availability: Availability,
        ledger: LedgerService,
        coordinator: CoordinatorDriver,
        requests: CoordinatorRequests,
        worker: WorkerDriver,
        status: Callable[[], NodeStatus],
        history: Callable[[bytes, int], History],
        receipt: Callable[[str, bytes], Message] | None = None,
    ) -> None:
        self._ctx = ctx
        self._availability = availability
        self._ledger = ledger
        self._coordinator = coordinator
        self._requests = requests
        self._worker = worker
        self._status = status
        self._history = history
        self._receipt = receipt
        """Answers (peer, job id) with the job's JobReceipt or an ErrorReply (``Lookups.receipt``)."""
        self._dial_backs = trio.CapacityLimiter(MAX_CONCURRENT_DIALS)
        """Dial-backs run for peers at once (spec/discovery.md §9.1): a peer asking in a loop waits."""
        self._on_stream: dict[type[Message], _StreamHandler] = {
            SubmitJob: self._job_stream,
            RunJob: self._run_stream,
            AuditJob: self._audit_stream,
            DialBackRequest: self._dial_back,
        }
        self._on_request: dict[type[Message], _Handler] = {
            StatusRequest: self._on_status,
            HistoryRequest: self._on_history,
            ControlRequest: self._on_control,
            QuoteRequest: self._on_quote,
            ModelsRequest: self._on_models,
            ReceiptRequest: self._on_receipt,
            AdmitRequest: self._on_admit,
            GrantRequest: self._on_grant,
            SubmitJob: self._on_submit,
            RunJob: self._on_run,
            AuditJob: self._on_audit,
            RegisterWorker: self._on_register,
            ReceiptNotice: self._on_receipts,
            AccountRequest: self._on_account,
            TransferRequest: self._on_transfer,
            OwnerTransfer: self._on_owner_transfer,
        }

    # ── streams ──────────────────────────────────────────────────────────────────────────────────────
    async def serve_stream(self, stream: FrameStream) -> None:
        """A stream on the default protocol: one request, served by its type's handler."""
        try:
            message = await stream.receive()
        except RemoteProtocolError as exc:
            # Answer with a typed error, then close: the connection (and its other streams) lives on.
            hint = "; split the request or shorten it" if isinstance(exc, FrameTooLargeError) else ""
            log.info("refused a bad frame: %s", exc)
            await _try_send(stream, ErrorReply("malformed", f"{exc}{hint}"))
            return
        self._ctx.trace(message)
        serve = self._on_stream.get(type(message))
        if serve is not None:
            await serve(stream, message)
        else:
            await self._reply(stream, message)

    async def serve_runs(self, stream: FrameStream) -> None:
        """A worker's run channel (``RUN_PROTOCOL``): RunJob and AuditJob exchanges one after another on
        one stream, each answered as on its own stream, until the coordinator ends it
        (spec/job-protocol.md §6.4). The coordinator sends the next one only after reading the last one's
        final frame, so a frame or an end of stream while a job runs still means the coordinator left it.
        (A chunked audit on a run channel starts without a stream to open and negotiate: its prompt
        evaluation is what a streaming job's first verified text waits for.)"""

        async def serve(message: RunJob | AuditJob) -> None:
            if isinstance(message, RunJob):
                await self._serve_run(stream, message)
            else:
                await self._audit_stream(stream, message)

        await self._serve_channel(stream, RUN_PROTOCOL, (RunJob, AuditJob), serve)

    async def serve_beats(self, stream: FrameStream) -> None:
        """A coordinator's registration channel (``BEAT_PROTOCOL``): a worker's RegisterWorker heartbeats
        one after another on one stream, each answered as on its own stream (spec/job-protocol.md §6.1).
        A beat on a kept stream costs a few muxer frames; on a fresh one, ~20 frames and a multistream
        negotiation through both event loops (~4.8 ms of CPU against ~1.1 ms, measured in py-libp2p 0.8.1)."""
        operator = operator_of(stream.remote_ip)

        async def answer(message: RegisterWorker) -> None:
            reply = await self.answer(stream.peer, message, operator)
            assert reply is not None
            await stream.send(reply)

        await self._serve_channel(stream, BEAT_PROTOCOL, (RegisterWorker,), answer)

    async def _serve_channel(
        self,
        stream: FrameStream,
        protocol: str,
        kinds: tuple[type[Message], ...],
        serve: Callable[[Any], Awaitable[None]],  # takes exactly the types in ``kinds``
    ) -> None:
        """Serve a channel that carries ``kinds`` exchanges one after another, until the peer ends it; a
        bad frame or another message is answered ``malformed`` and ends it."""
        names = " and ".join(k.__name__ for k in kinds)
        while True:
            try:
                message = await stream.receive_next()
            except RemoteProtocolError as exc:
                log.info("refused a bad frame on %s: %s", protocol, exc)
                await _try_send(stream, ErrorReply("malformed", str(exc)))
                return
            if message is None:
                return
            self._ctx.trace(message)
            if not isinstance(message, kinds):
                what = f"{protocol} carries {names} only, not {type(message).__name__}"
                await stream.send(ErrorReply("malformed", what))
                return
            await serve(message)

    async def _reply(self, stream: FrameStream, message: Message) -> None:
        reply = await self.answer(stream.peer, message, operator_of(stream.remote_ip))
        if reply is not None:
            await stream.send(reply)

    async def _job_stream(self, stream: FrameStream, message: SubmitJob) -> None:
        if self._ctx.coordinator is not None and not self._availability.paused:
            await self._coordinator.serve_job(stream, message)
        else:
            await self._reply(stream, message)

    async def _run_stream(self, stream: FrameStream, message: RunJob) -> None:
        if self._ctx.worker is not None and not self._availability.paused:
            await self._serve_run(stream, message)
        else:
            await self._reply(stream, message)

    async def _audit_stream(self, stream: FrameStream, message: AuditJob) -> None:
        """A chunked audit keeps its stream (spec/verification.md §14.2); any other is one request, one
        reply (``_on_audit``)."""
        if message.chunked and self._ctx.worker is not None and not self._availability.paused:
            await self._worker.audits.serve_chunked_audit(stream, message)
        else:
            await self._reply(stream, message)

    async def _serve_run(self, stream: FrameStream, message: RunJob) -> None:
        """Run one replica and send its result (or a refusal, e.g. ``busy`` while paused)."""
        self._ctx.timing.mark("received", message.job_id, stream.peer)
        if self._availability.paused:
            reply = await self.answer(stream.peer, message)
            assert reply is not None
            await stream.send(reply)
            return
        await self._worker.serve_run(stream, message)

    async def _dial_back(self, stream: FrameStream, message: DialBackRequest) -> None:
        """Dial the addresses a peer asks about (needs the requester's IP: anti-amplification)."""
        private = self._ctx.config.network_key is not None
        results = await check_addresses(
            message.addrs, stream.remote_ip, private_network=private, limiter=self._dial_backs
        )
        await stream.send(DialBackReport(results=results))

    # ── one request, one reply ───────────────────────────────────────────────────────────────────────
    async def answer(self, peer: str, message: Message, operator: str = "") -> Message | None:
        """The reply to ``peer``'s ``message`` (None: nothing to send back)."""
        handler = self._on_request.get(type(message))
        if handler is None:
            return self._unexpected(message)
        return await handler(peer, message, operator)

    async def _on_status(self, peer: str, message: StatusRequest, operator: str) -> Message:
        return self._status()

    async def _on_history(self, peer: str, message: HistoryRequest, operator: str) -> Message:
        return self._history(message.account or self._ctx.public_key, message.limit)

    async def _on_control(self, peer: str, message: ControlRequest, operator: str) -> Message:
        return self._availability.on_control(message, self._status)

    async def _on_quote(self, peer: str, message: QuoteRequest, operator: str) -> Message:
        if self._ctx.coordinator is not None and not self._availability.paused:
            return self._requests.on_quote(message)
        if self._candidate():
            return self._busy()
        return self._unexpected(message)

    async def _on_models(self, peer: str, message: ModelsRequest, operator: str) -> Message:
        if self._ctx.coordinator is not None:  # a paused coordinator still says what it serves
            return self._requests.on_models(message)
        return self._not_coordinator(message)

    async def _on_receipt(self, peer: str, message: ReceiptRequest, operator: str) -> Message:
        if self._receipt is None:
            return self._unexpected(message)
        return self._receipt(peer, message.job_id)

    async def _on_admit(self, peer: str, message: AdmitRequest, operator: str) -> Message:
        admission = self._ctx.admission
        if admission is None:
            return self._unexpected(message)
        return admission.vote(message, sender=public_key_of(peer))

    async def _on_grant(self, peer: str, message: GrantRequest, operator: str) -> Message:
        if self._candidate():
            return self._busy()
        if self._ctx.coordinator is not None:
            return self._requests.on_grant_request(peer, message, operator)
        return self._not_coordinator(message)

    async def _on_submit(self, peer: str, message: SubmitJob, operator: str) -> Message:
        # Reached when the job's stream was not served: a paused coordinator, or no coordinator at all.
        return self._busy() if self._availability.paused else self._not_coordinator(message)

    async def _on_run(self, peer: str, message: RunJob, operator: str) -> Message:
        if self._availability.paused:
            return self._busy()
        if self._ctx.worker is not None:
            return await self._worker.on_run(message)
        return self._unexpected(message)

    async def _on_audit(self, peer: str, message: AuditJob, operator: str) -> Message:
        """An audit (spec/verification.md §13): one request, one reply, on its own stream."""
        if self._availability.paused:
            return self._busy()
        if self._ctx.worker is not None:
            return await self._worker.audits.on_audit(message)
        return self._unexpected(message)

    async def _on_register(self, peer: str, message: RegisterWorker, operator: str) -> Message:
        if self._ctx.coordinator is not None:
            return self._requests.on_register(peer, message, operator)
        return self._not_coordinator(message)

    async def _on_receipts(self, peer: str, message: ReceiptNotice, operator: str) -> Message | None:
        if self._ctx.worker is None:
            return self._unexpected(message)
        self._ledger.on_receipts(peer, message)
        return None

    async def _on_account(self, peer: str, message: AccountRequest, operator: str) -> Message:
        return self._ledger.account_state(message.account)

    async def _on_transfer(self, peer: str, message: TransferRequest, operator: str) -> Message:
        # Coordinators take clients' transfers: they hold the freshest ledger, and a client finds one.
        if self._ctx.coordinator is None:
            return self._not_coordinator(message)
        return self._ledger.on_transfer(peer, message)

    async def _on_owner_transfer(self, peer: str, message: OwnerTransfer, operator: str) -> Message:
        return self._ledger.on_owner_transfer(message)

    def _candidate(self) -> bool:
        """A coordinator not admitted yet (closed networks): it takes no work."""
        admission = self._ctx.admission
        return admission is not None and admission.candidate

    def _busy(self) -> ErrorReply:
        reason = self._availability.pause_reason
        return ErrorReply("busy", f"this node takes no work now ({reason}); try later")

    def _not_coordinator(self, message: Message) -> ErrorReply:
        role = self._ctx.config.role
        return ErrorReply("not_coordinator", f"{role} nodes do not accept {type(message).__name__}")

    def _unexpected(self, message: Message) -> ErrorReply:
        role = self._ctx.config.role
        return ErrorReply("malformed", f"a {role} does not expect {type(message).__name__} here")


def operator_of(ip: str) -> str:
    """Who operates a worker, as far as replica spreading can tell: its public IP address.

    Private, loopback and link-local addresses say nothing about the operator (a whole test network or
    LAN shares them), so they count as unknown and never make two workers "the same operator".
    """
    try:
        return ip if ip and ipaddress.ip_address(ip).is_global else ""
    except ValueError:
        return ""


async def _try_send(stream: FrameStream, message: Message) -> None:
    try:
        await stream.send(message)
    except OpenGridError:
        pass

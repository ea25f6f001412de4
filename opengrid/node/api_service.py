"""The backend of a node's OpenAI-compatible API (opengrid/node/api.py): the models a client can ask for,
and jobs run on this node when it coordinates, else through the coordinator it registered with — whose
answer is passed on only if its receipt backs it."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable

import trio

from opengrid.core.audit import GREEDY, SamplingParams
from opengrid.core.coordinator.payments import PaymentShortfall
from opengrid.core.refusal import Refusal
from opengrid.errors import ConfigError, OpenGridError, PaymentError
from opengrid.net.keys import public_key_of
from opengrid.node.api import ApiSettings, build_app, check_bind
from opengrid.node.api_payment import AccountPayer
from opengrid.node.chat_template import TemplateRenderer
from opengrid.node.context import NodeContext, TaskStatus, short
from opengrid.node.coordinator_driver import CoordinatorDriver
from opengrid.node.dashboard import Dashboard
from opengrid.node.registration import Registration
from opengrid.wire.messages import ErrorReply, JobAccepted, ModelOffer, PromptFormat, SubmitJob
from opengrid.wire.receipts import verify_receipt

log = logging.getLogger("opengrid.node")


class ApiService:
    """What a node's API asks of the node (``opengrid.node.api.ApiBackend``)."""

    def __init__(self, ctx: NodeContext, coordinator: CoordinatorDriver, registration: Registration) -> None:
        self._ctx = ctx
        self._coordinator = coordinator
        self._registration = registration
        self._payer = AccountPayer(ctx)
        """Pays the jobs this node forwards to a coordinator that requires payment (not coordinating)."""

    async def serve(self, settings: ApiSettings, *, task_status: TaskStatus[list[str]]) -> None:
        """Serve the API as ``settings`` say; ``task_status.started`` gets its URLs."""
        from hypercorn.config import Config
        from hypercorn.trio import serve as serve_app

        host, port = check_bind(settings.address, allow_remote=settings.allow_remote)
        config = Config()
        config.bind = [f"{host}:{port}"]
        config.accesslog = None
        config.errorlog = logging.getLogger("opengrid.api.server")
        app = build_app(
            self,
            api_key=settings.api_key,
            renderer=TemplateRenderer(timeout_s=settings.template_timeout_s),
            dashboard=Dashboard(self._ctx, self._coordinator, self._registration),  # `/`, read-only
        )

        async def ready_then_report(*, task_status: TaskStatus[list[str]]) -> None:
            await serve_app(app, config, task_status=task_status)  # type: ignore[arg-type]

        try:
            async with trio.open_nursery() as nursery:
                urls = await nursery.start(ready_then_report)
                log.info("OpenAI-compatible API on %s/v1", ", ".join(urls))
                task_status.started(urls)
        except OSError as exc:
            raise ConfigError(f"cannot serve the API on {settings.address}: {exc.strerror or exc}") from exc

    def api_models(self) -> list[ModelOffer]:
        """Models a client of this node's API can ask for."""
        if self._ctx.coordinator is not None:
            return [o for r in self._ctx.coordinator.workers.values() if r.online for o in r.offers]
        return list(self._ctx.worker.offers) if self._ctx.worker is not None else []

    async def api_submit(
        self,
        *,
        prompt: str,
        model: str,
        max_tokens: int,
        replicas: int,
        format: PromptFormat,
        client: str = "",
        sampling: SamplingParams = GREEDY,
        job_id: bytes = b"",
        on_verified: Callable[[str], None] | None = None,
    ) -> JobAccepted | ErrorReply:
        """Run one verified job: on this node if it coordinates, else through its coordinator. ``client``:
        the API user (``opengrid.node.api.api_client``), its own client of the coordinator's queue.
        ``sampling``: the job's sampler (greedy by default), written into the SubmitJob (spec §11).
        ``job_id``: the job's id (empty: a fresh one). ``on_verified``: gets the answer's text as a
        quorum verifies it (spec/verification.md §14) when this node coordinates the job; through another
        coordinator the answer comes whole, at the end (the request there is not streamed yet)."""
        host = self._ctx.host
        assert host is not None
        job = SubmitJob(
            job_id=job_id or secrets.token_bytes(16),
            # streamed only where this node coordinates: its verified text comes to ``on_verified``
            stream=on_verified is not None and self._ctx.coordinator is not None,
            model=model,
            prompt=prompt,
            max_tokens=max_tokens,
            replicas=replicas,
            format=format,
            temperature=sampling.temperature,
            top_k=sampling.top_k,
            top_p=sampling.top_p,
            seed=sampling.seed,
        )
        if self._ctx.coordinator is not None:
            # Paid from this node's own account when it can be (spec/ledger.md §7); nothing between here
            # and the submission yields, so the HOLD stays the next link of our chain.
            paid = self._ctx.coordinator.pay_own_job(job)
            if isinstance(paid, Refusal):
                if self._ctx.coordinator.config.require_payment:
                    if isinstance(paid, PaymentShortfall):  # the figures travel as data (HTTP 402)
                        raise PaymentError(paid.message, price=paid.price, balance=paid.balance)
                    return paid.reply(job.job_id)
                log.info("API job %s runs unpaid: %s", job.job_id.hex()[:8], paid.message)
            else:
                job = paid
            api_user = f"{host.peer_id}/{client}" if client else host.peer_id  # fair queueing per user
            if on_verified is None:
                return await self._coordinator.submit(api_user, job)
            verified = on_verified

            def progress(text: str, is_verified: bool) -> None:
                if is_verified:  # previews never reach the API's users
                    verified(text)

            return await self._coordinator.submit(api_user, job, progress=progress)
        address = self._registration.coordinator_address()
        if address is None:
            return ErrorReply(
                "not_coordinator", "this node is not registered with any coordinator yet; retry shortly"
            )
        try:
            peer = await host.connect(address)
            if not self._payer.requires_payment(peer):
                reply = await host.request(peer, job)
                if isinstance(reply, ErrorReply) and reply.code == "payment_required":
                    # It runs only paid jobs: this one again (refused before any state: the same id is
                    # free), paid from the node's own account, and every later one paid from the start.
                    self._payer.refused_unpaid(peer)
            if self._payer.requires_payment(peer):
                async with self._payer.paying(host, peer, job) as forwarded:
                    if isinstance(forwarded, ErrorReply):
                        reply = forwarded
                    else:
                        reply = await host.request(peer, forwarded)
        except PaymentError:
            raise  # the node's account cannot pay: the API answers 402 with the figures
        except OpenGridError as exc:
            return ErrorReply("not_coordinator", f"the coordinator could not be reached: {exc}", job.job_id)
        if isinstance(reply, JobAccepted):
            problem = self._receipt_problem(reply, peer)
            if problem:  # never pass on, as verified, an answer the receipt does not back
                log.warning("coordinator %s sent an unbacked answer: %s", short(peer), problem)
                return ErrorReply(
                    "verification_failed", f"the coordinator's receipt does not check: {problem}"
                )
            return reply
        if isinstance(reply, ErrorReply):
            return reply
        return ErrorReply("internal", f"the coordinator answered {type(reply).__name__}", job.job_id)

    def _receipt_problem(self, reply: JobAccepted, coordinator: str) -> str:
        """Why ``reply``'s receipt does not back its answer ("" if it does): the SDK's full check
        (opengrid/wire/receipts.py) — signature, signer, job, the commitment to these very tokens and
        text, every credited worker's attestation, no credit above tokens x weight."""
        try:
            verify_receipt(
                reply.receipt,
                self._ctx.config.network,
                tokens=reply.tokens,
                text=reply.text,
                job_id=reply.job_id,
                coordinator_key=public_key_of(coordinator),
            )
        except OpenGridError as exc:  # VerificationError; a malformed salt-less commitment input too
            return str(exc)
        return ""

"""A coordinator's answers to what it is asked besides jobs: quotes for sealed jobs, the models it serves,
starting-grant vouchers, and workers' registrations (the accepting side of opengrid/node/registration.py),
with the round-trip time it measures to each new worker for the scheduler."""

from __future__ import annotations

import logging
import time

import trio

from opengrid.core.events import WorkerRegistered
from opengrid.errors import OpenGridError
from opengrid.net.keys import public_key_of
from opengrid.node import admission
from opengrid.node.context import NodeContext, short
from opengrid.node.coordinator_driver import CoordinatorDriver
from opengrid.wire.messages import (
    MAX_EXPOSURE,
    ErrorReply,
    GrantRequest,
    Message,
    ModelInfo,
    ModelList,
    ModelOffer,
    ModelsRequest,
    Quote,
    QuotedWorker,
    QuoteRequest,
    Registered,
    RegisterWorker,
    bounded_models,
)
from opengrid.wire.sealed import box_public_key

log = logging.getLogger("opengrid.node")


class CoordinatorRequests:
    """Quotes, grants and worker registrations, answered from the coordinator machine's state."""

    def __init__(self, ctx: NodeContext, driver: CoordinatorDriver) -> None:
        self._ctx = ctx
        self._driver = driver
        self.rtt: dict[str, float] = {}
        """Measured round-trip time per worker peer."""

    def on_quote(self, message: QuoteRequest) -> Message:
        """Which workers would run a sealed job of ``message``'s shape, with their keys (or why none)."""
        coordinator = self._ctx.coordinator
        assert coordinator is not None
        chosen = coordinator.quote(
            message.model,
            exposure=message.exposure,
            trusted=message.trusted,
            max_tokens=message.max_tokens,
            now=trio.current_time(),
        )
        if len(chosen) < message.replicas and message.max_tokens:
            any_length = coordinator.quote(message.model, exposure=MAX_EXPOSURE, trusted=message.trusted)
            if len(any_length) >= message.replicas:  # as at submission: name the length that would do
                longest = max(coordinator.workers[c.peer].max_job_tokens for c in any_length)
                return ErrorReply(
                    "no_capacity",
                    f"the workers serving {message.model!r} here take jobs of at most {longest} tokens "
                    f"(edge nodes); ask for max_tokens <= {longest}, or wait for a full worker",
                )
        if len(chosen) < message.replicas:
            served = ", ".join(coordinator.served_models()) or "none yet"
            if not chosen and not coordinator.quote(message.model, exposure=MAX_EXPOSURE):
                return ErrorReply(  # the API's words for it (opengrid/node/api.py)
                    "unknown_model",
                    f"no worker serves model {message.model!r}; served: {served} (start a worker with "
                    f"--model {message.model}, or ask for a served model)",
                )
            return ErrorReply(
                "no_capacity" if chosen else "unknown_model",
                f"job asks for {message.replicas} replicas of {message.model!r} but only {len(chosen)} "
                f"worker(s) can run it sealed; lower replicas or wait for workers (served here: {served})",
            )
        return Quote(
            model=message.model,
            workers=[
                QuotedWorker(peer_id=c.peer, public_key=c.key, box_key=box_public_key(c.key)) for c in chosen
            ],
            weight=coordinator.class_weight(chosen[0].contract),
        )

    def on_models(self, message: ModelsRequest) -> ModelList:
        """The models online workers serve here: one entry per model name and file (sha256), with how many
        workers serve it and its points per token; with ``message.model`` named, only its entries, and the
        chat template a worker announced (the first worker by peer id that announced one)."""
        coordinator = self._ctx.coordinator
        assert coordinator is not None
        wanted = message.model.lower()
        serving: dict[tuple[str, str], set[str]] = {}
        offers: dict[tuple[str, str], list[ModelOffer]] = {}
        for record in sorted(coordinator.workers.values(), key=lambda r: r.peer):
            if not record.online:
                continue
            for offer in record.offers:
                sha = offer.contract.model_sha256.lower()
                if wanted and wanted not in (offer.name.lower(), sha):
                    continue
                serving.setdefault((offer.name, sha), set()).add(record.peer)
                offers.setdefault((offer.name, sha), []).append(offer)
        models = []
        for (name, sha), peers in serving.items():
            announced = offers[(name, sha)]
            templated = next((o for o in announced if o.chat_template), None) if wanted else None
            models.append(
                ModelInfo(
                    name=name,
                    sha256=sha,
                    workers=len(peers),
                    weight=max(coordinator.class_weight(o.contract) for o in announced),
                    chat_template=templated.chat_template if templated else "",
                    bos_token=templated.bos_token if templated else "",
                    eos_token=templated.eos_token if templated else "",
                )
            )
        return bounded_models(models)

    def on_grant_request(self, peer: str, message: GrantRequest, operator: str) -> Message:
        """Vouch for a client's starting grant if the core's policy allows (spec/ledger.md §7)."""
        assert self._ctx.coordinator is not None
        wall_ms = time.time_ns() // 1_000_000  # the rate limit's clock: wall time survives a restart
        reply = self._ctx.coordinator.vouch(message, operator=operator, now=wall_ms / 1000, wall_ms=wall_ms)
        if isinstance(reply, ErrorReply):
            log.info(
                "no grant voucher for %s (via %s): %s",
                message.account.hex()[:16],
                short(peer),
                reply.message,
            )
        else:
            log.info("vouched for the starting grant of %s (via %s)", message.account.hex()[:16], short(peer))
        return reply

    def on_register(self, peer: str, message: RegisterWorker, operator: str = "") -> Message:
        """A worker's registration (its heartbeat, too): checked, then fed to the coordinator machine."""
        ctx = self._ctx
        config = ctx.config
        assert ctx.coordinator is not None and ctx.host is not None
        if message.network != config.network:
            return ErrorReply(
                "malformed",
                f"this coordinator runs network {config.network!r}, not {message.network!r}; "
                "start the worker with the same --network",
            )
        if message.public_key != public_key_of(peer):
            return ErrorReply("malformed", "public_key does not match the connection's peer id")
        if config.approve_workers and peer not in admission.approved(config.data_dir):
            if admission.note_pending(config.data_dir, peer, [o.name for o in message.models]):
                log.warning(
                    "worker %s asks to join (%s); approve it with: opengrid node approve --data-dir %s %s",
                    short(peer),
                    ", ".join(o.name for o in message.models),
                    config.data_dir,
                    peer,
                )
            return ErrorReply(
                "busy", "this coordinator admits workers its operator approved; yours is awaiting approval"
            )
        ctx.host.remember(peer, message.listen_addrs)
        known = peer in ctx.coordinator.workers and ctx.coordinator.workers[peer].online
        self._driver.feed(
            WorkerRegistered(
                peer=peer,
                key=message.public_key,
                offers=tuple(message.models),
                operator=operator,
                rtt_s=self.rtt.get(peer, 0.0),
                slots=message.slots,
                probed_tokens_per_s=message.tokens_per_s,
                max_job_tokens=message.max_job_tokens,
            )
        )
        if not known:
            log.info("worker %s joined with %s", short(peer), ", ".join(o.name for o in message.models))
            if ctx.nursery is not None:  # measured now, reported to the core with its next heartbeat
                ctx.nursery.start_soon(self._measure_rtt, peer)
                ctx.nursery.start_soon(self._driver.warm_run_channel, peer)
        return Registered(coordinator_key=ctx.public_key, heartbeat_s=config.heartbeat_s)

    async def _measure_rtt(self, peer: str) -> None:
        """Round-trip time to a worker: the best of three status requests on fresh streams (what a job
        dispatch costs on the wire). The scheduler weighs it; failures leave it unknown."""
        assert self._ctx.host is not None
        try:
            with trio.fail_after(15):
                best = await self._ctx.host.round_trip(peer, tries=3)
        except (OpenGridError, trio.TooSlowError):
            return
        self.rtt[peer] = best
        log.debug("RTT to worker %s: %.1f ms", short(peer), best * 1000)
        workers = self._ctx.coordinator.workers if self._ctx.coordinator is not None else {}
        for gone in [p for p in self.rtt if p not in workers]:  # bounded by the (bounded) registry
            del self.rtt[gone]

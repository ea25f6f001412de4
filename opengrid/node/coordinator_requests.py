"""A coordinator's answers to what it is asked besides jobs: quotes for sealed jobs, the models it serves,
starting-grant vouchers, and workers' registrations (the accepting side of opengrid/node/registration.py),
with the round-trip time it measures to each new worker for the scheduler."""

from __future__ import annotations

import logging
import time

import trio

from opengrid.core.coordinator.registry import AWAITING_APPROVAL
from opengrid.core.refusal import Refusal
from opengrid.errors import OpenGridError, RemoteProtocolError
from opengrid.net.keys import public_key_of
from opengrid.node import admission
from opengrid.node.context import NodeContext, short
from opengrid.node.coordinator_driver import CoordinatorDriver
from opengrid.wire.messages import (
    GrantRequest,
    Message,
    ModelInfo,
    ModelList,
    ModelOffer,
    ModelsRequest,
    QuoteRequest,
    Registered,
    RegisterWorker,
    bounded_models,
)

log = logging.getLogger("opengrid.node")


class CoordinatorRequests:
    """Quotes, grants and worker registrations, answered from the coordinator machine's state."""

    def __init__(self, ctx: NodeContext, driver: CoordinatorDriver) -> None:
        self._ctx = ctx
        self._driver = driver
        self.rtt: dict[str, float] = {}
        """Measured round-trip time per worker peer."""
        self.split_members: dict[str, list[str]] = {}
        """Members of the split group each registered head says it runs (spec/split.md §7), for status;
        one entry per registered worker at most."""

    def on_quote(self, message: QuoteRequest) -> Message:
        """Which workers would run a sealed job of ``message``'s shape, with their keys (or why none): the
        core decides (``Coordinator.answer_quote``)."""
        assert self._ctx.coordinator is not None
        return answer(self._ctx.coordinator.answer_quote(message, now=trio.current_time()))

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
        now = wall_ms / 1000
        decision = self._ctx.coordinator.vouch(message, operator=operator, now=now, wall_ms=wall_ms)
        if isinstance(decision, Refusal):
            log.info(
                "no grant voucher for %s (via %s): %s",
                message.account.hex()[:16],
                short(peer),
                decision.message,
            )
        else:
            log.info("vouched for the starting grant of %s (via %s)", message.account.hex()[:16], short(peer))
        return answer(decision)

    def on_register(self, peer: str, message: RegisterWorker, operator: str = "") -> Message:
        """A worker's registration (its heartbeat, too): decided by the core (``Coordinator.registration``),
        then fed to the coordinator machine. Here only what needs the node: the key behind the peer id,
        the operator's approvals on disk, the worker's addresses, and its round-trip time."""
        ctx = self._ctx
        config = ctx.config
        assert ctx.coordinator is not None and ctx.host is not None
        approved = not config.approve_workers or peer in admission.approved(config.data_dir)
        members = message.split_members if isinstance(message.split_members, list) else []
        try:  # a split group's members' accounts: their standing weighs the group's (spec/split.md §6)
            member_keys = [public_key_of(m) for m in members]
        except RemoteProtocolError as exc:
            return answer(Refusal("malformed", f"split_members: {exc}"))
        decision = ctx.coordinator.registration(
            peer,
            message,
            peer_key=public_key_of(peer),
            approved=approved,
            operator=operator,
            rtt_s=self.rtt.get(peer, 0.0),
            member_keys=member_keys,
        )
        if isinstance(decision, Refusal):
            names = [o.name for o in message.models]
            if decision == AWAITING_APPROVAL and admission.note_pending(config.data_dir, peer, names):
                log.warning(
                    "worker %s asks to join (%s); approve it with: opengrid node approve --data-dir %s %s",
                    short(peer),
                    ", ".join(names),
                    config.data_dir,
                    peer,
                )
            return answer(decision)
        ctx.host.remember(peer, message.listen_addrs)
        known = peer in ctx.coordinator.workers and ctx.coordinator.workers[peer].online
        self._driver.feed(decision)
        if isinstance(message.split_members, list):
            self.split_members[peer] = list(message.split_members)
        else:
            self.split_members.pop(peer, None)
        for gone in [p for p in self.split_members if p not in ctx.coordinator.workers]:
            del self.split_members[gone]  # bounded by the registered workers
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


def answer(decision: Message | Refusal) -> Message:
    """A core decision as the reply to send: a ``Refusal`` becomes the wire's ``ErrorReply``, anything
    else is already the reply. Every coordinator request answered here goes through this one mapping."""
    return decision.reply() if isinstance(decision, Refusal) else decision

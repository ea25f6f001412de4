"""Registration, a worker's side: one task per coordinator it knows of repeats a ``RegisterWorker`` as
its heartbeat on the registration channel (``BEAT_PROTOCOL``, a kept stream, spec/job-protocol.md §6.1).
A coordinator marks a worker offline after 3 missed beats; a paused worker, or one reachable only through
a relay while it holds no reservation, stops beating. The accepting side is
opengrid/node/coordinator_requests.py."""

from __future__ import annotations

import logging
from typing import Final

import trio

import opengrid
from opengrid.errors import OpenGridError, RemoteProtocolError, TransportError
from opengrid.net.host import FrameStream
from opengrid.net.keys import public_key_of
from opengrid.net.pool import StreamPool
from opengrid.node.availability import Availability
from opengrid.node.context import NodeContext, peer_of, short
from opengrid.node.ledger_service import LedgerService
from opengrid.node.split_group import split_members
from opengrid.node.trust import remember_trusted
from opengrid.wire.messages import MAX_CLAIMED_TOKENS_PER_S, ErrorReply, Message, Registered, RegisterWorker

log = logging.getLogger("opengrid.node")

_UNANSWERED_BEFORE_REDIAL: Final = 3
"""Registrations in a row left unanswered on one connection before a worker drops it and dials afresh."""


class Registration:
    """Keeps a worker registered with every coordinator it knows of."""

    def __init__(self, ctx: NodeContext, ledger: LedgerService, availability: Availability) -> None:
        self._ctx = ctx
        self._ledger = ledger
        self._availability = availability
        self.registered = trio.Event()
        """Set once a coordinator accepted our first registration."""
        self.coordinators: dict[str, str] = {}
        """Coordinators we are registered with, peer id -> the address we reached it at."""
        self._coordinator_peer = ""
        """The first coordinator that accepted us (the API's jobs go there)."""
        self.not_coordinators: set[str] = set()
        """Bootstrap peers that answered ``not_coordinator``: asked once, then used only for gossip."""
        self._named: dict[str, str] = {}
        """``/dnsaddr/`` bootstrap names -> the peer id each led to last."""
        self.beats: StreamPool | None = None
        """Our registration channel to each coordinator (``BEAT_PROTOCOL``; set once the host is up)."""

    def coordinator_address(self) -> str | None:
        """The address of the coordinator this node's API sends its jobs to (None before one accepted us)."""
        return self.coordinators.get(self._coordinator_peer)

    async def register_loop(self) -> None:
        """Keep one registration task per coordinator we know of — our bootstrap addresses, every
        coordinator heard on gossip or listed by a bootstrap node — each repeating the registration as
        our heartbeat (a coordinator marks us offline after 3 missed beats). One task per coordinator, so
        a dead or slow one never delays the heartbeats to the others. A paused worker stops beating, so
        its coordinators stop sending it work; so does a node reachable only through relays while it
        holds no reservation (``unreachable``)."""
        running: set[str] = set()
        said = ""
        async with trio.open_nursery() as nursery:
            while True:
                unreachable = self.unreachable()
                if bool(unreachable) != bool(said):
                    if unreachable:
                        log.warning("not registering with coordinators: %s", unreachable)
                    else:
                        log.info("reachable through a relay again; registering")
                    said = unreachable
                for peer in self._targets():
                    if peer not in running:
                        running.add(peer)
                        nursery.start_soon(self._keep_registered, peer, running)
                await trio.sleep(min(self._ctx.config.heartbeat_s, 1.0))  # pick up new coordinators soon

    async def _keep_registered(self, peer: str, running: set[str]) -> None:
        """Register with ``peer`` every beat it asks for, until it is no longer a coordinator we know of
        and a registration fails."""
        host = self._ctx.host
        assert host is not None
        interval = self._ctx.config.heartbeat_s
        warned = False
        unanswered = 0
        """Registrations in a row that got no answer in time over a connection that stayed open."""
        try:
            while True:
                address = self._targets().get(peer)
                if address is None:
                    return  # forgotten (offline on gossip and not accepting us): stop beating at it
                started = trio.current_time()
                if not self._availability.paused and not self.unreachable():
                    try:
                        # As often as the coordinator asks, within sane bounds so a hostile one cannot
                        # make us spin or go silent.
                        interval = min(max(await self.register_once(address), 0.5), 60.0)
                        warned, unanswered = False, 0
                    except _NotACoordinator as exc:
                        self.not_coordinators.add(peer)
                        log.info("%s; looking for coordinators through it", exc)
                        return
                    except OpenGridError as exc:
                        unanswered = unanswered + 1 if isinstance(exc, _Unanswered) else 0
                        if unanswered >= _UNANSWERED_BEFORE_REDIAL:
                            # No answer for several beats on a connection that stayed open: it may be
                            # half-dead (the coordinator's machine vanished). Re-dial afresh.
                            await host.disconnect(peer)
                            unanswered = 0
                        if not unanswered:  # a late answer is no reason to forget a coordinator yet
                            self.coordinators.pop(peer, None)
                        if not warned:
                            warned = True
                            log.warning(
                                "cannot register with coordinator %s (%s); retrying every beat",
                                short(peer),
                                str(exc) or "no answer in time",
                            )
                # A beat every ``interval`` from the start of the last one: a registration left unanswered
                # for its whole timeout must not push the next beat past the coordinator's offline limit.
                await trio.sleep(max(0.0, interval - (trio.current_time() - started)))
        finally:
            running.discard(peer)
            if self.beats is not None:
                await self.beats.close_idle(peer)  # its coordinator's handler waits on it otherwise

    def unreachable(self) -> str:
        """Why coordinators could not reach us for a job, or "" if they can. A node with no listen address
        is reachable only through a relay reservation; registering without one would invite jobs that
        cannot arrive once our own connection closes (spec/discovery.md §8.4)."""
        ctx = self._ctx
        assert ctx.host is not None
        # a relayed address is announced while a reservation is held: on a given relay, or on one the
        # node took itself when those were gone (spec/discovery.md §9.3)
        if ctx.config.listen or not ctx.relay_keepers or ctx.host.relay_addresses():
            return ""
        problems = "; ".join(k.problem for k in ctx.relay_keepers)
        return (
            f"this node listens on no address and holds no relay reservation ({problems}); "
            "start a relay or name a reachable one with --relay-via"
        )

    def _targets(self) -> dict[str, str]:
        """One address per coordinator, by peer id: bootstrap addresses (unless they said they do not
        coordinate), the coordinators that accepted us (registration is itself the liveness check: a
        coordinator whose gossip is late on a loaded machine must not lose its workers), then the
        coordinators gossip tells us about. A ``/dnsaddr/NAME`` bootstrap has no peer id until it was
        reached: the name itself is its key until then."""
        targets: dict[str, str] = {}
        for address in self._ctx.config.bootstrap:
            peer = self._named.get(address) or peer_of(address)
            if peer not in self.not_coordinators:
                targets.setdefault(peer, address)
        for peer, address in self.coordinators.items():
            targets.setdefault(peer, address)
        if self._ctx.membership is not None:
            for address in self._ctx.membership.addresses_of("coordinator"):
                targets.setdefault(peer_of(address), address)
        return targets

    async def register_once(self, address: str) -> float:
        """Register with the coordinator at ``address`` (dialling it if need be); return the heartbeat
        period it asks for."""
        ctx = self._ctx
        assert ctx.worker is not None and ctx.host is not None
        timeout = _registration_timeout(ctx.config.heartbeat_s)
        try:
            with trio.fail_after(timeout):  # a dial to a vanished coordinator must not stall us long
                peer = await ctx.host.connect(address)
            if peer != peer_of(address):
                self._named[address] = peer  # a /dnsaddr/ name: the peer it led to (``_targets``)
        except trio.TooSlowError as exc:
            await ctx.host.disconnect(peer_of(address))  # re-dial afresh next time
            raise TransportError(f"could not connect to {address} within {timeout:.0f} s") from exc
        message = RegisterWorker(
            network=ctx.config.network,
            public_key=ctx.public_key,
            listen_addrs=ctx.host.addrs(),
            models=list(ctx.worker.offers),
            software=f"opengrid/{opengrid.__version__}",
            tokens_per_s=min(round(ctx.tokens_per_s, 3), MAX_CLAIMED_TOKENS_PER_S),
            tier=ctx.tier,
            max_job_tokens=ctx.config.max_tokens_per_job,
            split_members=split_members(ctx.engine),
        )
        try:
            with trio.fail_after(timeout):
                reply = await self._beat(peer, message)
        except trio.TooSlowError as exc:
            # Keep the connection: an overloaded coordinator answers late, and re-dialling it (a new
            # handshake, gossip streams, its replay of recent messages) only adds to its load. The caller
            # re-dials after a few beats without an answer (a half-dead connection never answers).
            raise _Unanswered(
                f"the coordinator did not answer the registration within {timeout:.0f} s"
            ) from exc
        except OpenGridError as exc:
            # The stream failed: a coordinator that died may leave a broken connection behind. Re-dial.
            await ctx.host.disconnect(peer)
            raise TransportError(f"the coordinator did not answer the registration: {exc}") from exc
        if isinstance(reply, ErrorReply) and reply.code == "not_coordinator":
            raise _NotACoordinator(f"bootstrap {short(peer)} is not a coordinator")
        if isinstance(reply, ErrorReply):
            raise TransportError(f"{address} refused the registration: {reply.message}")
        if not isinstance(reply, Registered):
            raise RemoteProtocolError(f"expected Registered, got {type(reply).__name__}", peer=peer)
        if reply.coordinator_key != public_key_of(peer):
            raise RemoteProtocolError("coordinator_key does not match the coordinator's peer id", peer=peer)
        ctx.worker.trust_coordinator(reply.coordinator_key)
        if peer not in self.coordinators:
            log.info("registered with coordinator %s", short(peer))
            if ctx.ledger is not None and not ctx.ledger.closed:  # a genesis fixes the minters otherwise
                remember_trusted(ctx.config.data_dir, reply.coordinator_key)
            self._ledger.sync_wanted.set()
        self.coordinators[peer] = address
        if not self._coordinator_peer or self._coordinator_peer not in self.coordinators:
            self._coordinator_peer = peer
        self.registered.set()
        return reply.heartbeat_s

    async def _beat(self, peer: str, message: RegisterWorker) -> Message:
        """One registration exchange on our registration channel to ``peer`` (a kept stream; a fresh
        ``JOB_PROTOCOL`` stream, closed after, for a coordinator without the channel)."""
        assert self.beats is not None

        async def talk(stream: FrameStream) -> Message:
            await stream.send(message)
            return await stream.receive()

        return await self.beats.exchange(peer, talk)


class _NotACoordinator(TransportError):
    """A bootstrap peer answered a registration with ``not_coordinator``: use it only to join gossip."""


class _Unanswered(TransportError):
    """A registration sent on an open connection got no answer in time."""


def _registration_timeout(heartbeat_s: float) -> float:
    """How long one registration (dial included) may take: two of our beats, at least 5 s."""
    return max(5.0, 2 * heartbeat_s)

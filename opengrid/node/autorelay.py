"""Automatic relay (spec/discovery.md §9.3): a node that peers cannot dial takes a relay by itself.

The driver of ``opengrid.core.autorelay``: after every reachability verdict (``Membership.on_verdict``),
and every ``RelayTiming.step_s``, it decides whether it needs a relay. When it looks for one it gathers
the relays it knows of — ``relay`` providers in the DHT, coordinators heard on gossip or listed or found,
its bootstrap nodes — and measures the round trip to the best few of them; then it asks the policy what
to do and does it: holds a reservation with a ``ReservationKeeper`` (which adds the ``/p2p-circuit``
address to ``Host.addrs()``, so announcements and registrations carry it from the next beat on), or
cancels it.

It runs on every node. A node given relays (``--relay-via``, or its bootstrap nodes when it does not
listen) keeps to them while one of them holds a reservation, and gives them ``switch_after_s`` to come
back when none does (their keepers keep retrying) before it takes another by itself; it lets that one go
as soon as one of its own holds a reservation again.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import replace

import trio

from opengrid.core.autorelay import (
    DropRelay,
    HeldRelay,
    RelayCandidate,
    TakeRelay,
    given_relays_up,
    is_direct_tcp,
    next_step,
    usable_relays,
    wants_relay,
)
from opengrid.errors import OpenGridError
from opengrid.net.discovery import role_key
from opengrid.net.host import Host
from opengrid.net.relay import RELAY_TIMING, RelayTiming, ReservationKeeper
from opengrid.node.context import TaskStatus
from opengrid.node.membership import Membership

log = logging.getLogger("opengrid.node.autorelay")

_DHT_LOOKUP_S = 10.0
_DHT_CACHE_S = 60.0
"""``relay`` providers found in the DHT are looked up again after this long at the soonest."""
_MEASURE_AT_MOST = 6
"""Round trips are measured to this many candidates (the best by rank): enough to find a near one among
the few relays a node knows of, without dialling every coordinator of a large grid."""
_MEASURE_S = 3.0
"""Bound on measuring them all (in parallel): a candidate slower than this is not a near one."""
_RTT_CACHE_S = 60.0
"""A measured round trip (or a candidate that did not answer) is measured again after this long."""


class AutoRelay:
    """Take a relay when peers cannot dial this node; let it go when they can. Start with
    ``await nursery.start(auto_relay.run)``."""

    def __init__(
        self,
        host: Host,
        membership: Membership,
        *,
        bootstrap: Sequence[str],
        given: Sequence[ReservationKeeper] = (),
        timing: RelayTiming = RELAY_TIMING,
    ) -> None:
        self._timing = timing
        """How often to step, how long given or taken relays get to come back, the keepers' retries."""
        self._host = host
        self._membership = membership
        self._bootstrap = list(bootstrap)
        self._given = list(given)
        """Keepers of the relays this node was given (``NodeConfig.relays``), run by the node itself."""
        self._given_lost_since: float | None = trio.current_time() if self._given else None
        """When the last of them stopped holding a reservation (start-up until one first holds)."""
        self.keeper: ReservationKeeper | None = None
        """The reservation this node took by itself (None while it holds none)."""
        self._scope: trio.CancelScope | None = None
        self._lost_since: float | None = None
        self._failed: dict[str, float] = {}
        """relay peer id -> when it refused us or could not be reached (``core.autorelay.RETRY_FAILED_S``)."""
        self._from_dht: list[RelayCandidate] = []
        self._dht_looked_up = -_DHT_CACHE_S
        self._rtts: dict[str, tuple[float | None, float]] = {}
        """peer id -> (best round trip in seconds, None if it did not answer; when measured)."""
        self._wake = trio.Event()

    async def run(self, *, task_status: TaskStatus[AutoRelay] = trio.TASK_STATUS_IGNORED) -> None:
        self._membership.on_verdict.append(lambda _verdict: self._wake.set())
        async with trio.open_nursery() as nursery:
            task_status.started(self)
            while True:
                with trio.move_on_after(self._timing.step_s):
                    await self._wake.wait()
                self._wake = trio.Event()
                await self._step(nursery)

    async def _step(self, nursery: trio.Nursery) -> None:
        now = trio.current_time()
        held = self._held(now)
        verdict = self._membership.reachability
        given_serve = self._given_relays_serve(now)
        looking = (held is None and wants_relay(verdict, given_relays_up=given_serve)) or (
            held is not None and held.lost_since is not None
        )
        # the given relays that hold nothing are being retried by their own keepers: not candidates
        failed = {**self._failed, **{k.relay_peer: now for k in self._given if not k.held}}
        candidates = await self._measured(await self._candidates(now), failed, now) if looking else []
        step = next_step(
            verdict,
            given_relays_up=given_serve,
            held=held,
            candidates=candidates,
            me=self._host.peer_id,
            failed=failed,
            now=now,
            switch_after_s=self._timing.switch_after_s,
        )
        if isinstance(step, DropRelay):
            self._drop(step.reason)
            if step.failed:
                self._failed[step.peer_id] = now
                self._wake.set()  # and take another at once
        elif isinstance(step, TakeRelay):
            if self._given:
                log.warning(
                    "none of the relays this node was given (--relay-via, or its bootstrap nodes) has held a "
                    "reservation for %.0f s; looking for another meanwhile",
                    now - (self._given_lost_since or now),
                )
            await self._take(step.relay, nursery, now)

    def _given_relays_serve(self, now: float) -> bool:
        if any(keeper.held for keeper in self._given):
            self._given_lost_since = None
        elif self._given and self._given_lost_since is None:
            self._given_lost_since = now
        return given_relays_up(
            len(self._given), self._given_lost_since, now=now, switch_after_s=self._timing.switch_after_s
        )

    def _held(self, now: float) -> HeldRelay | None:
        if self.keeper is None:
            return None
        if self.keeper.held:
            self._lost_since = None
        elif self._lost_since is None:
            self._lost_since = now
        return HeldRelay(self.keeper.relay_peer, self._lost_since)

    async def _take(self, relay: RelayCandidate, nursery: trio.Nursery, now: float) -> None:
        try:
            keeper = ReservationKeeper(self._host, relay.address, self._timing)
        except OpenGridError as exc:
            self._failed[relay.peer_id] = now
            log.info("not using %s as a relay: %s", relay.peer_id, exc)
            self._wake.set()
            return
        scope = trio.CancelScope()
        await nursery.start(self._hold, keeper, scope)  # returns after the first reservation attempt
        if not keeper.held:
            scope.cancel()
            self._failed[relay.peer_id] = now
            log.info("relay %s gave no reservation (%s); trying another", relay.peer_id, keeper.problem)
            self._wake.set()
            return
        self.keeper, self._scope, self._lost_since = keeper, scope, None
        log.warning(
            "peers cannot dial this node; reachable through relay %s now (%s, a %s, RTT %s). Forward or "
            "open the TCP port to be dialled directly",
            relay.peer_id,
            keeper.circuit,
            {"dht": "relay found in the DHT", "coordinator": "coordinator", "bootstrap": "bootstrap node"}[
                relay.source
            ],
            "unknown" if relay.rtt_s is None else f"{relay.rtt_s * 1000:.1f} ms",
        )

    @staticmethod
    async def _hold(
        keeper: ReservationKeeper, scope: trio.CancelScope, *, task_status: TaskStatus[None]
    ) -> None:
        with scope:
            await keeper.run(task_status=task_status)

    def _drop(self, reason: str) -> None:
        if self.keeper is None or self._scope is None:
            return
        log.info("%s: dropping the reservation on relay %s", reason, self.keeper.relay_peer)
        self._scope.cancel()  # the keeper stops announcing the relayed address as it ends
        self.keeper, self._scope, self._lost_since = None, None, None

    async def _candidates(self, now: float) -> list[RelayCandidate]:
        """Everyone who might relay for us, each with its direct TCP addresses (the policy ranks them)."""
        out: list[RelayCandidate] = []
        if now - self._dht_looked_up >= _DHT_CACHE_S:
            self._dht_looked_up = now
            self._from_dht = await self._relays_in_dht()
        out += self._from_dht
        membership = self._membership
        heard = membership.gossip.directory.online(now, role="coordinator")
        for ann in heard:  # with what each says about its own reachability
            for address in ann.addrs:
                out.append(RelayCandidate(ann.peer_id, address, "coordinator", ann.reachability))
        for address in membership.addresses_of("coordinator"):  # listed by a bootstrap, or in the DHT
            if _peer_of(address) not in {ann.peer_id for ann in heard}:
                out.append(RelayCandidate(_peer_of(address), address, "coordinator"))
        for address in self._bootstrap:
            out.append(RelayCandidate(_peer_of(address), address, "bootstrap"))
        return [c for c in out if is_direct_tcp(c.address)]

    def rtt_of(self, peer_id: str) -> float | None:
        """The round trip measured to a relay candidate, if any (what the choice used)."""
        return self._rtts.get(peer_id, (None, 0.0))[0]

    async def _measured(
        self, candidates: list[RelayCandidate], failed: dict[str, float], now: float
    ) -> list[RelayCandidate]:
        """The candidates with the round trips measured to them: the best ``_MEASURE_AT_MOST`` usable ones
        by rank are measured (in parallel, best of 2 status requests) unless measured in the last
        ``_RTT_CACHE_S``; one that does not answer stays unmeasured (its reservation attempt decides)."""
        usable = usable_relays(candidates, me=self._host.peer_id, failed=failed, now=now)
        stale = [c for c in usable if now - self._rtts.get(c.peer_id, (None, -math.inf))[1] >= _RTT_CACHE_S]
        if stale:
            with trio.move_on_after(_MEASURE_S):
                async with trio.open_nursery() as nursery:
                    for candidate in stale[:_MEASURE_AT_MOST]:
                        nursery.start_soon(self._measure, candidate, now)
        return [replace(c, rtt_s=self.rtt_of(c.peer_id)) for c in candidates]

    async def _measure(self, candidate: RelayCandidate, now: float) -> None:
        self._rtts[candidate.peer_id] = (None, now)  # until it answers (and if the bound cuts it short)
        self._host.remember(candidate.peer_id, [candidate.address])
        try:
            self._rtts[candidate.peer_id] = (await self._host.round_trip(candidate.peer_id, tries=2), now)
        except OpenGridError as exc:
            log.debug("relay candidate %s did not answer: %s", candidate.peer_id, exc)

    async def _relays_in_dht(self) -> list[RelayCandidate]:
        discovery = self._membership.discovery
        try:
            with trio.fail_after(_DHT_LOOKUP_S):
                providers = await discovery.find_providers(role_key(discovery.network, "relay"))
        except (OpenGridError, trio.TooSlowError) as exc:
            log.debug("no relay lookup in the DHT: %s", exc or "timed out")
            return []
        out = []
        for provider in providers:
            for addr in provider.addrs:
                full = addr if addr.endswith(f"/p2p/{provider.peer_id}") else f"{addr}/p2p/{provider.peer_id}"
                out.append(RelayCandidate(provider.peer_id, full, "dht"))
        return out


def _peer_of(address: str) -> str:
    return address.rsplit("/p2p/", 1)[-1]

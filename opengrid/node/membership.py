"""How a node joins the network and keeps knowing who is in it: gossip announcements from one bootstrap.

A volunteer gives one bootstrap multiaddr — any node of the network. The node dials it, joins the
gossipsub announce topic over that connection, announces itself every ``announce_s`` (roles, models,
addresses) and hears everyone else's announcements, so within a beat or two it knows every coordinator
and worker, and forgets the ones that fall silent. Workers register with every coordinator they hear of
(registration.py); SDK clients ask any node for its peers (``NodeStatus.peers``) to find a coordinator.

The join is bounded and keeps trying: a bootstrap that is not up yet is re-dialled with a growing pause
(up to ``_MAX_RETRY_S``), and a node that lost every connection dials its bootstraps again.

Gossip alone is not enough to *join*: a node connected only to a busy bootstrap node is outside that
node's full gossipsub mesh and hears others' announcements only through lazy IHAVE gossip, which took
over a minute in a 20-node grid. So after joining, and every ``3 * announce_s``, the node also asks a
bootstrap node for its status and takes the peers it lists as hints (unsigned claims: they only say whom
to try; registering with a coordinator authenticates it).

Every node also runs the Kademlia DHT (``opengrid.net.discovery``): coordinators and relays (reachable,
long-lived nodes) in server mode, workers in client mode, so routing tables hold a few stable servers
and a worker opens no connection for the DHT's sake beyond the coordinators it talks to anyway. It
advertises provider records for its role (and ``relay`` when it relays) and for each model it serves, by
sha256 and by name; every ``_DHT_LOOKUP_BEATS`` beats it looks up the providers of ``coordinator``. Those
are hints like a bootstrap's list: gossip is the fast path, the DHT the path that needs no gossip mesh
and no particular bootstrap node. A provider record never receives work by itself being found: a worker
registers with the coordinator first (the health check), and a coordinator dispatches only to
registered workers whose heartbeats are on time.

Reachability (``opengrid.net.reachability``): once joined and then every ``_REACHABILITY_BEATS`` beats,
the node asks up to ``_CHECKERS`` peers it is connected to for a dial-back of its listen addresses on a
fresh connection, draws a verdict (public / private / relayed / unknown), announces it, and says in the
log what to do when peers cannot reach it.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Sequence

import msgspec
import trio
from nacl.signing import SigningKey

from opengrid.errors import ConfigError, OpenGridError
from opengrid.net.announce import ModelAd
from opengrid.net.discovery import Provider, model_key, model_name_key, role_key
from opengrid.net.reachability import MAX_DIAL_BACK_ADDRS, Reachability, ip_and_port, verdict
from opengrid.net.transport import LIBP2P, Directory, PubSub, StreamHost, Transport
from opengrid.node.context import TaskStatus
from opengrid.wire.messages import (
    DialBackReport,
    DialBackRequest,
    DialBackResult,
    NodeStatus,
    PeerSummary,
    StatusRequest,
)

log = logging.getLogger("opengrid.node.membership")

_MAX_RETRY_S = 30.0
_DIAL_TIMEOUT_S = 10.0
_HINT_STALE_S = 60.0
"""A peer the bootstrap node heard within this long is worth a try even if it shows it offline: gossip can
stall on one node (py-libp2p's pubsub, seen after peers were SIGKILLed) while the peer is alive; trying
costs a bounded registration attempt."""
_DHT_LOOKUP_BEATS = 12
"""DHT rounds (provide, then look up coordinators) every this many beats (60 s at the default 5 s): the DHT
is the slow path, and 50 nodes each querying ~20 peers every beat would cost more than gossip itself."""
_DHT_EMPTY_RETRY_BEATS = 3
"""With no DHT server connected yet (a worker that so far talks only to other workers), look again soon."""
_DHT_REPROVIDE_ROUNDS = 10
"""Provide again every this many rounds (records live 48 h; this reaches DHT servers that joined since)."""
_DHT_ROUND_TIMEOUT_S = 20.0
_PROVIDER_STALE_S = 3 * 60.0
"""A coordinator found in the DHT stays a hint this long after the last lookup that found it."""
_REACHABILITY_BEATS = 60
"""Dial-back checks every this many beats (5 min at the default 5 s), and once right after joining."""
_CHECKERS = 3
_CHECK_TIMEOUT_S = 10.0
_KEY_HINT_AFTER_S = 3.0
"""A bootstrap dial whose TCP port answers at once but whose libp2p handshake has not finished after this
long is taken for a network-key mismatch (spec/discovery.md §3: a mismatched key does not fail, each side
reads garbage and waits for the library's 10 s upgrade timeout) and named as the likely cause."""
_TCP_PROBE_S = 1.0


class Membership:
    """The node's view of the network. Start with ``await nursery.start(membership.run)``."""

    def __init__(
        self,
        host: StreamHost,
        *,
        network: str,
        signing_key: SigningKey,
        role: str,
        models: Sequence[ModelAd],
        software: str,
        announce_s: float,
        tier: str = "",
        tokens_per_s: float = 0.0,
        bootstrap: Sequence[str],
        ledger_validator: Callable[[str, bytes], bool] | None = None,
        relay: bool = False,
        dht_server: bool = True,
        transport: Transport = LIBP2P,
    ) -> None:
        self._host = host
        self._bootstrap = list(bootstrap)
        self._announce_s = announce_s
        self.gossip: PubSub = transport.gossip(
            host,
            network=network,
            signing_key=signing_key,
            roles=[role],
            models=models,
            software=software,
            tier=tier,
            tokens_per_s=tokens_per_s,
            beat_s=announce_s,
            ledger_validator=ledger_validator,
        )
        self.joined = trio.Event()
        """Set once a bootstrap peer answered (immediately for a node without bootstrap addresses)."""
        self._hints: list[PeerSummary] = []
        """Peers a bootstrap node listed in its status (online, or heard within ``_HINT_STALE_S``)."""
        self.discovery: Directory = transport.discovery(
            host, network=network, signing_key=signing_key, server=dht_server
        )
        roles = [role, "relay"] if relay else [role]
        self.provided = [role_key(network, r) for r in roles] + [
            key for m in models for key in (model_key(network, m.sha256), model_name_key(network, m.name))
        ]
        """Logical DHT keys this node advertises itself under (its roles, its models by sha256 and name)."""
        self._from_dht: dict[str, tuple[Provider, float]] = {}
        """Coordinators found in the DHT: peer id -> (provider, when found)."""
        self.dht_rounds = 0
        """DHT rounds completed (provide + lookup); a round that fails is logged and retried next time."""
        self.reachability: Reachability = "unknown"
        self.dial_backs: dict[str, list[DialBackResult]] = {}
        """The last dial-back report of each peer that checked us (peer id -> one result per address)."""
        self.reachability_checked = trio.Event()
        """Set after the first check that got a verdict (or found the node relayed-only)."""
        self.on_verdict: list[Callable[[Reachability], None]] = []
        """Called after every check with its verdict (the automatic relay, opengrid/node/autorelay.py)."""

    async def run(self, *, task_status: TaskStatus[Membership] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.discovery.run)
            await nursery.start(self.gossip.run)
            nursery.start_soon(self._stay_joined)
            nursery.start_soon(self._dht_loop)
            nursery.start_soon(self._reachability_loop)
            task_status.started(self)

    async def _stay_joined(self) -> None:
        if not self._bootstrap:
            self.joined.set()
            return
        pause = min(self._announce_s, 1.0)
        turn = 0
        pulled = -math.inf
        hinted: set[str] = set()
        while True:
            # Until joined, and then every 3 beats: ask a bootstrap's status (it lists every peer, so at
            # scale this stretches with the beat, spec/discovery.md §5.5); at once if we lost every
            # connection. (Connections alone are not joining: a relayed node holds one to its relay first.)
            due = trio.current_time() - pulled >= 3 * self.gossip.beat_s
            if not self._host.connected_peers() or due:
                # Ask the bootstraps in turn, starting after the one asked last time.
                order = self._bootstrap[turn:] + self._bootstrap[:turn]
                turn = (turn + 1) % len(self._bootstrap)
                for address in order:
                    try:
                        with trio.fail_after(_DIAL_TIMEOUT_S):
                            if self.joined.is_set() or address in hinted:
                                peer = await self._host.connect(address)
                            else:
                                peer = await self._connect_naming_a_key_mismatch(address, hinted)
                            status = await self._host.request(peer, StatusRequest())
                    except (OpenGridError, trio.TooSlowError) as exc:
                        if not self.joined.is_set():
                            log.info(
                                "bootstrap %s not reachable yet (%s); retrying",
                                address,
                                str(exc) or "timed out",
                            )
                        continue
                    pulled = trio.current_time()
                    if isinstance(status, NodeStatus):
                        me = self._host.peer_id
                        fresh = [p for p in status.peers if p.online or p.last_seen_s < _HINT_STALE_S]
                        self._hints = [p for p in fresh if p.peer_id != me]
                    if not self.joined.is_set():
                        log.info("joined the network through %s", peer)
                    self.joined.set()
                    pause = min(self._announce_s, 1.0)
                    break
                else:
                    pause = min(pause * 2, _MAX_RETRY_S)
            await trio.sleep(pause if not self.joined.is_set() else 3 * self._announce_s)

    async def _connect_naming_a_key_mismatch(self, address: str, hinted: set[str]) -> str:
        """Dial a bootstrap node; when its TCP port answers but the libp2p handshake stalls or fails, say
        at once (within ``_KEY_HINT_AFTER_S`` + ``_TCP_PROBE_S``) that a network-key mismatch is the likely
        cause, instead of leaving the operator with timeouts (adds ``address`` to ``hinted``)."""

        async def hint(after_s: float) -> None:
            await trio.sleep(after_s)
            if address not in hinted and await _tcp_answers(address):
                hinted.add(address)
                log.warning(
                    "the bootstrap %s refused our connection: a different --network-key (or none) on one "
                    "side is the likely cause (its TCP port answers, but the libp2p handshake did not "
                    "complete); start both with the same --network-key, or check the /p2p/ peer id",
                    address,
                )

        failure: OpenGridError | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(hint, _KEY_HINT_AFTER_S)
            try:
                peer = await self._host.connect(address)
            except OpenGridError as exc:
                failure = exc
            nursery.cancel_scope.cancel()
        if failure is None:
            return peer
        if address not in hinted and not isinstance(failure, ConfigError):
            await hint(0.0)  # the handshake failed fast (a peer that closes on garbage)
        raise failure

    async def _dht_loop(self) -> None:
        await self.joined.wait()
        while True:
            pause = _DHT_EMPTY_RETRY_BEATS
            try:
                with trio.fail_after(_DHT_ROUND_TIMEOUT_S):
                    if await self._dht_round():
                        self.dht_rounds += 1
                        pause = _DHT_LOOKUP_BEATS
            except (OpenGridError, trio.TooSlowError) as exc:
                log.info("DHT round failed (%s); gossip still works, retrying", str(exc) or "timed out")
            await trio.sleep(pause * self._announce_s)

    async def _dht_round(self) -> bool:
        """Hold our own provider records, fill the routing table from our connections, advertise what we
        provide, find coordinators. False when no DHT server is known yet (nothing was asked)."""
        discovery = self.discovery
        # Our own records first, whatever the routing table holds: a grid's only DHT server (one
        # coordinator among DHT-client workers) never fills its table, yet must answer a client's lookup.
        for key in self.provided:
            discovery.hold(key)
        for peer in self._host.connected_peers():
            await discovery.add_peer(peer)
        if discovery.routing_table_size() == 0:
            return False  # alone, or only DHT clients around: nobody to tell or ask yet
        if self.dht_rounds == 0:
            await discovery.refresh()  # the library's own first refresh comes after 600 s (pitfall 8)
        if self.dht_rounds % _DHT_REPROVIDE_ROUNDS == 0:
            for key in self.provided:
                await discovery.provide(key)
        now = trio.current_time()
        for provider in await discovery.find_providers(role_key(discovery.network, "coordinator")):
            if provider.addrs:
                self._from_dht[provider.peer_id] = (provider, now)
        for peer, (_, found) in list(self._from_dht.items()):
            if now - found > _PROVIDER_STALE_S:
                del self._from_dht[peer]
        return True

    async def _reachability_loop(self) -> None:
        await self.joined.wait()
        while True:
            await self.check_reachability()
            await trio.sleep(_REACHABILITY_BEATS * self._announce_s)

    async def check_reachability(self) -> Reachability:
        """Ask up to ``_CHECKERS`` connected peers to dial our listen addresses back; announce the verdict."""
        listen = [a for a in self._host.addrs() if ip_and_port(a)][:MAX_DIAL_BACK_ADDRS]
        reports: dict[str, list[DialBackResult]] = {}
        if listen:
            checkers = self._host.connected_peers()
            random.shuffle(checkers)

            async def ask(peer: str) -> None:
                try:
                    with trio.fail_after(_CHECK_TIMEOUT_S):
                        reply = await self._host.request(peer, DialBackRequest(addrs=listen))
                except (OpenGridError, trio.TooSlowError) as exc:
                    log.debug("dial-back check by %s failed: %s", peer, exc or "timed out")
                    return
                if isinstance(reply, DialBackReport) and len(reply.results) == len(listen):
                    reports[peer] = list(reply.results)

            async with trio.open_nursery() as nursery:
                for peer in checkers[:_CHECKERS]:
                    nursery.start_soon(ask, peer)
        self.dial_backs = reports
        found = verdict(listen, [reports[p] for p in sorted(reports)])
        if found != self.reachability:
            self._explain(found, reports)
        self.reachability = found
        self.gossip.update(reachability=found)
        if found != "unknown":
            self.reachability_checked.set()
        for callback in self.on_verdict:
            callback(found)
        return found

    def _explain(self, found: Reachability, reports: dict[str, list[DialBackResult]]) -> None:
        if found == "public":
            reached = sorted({r.addr for rs in reports.values() for r in rs if r.reachable})
            log.info("reachable: %d peer(s) dialled %s afresh", len(reports), ", ".join(reached))
        elif found == "private":
            reasons = sorted({f"{r.addr}: {r.reason}" for rs in reports.values() for r in rs})
            log.warning(
                "peers cannot dial this node (%s): forward the TCP port to this machine or open it in the "
                "firewall, or start with --relay-via RELAY_ADDRESS to be reached through a relay",
                "; ".join(reasons),
            )
        elif found == "relayed":
            log.info("listening on no direct address: reachable through relays only")

    def coordinators_in_dht(self) -> list[str]:
        """Peer ids of the coordinators the last DHT lookups found (within ``_PROVIDER_STALE_S``)."""
        return sorted(self._from_dht)

    def addresses_of(self, role: str) -> list[str]:
        """A dialable address of every online peer announcing ``role`` (peer id order), then of those a
        bootstrap node listed recently, then (coordinators) of those found in the DHT, that we do not hear
        online ourselves."""
        now = trio.current_time()
        heard = {a.peer_id: a.addrs[0] for a in self.gossip.directory.online(now, role=role) if a.addrs}
        for hint in self._hints:
            if role in hint.roles and hint.addrs:
                heard.setdefault(hint.peer_id, hint.addrs[0])
        if role == "coordinator":
            for peer, (provider, _) in sorted(self._from_dht.items()):
                if peer != self._host.peer_id:
                    heard.setdefault(peer, provider.address())
        return list(heard.values())

    def peers(self, rtt_s: Callable[[str], float | None]) -> list[PeerSummary]:
        """Every peer heard on gossip, online or not (``opengrid peers``, SDK coordinator lookup)."""
        now = trio.current_time()
        directory = self.gossip.directory
        summaries = []
        for entry in sorted(directory.entries(), key=lambda e: e.peer_id):
            a = entry.announcement
            rtt = rtt_s(a.peer_id)
            summaries.append(
                PeerSummary(
                    peer_id=a.peer_id,
                    roles=list(a.roles),
                    models=[m.name for m in a.models],
                    addrs=list(a.addrs),
                    last_seen_s=round(max(0.0, now - entry.last_seen), 3),
                    online=directory.is_online(a.peer_id, now),
                    tier=a.tier,
                    rtt_ms=None if rtt is None else round(rtt * 1000, 3),
                    software=a.software,
                    reachability=a.reachability,
                    free_memory=a.free_memory or msgspec.UNSET,  # split members only (split.md §7)
                )
            )
        return summaries


async def _tcp_answers(address: str) -> bool:
    """Whether a plain TCP connection to a direct address's IP and port is accepted within
    ``_TCP_PROBE_S`` (False for relayed or DNS addresses: nothing to tell from them)."""
    target = ip_and_port(address)
    if target is None:
        return False
    with trio.move_on_after(_TCP_PROBE_S):
        try:
            stream = await trio.open_tcp_stream(*target)
        except OSError:
            return False
        await stream.aclose()
        return True
    return False

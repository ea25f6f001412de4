"""Circuit relay v2 (spec/discovery.md §8): reaching a node that nobody can dial, through one that
everybody can.

Three parts, all built on py-libp2p's ``libp2p.relay.circuit_v2``:

- ``CircuitSupport`` — on **every** host (``open_host`` makes it): answers the relay's STOP requests, so a
  relayed connection can arrive, and dials ``/p2p-circuit`` addresses. Optionally it also serves HOP
  (``relay=True``): it grants reservations and forwards circuits, within ``RELAY_LIMITS``.
- ``ReservationKeeper`` — on a node that cannot be dialled: keeps a reservation on one relay alive
  (renews it at half its lifetime, makes a new one when the connection to the relay drops, e.g. a relay
  restart) and adds its circuit address to ``Host.addrs()`` while it holds one.
- ``Host.open_stream`` falls back to ``CircuitSupport.dial`` for a peer whose only known addresses are
  circuit addresses (host.py).

Why we dial circuits ourselves: py-libp2p 0.8.1's swarm drops every ``/p2p-circuit`` address before it
dials (``Swarm.dial_peer``, "this node has no relay transport"), even with a circuit transport
registered, and the library's ``CircuitV2Transport.dial`` upgrades the connection without the private
network key. So we ask the transport for the raw relayed stream (``dial_peer_info``), wrap it in the pnet
cipher as the swarm does for TCP, and hand it to the swarm's own upgrader (Noise + yamux), which
registers the connection like any other. Streams to that peer then run over it.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import multiaddr
import trio
from libp2p.abc import IHost, INetStream
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr
from libp2p.relay.circuit_v2.config import RelayConfig, RelayRole
from libp2p.relay.circuit_v2.pb.circuit_pb2 import HopMessage
from libp2p.relay.circuit_v2.protocol import PROTOCOL_ID as HOP_PROTOCOL
from libp2p.relay.circuit_v2.protocol import CircuitV2Protocol
from libp2p.relay.circuit_v2.resources import RelayLimits
from libp2p.relay.circuit_v2.transport import CircuitV2Transport
from libp2p.security.pnet.protector import new_protected_conn
from libp2p.security.pnet.psk_conn import PskConn

from opengrid.core.autorelay import SWITCH_AFTER_S
from opengrid.errors import ConfigError, OpenGridError, TransportError
from opengrid.net.services import background_service

if TYPE_CHECKING:
    from trio_typing import TaskStatus  # trio-typing's stubs (a py-libp2p dependency) hide trio.TaskStatus

    from opengrid.net.host import Host

log = logging.getLogger("opengrid.net.relay")

CIRCUIT: Final = "/p2p-circuit"

RELAY_LIMITS: Final = RelayLimits(
    # A circuit carries one job's prompt and answer (a few KB to a few MB) plus heartbeats and receipts;
    # ten minutes and 64 MiB bound a hostile pair's cost without cutting a real job short (a job's own
    # deadline is shorter). A circuit that hits either is reset and simply re-dialled.
    duration=600,
    data=64 * 1024 * 1024,
    max_circuit_conns=8,
    # Reservations are cheap (a table entry) but each relayed node may hold circuits open: 64 nodes per
    # relay. The library refuses the 65th with RESOURCE_LIMIT_EXCEEDED, and that node tries again later.
    max_reservations=64,
    # The library's default is an hour; 10 minutes lets a relay forget a vanished node sooner. Holders
    # renew at half of it (ReservationKeeper).
    reservation_ttl=600,
)
"""What a relay grants (spec/discovery.md §8.3). Limits are per relay; the data cap is per circuit."""

_DIAL_TIMEOUT_S: Final = 10.0


@dataclass(frozen=True)
class RelayTiming:
    """How often a node's relay machinery looks and retries (``Node(relay_timing=...)``; the defaults are
    what a node runs with, tests shorten them to watch a relay go and come back in seconds)."""

    retry_s: float = 1.0
    """A keeper's first pause after a failed reservation; each next one doubles, up to ``retry_max_s``."""
    retry_max_s: float = 10.0
    """A node without its reservation is unreachable: one dial per 10 s is cheap."""
    check_s: float = 1.0
    """How often a keeper looks at its connection to the relay: a dropped one is noticed within this."""
    step_s: float = 5.0
    """How often the auto-relay driver looks again without a new verdict (a chosen relay lost, a refused
    one retried; ``opengrid.node.autorelay``)."""
    switch_after_s: float = SWITCH_AFTER_S
    """How long relays a node was given, or one it took, may hold no reservation before it takes another
    (``opengrid.core.autorelay.SWITCH_AFTER_S``)."""


RELAY_TIMING: Final = RelayTiming()
"""The timing a node runs with."""


def is_circuit(address: str) -> bool:
    """True for a relayed address (``.../p2p/RELAY/p2p-circuit/p2p/PEER``)."""
    return CIRCUIT in address


def relays_of(addresses: Iterable[str]) -> list[tuple[str, str]]:
    """``(relay peer id, relay address)`` for each relayed address among a node's own, in order, once per
    relay: through whom peers that cannot dial the node reach it."""
    out: dict[str, str] = {}
    for address in addresses:
        if not is_circuit(address):
            continue
        relay_address = address.split(CIRCUIT, 1)[0]
        out.setdefault(relay_address.rsplit("/p2p/", 1)[-1], relay_address)
    return list(out.items())


def circuit_address(relay_address: str, peer_id: str) -> str:
    """The address at which ``peer_id`` is reachable through the relay at ``relay_address``."""
    return f"{relay_address}{CIRCUIT}/p2p/{peer_id}"


class _CountingProtocol(CircuitV2Protocol):
    """The library's relay protocol, counting what it grants (``CircuitSupport.statistics``)."""

    reservations_granted = 0
    circuits_opened = 0

    async def _handle_reserve(self, stream: INetStream, msg: HopMessage) -> None:
        self.reservations_granted += 1
        await super()._handle_reserve(stream, msg)

    async def _handle_connect(self, stream: INetStream, msg: HopMessage) -> None:
        self.circuits_opened += 1
        await super()._handle_connect(stream, msg)


@dataclass(frozen=True)
class RelayStatistics:
    """What a relay did since it started (all zero on a node that does not relay)."""

    relaying: bool
    reservations_granted: int
    """RESERVE requests answered (renewals included)."""
    circuits_opened: int
    """CONNECT requests handled: each is one relayed connection between two other peers."""
    circuits_active: int


class CircuitSupport:
    """Circuit relay v2 on one libp2p host: accept and dial relayed connections, and relay if asked."""

    def __init__(self, host: IHost, *, relay: bool, psk: bytes | None) -> None:
        self._host = host
        self.relaying = relay
        self._psk = psk.hex() if psk is not None else None
        if psk is not None:
            _forward_psk_conn_addresses()
        self._protocol = _CountingProtocol(host, limits=RELAY_LIMITS, allow_hop=relay)
        # STOP (accept relayed connections) only: the library's CLIENT role would make a *dialler* reserve
        # a slot on the relay before every CONNECT, which only the node being reached needs.
        roles = RelayRole.STOP | (RelayRole.HOP if relay else RelayRole(0))
        self._transport = CircuitV2Transport(
            host, self._protocol, RelayConfig(roles=roles, limits=RELAY_LIMITS)
        )

    @asynccontextmanager
    async def running(self) -> AsyncIterator[CircuitSupport]:
        """Serve STOP (and HOP on a relay) while the block runs."""
        async with background_service(self._protocol):
            await self._protocol.event_started.wait()
            yield self

    def statistics(self) -> RelayStatistics:
        protocol = self._protocol
        return RelayStatistics(
            relaying=self.relaying,
            reservations_granted=protocol.reservations_granted,
            circuits_opened=protocol.circuits_opened,
            circuits_active=sum(1 for _, dst in protocol._active_relays.values() if dst is not None),
        )

    async def dial(self, address: str) -> None:
        """Open a relayed connection to the peer at the circuit ``address`` and register it with the swarm
        (raises TransportError). Streams to that peer then run over it."""
        try:
            target = multiaddr.Multiaddr(address)
            relay_addr, peer = self._transport.parse_circuit_ma(target)
            relay = info_from_p2p_addr(relay_addr)
        except Exception as exc:
            raise ConfigError(
                f"{address!r} is not a circuit address (.../p2p/RELAY/p2p-circuit/p2p/PEER)"
            ) from exc
        try:
            raw = await self._transport.dial_peer_info(PeerInfo(peer, [target]), relay_info=relay)
            if self._psk is not None:  # the swarm does this for TCP dials, not for relayed ones
                raw = new_protected_conn(raw, self._psk)
            await self._host.get_network().upgrade_outbound_raw_conn(raw, peer)
        except Exception as exc:
            raise TransportError(
                f"could not reach {peer.to_base58()} through relay {relay.peer_id.to_base58()}: "
                f"{exc or type(exc).__name__}"
            ) from exc

    async def reserve(self, relay_peer: str) -> float:
        """Ask a connected relay for a reservation; return its expiry (Unix time, s). TransportError if the
        relay refuses (it does not relay, or is full) or does not answer."""
        relay = ID.from_base58(relay_peer)
        try:
            stream = await self._host.new_stream(relay, [HOP_PROTOCOL])
        except Exception as exc:
            raise TransportError(
                f"{relay_peer} does not relay (no {HOP_PROTOCOL}): {exc or type(exc).__name__}; "
                "name a node started with --relay (coordinators relay by default)"
            ) from exc
        try:
            # The library's client call; it keeps the expiry and voucher in the transport's tables.
            granted = await self._transport._make_reservation(stream, relay)
        finally:
            with contextlib.suppress(Exception):
                await stream.close()
        if not granted:
            raise TransportError(f"relay {relay_peer} refused a reservation (full, or not relaying)")
        return float(self._transport._reservations.get(relay, 0))


class ReservationKeeper:
    """Hold a reservation on one relay for as long as it runs, and announce the circuit address.

    Start with ``await nursery.start(keeper.run)``: it reports readiness after the first attempt, won or
    not, so the node's first announcement and registration already carry the address when the relay is
    up. ``held`` is set while a reservation is held.
    """

    def __init__(self, host: Host, relay_address: str, timing: RelayTiming = RELAY_TIMING) -> None:
        self._timing = timing
        try:
            info = info_from_p2p_addr(multiaddr.Multiaddr(relay_address))
        except Exception as exc:
            raise ConfigError(
                f"--relay-via {relay_address!r} is not a relay's full multiaddr; expected "
                "/ip4/HOST/tcp/PORT/p2p/PEER_ID"
            ) from exc
        if is_circuit(relay_address):
            raise ConfigError(
                f"--relay-via {relay_address!r} is itself relayed; name a directly reachable relay"
            )
        self._host = host
        self.relay_address = relay_address
        self.relay_peer = info.peer_id.to_base58()
        self.circuit = circuit_address(relay_address, host.peer_id)
        self.held = False
        self.problem = "no reservation yet"
        """Why no reservation is held (empty while one is)."""

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        pause = self._timing.retry_s
        started = False
        try:
            while True:
                try:
                    with trio.fail_after(_DIAL_TIMEOUT_S):
                        await self._host.connect(self.relay_address)
                        expires = await self._host.circuits.reserve(self.relay_peer)
                except (OpenGridError, trio.TooSlowError) as exc:
                    self._lost(str(exc) or "no answer in time")
                    if isinstance(exc, trio.TooSlowError):
                        # No answer at all: the next try must dial afresh, or a half-dead connection would
                        # be reused by ``connect`` and every reservation on it fail until the node restarts.
                        # A refusal keeps the connection: the relay is often our coordinator too.
                        await self._host.disconnect(self.relay_peer)
                    if not started:
                        started = True
                        task_status.started()
                    await trio.sleep(pause)
                    pause = min(pause * 2, self._timing.retry_max_s)
                    continue
                if not self.held:
                    log.info("reachable through relay %s: %s", self.relay_peer, self.circuit)
                self.held, self.problem, pause = True, "", self._timing.retry_s
                self._host.add_relay_address(self.circuit)
                if not started:
                    started = True
                    task_status.started()
                # Renew at half the lifetime (the library's own client waits until 30 s before expiry,
                # too late on a loaded machine), sooner if the connection to the relay drops: the relay
                # restarted (its reservations are gone) or is gone, and we are unreachable until renewed.
                renew_at = trio.current_time() + max(1.0, (expires - time.time()) / 2)
                while trio.current_time() < renew_at and self._host.is_connected(self.relay_peer):
                    await trio.sleep(min(self._timing.check_s, max(0.0, renew_at - trio.current_time())))
                if not self._host.is_connected(self.relay_peer):
                    self._lost("the connection to the relay closed")
        finally:
            self._host.remove_relay_address(self.circuit)

    def _lost(self, why: str) -> None:
        self._host.remove_relay_address(self.circuit)
        if self.held or self.problem == "no reservation yet":
            log.warning(
                "no reservation on relay %s (%s); unreachable through it, retrying", self.relay_peer, why
            )
        else:
            log.debug("still no reservation on relay %s (%s)", self.relay_peer, why)
        self.held = False
        self.problem = f"relay {self.relay_peer}: {why}"


def _forward_psk_conn_addresses() -> None:
    """Make py-libp2p's private-network connection wrapper report the addresses of the connection it
    wraps (idempotent; a fix of the library's class, applied when a private-network host starts).

    ``PskConn`` (0.8.1) skips ``RawConnection.__init__``, so its ``get_transport_addresses`` raises and
    the swarm falls back to the *peerstore's* addresses of the peer: on a private network a relayed
    connection then looked direct as soon as a direct address of the peer was known, and a direct one
    relayed while only a circuit address was (seen in the hole-punching probe: the upgrade "succeeded"
    with no direct connection, and ``Host.is_relayed`` answered from the peerstore)."""
    if getattr(PskConn, "_opengrid_forwards_addresses", False):
        return

    def get_transport_addresses(self: Any) -> list[multiaddr.Multiaddr]:
        return list(self._conn.get_transport_addresses())

    def get_connection_type(self: Any) -> Any:
        return self._conn.get_connection_type()

    # on purpose: the library's methods replaced on its class, and our marker set on it
    PskConn.get_transport_addresses = get_transport_addresses  # type: ignore[method-assign]
    PskConn.get_connection_type = get_connection_type  # type: ignore[method-assign]
    PskConn._opengrid_forwards_addresses = True  # type: ignore[attr-defined]

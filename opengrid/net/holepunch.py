"""Hole punching (DCUtR, ``/libp2p/dcutr``): replace a relayed connection by a direct one
(spec/discovery.md §8.5).

When a node dials a peer through a relay although the peer announced a direct address too (the direct
dial failed: NAT, firewall), it asks the peer, over the relayed connection, to punch a hole: both sides
exchange the addresses they listen on (CONNECT), the dialler sends SYNC, and both dial each other at once.
Whichever dial lands becomes a second, direct connection; new streams prefer it (py-libp2p's swarm picks
direct over relayed), and the relayed connection is closed as soon as it carries no stream (at the latest
after ``RELAYED_GRACE_S``). When no dial lands, the relayed connection simply stays.

Built on py-libp2p 0.8.1's ``DCUtRProtocol``, with one change: the library *also* starts a hole punch
every 2 s towards every peer it holds a relayed connection to, on both sides; here only the node that
dialled through the relay initiates (as the DCUtR spec says), once per relayed dial.

What this is measured to do, and what not: on 127.0.0.1 the exchange and the upgrade work with our hosts
(Noise only, yamux, the circuits ``relay.CircuitSupport.dial`` opens itself, with and without a private
network key); there is no NAT on loopback, so the direct connection that lands is in effect an ordinary
dial. Whether TCP simultaneous open gets through real NATs is not something a test on one machine can
show (spec/discovery.md §9.3 "known gaps").
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final

import multiaddr
import trio
from libp2p.abc import IHost, INetStream
from libp2p.peer.id import ID
from libp2p.relay.circuit_v2.dcutr import DCUtRProtocol

from opengrid.net.relay import is_circuit
from opengrid.net.services import background_service

log = logging.getLogger("opengrid.net.holepunch")

RELAYED_GRACE_S: Final = 60.0
"""After an upgrade, a relayed connection still carrying streams (a job in flight) is closed after this
long at the latest (the library's own grace period); an idle one at once."""
_IDLE_CHECK_S: Final = 0.1
"""How often a relayed connection kept after an upgrade is looked at to close it once it carries no stream
(a look is a walk over one peer's connections; was 0.5 s, which kept an idle circuit at the relay as long)."""
_PEER_DIAL_FIRST_S: Final = 1.0
MAX_PUNCH_ADDRS: Final = 8
"""Addresses of the peer a hole punch dials at most (direct TCP only): the peer chooses them, so without a
bound one CONNECT (~400 addresses in 4 KiB) would make us dial whatever it likes (spec/discovery.md §8.5)."""
MAX_ANSWERED_SESSIONS: Final = 4
"""Hole punches we answer at once, all peers together (one per peer)."""


def _direct_tcp(addr: Any) -> bool:
    parts = str(addr).split("/")
    return len(parts) >= 5 and parts[1] in ("ip4", "ip6") and parts[3] == "tcp" and "p2p-circuit" not in parts


def is_relayed_connection(conn: Any) -> bool:
    """Whether a libp2p connection (swarm or muxed) runs through a relay."""
    for candidate in (conn, getattr(conn, "muxed_conn", None)):
        getter = getattr(candidate, "get_transport_addresses", None)
        if callable(getter):
            try:
                if any(is_circuit(str(a)) for a in getter() or ()):
                    return True
            except Exception:  # a closing connection may not know its addresses any more
                continue
    return False


class _InitiatorOnlyDCUtR(DCUtRProtocol):
    def __init__(self, host: IHost) -> None:
        super().__init__(host)
        self.answering: Callable[[], bool] = lambda: False
        """Whether we answer peers' hole punches: only while we hold a relay reservation (we are the node
        behind NAT that the punch is for); otherwise a peer could use us to dial addresses it chose."""
        self._answered: set[ID] = set()
        self._answer_limit = trio.CapacityLimiter(MAX_ANSWERED_SESSIONS)

    async def _handle_dcutr_stream(self, stream: INetStream) -> None:
        peer = stream.muxed_conn.peer_id
        if not self.answering() or peer in self._answered:
            await stream.reset()
            return
        try:
            self._answer_limit.acquire_nowait()
        except trio.WouldBlock:
            await stream.reset()
            return
        self._answered.add(peer)
        try:
            await super()._handle_dcutr_stream(stream)
        finally:
            self._answered.discard(peer)
            self._answer_limit.release()

    def _decode_observed_addrs(self, addr_bytes: list[bytes]) -> list[multiaddr.Multiaddr]:
        # Direct TCP addresses only, and few of them: a hole punch dials what the peer sent.
        kept = [
            a for a in super()._decode_observed_addrs(addr_bytes[: 4 * MAX_PUNCH_ADDRS]) if _direct_tcp(a)
        ]
        return kept[:MAX_PUNCH_ADDRS]

    async def _auto_drive_loop(self) -> None:
        # The library's loop starts a hole punch towards every relayed peer every 2 s, on both sides; we
        # initiate once per relayed dial, from the dialling side only (HolePuncher.upgrade_soon).
        await trio.sleep_forever()

    async def _perform_hole_punch(
        self, peer_id: ID, addrs: list[multiaddr.Multiaddr], as_responder: bool = False
    ) -> bool:
        if as_responder:
            # We initiated, so the library dials from our listen port *as a Noise responder* (for a TCP
            # simultaneous open through NATs, where both dials merge into one connection). When our SYN
            # reaches the peer's listener instead — always possible without NAT, and the usual case
            # when one side is public — both ends run Noise as responders and the handshake hangs, and
            # that connection then holds the very port pair the peer dials from (EADDRNOTAVAIL on every
            # retry): 1 failed upgrade in 21 runs on 127.0.0.1. So give the peer's own dial (it dials at
            # once on SYNC, as the Noise initiator) ``_PEER_DIAL_FIRST_S`` to land before we dial.
            with trio.move_on_after(_PEER_DIAL_FIRST_S):
                while not await self._verify_direct_connection(peer_id):
                    await trio.sleep(0.02)
            if await self._verify_direct_connection(peer_id):
                return True
        return await super()._perform_hole_punch(peer_id, addrs, as_responder)


@dataclass(frozen=True)
class HolePunchStatistics:
    """What hole punching did since the host started."""

    attempts: int
    """Upgrades this node initiated (one per relayed dial to a peer that also announced a direct address)."""
    upgraded: int
    """Of those, how many ended with a direct connection."""


class HolePuncher:
    """DCUtR on one libp2p host: start a hole punch after our relayed dials; answer peers' while we hold a
    relay reservation (one session per peer, ``MAX_ANSWERED_SESSIONS`` in all, ``MAX_PUNCH_ADDRS``
    direct TCP addresses dialled at most)."""

    def __init__(self, host: IHost, *, answering: Callable[[], bool] = lambda: False) -> None:
        """``answering``: whether to answer peers' hole punches now (``Host``: while we hold a relayed
        address, i.e. a reservation)."""
        self._host = host
        self._protocol = _InitiatorOnlyDCUtR(host)
        self._protocol.answering = answering
        self._nursery: trio.Nursery | None = None
        self._pending: set[str] = set()
        self._attempts = 0
        self._upgraded = 0

    @asynccontextmanager
    async def running(self) -> AsyncIterator[HolePuncher]:
        """Serve ``/libp2p/dcutr`` (answer peers' hole punches) while the block runs."""
        async with background_service(self._protocol), trio.open_nursery() as nursery:
            await self._protocol.event_started.wait()
            self._nursery = nursery
            try:
                yield self
            finally:
                self._nursery = None
                nursery.cancel_scope.cancel()

    def statistics(self) -> HolePunchStatistics:
        return HolePunchStatistics(attempts=self._attempts, upgraded=self._upgraded)

    def upgrade_soon(self, peer_id: str) -> None:
        """Try, in the background, to replace our relayed connection to ``peer_id`` by a direct one."""
        if self._nursery is None or peer_id in self._pending:
            return
        self._pending.add(peer_id)
        self._nursery.start_soon(self._upgrade, peer_id)

    async def _upgrade(self, peer_id: str) -> None:
        self._attempts += 1
        try:
            direct = await self._protocol.initiate_hole_punch(ID.from_base58(peer_id))
        except Exception as exc:  # the library logs its own details; a failure only leaves us relayed
            log.debug("hole punch to %s failed: %s", peer_id, exc)
            direct = False
        finally:
            self._pending.discard(peer_id)
        if not direct:
            log.info("hole punching to %s did not work; its connection stays relayed", peer_id)
            return
        self._upgraded += 1
        log.info("direct connection to %s (hole punched); closing the relayed one once idle", peer_id)
        await self._close_relayed(peer_id)

    async def _close_relayed(self, peer_id: str) -> None:
        """Close our relayed connections to ``peer_id`` as soon as each carries no stream, while a direct
        one stays open (never strand the peer), and after ``RELAYED_GRACE_S`` regardless."""
        network = self._host.get_network()
        give_up_waiting = trio.current_time() + RELAYED_GRACE_S
        while True:
            conns = list(network.get_connections(ID.from_base58(peer_id)))
            relayed = [c for c in conns if is_relayed_connection(c)]
            if not relayed or len(relayed) == len(conns):
                return  # nothing left to close, or the direct connection is gone again
            late = trio.current_time() >= give_up_waiting
            for conn in relayed:
                if late or not conn.get_streams():
                    try:
                        await conn.close()
                    except Exception as exc:
                        log.debug("closing the relayed connection to %s: %s", peer_id, exc)
            await trio.sleep(_IDLE_CHECK_S)

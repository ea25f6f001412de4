"""Hole punching (DCUtR, spec/discovery.md §8.5) between real libp2p hosts on 127.0.0.1.

B is "behind NAT": it announces a direct address nobody can reach (a closed port) and a relayed one. A
dials B directly first, fails, dials through the relay, and then asks B over the relayed connection to
punch a hole. There is no NAT on loopback, so this shows that the DCUtR exchange and the upgrade work
with our hosts (Noise only, yamux, circuits we dial ourselves, a private network), not that TCP
simultaneous open gets through a real NAT.
"""

from __future__ import annotations

import secrets
import socket

import pytest
import trio

from opengrid.net.host import FrameStream, open_host
from opengrid.net.relay import ReservationKeeper
from opengrid.wire.messages import DialBackReport, DialBackRequest
from tests.waiting import until


def closed_port_address(peer: str) -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"/ip4/127.0.0.1/tcp/{s.getsockname()[1]}/p2p/{peer}"


@pytest.mark.parametrize("psk", [None, bytes(range(32))], ids=["public", "private-network"])
async def test_a_relayed_connection_is_replaced_by_a_direct_one_and_requests_then_go_direct(
    psk: bytes | None,
) -> None:
    async with (
        open_host(secrets.token_bytes(32), relay=True, psk=psk) as relay,
        # A tries a dial once (the direct address is a closed port: the library's 3 retries and their
        # backoff, 0.7 s, are not what is tested here)
        open_host(secrets.token_bytes(32), psk=psk, dial_retries=0) as a,
        open_host(secrets.token_bytes(32), psk=psk) as b,
        trio.open_nursery() as nursery,
    ):
        over_relay: list[bool] = []

        async def answer(stream: FrameStream) -> None:
            await stream.receive()
            over_relay.append(stream.relayed)
            await stream.send(DialBackReport(results=[]))

        b.set_handler(answer)
        keeper = ReservationKeeper(b, relay.addrs()[0])
        await nursery.start(keeper.run)
        assert keeper.held
        a.remember(b.peer_id, [closed_port_address(b.peer_id), keeper.circuit])  # what B would announce

        # 1. the direct address fails, the relay carries the first request
        assert isinstance(await a.request(b.peer_id, DialBackRequest(addrs=[])), DialBackReport)
        assert over_relay == [True]
        assert relay.circuits.statistics().circuits_opened == 1

        # 2. meanwhile A asked B to punch a hole: a direct connection replaces the relayed one
        def connections() -> int:
            return len(a.libp2p.get_network().get_connections(b.libp2p.get_id()))

        await until(lambda: connections() == 1 and not a.is_relayed(b.peer_id), timeout=30)
        assert a.hole_punch is not None
        assert (a.hole_punch.statistics().attempts, a.hole_punch.statistics().upgraded) == (1, 1)
        await until(lambda: relay.circuits.statistics().circuits_active == 0, timeout=10)

        # 3. and the next request runs over it, not through the relay
        assert isinstance(await a.request(b.peer_id, DialBackRequest(addrs=[])), DialBackReport)
        assert over_relay == [True, False]
        assert relay.circuits.statistics().circuits_opened == 1
        nursery.cancel_scope.cancel()


async def test_no_hole_punch_towards_a_peer_that_announced_only_relayed_addresses() -> None:
    """A node with no listen address (``--no-listen``) has nothing to punch a hole to: stay relayed."""
    async with (
        open_host(secrets.token_bytes(32), relay=True) as relay,
        open_host(secrets.token_bytes(32)) as a,
        open_host(secrets.token_bytes(32), ()) as b,
        trio.open_nursery() as nursery,
    ):
        b.set_handler(_answer)
        keeper = ReservationKeeper(b, relay.addrs()[0])
        await nursery.start(keeper.run)
        a.remember(b.peer_id, [keeper.circuit])
        assert isinstance(await a.request(b.peer_id, DialBackRequest(addrs=[])), DialBackReport)
        assert a.is_relayed(b.peer_id)
        assert a.hole_punch is not None and a.hole_punch.statistics().attempts == 0
        nursery.cancel_scope.cancel()


async def _answer(stream: FrameStream) -> None:
    await stream.receive()
    await stream.send(DialBackReport(results=[]))

"""Dial-backs on fresh connections: a libp2p listener is told apart from a closed port, a silent port and
another program; checkers dial only the requester's own IP; the verdict follows most checkers."""

from __future__ import annotations

import functools
import secrets
import socket

import pytest
import trio
from trio.testing import MockClock

from opengrid.net.host import derive_psk, open_host
from opengrid.net.reachability import (
    DIAL_BACK_TIMEOUT_S,
    check_addresses,
    dial_back,
    ip_and_port,
    same_ip,
    verdict,
)
from opengrid.wire.messages import DialBackResult


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("psk", [None, derive_psk("testnet", "secret")])
async def test_a_libp2p_listener_is_reachable_on_a_fresh_connection(psk: bytes | None) -> None:
    async with open_host(secrets.token_bytes(32), ["/ip4/127.0.0.1/tcp/0"], psk=psk) as host:
        result = await dial_back(host.addrs()[0], private_network=psk is not None)
        assert result.reachable and result.dialled, result


async def test_a_closed_port_is_not_reachable() -> None:
    address = f"/ip4/127.0.0.1/tcp/{closed_port()}"
    result = await dial_back(address, private_network=False)
    assert not result.reachable and result.dialled
    assert result.reason.startswith("connection failed")


async def test_a_silent_port_and_another_program_are_not_libp2p(memnet_clock: MockClock) -> None:
    # Plain trio sockets on loopback in virtual time: the silent port's DIAL_BACK_TIMEOUT_S (3 s) passes at
    # once (the clock jumps only while nothing is ready; loopback bytes are ready as they are sent).
    async def silent(stream: trio.SocketStream) -> None:
        await trio.sleep(10)

    async def http(stream: trio.SocketStream) -> None:
        await stream.send_all(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        await trio.sleep(10)

    async with trio.open_nursery() as nursery:
        quiet = await nursery.start(functools.partial(trio.serve_tcp, silent, 0, host="127.0.0.1"))
        other = await nursery.start(functools.partial(trio.serve_tcp, http, 0, host="127.0.0.1"))
        q_port = quiet[0].socket.getsockname()[1]
        o_port = other[0].socket.getsockname()[1]
        with trio.fail_after(10):
            started = trio.current_time()
            nothing = await dial_back(f"/ip4/127.0.0.1/tcp/{q_port}", private_network=False)
            assert trio.current_time() - started == pytest.approx(DIAL_BACK_TIMEOUT_S)
            web = await dial_back(f"/ip4/127.0.0.1/tcp/{o_port}", private_network=False)
        assert not nothing.reachable and nothing.reason.startswith("no answer within")
        assert not web.reachable and "not a libp2p listener" in web.reason
        nursery.cancel_scope.cancel()


async def test_checkers_dial_only_the_requesters_own_ip_on_the_ports_asked() -> None:
    async with open_host(secrets.token_bytes(32), ["/ip4/127.0.0.1/tcp/0"]) as host:
        mine = host.addrs()[0]
        port = ip_and_port(mine)[1]  # type: ignore[index]
        asked = [mine, f"/ip4/10.1.2.3/tcp/{port}", f"/ip4/127.0.0.1/tcp/1/p2p/{host.peer_id}/p2p-circuit"]
        results = await check_addresses(asked, "127.0.0.1", private_network=False)
        assert [r.addr for r in results] == asked
        # An address at another IP (a LAN address behind a router) is dialled at the request's IP, same
        # port: what a NAT with a forwarded port exposes. Nothing else is ever dialled.
        assert [(r.reachable, r.dialled) for r in results] == [(True, True), (True, True), (False, False)]
        assert results[1].reason.startswith(f"at /ip4/127.0.0.1/tcp/{port} (the request's IP)")
        closed = f"/ip4/192.168.1.5/tcp/{closed_port()}"
        [behind_nat] = await check_addresses([closed], "127.0.0.1", private_network=False)
        assert behind_nat.dialled and not behind_nat.reachable and "connection failed" in behind_nat.reason
        relayed = await check_addresses([mine], "", private_network=False)
        assert not relayed[0].dialled and "relay" in relayed[0].reason


def test_addresses_and_ips() -> None:
    assert ip_and_port("/ip4/127.0.0.1/tcp/4001/p2p/12D3Koo") == ("127.0.0.1", 4001)
    assert ip_and_port("/ip6/::1/tcp/4001") == ("::1", 4001)
    assert ip_and_port("/dns4/example.org/tcp/4001") is None
    assert ip_and_port("/ip4/1.2.3.4/udp/4001/quic") is None
    assert ip_and_port("/ip4/1.2.3.4/tcp/0") is None
    assert same_ip("::ffff:127.0.0.1", "127.0.0.1") and not same_ip("127.0.0.1", "127.0.0.2")


def test_the_verdict_follows_most_checkers_that_dialled() -> None:
    listen = ["/ip4/127.0.0.1/tcp/4001"]
    ok = [DialBackResult(listen[0], True, "ok")]
    bad = [DialBackResult(listen[0], False, "connection failed")]
    refused = [DialBackResult(listen[0], False, "not dialled: relay", dialled=False)]
    assert verdict(listen, [ok, bad]) == "public"
    assert verdict(listen, [ok, bad, bad]) == "private"
    assert verdict(listen, [refused, bad]) == "private"
    assert verdict(listen, [refused]) == "unknown"
    assert verdict(listen, []) == "unknown"
    assert verdict([], [ok]) == "relayed"
    assert verdict(["/ip4/127.0.0.1/tcp/1/p2p/X/p2p-circuit"], [ok]) == "relayed"

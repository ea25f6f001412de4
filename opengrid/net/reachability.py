"""Is this node reachable? Dial-backs on fresh connections, and the verdict a node draws from them.

A node cannot see its own NAT or firewall: only someone else dialling it can tell. So a node asks a few
peers it is connected to (``DialBackRequest``, spec/discovery.md §9) to open a *new* TCP connection to
each of its listen addresses and report whether a libp2p listener answered there.

Why not py-libp2p's AutoNAT v1 service: its server "dials back" with ``host.connect``, which returns at
once when a connection to the requester already exists — and the request itself arrives on one — so it
reports every requester reachable. A dial-back must use a fresh connection; ours is a bare TCP connect
that waits for the listener's first bytes (every libp2p listener speaks first: the multistream-select
header, or the 24-byte nonce of a private network), which tells "something libp2p listens here" apart
from a closed port, a firewall that drops, or another program on the port.

Anti-amplification (as in AutoNAT): a checker dials only the IP address the request came from — an
address at another IP (a LAN address behind a router, ``0.0.0.0``) is dialled at that IP on the same
port, which is what a NAT with a forwarded port exposes — never over a relayed connection, at most
``MAX_DIAL_BACK_ADDRS`` per request, and at most ``MAX_CONCURRENT_DIALS`` at once for all requesters.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Final, Literal

import trio

from opengrid.wire.messages import DialBackResult

Reachability = Literal["public", "private", "relayed", "unknown"]
"""``public``: peers reached a listen address on a fresh connection. ``private``: they could not (NAT,
firewall, wrong port). ``relayed``: the node listens on nothing and is reached through a relay.
``unknown``: not checked yet, or no peer gave a verdict."""

MAX_DIAL_BACK_ADDRS: Final = 8
MAX_CONCURRENT_DIALS: Final = 16
"""Dial-backs a node runs at once for all requesters (``DialBackLimiter``); the rest wait their turn."""
DIAL_BACK_TIMEOUT_S: Final = 3.0
_MULTISTREAM_HEADER: Final = b"\x13/multistream/1.0.0\n"
_PNET_NONCE_BYTES: Final = 24


def ip_and_port(address: str) -> tuple[str, int] | None:
    """The IP and TCP port of a direct ``/ip4|ip6/<ip>/tcp/<port>[/p2p/...]`` multiaddr; None for any
    other kind (DNS names, relayed ``/p2p-circuit`` addresses, other transports)."""
    parts = address.split("/")
    if "p2p-circuit" in parts or len(parts) < 5 or parts[1] not in ("ip4", "ip6") or parts[3] != "tcp":
        return None
    try:
        ip = str(ipaddress.ip_address(parts[2]))
        port = int(parts[4])
    except ValueError:
        return None
    return (ip, port) if 0 < port < 65536 else None


def same_ip(a: str, b: str) -> bool:
    """True when two textual IP addresses are the same address (IPv4-mapped IPv6 included)."""
    try:
        x, y = ipaddress.ip_address(a), ipaddress.ip_address(b)
    except ValueError:
        return False
    x = x.ipv4_mapped or x if isinstance(x, ipaddress.IPv6Address) else x
    y = y.ipv4_mapped or y if isinstance(y, ipaddress.IPv6Address) else y
    return x == y


async def dial_back(address: str, *, private_network: bool) -> DialBackResult:
    """Open a fresh TCP connection to ``address`` and check that a libp2p listener speaks first.

    ``private_network``: the checker's own network has a pre-shared key, so the listener's first bytes are
    a pnet nonce rather than the multistream header. Bounded by ``DIAL_BACK_TIMEOUT_S``; never raises.
    """
    target = ip_and_port(address)
    if target is None:
        return _refused(address, "not a direct TCP address")
    want = _PNET_NONCE_BYTES if private_network else len(_MULTISTREAM_HEADER)
    received = b""
    with trio.move_on_after(DIAL_BACK_TIMEOUT_S):
        try:
            stream = await trio.open_tcp_stream(*target)
        except OSError as exc:
            return _failed(address, f"connection failed: {exc.strerror or exc}")
        async with stream:
            try:
                while len(received) < want:
                    chunk = await stream.receive_some(want - len(received))
                    if not chunk:
                        break
                    received += chunk
            except trio.BrokenResourceError as exc:
                return _failed(address, f"connection reset: {exc}")
    if len(received) < want:
        if not received:
            return _failed(address, f"no answer within {DIAL_BACK_TIMEOUT_S:g} s")
        return _failed(address, "something answered, not a libp2p listener")
    if not private_network and received != _MULTISTREAM_HEADER:
        return _failed(address, "something answered, not a libp2p listener")
    return DialBackResult(address, reachable=True, reason="a libp2p listener answered")


async def check_addresses(
    addresses: Sequence[str],
    requester_ip: str,
    *,
    private_network: bool,
    limiter: trio.CapacityLimiter | None = None,
) -> list[DialBackResult]:
    """A checker's side: dial back each address at ``requester_ip`` (in parallel, each bounded), refuse
    the rest; one result per address, in order. ``requester_ip`` is "" for a relayed request.
    ``limiter``: the node's bound on dial-backs in flight for all requesters (``MAX_CONCURRENT_DIALS``)."""
    limit = limiter if limiter is not None else trio.CapacityLimiter(MAX_CONCURRENT_DIALS)
    results: list[DialBackResult | None] = [None] * len(addresses)

    async def one(i: int, address: str, at: str) -> None:
        async with limit:
            result = await dial_back(at, private_network=private_network)
        if at != address:  # reported against the address asked, saying where it was dialled
            result = DialBackResult(address, result.reachable, f"at {at} (the request's IP): {result.reason}")
        results[i] = result

    async with trio.open_nursery() as nursery:
        for i, address in enumerate(addresses[:MAX_DIAL_BACK_ADDRS]):
            target = ip_and_port(address)
            if not requester_ip:
                results[i] = _refused(address, "the request came through a relay")
            elif target is None:
                results[i] = _refused(address, "not a direct TCP address")
            elif same_ip(target[0], requester_ip):
                nursery.start_soon(one, i, address, address)
            else:
                family = "ip6" if ":" in requester_ip else "ip4"
                nursery.start_soon(one, i, address, f"/{family}/{requester_ip}/tcp/{target[1]}")
    return [r for r in results if r is not None]


def verdict(listen_addrs: Sequence[str], reports: Sequence[Sequence[DialBackResult]]) -> Reachability:
    """What the answers of several checkers say: ``public`` when most checkers that gave a verdict reached
    at least one of our addresses, ``private`` when most reached none, ``relayed`` without a listen
    address, ``unknown`` without a verdict (spec/discovery.md §9.2)."""
    if not any(ip_and_port(a) for a in listen_addrs):
        return "relayed"
    dialled = [[r for r in report if r.dialled] for report in reports]
    reached = [any(r.reachable for r in report) for report in dialled if report]
    if not reached:
        return "unknown"
    return "public" if 2 * sum(reached) >= len(reached) else "private"


def _failed(address: str, why: str) -> DialBackResult:
    return DialBackResult(address, reachable=False, reason=why)


def _refused(address: str, why: str) -> DialBackResult:
    return DialBackResult(address, reachable=False, reason=f"not dialled: {why}", dialled=False)

"""The node's side of LAN discovery: announce it with mDNS and dial the nodes of its network found there.

A node found on the LAN is dialled once (each of its addresses in turn, ``DIAL_TIMEOUT_S`` each); once
connected, gossip does the rest as for a bootstrap peer (announcements, registrations with coordinators).
The look-up ``opengrid node start`` does before it starts (so that a node with no flags joins a grid it
finds instead of starting its own) is :func:`look_before_start`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Final

import msgspec
import multiaddr
import trio

from opengrid.errors import ConfigError, OpenGridError
from opengrid.net.host import Host, derive_psk
from opengrid.net.lan import LanDiscovery, lan_scope, look_for_grid
from opengrid.node.config import NodeConfig

if TYPE_CHECKING:
    from trio_typing import TaskStatus

log = logging.getLogger("opengrid.node.lan")

DIAL_TIMEOUT_S: Final = 5.0
LOOK_S: Final = 3.0
"""How long ``node start`` without ``--bootstrap`` looks for its grid on the LAN before it starts."""
MAX_BOOTSTRAP: Final = 8
"""Addresses found on the LAN that become a starting node's bootstrap list."""


def _psk(config: NodeConfig) -> bytes | None:
    return derive_psk(config.network, config.network_key) if config.network_key else None


def _where(scope: tuple[str, ...]) -> str:
    return ", ".join(scope) if scope else "every interface"


def _tcp_port(addrs: list[str]) -> int | None:
    """The TCP port of our first direct IPv4 address (what the LAN announcement names)."""
    for text in addrs:
        try:
            address = multiaddr.Multiaddr(text)
            if "p2p-circuit" in text:
                continue
            address.value_for_protocol("ip4")
            return int(address.value_for_protocol("tcp"))
        except Exception:
            continue
    return None


async def join_lan(
    host: Host, config: NodeConfig, *, task_status: TaskStatus[LanDiscovery | None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Announce this node on the LAN and dial every node of its network found there, until cancelled."""
    scope = lan_scope(config.listen)
    port = _tcp_port(host.addrs())
    if scope is None or port is None:
        log.info("not using mDNS: this node listens on no IPv4 address")
        task_status.started(None)
        return
    discovery = LanDiscovery(
        peer_id=host.peer_id, network=config.network, scope=scope, port=port, psk=_psk(config)
    )
    async with trio.open_nursery() as nursery:
        lan: LanDiscovery = await nursery.start(discovery.run)
        task_status.started(lan)
        async for peer in lan.found:
            if host.is_connected(peer.peer_id):
                continue
            for address in peer.addresses:
                try:
                    with trio.fail_after(DIAL_TIMEOUT_S):
                        await host.connect(address)
                except (OpenGridError, trio.TooSlowError) as exc:
                    log.info("could not dial %s found on the LAN: %s", address, str(exc) or "timed out")
                    continue
                log.info("connected to %s, found on the LAN (mDNS)", peer.peer_id)
                break


def look_before_start(config: NodeConfig) -> NodeConfig:
    """Without ``--bootstrap``, a node that may be a worker first looks for its grid on the LAN for
    ``LOOK_S`` seconds: the nodes found become its bootstrap list (``auto`` then resolves to a worker).
    A ``worker``/``edge`` that finds none is refused, saying what to do; an ``auto`` node starts a grid."""
    if not config.lan or config.bootstrap or config.role == "coordinator":
        return config
    scope = lan_scope(() if config.no_listen else config.listen)
    if scope is None:
        return config
    log.info(
        "no --bootstrap: looking for a node of network %r on the LAN (mDNS, %s) for %.0f s",
        config.network,
        _where(scope),
        LOOK_S,
    )
    found = trio.run(
        lambda: look_for_grid(network=config.network, scope=scope, wait_s=LOOK_S, psk=_psk(config))
    )
    if not found:
        if config.role in ("worker", "edge"):
            raise ConfigError(
                f"no node of network {config.network!r} answered on the LAN in {LOOK_S:.0f} s (mDNS on "
                f"{_where(scope)}) and no --bootstrap was given: start a coordinator first (`opengrid "
                "node start` on a machine of the LAN; --listen /ip4/0.0.0.0/tcp/4001 makes it reachable "
                "from other machines), or give --bootstrap with any node's multiaddr"
            )
        log.info("no node of network %r on the LAN: starting a new grid", config.network)
        return config
    addresses = tuple(a for peer in found for a in peer.addresses)[:MAX_BOOTSTRAP]
    log.info(
        "found %d node(s) of the network on the LAN: joining through %s", len(found), ", ".join(addresses)
    )
    return msgspec.structs.replace(config, bootstrap=addresses)

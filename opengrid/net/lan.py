"""Find nodes of this network on the local network with mDNS (DNS-SD over multicast: RFC 6762, 6763).

Every node with ``lan`` on announces one DNS-SD service, ``<peer id>._opengrid._tcp.local.``: its TCP
port, the IPv4 addresses it listens on, and a TXT record naming the protocol version and the network's
*fingerprint* (a hash of the network name and, on a private network, of its key: outsiders learn neither).
It browses for the same service type and hands every node of its own network it hears of to the caller,
who dials it like a bootstrap address. spec/discovery.md §10 is the normative description.

**Where.** Both announcing and browsing use only the interfaces the node listens on: ``/ip4/0.0.0.0``
means every interface (``opengrid node start``'s default), ``/ip4/192.168.1.5`` that one,
``/ip4/127.0.0.1`` only this machine (the test suite's nodes: it never multicasts beyond loopback). A node
that listens on no IPv4 address does not use mDNS.

**Why not py-libp2p's mDNS module** (``libp2p.discovery.mdns``): its ``Zeroconf()`` binds every
interface with no way to choose one, so a node listening on 127.0.0.1 would still announce itself to the
LAN; it starts a trio *system* task outside the caller's nursery (an orphan under structured
concurrency); and it only fills the peerstore, telling nobody. The idea is the same; this module uses
zeroconf (the library's own dependency) directly.

**Bounds.** zeroconf answers on its own threads: a browse event only puts the service name into a
bounded channel (``MAX_PENDING``; more are dropped, the next browse round repeats them), one trio task
resolves names one at a time (``RESOLVE_TIMEOUT_S`` each), at most ``MAX_PEERS`` distinct peers are ever
reported per run, each with at most ``MAX_ADDRESSES`` addresses, and records with an unparsable peer id,
another network's fingerprint or another version are ignored. A LAN attacker can make us dial
addresses it names; every dial is authenticated (Noise: the peer id must match), bounded in time by the
caller, and a node found this way is a hint like a bootstrap node's peer list, nothing more.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import multiaddr
import trio
from libp2p.peer.id import ID

from opengrid.errors import ConfigError

if TYPE_CHECKING:
    from trio_typing import TaskStatus
    from zeroconf import ServiceInfo, Zeroconf

log = logging.getLogger("opengrid.net.lan")

SERVICE_TYPE: Final = "_opengrid._tcp.local."
VERSION: Final = b"1"
MAX_PEERS: Final = 64
"""Distinct peers one run reports at most (a LAN flooding us with fake records gets no further)."""
MAX_ADDRESSES: Final = 4
"""Addresses taken from one record (the first ones, IPv4 only)."""
MAX_PENDING: Final = 64
"""Service names waiting to be resolved; more are dropped until the queue drains."""
RESOLVE_TIMEOUT_S: Final = 1.5
_FINGERPRINT_DOMAIN: Final = b"opengrid/lan/1\x00"


@dataclass(frozen=True)
class LanPeer:
    """A node of our network that answered on the LAN: its peer id and full multiaddrs to dial."""

    peer_id: str
    addresses: tuple[str, ...]


def fingerprint(network: str, psk: bytes | None) -> str:
    """What the TXT record carries instead of the network's name: 16 hex digits of a hash of the name
    and, for a private network, of its pre-shared key (so the record reveals neither)."""
    digest = hashlib.sha256(_FINGERPRINT_DOMAIN + network.encode() + b"\x00" + (psk or b"")).hexdigest()
    return digest[:16]


def lan_scope(listen: Sequence[str]) -> tuple[str, ...] | None:
    """The IPv4 interfaces mDNS uses for these listen addresses: ``()`` for every interface (a
    ``0.0.0.0`` listener), else the listened-on IPs; None when the node listens on no IPv4 address."""
    ips: list[str] = []
    for text in listen:
        try:
            parts = multiaddr.Multiaddr(text)
            ip = parts.value_for_protocol("ip4")
        except Exception:  # no /ip4/ part (ip6, dns, circuit): mDNS here is IPv4 only
            continue
        if ip == "0.0.0.0":
            return ()
        if ip not in ips:
            ips.append(ip)
    return tuple(ips) if ips else None


def _zeroconf(scope: tuple[str, ...]) -> Zeroconf:
    from zeroconf import InterfaceChoice, IPVersion, Zeroconf

    try:
        return Zeroconf(interfaces=list(scope) if scope else InterfaceChoice.All, ip_version=IPVersion.V4Only)
    except OSError as exc:
        raise ConfigError(
            f"cannot use mDNS on {', '.join(scope) or 'every interface'} ({exc}); start the node with "
            "--no-lan, or give --bootstrap"
        ) from exc


def local_ipv4_addresses() -> list[str]:
    """This machine's IPv4 interface addresses, loopback last (so a peer on another machine tries a LAN
    address first), at most ``MAX_ADDRESSES``: what a ``0.0.0.0`` listener can be dialled on."""
    import ifaddr

    found: list[str] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, str) and ip.ip not in found:
                found.append(ip.ip)
    return sorted(found, key=lambda ip: ipaddress.ip_address(ip).is_loopback)[:MAX_ADDRESSES]


def _addresses_of(scope: tuple[str, ...]) -> list[str]:
    """The IPv4 addresses to announce: the scope's, or every interface's."""
    return list(scope) if scope else local_ipv4_addresses()


def _service(peer_id: str, port: int, addresses: Sequence[str], mark: str) -> ServiceInfo:
    from zeroconf import ServiceInfo

    return ServiceInfo(
        SERVICE_TYPE,
        f"{peer_id}.{SERVICE_TYPE}",
        port=port,
        parsed_addresses=list(addresses),
        properties={b"v": VERSION, b"net": mark.encode()},
        server=f"{peer_id[-12:].lower()}.local.",
    )


def _peer_from(info: ServiceInfo | None, mark: str, me: str) -> LanPeer | None:
    """The peer a resolved record names, or None when it is not one of ours (checked, bounded)."""
    if info is None or info.port is None or not 0 < info.port < 65536:
        return None
    properties = info.properties or {}
    if properties.get(b"v") != VERSION or properties.get(b"net") != mark.encode():
        return None
    peer_id = info.name.removesuffix("." + SERVICE_TYPE)
    if peer_id == me:
        return None
    try:
        ID.from_base58(peer_id)
    except Exception:
        return None
    from zeroconf import IPVersion

    ips = info.parsed_addresses(IPVersion.V4Only)[:MAX_ADDRESSES]
    addresses = tuple(f"/ip4/{ip}/tcp/{info.port}/p2p/{peer_id}" for ip in ips)
    return LanPeer(peer_id, addresses) if addresses else None


class LanDiscovery:
    """Announce this node on the LAN and report the nodes of its network that answer (``found``).

    ``async with trio.open_nursery() as n: lan = await n.start(LanDiscovery(...).run)``; then read
    ``lan.found`` (each peer once per run). ``port`` None browses without announcing (a node that cannot
    be dialled, or a command that only looks, :func:`look_for_grid`).
    """

    def __init__(
        self,
        *,
        peer_id: str,
        network: str,
        scope: tuple[str, ...],
        port: int | None,
        psk: bytes | None = None,
        probe: bool = True,
    ) -> None:
        """``probe``: before announcing, ask the LAN whether another record has this name (mDNS probing,
        RFC 6762 §8.1: ~1.7 s). The name is the peer id, so only a second node with this identity would
        answer; tests that announce on loopback pass False."""
        self._peer_id = peer_id
        self._scope = scope
        self._probe = probe
        self._port = port
        self._mark = fingerprint(network, psk)
        send, self.found = trio.open_memory_channel[LanPeer](MAX_PEERS)
        self._send_found = send
        self.reported: dict[str, LanPeer] = {}
        """Every peer reported so far (peer id -> what was reported), at most ``MAX_PEERS``."""
        self.announced = False

    async def run(self, *, task_status: TaskStatus[LanDiscovery] = trio.TASK_STATUS_IGNORED) -> None:
        zc = await trio.to_thread.run_sync(_zeroconf, self._scope)
        info = None
        if self._port is not None:
            info = _service(self._peer_id, self._port, _addresses_of(self._scope), self._mark)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self._browse, zc)
                task_status.started(self)
                if info is not None:
                    # Registration probes the name first (~1.7 s): after start-up, not before it.
                    register = functools.partial(
                        zc.register_service, info, cooperating_responders=not self._probe
                    )
                    await trio.to_thread.run_sync(register, abandon_on_cancel=True)  # type: ignore[call-arg]
                    self.announced = True
                    log.info(
                        "announcing this node on the LAN (mDNS, %s)",
                        ", ".join(self._scope) or "every interface",
                    )
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(_close, zc, info if self.announced else None)
            self._send_found.close()

    async def _browse(
        self, zc: Zeroconf, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        from zeroconf import ServiceBrowser, ServiceStateChange

        names_in, names_out = trio.open_memory_channel[str](MAX_PENDING)
        token = trio.lowlevel.current_trio_token()

        def heard(zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange) -> None:
            # On zeroconf's thread: hand the name over, never block it.
            if state_change is ServiceStateChange.Removed:
                return
            try:
                trio.from_thread.run_sync(names_in.send_nowait, name, trio_token=token)
            except (trio.WouldBlock, trio.RunFinishedError, trio.ClosedResourceError):
                pass

        browser = ServiceBrowser(zc, SERVICE_TYPE, handlers=[heard])
        try:
            task_status.started()
            async for name in names_out:
                peer_id = name.removesuffix("." + SERVICE_TYPE)
                if peer_id in self.reported or peer_id == self._peer_id or len(self.reported) >= MAX_PEERS:
                    continue
                info = await trio.to_thread.run_sync(
                    zc.get_service_info,
                    SERVICE_TYPE,
                    name,
                    int(RESOLVE_TIMEOUT_S * 1000),
                    abandon_on_cancel=True,
                )  # type: ignore[call-arg]  # trio-typing's stubs predate it (names.py)
                peer = _peer_from(info, self._mark, self._peer_id)
                if peer is None:
                    continue
                self.reported[peer.peer_id] = peer
                log.info("found %s on the LAN (mDNS) at %s", peer.peer_id, ", ".join(peer.addresses))
                try:
                    self._send_found.send_nowait(peer)
                except trio.WouldBlock:  # nobody reads: MAX_PEERS bounds the channel and the dict alike
                    pass
        finally:
            names_in.close()
            await trio.to_thread.run_sync(browser.cancel)


def _close(zc: Zeroconf, info: ServiceInfo | None) -> None:
    try:
        if info is not None:
            zc.unregister_service(info)
    finally:
        zc.close()


async def look_for_grid(
    *, network: str, scope: tuple[str, ...], wait_s: float, psk: bytes | None = None
) -> list[LanPeer]:
    """Browse (without announcing) for ``wait_s`` seconds; the nodes of ``network`` that answered."""
    async with trio.open_nursery() as nursery:
        lan: LanDiscovery = await nursery.start(
            LanDiscovery(peer_id="", network=network, scope=scope, port=None, psk=psk).run
        )
        await trio.sleep(wait_s)
        nursery.cancel_scope.cancel()
    return list(lan.reported.values())

"""The memo of a host's advertised addresses (addr_cache.py) answers what py-libp2p itself would, at once
after any of its inputs changes, and recomputes nothing while they stay the same."""

from __future__ import annotations

import secrets

import multiaddr
from libp2p.host.basic_host import BasicHost
from libp2p.peer.peerstore import env_to_send_in_RPC

from opengrid.net.addr_cache import AdvertisedAddrs
from opengrid.net.host import Host, open_host, quiet_libp2p_logging


class FakeObservedAddrs:
    """Stands in for py-libp2p's ObservedAddrManager: the external addresses peers confirmed for us."""

    def __init__(self) -> None:
        self.confirmed: list[multiaddr.Multiaddr] = []

    def addrs(self) -> list[multiaddr.Multiaddr]:
        return list(self.confirmed)


def library_addrs(host: Host) -> list[multiaddr.Multiaddr]:
    """What py-libp2p computes, bypassing the memo installed on the instance."""
    libp2p = host.libp2p
    assert isinstance(libp2p, BasicHost)
    return BasicHost.get_addrs(libp2p)


def memo_of(host: Host) -> AdvertisedAddrs:
    memo = getattr(host.libp2p.get_addrs, "__self__", None)
    assert isinstance(memo, AdvertisedAddrs), "open_host installs the memo"
    return memo


async def test_the_memo_answers_like_the_library_and_recomputes_only_on_change() -> None:
    quiet_libp2p_logging()
    async with open_host(secrets.token_bytes(32)) as host:
        memo = memo_of(host)
        first = host.libp2p.get_addrs()
        assert first == library_addrs(host) and len(first) == 1
        computed = memo.computed
        for _ in range(5):
            assert host.libp2p.get_addrs() == first
        assert memo.computed == computed  # nothing changed: nothing rebuilt

        # A listener added while running: the next call sees it, as the library would.
        assert await host.libp2p.get_network().listen(multiaddr.Multiaddr("/ip4/127.0.0.2/tcp/0"))
        now = host.libp2p.get_addrs()
        assert now == library_addrs(host) and len(now) == 2
        assert memo.computed > computed

        # An observed address confirmed by peers, then dropped again.
        observed = FakeObservedAddrs()
        host.libp2p._observed_addr_manager = observed  # type: ignore[attr-defined]
        assert host.libp2p.get_addrs() == now
        observed.confirmed.append(multiaddr.Multiaddr("/ip4/203.0.113.7/tcp/4001"))
        with_observed = host.libp2p.get_addrs()
        assert with_observed == library_addrs(host) and len(with_observed) == 3
        observed.confirmed.clear()
        assert host.libp2p.get_addrs() == now

        # An addrs_factory set on the running host (tests fake a node behind NAT so) is always asked.
        announced = [multiaddr.Multiaddr("/ip4/198.51.100.1/tcp/1")]
        host.libp2p._addrs_factory = lambda _: announced  # type: ignore[attr-defined]
        assert (
            host.libp2p.get_addrs()
            == library_addrs(host)
            == [announced[0].encapsulate(f"/p2p/{host.peer_id}")]
        )
        announced.append(multiaddr.Multiaddr("/ip4/198.51.100.2/tcp/2"))
        assert host.libp2p.get_addrs() == library_addrs(host) and len(library_addrs(host)) == 2
        host.libp2p._addrs_factory = None  # type: ignore[attr-defined]
        assert host.libp2p.get_addrs() == now


async def test_the_signed_peer_record_follows_the_listen_addresses() -> None:
    quiet_libp2p_logging()
    async with open_host(secrets.token_bytes(32)) as host:
        libp2p = host.libp2p
        env_to_send_in_RPC(libp2p)
        assert env_to_send_in_RPC(libp2p)[1] is False  # unchanged: the cached record is reused
        assert await libp2p.get_network().listen(multiaddr.Multiaddr("/ip4/127.0.0.2/tcp/0"))
        assert env_to_send_in_RPC(libp2p)[1] is True  # a new address: a new record
        record = libp2p.get_peerstore().get_local_record()
        assert record is not None
        assert set(record.record().addrs) == set(library_addrs(host))


async def test_relay_addresses_are_announced_by_the_wrapper_not_the_libp2p_host() -> None:
    quiet_libp2p_logging()
    async with open_host(secrets.token_bytes(32)) as host:
        direct = host.addrs()
        relay = "12D3KooWEyoppNCUx8Yx66oV9fJnriXwCcXwDDUA2kj6vnc6iDEp"
        relayed = f"/ip4/127.0.0.1/tcp/4001/p2p/{relay}/p2p-circuit/p2p/{host.peer_id}"
        host.add_relay_address(relayed)
        assert host.addrs() == [*direct, relayed]
        assert host.libp2p.get_addrs() == library_addrs(host)  # the signed record has direct ones only
        assert all("p2p-circuit" not in str(a) for a in host.libp2p.get_addrs())
        host.remove_relay_address(relayed)
        assert host.addrs() == direct

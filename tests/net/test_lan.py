"""LAN discovery with mDNS (opengrid/net/lan.py), on the loopback interface only (127.0.0.1)."""

from __future__ import annotations

import secrets
import socket

import pytest
import trio
from zeroconf import IPVersion, ServiceInfo, Zeroconf

from opengrid.net.host import derive_psk, open_host
from opengrid.net.lan import (
    MAX_ADDRESSES,
    SERVICE_TYPE,
    LanDiscovery,
    fingerprint,
    lan_scope,
    local_ipv4_addresses,
    look_for_grid,
)
from opengrid.node.config import NodeConfig
from opengrid.node.lan_join import join_lan

LOOPBACK = ("127.0.0.1",)
LOOK_S = 2.5


def _network() -> str:
    """A network name of this test alone: nodes of other tests announcing on loopback never match."""
    return f"lan-test-{secrets.token_hex(4)}"


def test_mdns_uses_only_the_interfaces_the_node_listens_on() -> None:
    assert lan_scope(["/ip4/127.0.0.1/tcp/0"]) == ("127.0.0.1",)
    assert lan_scope(["/ip4/127.0.0.1/tcp/0", "/ip4/10.0.0.7/tcp/4001"]) == ("127.0.0.1", "10.0.0.7")
    assert lan_scope(["/ip4/127.0.0.1/tcp/0", "/ip4/0.0.0.0/tcp/4001"]) == ()  # () = every interface
    assert lan_scope(["/ip6/::1/tcp/0"]) is None  # IPv4 only: no mDNS at all
    assert lan_scope([]) is None


def test_the_record_names_a_fingerprint_not_the_network_or_its_key() -> None:
    public, private = fingerprint("home", None), fingerprint("home", derive_psk("home", "invite-123"))
    assert len(public) == 16 and public != private != fingerprint("home", derive_psk("home", "invite-456"))
    assert "home" not in public + private
    assert fingerprint("other", None) != public


def test_a_machine_is_dialled_on_its_lan_addresses_first_loopback_last() -> None:
    addresses = local_ipv4_addresses()
    assert "127.0.0.1" in addresses and addresses[-1].startswith("127.")
    assert len(addresses) <= MAX_ADDRESSES


async def test_a_node_announced_on_loopback_is_found_with_its_dialable_address() -> None:
    network = _network()
    peer = "12D3KooWAL3BE8drsxHzR1efHWAtYnZE2X2EUy53Ggs9Cg47f541"
    async with trio.open_nursery() as nursery:
        lan = await nursery.start(LanDiscovery(peer_id=peer, network=network, scope=LOOPBACK, port=4001).run)
        with trio.fail_after(10):
            while not lan.announced:
                await trio.sleep(0.05)
        found = await look_for_grid(network=network, scope=LOOPBACK, wait_s=LOOK_S)
        others = await look_for_grid(network=_network(), scope=LOOPBACK, wait_s=1.0)
        private = await look_for_grid(
            network=network, scope=LOOPBACK, wait_s=1.0, psk=derive_psk(network, "invite-123")
        )
        nursery.cancel_scope.cancel()
    assert [(p.peer_id, p.addresses) for p in found] == [(peer, (f"/ip4/127.0.0.1/tcp/4001/p2p/{peer}",))]
    assert others == [] and private == []  # another network, or ours with a key we do not hold


async def test_records_that_are_not_ours_are_ignored() -> None:
    """Hand-made records on the LAN: a bad peer id, a wrong version, another fingerprint. None is
    reported; a good one beside them is."""
    network = _network()
    mark = fingerprint(network, None).encode()
    good = "12D3KooWMEm2TWmG9oNz6UzfMbpQBjd2pAXLFWLHZQAT25FMh6Nk"
    records = [
        ("not-a-peer-id", {b"v": b"1", b"net": mark}),
        ("12D3KooWJ6UvVThSaMWkEqTm89FEkpiftoxN74gA2wN9MN8ooXcG", {b"v": b"2", b"net": mark}),
        ("12D3KooWAL3BE8drsxHzR1efHWAtYnZE2X2EUy53Ggs9Cg47f541", {b"v": b"1", b"net": b"0" * 16}),
        (good, {b"v": b"1", b"net": mark}),
    ]
    zc = Zeroconf(interfaces=list(LOOPBACK), ip_version=IPVersion.V4Only)
    loopback = [socket.inet_aton("127.0.0.1")]
    infos = [
        ServiceInfo(SERVICE_TYPE, f"{name}.{SERVICE_TYPE}", port=4001, addresses=loopback,
                    properties=props, server=f"h{i}.local.")
        for i, (name, props) in enumerate(records)
    ]  # fmt: skip
    try:
        for info in infos:
            await trio.to_thread.run_sync(zc.register_service, info)
        found = await look_for_grid(network=network, scope=LOOPBACK, wait_s=LOOK_S)
    finally:
        await trio.to_thread.run_sync(zc.close)
    assert [p.peer_id for p in found] == [good]


async def test_two_nodes_on_loopback_find_and_connect_to_each_other(tmp_path: pytest.TempPathFactory) -> None:
    """The node side: each announces itself and dials what it finds (no bootstrap on either side)."""
    network = _network()
    config = NodeConfig(data_dir=tmp_path, network=network, lan=True)  # type: ignore[arg-type]
    async with (
        open_host(secrets.token_bytes(32), ["/ip4/127.0.0.1/tcp/0"]) as a,
        open_host(secrets.token_bytes(32), ["/ip4/127.0.0.1/tcp/0"]) as b,
        trio.open_nursery() as nursery,
    ):
        await nursery.start(join_lan, a, config)
        await nursery.start(join_lan, b, config)
        with trio.fail_after(20):
            while not (a.is_connected(b.peer_id) and b.is_connected(a.peer_id)):
                await trio.sleep(0.1)
        nursery.cancel_scope.cancel()


async def test_a_lan_flooding_records_gets_at_most_max_peers_reported(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Bounded: at most ``MAX_PEERS`` distinct peers per run, however many valid-looking records answer
    (here the bound is lowered to 2 and 4 records of our network answer)."""
    import opengrid.net.lan as lan

    monkeypatch.setattr(lan, "MAX_PEERS", 2)
    network = _network()
    mark = fingerprint(network, None).encode()
    peers = [
        "12D3KooWAL3BE8drsxHzR1efHWAtYnZE2X2EUy53Ggs9Cg47f541",
        "12D3KooWMEm2TWmG9oNz6UzfMbpQBjd2pAXLFWLHZQAT25FMh6Nk",
        "12D3KooWJ6UvVThSaMWkEqTm89FEkpiftoxN74gA2wN9MN8ooXcG",
        "12D3KooWSaMMWTRBUFN9nDKRbRXmrqVCdFmD2JYYSzd7JiCixhgD",
    ]
    zc = Zeroconf(interfaces=list(LOOPBACK), ip_version=IPVersion.V4Only)
    loopback = [socket.inet_aton("127.0.0.1")]
    infos = [
        ServiceInfo(SERVICE_TYPE, f"{peer}.{SERVICE_TYPE}", port=4001, addresses=loopback,
                    properties={b"v": b"1", b"net": mark}, server=f"f{i}.local.")
        for i, peer in enumerate(peers)
    ]  # fmt: skip
    try:
        for info in infos:
            await trio.to_thread.run_sync(zc.register_service, info)
        found = await look_for_grid(network=network, scope=LOOPBACK, wait_s=LOOK_S)
    finally:
        await trio.to_thread.run_sync(zc.close)
    assert len(found) == 2 and {p.peer_id for p in found} <= set(peers)

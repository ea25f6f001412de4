"""LAN discovery with mDNS (opengrid/net/lan.py), on the loopback interface only (127.0.0.1)."""

from __future__ import annotations

import secrets
import socket
from functools import partial
from typing import Any

import pytest
import trio
from zeroconf import IPVersion, ServiceInfo, Zeroconf

from opengrid.net.host import derive_psk, open_host
from opengrid.net.lan import (
    MAX_ADDRESSES,
    SERVICE_TYPE,
    LanDiscovery,
    LanPeer,
    fingerprint,
    lan_scope,
    local_ipv4_addresses,
    look_for_grid,
)
from opengrid.node.config import NodeConfig
from opengrid.node.lan_join import join_lan

LOOPBACK = ("127.0.0.1",)
LOOK_S = 10.0
"""The most a look waits for what it must find (it ends as soon as it has: ``_look_for``)."""
QUIET_S = 0.5
"""How long a look listens for answers that must NOT be reported (answers on loopback take milliseconds,
and come in the same burst as those that must be)."""


async def _look_for(network: str, expected: int, *, quiet_s: float = QUIET_S) -> list[LanPeer]:
    """Browse (without announcing) until ``expected`` peers of ``network`` were reported (at most
    ``LOOK_S``), then ``quiet_s`` longer for any that must not be: what was reported."""
    async with trio.open_nursery() as nursery:
        lan: LanDiscovery = await nursery.start(
            LanDiscovery(peer_id="", network=network, scope=LOOPBACK, port=None).run
        )
        with trio.move_on_after(LOOK_S):
            while len(lan.reported) < expected:
                await trio.sleep(0.02)
        await trio.sleep(quiet_s)
        nursery.cancel_scope.cancel()
    return list(lan.reported.values())


async def _register_all(zc: Zeroconf, infos: list[ServiceInfo]) -> None:
    """Publish hand-made records at once. They are this test's own (unique names, on loopback), so the
    name-conflict probe mDNS runs before announcing (~1.7 s per record, one after another) is skipped
    (``cooperating_responders``): what is tested is what a browser does with the records."""
    async with trio.open_nursery() as nursery:
        for info in infos:
            nursery.start_soon(
                partial(
                    trio.to_thread.run_sync, partial(zc.register_service, info, cooperating_responders=True)
                )
            )


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
        # no name probe (~1.7 s): the two-node test below announces with it, as nodes do
        announcing = LanDiscovery(peer_id=peer, network=network, scope=LOOPBACK, port=4001, probe=False)
        lan = await nursery.start(announcing.run)
        with trio.fail_after(10):
            while not lan.announced:
                await trio.sleep(0.05)
        looks: dict[str, list[LanPeer]] = {}

        async def found_it() -> None:  # the one it must find: no need to listen on after it
            looks["found"] = await _look_for(network, 1, quiet_s=0)

        async def look(name: str, **where: Any) -> None:  # what must find nothing: listen a while
            looks[name] = await look_for_grid(scope=LOOPBACK, wait_s=QUIET_S, **where)

        async with trio.open_nursery() as looking:  # at once: each listens for the same announcement
            looking.start_soon(found_it)
            looking.start_soon(partial(look, "others", network=_network()))
            looking.start_soon(
                partial(look, "private", network=network, psk=derive_psk(network, "invite-123"))
            )
        found, others, private = looks["found"], looks["others"], looks["private"]
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
        await _register_all(zc, infos)
        found = await _look_for(network, 1)
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
        await _register_all(zc, infos)
        found = await _look_for(network, 2)
    finally:
        await trio.to_thread.run_sync(zc.close)
    assert len(found) == 2 and {p.peer_id for p in found} <= set(peers)

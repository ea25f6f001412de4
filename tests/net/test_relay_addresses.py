"""Which relays a node is reached through, read from its own addresses (spec/discovery.md §8.2): what
`opengrid peers` and `opengrid doctor` show."""

from __future__ import annotations

from opengrid.cli.main import peers_headline, shown_reachability
from opengrid.net.relay import circuit_address, relays_of
from opengrid.wire.messages import NodeStatus

RELAY_A = "12D3KooWRe1ayAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
RELAY_B = "12D3KooWRe1ayBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB"
ME = "12D3KooWMyPeerCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCC"
A = f"/ip4/127.0.0.1/tcp/4001/p2p/{RELAY_A}"
B = f"/ip4/127.0.0.1/tcp/4002/p2p/{RELAY_B}"
DIRECT = f"/ip4/127.0.0.1/tcp/4003/p2p/{ME}"


def test_each_relay_is_named_once_in_the_order_of_the_addresses() -> None:
    addrs = [DIRECT, circuit_address(B, ME), circuit_address(A, ME), circuit_address(B, ME)]
    assert relays_of(addrs) == [(RELAY_B, B), (RELAY_A, A)]
    assert relays_of([DIRECT]) == []
    assert relays_of([]) == []


def _status(addrs: list[str], reachability: str) -> NodeStatus:
    return NodeStatus(
        peer_id=ME, public_key=b"\x00" * 32, role="worker", addrs=addrs, points=0, jobs_done=0,
        network="opengrid-local", reachability=reachability,
    )  # fmt: skip


def test_opengrid_peers_says_through_which_relay_the_node_is_reached() -> None:
    relayed = peers_headline(_status([DIRECT, circuit_address(A, ME)], "private"))
    assert relayed.startswith(f"worker {ME} on network 'opengrid-local' (private, through relay {RELAY_A})")
    direct = peers_headline(_status([f"/ip4/203.0.113.7/tcp/4003/p2p/{ME}"], "public"))
    assert "(public)" in direct and "relay" not in direct


def test_a_node_on_loopback_only_is_not_called_public() -> None:
    # a dial-back from this machine succeeds on 127.0.0.1: that makes the node reachable here, not public
    assert "(loopback: this machine only)" in peers_headline(_status([DIRECT], "public"))
    assert shown_reachability("public", [DIRECT, f"/ip6/::1/tcp/4003/p2p/{ME}"]) == "loopback"
    assert shown_reachability("public", [DIRECT, f"/ip4/192.168.1.4/tcp/4003/p2p/{ME}"]) == "public"
    assert shown_reachability("private", [DIRECT]) == "private"
    assert shown_reachability("", []) == "unknown"

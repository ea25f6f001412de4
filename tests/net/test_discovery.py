"""Kademlia on 5 in-process nodes bootstrapped from ONE address: provider records and validated values."""

from __future__ import annotations

import pytest
import trio
from libp2p.peer.id import ID

from opengrid.errors import ConfigError, LocalProtocolError
from opengrid.net.discovery import (
    encode_value_record,
    model_key,
    model_name_key,
    role_key,
    value_key,
)
from tests.net.conftest import NETWORK, open_grid, open_node


def test_keys_are_prefixed_and_namespaced_by_network() -> None:
    sha = "AB" * 32
    assert model_key("main", sha) == f"/opengrid/main/model:{sha.lower()}"
    assert model_name_key("main", "smollm2") == "/opengrid/main/model-name:smollm2"
    assert role_key("main", "coordinator") == "/opengrid/main/role:coordinator"
    assert value_key("main", "motd") == "/opengrid/main/motd"
    with pytest.raises(ConfigError):
        role_key("a/b", "relay")


async def test_providers_found_from_every_node_deduped_and_without_self() -> None:
    async with open_grid(5) as nodes:
        workers, coordinator = nodes[1:4], nodes[4]
        sha = "c0" * 32
        with trio.fail_after(30):
            for node in workers:
                await node.discovery.provide(model_key(NETWORK, sha))
                await node.discovery.provide(model_key(NETWORK, sha))  # twice: still one entry
            await coordinator.discovery.provide(role_key(NETWORK, "coordinator"))
            for node in nodes:
                found = await node.discovery.find_providers(model_key(NETWORK, sha))
                expected = sorted(w.host.peer_id for w in workers if w is not node)
                assert [p.peer_id for p in found] == expected
                assert all(p.addrs for p in found)
                coordinators = await node.discovery.find_providers(role_key(NETWORK, "coordinator"))
                assert [p.peer_id for p in coordinators] == (
                    [] if node is coordinator else [coordinator.host.peer_id]
                )
            assert await nodes[0].discovery.find_providers(model_key(NETWORK, "d1" * 32)) == []
            assert len(await nodes[0].discovery.find_providers(model_key(NETWORK, sha), limit=2)) == 2


async def test_values_are_signed_validated_and_newest_wins() -> None:
    async with open_grid(5) as nodes:
        key = value_key(NETWORK, "motd")
        with trio.fail_after(30):
            await nodes[2].discovery.put_value(key, b"hello", seq=1)
            record = await nodes[4].discovery.get_value(key)
            assert record is not None and record.value == b"hello" and record.seq == 1
            assert record.public_key == bytes(nodes[2].key.verify_key)
            await nodes[3].discovery.put_value(key, b"newer", seq=2)
            record = await nodes[1].discovery.get_value(key)
            assert record is not None and record.value == b"newer"
            assert await nodes[1].discovery.get_value(value_key(NETWORK, "nothing")) is None


async def test_invalid_values_are_refused_by_the_storing_peer() -> None:
    async with open_grid(2) as (alice, bob):
        store = bob.discovery._dht.value_store
        alice_id = ID.from_base58(alice.host.peer_id)
        good_key = value_key(NETWORK, "k")
        forged = encode_value_record(NETWORK, good_key, b"v", 1, alice.key)[:-1] + b"\x00"
        other_net = value_key("othernet", "k")
        bad = [
            (good_key, b"not a record"),
            (good_key, forged[:-8] + bytes(8)),  # bad signature
            (good_key, encode_value_record(NETWORK, value_key(NETWORK, "other"), b"v", 1, bob.key)),
            (other_net, encode_value_record("othernet", other_net, b"v", 1, bob.key)),
            ("/pk/whatever", b"x"),  # a namespace we do not register: strict validation
            ("plain-key", b"x"),
            (good_key, encode_value_record(NETWORK, good_key, b"v" * 9000, 1, bob.key)),  # oversized
        ]
        with trio.fail_after(30):
            for key, data in bad:
                await store._store_at_peer(alice_id, key.encode(), data)
        assert alice.discovery._dht.value_store.size() == 0
        assert alice.discovery.validator.rejected >= 5  # /pk and plain keys fail before our validator
        with pytest.raises(LocalProtocolError, match="not in this node's network"):
            await bob.discovery.put_value(other_net, b"v")


async def test_another_network_does_not_share_records() -> None:
    async with open_node() as ours, open_node(network="othernet", bootstrap=ours.host.addrs()[:1]) as theirs:
        with trio.fail_after(30):
            await theirs.discovery.put_value(value_key("othernet", "k"), b"v")
            await theirs.discovery.provide(model_key("othernet", "aa" * 32))
        assert ours.discovery._dht.value_store.size() == 0
        assert ours.discovery.validator.rejected >= 1

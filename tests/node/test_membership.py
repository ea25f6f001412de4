"""Joining through any node: gossip tells a worker of every coordinator; a private network keeps others out.

Nodes in one process, llama.cpp on the tiny model: on real libp2p hosts on 127.0.0.1 (gossipsub, the DHT,
network keys, dial-backs, RTT), or, for what is about the protocol (finding a coordinator through a
worker, ledger gossip, approval), on the in-memory network in virtual time.
"""

from __future__ import annotations

import logging
import pathlib
import socket

import msgspec
import pytest
import trio
from opengrid_sdk import Client
from trio.testing import MockClock

from opengrid.core.coordinator import CoordinatorConfig
from opengrid.engines import LlamaEngine, ModelInfo, sha256_file
from opengrid.errors import ConfigError
from opengrid.net.discovery import model_key, model_name_key, role_key
from opengrid.node.config import NodeConfig
from opengrid.node.service import Node
from opengrid.testing.memnet import MemoryNetwork
from opengrid.wire.messages import JobAccepted
from tests.waiting import until


def fast(
    data_dir: pathlib.Path, role: str, bootstrap: Node | None = None, key: str | None = None
) -> NodeConfig:
    """A node that beats and announces several times a second, so the tests take seconds."""
    addrs = () if bootstrap is None or bootstrap.host is None else (bootstrap.host.addrs()[0],)
    return NodeConfig(
        data_dir=data_dir,
        role=role,  # type: ignore[arg-type]
        bootstrap=addrs,
        network_key=key,
        heartbeat_s=0.5,
        announce_s=0.3,
    )


def tiny_engine(path: pathlib.Path) -> LlamaEngine:
    return LlamaEngine(ModelInfo(name="tiny", path=path, sha256=sha256_file(path)), n_threads=1)


def _rtt_ms(node: Node, peer: str) -> float | None:
    return next((p.rtt_ms for p in node.status().peers if p.peer_id == peer), None)


def online_workers(node: Node) -> set[str]:
    assert node.coordinator is not None
    return {r.peer for r in node.coordinator.workers.values() if r.online}


async def test_a_worker_bootstrapped_from_one_coordinator_registers_with_every_coordinator(
    tmp_path: pathlib.Path, tiny_model_path: pathlib.Path
) -> None:
    async with trio.open_nursery() as nursery:
        first = Node(fast(tmp_path / "c1", "coordinator"))
        await nursery.start(first.run)
        second = Node(fast(tmp_path / "c2", "coordinator", bootstrap=first))
        await nursery.start(second.run)
        # the worker knows only the first coordinator; it hears of the second on gossip
        worker = Node(fast(tmp_path / "w", "worker", bootstrap=first), engine=tiny_engine(tiny_model_path))
        await nursery.start(worker.run)
        assert worker.host is not None and second.host is not None
        me = worker.host.peer_id
        await until(lambda: me in online_workers(first) and me in online_workers(second), timeout=20)
        # what `opengrid peers` shows: every other node, with its role and models
        peers = {p.peer_id: p for p in first.status().peers}
        assert set(peers) == {second.host.peer_id, me}
        assert peers[me].roles == ["worker"] and peers[me].models == ["tiny"] and peers[me].online
        assert peers[me].tier == worker.tier and worker.tier in ("Platinum", "Gold", "Silver", "Bronze")
        assert worker.tokens_per_s > 0  # measured at start on the model it serves
        assert peers[second.host.peer_id].roles == ["coordinator"]
        # the RTT is measured after the worker is heard, which on a loaded machine may come a beat later
        await until(lambda: _rtt_ms(first, me) is not None, timeout=20)
        rtt_ms = _rtt_ms(first, me)
        assert rtt_ms is not None and rtt_ms > 0
        nursery.cancel_scope.cancel()


async def test_a_worker_bootstrapped_from_another_worker_finds_the_coordinator(
    tmp_path: pathlib.Path, tiny_model_path: pathlib.Path, memnet: MemoryNetwork, memnet_clock: MockClock
) -> None:
    async with trio.open_nursery() as nursery:
        coordinator = Node(fast(tmp_path / "c", "coordinator"), transport=memnet)
        await nursery.start(coordinator.run)
        first = Node(
            fast(tmp_path / "w1", "worker", bootstrap=coordinator),
            engine=tiny_engine(tiny_model_path),
            transport=memnet,
        )
        await nursery.start(first.run)
        assert first.host is not None
        second = Node(
            fast(tmp_path / "w2", "worker", bootstrap=first),
            engine=tiny_engine(tiny_model_path),
            transport=memnet,
        )
        await nursery.start(second.run)
        assert second.host is not None
        await until(second.registered.is_set, timeout=20)
        assert second.host.peer_id in online_workers(coordinator)
        # asked once, then used only for gossip
        assert second.registration.not_coordinators == {first.host.peer_id}
        reply = await second.api_submit(prompt="Hi", model="tiny", max_tokens=3, replicas=2, format="text")
        assert type(reply).__name__ == "JobAccepted", reply
        nursery.cancel_scope.cancel()


async def test_a_node_with_another_network_key_cannot_join(
    tmp_path: pathlib.Path, tiny_model_path: pathlib.Path
) -> None:
    async with trio.open_nursery() as nursery:
        coordinator = Node(fast(tmp_path / "c", "coordinator", key="invite-token-1"))
        await nursery.start(coordinator.run)
        nodes = {}
        for name, key in (("friend", "invite-token-1"), ("stranger", "invite-token-2"), ("open", None)):
            config = fast(tmp_path / name, "worker", bootstrap=coordinator, key=key)
            nodes[name] = Node(config, engine=tiny_engine(tiny_model_path))
            await nursery.start(nodes[name].run)
        friend = nodes["friend"].host
        assert friend is not None
        await until(lambda: friend.peer_id in online_workers(coordinator), timeout=20)
        await trio.sleep(1)  # two heartbeats: the others keep failing to even connect (their dials hang)
        assert online_workers(coordinator) == {friend.peer_id}
        assert {p.peer_id for p in coordinator.status().peers} == {friend.peer_id}
        assert not nodes["stranger"].registered.is_set() and not nodes["open"].registered.is_set()
        nursery.cancel_scope.cancel()


async def test_a_genesis_file_for_another_network_is_refused_at_start(tmp_path: pathlib.Path) -> None:
    from opengrid_ledger.genesis import Genesis, encode_genesis

    path = tmp_path / "genesis.json"
    path.write_bytes(encode_genesis(Genesis(network="elsewhere", coordinators=(b"\x01" * 32,))))
    config = NodeConfig(data_dir=tmp_path / "c", role="coordinator", genesis=path)
    with pytest.raises(ConfigError, match="--network elsewhere"):
        await Node(config).run()
    config = NodeConfig(data_dir=tmp_path / "c", role="coordinator", genesis=tmp_path / "missing.json")
    with pytest.raises(ConfigError, match="cannot read genesis file"):
        await Node(config).run()


async def test_ledger_entries_reach_a_node_that_took_no_part_through_gossip(
    tmp_path: pathlib.Path, tiny_model_path: pathlib.Path, memnet: MemoryNetwork, memnet_clock: MockClock
) -> None:
    # Heartbeats of a minute: the periodic ledger sync (every 6 beats) cannot be what delivers the receipt.
    slow = dict(heartbeat_s=60.0, announce_s=0.3)
    async with trio.open_nursery() as nursery:
        coordinator = Node(
            NodeConfig(data_dir=tmp_path / "c", role="coordinator", **slow),  # type: ignore[arg-type]
            coordinator_config=CoordinatorConfig.plain(heartbeat_s=60.0),
            transport=memnet,
        )
        await nursery.start(coordinator.run)
        assert coordinator.host is not None and coordinator.ledger is not None
        bootstrap = (coordinator.host.addrs()[0],)
        workers = []
        for name in ("w1", "w2", "w3"):
            config = NodeConfig(data_dir=tmp_path / name, role="worker", bootstrap=bootstrap, **slow)  # type: ignore[arg-type]
            workers.append(Node(config, engine=tiny_engine(tiny_model_path), transport=memnet))
            await nursery.start(workers[-1].run)
        await until(lambda: all(w.registered.is_set() for w in workers), timeout=20)
        reply = await coordinator.api_submit(
            prompt="Hi", model="tiny", max_tokens=3, replicas=2, format="text"
        )
        assert isinstance(reply, JobAccepted)
        receipt = coordinator.ledger.receipt_for(reply.job_id)
        assert receipt is not None
        bystander = next(w for w in workers if w.host is not None and w.host.peer_id not in reply.workers)
        assert bystander.ledger is not None
        await until(lambda: receipt in bystander.ledger.entries(), timeout=10)  # type: ignore[union-attr]
        nursery.cancel_scope.cancel()


async def test_a_coordinator_with_approval_serves_a_worker_only_once_its_operator_approved_it(
    tmp_path: pathlib.Path,
    tiny_model_path: pathlib.Path,
    capsys: pytest.CaptureFixture[str],
    memnet: MemoryNetwork,
    memnet_clock: MockClock,
) -> None:
    from opengrid.cli.main import main
    from opengrid.node import admission

    async with trio.open_nursery() as nursery:
        config = fast(tmp_path / "c", "coordinator")
        coordinator = Node(msgspec.structs.replace(config, approve_workers=True), transport=memnet)
        await nursery.start(coordinator.run)
        worker = Node(
            fast(tmp_path / "w", "worker", bootstrap=coordinator),
            engine=tiny_engine(tiny_model_path),
            transport=memnet,
        )
        await nursery.start(worker.run)
        assert worker.host is not None
        me = worker.host.peer_id
        await until(lambda: me in admission.pending(tmp_path / "c"), timeout=10)
        await trio.sleep(1.5)  # several heartbeats: still refused
        assert me not in online_workers(coordinator) and not worker.registered.is_set()
        assert admission.pending(tmp_path / "c")[me]["models"] == ["tiny"]
        assert main(["node", "pending", "--data-dir", str(tmp_path / "c")]) == 0
        assert me in capsys.readouterr().out

        assert main(["node", "approve", "--data-dir", str(tmp_path / "c"), me]) == 0
        await until(lambda: me in online_workers(coordinator) and worker.registered.is_set(), timeout=10)
        assert me not in admission.pending(tmp_path / "c")
        assert main(["node", "approve", "--data-dir", str(tmp_path / "c"), "not-a-peer"]) == 1
        nursery.cancel_scope.cancel()


async def test_nodes_advertise_roles_and_models_in_the_dht_and_find_coordinators_there(
    tmp_path: pathlib.Path, tiny_model_path: pathlib.Path, memnet: MemoryNetwork, memnet_clock: MockClock
) -> None:
    """Provider records on live nodes: every coordinator (also a relay) and every model is found through
    the DHT from a node that was given only another worker's address. (What the nodes advertise and look
    up, on the in-memory network's DHT; Kademlia itself on real hosts: tests/net/test_discovery.py and
    test_dht_lone_coordinator.py.)"""
    async with trio.open_nursery() as nursery:
        c1 = Node(fast(tmp_path / "c1", "coordinator"), transport=memnet)
        await nursery.start(c1.run)
        c2 = Node(fast(tmp_path / "c2", "coordinator", bootstrap=c1), transport=memnet)
        await nursery.start(c2.run)
        w1 = Node(
            fast(tmp_path / "w1", "worker", bootstrap=c1),
            engine=tiny_engine(tiny_model_path),
            transport=memnet,
        )
        await nursery.start(w1.run)
        w2 = Node(
            fast(tmp_path / "w2", "worker", bootstrap=w1),
            engine=tiny_engine(tiny_model_path),
            transport=memnet,
        )
        await nursery.start(w2.run)
        nodes = (c1, c2, w1, w2)
        assert all(n.host is not None and n.membership is not None for n in nodes)
        coordinators = sorted(n.host.peer_id for n in (c1, c2) if n.host is not None)
        workers = sorted(n.host.peer_id for n in (w1, w2) if n.host is not None)
        membership = w2.membership
        assert membership is not None
        # w2's own DHT rounds find both coordinators (round 1 may run before they provided)
        await until(lambda: membership.coordinators_in_dht() == coordinators, timeout=30)
        network = c1.config.network
        sha = sha256_file(tiny_model_path)
        discovery = c1.membership.discovery  # type: ignore[union-attr]
        with trio.fail_after(20):
            assert [p.peer_id for p in await discovery.find_providers(model_key(network, sha))] == workers
            by_name = await discovery.find_providers(model_name_key(network, "tiny"))
            assert [p.peer_id for p in by_name] == workers
            relays = await w1.membership.discovery.find_providers(role_key(network, "relay"))  # type: ignore[union-attr]
            assert [p.peer_id for p in relays] == coordinators
            assert await discovery.find_providers(model_key(network, "ab" * 32)) == []

        # An SDK client that knows only w2 finds both coordinators in the DHT, and picks one of them.
        def client_lookup() -> tuple[list[str], str]:
            with Client(w2.host.addrs()[:1], network=network, timeout=30, transport=memnet) as client:  # type: ignore[union-attr]
                return client.find_coordinators(), client.coordinator()

        found, chosen = await trio.to_thread.run_sync(client_lookup)
        assert [a.rsplit("/p2p/", 1)[1] for a in found] == coordinators
        assert chosen in found
        nursery.cancel_scope.cancel()


async def test_nodes_learn_whether_peers_can_dial_them_and_say_what_to_do_when_not(
    tmp_path: pathlib.Path, tiny_model_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with trio.open_nursery() as nursery:
        coordinator = Node(fast(tmp_path / "c", "coordinator"))
        await nursery.start(coordinator.run)
        config = fast(tmp_path / "w", "worker", bootstrap=coordinator)
        worker = Node(config, engine=tiny_engine(tiny_model_path))
        await nursery.start(worker.run)
        membership = worker.membership
        assert membership is not None and worker.host is not None
        with trio.fail_after(20):
            await membership.reachability_checked.wait()
        assert membership.reachability == "public" and worker.status().reachability == "public"
        [report] = membership.dial_backs.values()
        assert [r.reachable for r in report] == [True]
        # what the coordinator hears on gossip: the worker's own verdict
        me = worker.host.peer_id

        def heard() -> str | None:
            return {p.peer_id: p.reachability for p in coordinator.status().peers}.get(me)

        await until(lambda: heard() == "public", 10)

        # Behind a NAT the address a node listens on is not the one peers can reach: simulate it with a
        # listen address on a closed port; the node must find out and say what to change.
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            closed = f"/ip4/127.0.0.1/tcp/{s.getsockname()[1]}/p2p/{me}"
        worker.host.addrs = lambda: [closed]  # type: ignore[method-assign]
        with caplog.at_level(logging.WARNING, logger="opengrid.node.membership"):
            assert await membership.check_reachability() == "private"
        assert "--relay-via" in caplog.text and "connection failed" in caplog.text
        nursery.cancel_scope.cancel()

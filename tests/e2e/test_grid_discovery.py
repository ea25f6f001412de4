"""Issue 3 on a real network: 20 node processes that know ONE bootstrap address.

Two coordinators and eighteen workers, each its own OS process on 127.0.0.1; every node is given only the
first coordinator's address. Gossip tells each worker of the second coordinator; both coordinators end up
knowing every worker and its model; a client finds a coordinator through the bootstrap address, or through
a worker's. Then three workers are SIGKILLed: both coordinators mark them offline within the heartbeat
timeout and send them nothing; restarted on the same data dirs, they rejoin with the same peer ids.
"""

from __future__ import annotations

import pathlib
import signal
import time
from collections.abc import Callable

import pytest
from opengrid_sdk import Client

from opengrid.cli.demo import DemoNetwork, DemoNode
from opengrid.errors import TransportError
from tests.e2e.test_network import direct_llama

pytestmark = pytest.mark.slow

NETWORK = "opengrid-discovery"
WORKERS = 18
HEARTBEAT_S = 1.0
FLAGS = ["--heartbeat", str(HEARTBEAT_S), "--announce", "2"]
DISCOVERY_TIMEOUT_S = 180.0
"""Bounded; on a quiet 2-core machine it takes far less (the issue note gives the measured figure)."""


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``condition`` until true; return the seconds it took, or fail saying ``what`` was awaited."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            pytest.fail(f"not within {timeout:.0f} s: {what}")
        time.sleep(0.25)
    return time.monotonic() - started


def _points_to_a_coordinator(client: Client) -> bool:
    try:
        client.coordinator()
    except TransportError:
        return False
    return True


def online_workers(client: Client, node: DemoNode) -> dict[str, list[str]]:
    """The workers ``node`` (a coordinator) holds online, with their models."""
    return {w.peer_id: w.models for w in client.status(node.addrs[0]).workers if w.online}


def test_twenty_processes_from_one_bootstrap_address_then_kill_and_rejoin(
    tmp_path: pathlib.Path, tiny_model_path: pathlib.Path
) -> None:
    net = DemoNetwork(tmp_path, model=str(tiny_model_path), network=NETWORK)
    try:
        first = net.start("coordinator-1", "coordinator", extra_args=FLAGS)
        net.wait_ready(first)
        bootstrap = first.addrs[0]
        started = time.monotonic()
        second = net.start("coordinator-2", "coordinator", bootstrap=bootstrap, extra_args=FLAGS)
        workers = [
            net.start(f"worker-{i:02d}", "worker", bootstrap=bootstrap, extra_args=FLAGS)
            for i in range(WORKERS)
        ]
        for node in (second, *workers):
            net.wait_ready(node)
        every_worker = {w.peer_id: ["tiny"] for w in workers}
        coordinators = (first, second)

        with Client([bootstrap], network=NETWORK, timeout=120) as client:
            for coordinator in coordinators:
                wait_until(
                    lambda c=coordinator: online_workers(client, c) == every_worker,  # type: ignore[misc]
                    DISCOVERY_TIMEOUT_S,
                    f"{coordinator.name} knows all {WORKERS} workers and their model",
                )
            discovered_s = time.monotonic() - started
            peers = {p.peer_id: p for p in client.status().peers}
            assert set(peers) == {second.peer_id, *every_worker}
            assert peers[second.peer_id].roles == ["coordinator"] and peers[second.peer_id].online

            prompt = "The capital of France is"
            done = client.complete(prompt, model="tiny", max_tokens=4, replicas=2, sealed=False)
            assert (done.text, done.tokens) == direct_llama(tiny_model_path, prompt, 4)

        # a client that knows only a worker's address is pointed to a coordinator by it
        with Client([workers[0].addrs[0]], network=NETWORK, timeout=120) as client:
            # a worker whose heartbeat just failed (a loaded machine) knows no coordinator for a moment
            wait_until(lambda: _points_to_a_coordinator(client), 30, "the worker names a coordinator")
            assert client.coordinator().rsplit("/p2p/", 1)[-1] in {first.peer_id, second.peer_id}
            done = client.complete("Once upon a time,", model="tiny", max_tokens=4, replicas=2)
            assert done.coordinator in {first.peer_id, second.peer_id} and len(done.workers) == 2

            killed = workers[:3]
            for node in killed:
                node.process.send_signal(signal.SIGKILL)
                node.process.wait()
            dead = {node.peer_id for node in killed}
            alive = set(every_worker) - dead
            offline_s = max(
                wait_until(
                    lambda c=c: set(online_workers(client, c)) == alive,  # type: ignore[misc]
                    10 * HEARTBEAT_S + 10,
                    f"{c.name} marks the killed workers offline",
                )
                for c in coordinators
            )
            for i in range(6):  # the killed workers get nothing
                done = client.complete(f"Job {i} says", model="tiny", max_tokens=3, replicas=2, sealed=False)
                assert not dead & set(done.workers)

            restarted = [net.start(n.name, "worker", bootstrap=bootstrap, extra_args=FLAGS) for n in killed]
            for node in restarted:
                net.wait_ready(node)
            assert {node.peer_id for node in restarted} == dead  # same data dirs, same identities
            for coordinator in coordinators:
                wait_until(
                    lambda c=coordinator: online_workers(client, c) == every_worker,  # type: ignore[misc]
                    60,
                    f"{coordinator.name} sees the restarted workers again",
                )
        print(f"\n20 processes known in {discovered_s:.1f} s; the killed offline in {offline_s:.1f} s")
    finally:
        net.stop()

"""Issue 5 on a real network: a partition heals and every ledger converges.

Seven node processes on 127.0.0.1 share one genesis file that names two coordinators. Side A (coordinator
A and two workers) and side B (coordinator B and two workers) start apart — neither knows an address of
the other — and each runs jobs, so each side mints receipts the other has never seen. Then a bridge worker
that knows one address on each side joins: gossip crosses it, the coordinators hear of each other and
sync their ledgers, the workers register with both and sync with both. Every node's ledger must reach the
same heads and balances, within a bounded time (the figure is printed and goes in the issue note).
"""

from __future__ import annotations

import pathlib
import time

import pytest
from nacl.signing import SigningKey
from opengrid_ledger.genesis import Genesis, encode_genesis
from opengrid_sdk import Client

from opengrid.cli.demo import DemoNetwork, DemoNode
from opengrid.net.keys import public_key_of
from opengrid.node.identity import load_or_create_seed
from opengrid.store.ledger_store import open_ledger

pytestmark = pytest.mark.slow

NETWORK = "opengrid-partition"
FLAGS = ["--heartbeat", "1", "--announce", "1"]
JOBS_PER_SIDE = 3
CONVERGE_TIMEOUT_S = 90.0


def ledger_view(node: DemoNode, genesis: Genesis) -> tuple[dict[bytes, tuple[int, bytes]], dict[bytes, int]]:
    """Heads per author and balances of the node's stored ledger (read-only, next to the running node)."""
    state, store = open_ledger(node.data_dir, NETWORK, genesis=genesis, read_only=True)
    try:
        return {a: (seq, bytes(i)) for a, (seq, i) in state.heads().items()}, state.balances()
    finally:
        store.close()


def run_jobs(address: str, tag: str) -> set[str]:
    workers: set[str] = set()
    with Client([address], network=NETWORK, timeout=120) as client:
        for i in range(JOBS_PER_SIDE):
            done = client.complete(f"{tag} job {i}:", model="tiny", max_tokens=3, replicas=2, sealed=False)
            workers |= set(done.workers)
    return workers


def test_two_sides_mint_apart_and_every_ledger_converges_once_the_partition_heals(
    tmp_path: pathlib.Path, tiny_model_path: pathlib.Path
) -> None:
    keys = {
        side: bytes(SigningKey(load_or_create_seed(tmp_path / f"coordinator-{side}")).verify_key)
        for side in "ab"
    }
    genesis = Genesis(network=NETWORK, coordinators=(keys["a"], keys["b"]))
    genesis_path = tmp_path / "genesis.json"
    genesis_path.write_bytes(encode_genesis(genesis))
    flags = [*FLAGS, "--genesis", str(genesis_path)]

    net = DemoNetwork(tmp_path, model=str(tiny_model_path), network=NETWORK)
    try:
        coordinators = {
            side: net.start(f"coordinator-{side}", "coordinator", extra_args=flags) for side in "ab"
        }
        for node in coordinators.values():
            net.wait_ready(node)
        workers = [
            net.start(f"worker-{side}{i}", "worker", bootstrap=coordinators[side].addrs[0], extra_args=flags)
            for side in "ab"
            for i in (1, 2)
        ]
        for node in workers:
            net.wait_ready(node)
        side_of = {w.peer_id: w.name[len("worker-")] for w in workers}

        # apart: each side runs jobs on its own workers and mints receipts the other never sees
        for side in "ab":
            used = run_jobs(coordinators[side].addrs[0], side)
            assert {side_of[w] for w in used} == {side}
        with Client([coordinators["a"].addrs[0]], network=NETWORK) as client:
            assert coordinators["b"].peer_id not in {p.peer_id for p in client.status().peers}
        views = {n.name: ledger_view(n, genesis) for n in net.nodes}
        assert views["coordinator-a"] != views["coordinator-b"]

        # heal: one node that knows an address on each side
        healed = time.monotonic()
        bridge = net.start(
            "bridge",
            "worker",
            bootstrap=coordinators["a"].addrs[0],
            extra_args=[*flags, "--bootstrap", coordinators["b"].addrs[0]],
        )
        net.wait_ready(bridge)
        while True:
            views = {n.name: ledger_view(n, genesis) for n in net.nodes}
            heads = {name: view[0] for name, view in views.items()}
            if (
                len({repr(sorted(h.items())) for h in heads.values()}) == 1
                and keys["b"] in heads["worker-a1"]
            ):
                break
            if time.monotonic() - healed > CONVERGE_TIMEOUT_S:
                counts = {name: sum(seq for seq, _ in h.values()) for name, h in heads.items()}
                pytest.fail(
                    f"ledgers did not converge in {CONVERGE_TIMEOUT_S:.0f} s: entries per node {counts}"
                )
            time.sleep(0.5)
        converged_s = time.monotonic() - healed

        balances = {name: view[1] for name, view in views.items()}
        assert len({repr(sorted(b.items())) for b in balances.values()}) == 1
        paid = next(iter(balances.values()))
        assert {keys["a"], keys["b"]} <= set(heads["bridge"])  # both sides' receipts, everywhere
        earners = {side_of[w] for w in side_of if paid.get(public_key_of(w), 0) > 0}
        assert earners == {"a", "b"}  # workers of both sides are paid in every node's ledger
        print(f"\n7 nodes converged {converged_s:.1f} s after the partition healed")
    finally:
        net.stop()

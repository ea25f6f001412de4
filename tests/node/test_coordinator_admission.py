"""A new coordinator is admitted by 2/3 of the genesis coordinators on live nodes (spec/ledger.md §7.1).

The in-memory network in virtual time, one trio process, the tiny model. The genesis names coordinators
C1, C2, C3; D starts as a coordinator too, so it is a candidate: it takes no jobs and asks C1..C3 to
co-sign its admission, which their operators have not approved — each lists it as pending. With one
approval (of the two co-signatures three coordinators need) D stays a candidate; after a second one D
writes the ADMIT entry, every node applies it, and the receipt of a job D verifies counts on every ledger.
"""

from __future__ import annotations

import pathlib
import secrets

import pytest
import trio
from opengrid_ledger import Receipt, decode_body
from opengrid_ledger.genesis import Genesis, encode_genesis
from opengrid_sdk.client import Client
from trio.testing import MockClock

from opengrid.core.coordinator import CoordinatorConfig
from opengrid.engines import LlamaEngine, ModelInfo, sha256_file
from opengrid.net.keys import peer_id_of
from opengrid.node import admission
from opengrid.node.config import NodeConfig
from opengrid.node.service import Node
from opengrid.testing.memnet import MemoryNetwork
from opengrid.wire.messages import ErrorReply, SubmitJob
from tests.waiting import until

NETWORK = "admission-test"


def pending_everywhere(voters: list[Node], candidate: str) -> bool:
    return all(candidate in admission.pending(v.config.data_dir, coordinators=True) for v in voters)


async def test_a_candidate_coordinator_mints_once_two_of_three_operators_approve_it(
    tmp_path: pathlib.Path, tiny_model_path: pathlib.Path, memnet: MemoryNetwork, memnet_clock: MockClock
) -> None:
    genesis = tmp_path / "genesis.json"

    def config(name: str, role: str, bootstrap: Node | None) -> NodeConfig:
        addrs = () if bootstrap is None or bootstrap.host is None else (bootstrap.host.addrs()[0],)
        return NodeConfig(
            data_dir=tmp_path / name,
            role=role,  # type: ignore[arg-type]
            network=NETWORK,
            genesis=genesis,
            bootstrap=addrs,
            heartbeat_s=0.5,
            announce_s=0.3,
        )

    plain = CoordinatorConfig.plain(heartbeat_s=0.5)
    info = ModelInfo(name="tiny", path=tiny_model_path, sha256=sha256_file(tiny_model_path))
    async with trio.open_nursery() as nursery:
        c1 = Node(config("c1", "coordinator", None), coordinator_config=plain, transport=memnet)
        genesis_keys = [c1.public_key]
        for name in ("c2", "c3"):  # keys exist once a Node is built: write the genesis before any start
            genesis_keys.append(Node(config(name, "coordinator", None), transport=memnet).public_key)
        genesis.write_bytes(encode_genesis(Genesis(NETWORK, tuple(genesis_keys))))
        await nursery.start(c1.run)
        voters = [c1]
        for name in ("c2", "c3"):
            node = Node(config(name, "coordinator", c1), coordinator_config=plain, transport=memnet)
            await nursery.start(node.run)
            voters.append(node)
        d = Node(config("d", "coordinator", c1), coordinator_config=plain, transport=memnet)
        await nursery.start(d.run)
        worker = Node(config("w", "worker", c1), engine=LlamaEngine(info, n_threads=1), transport=memnet)
        await nursery.start(worker.run)
        nodes = [*voters, d, worker]
        assert d.host is not None and d.admission is not None and d.ledger is not None
        d_peer, d_address = d.host.peer_id, d.host.addrs()[0]

        # A candidate: it asks, every operator is asked to approve it, it takes no jobs.
        await until(lambda: pending_everywhere(voters, d_peer), 30)
        assert d.status().candidate and not c1.status().candidate
        assert c1.host is not None
        await c1.host.connect(d_address)
        job = SubmitJob(job_id=secrets.token_bytes(16), model="tiny", prompt="Hi", max_tokens=3, replicas=1)
        refused = await c1.host.request(d_peer, job)
        assert isinstance(refused, ErrorReply) and refused.code == "busy" and "candidate" in refused.message

        # One approval of the two needed: still a candidate.
        admission.approve(c1.config.data_dir, d_peer, coordinator=True)
        await until(
            lambda: (
                d.admission is not None and d.admission.progress.startswith("candidate coordinator: 1 of")
            ),
            30,
        )
        await trio.sleep(3 * 2 * d.config.heartbeat_s)  # three more rounds of asking
        assert d.admission.candidate and all(n.ledger is not None and not n.ledger.admitted() for n in nodes)

        # A second approval: D writes the ADMIT entry; every node applies it.
        admission.approve(voters[1].config.data_dir, d_peer, coordinator=True)
        await until(
            lambda: all(n.ledger is not None and n.ledger.admitted() == [d.public_key] for n in nodes), 30
        )
        assert not d.status().candidate and not d.status().paused

        # D now runs jobs, and its receipt mints on every ledger.
        assert d.coordinator is not None
        await until(
            lambda: d.coordinator is not None and any(r.online for r in d.coordinator.workers.values()), 30
        )

        def submit() -> None:
            with Client([d_address], network=NETWORK, timeout=60, transport=memnet) as client:
                client.complete("Admitted", model="tiny", max_tokens=3, replicas=1, sealed=False)

        await trio.to_thread.run_sync(submit)

        def minted_by_d(node: Node) -> int:
            assert node.ledger is not None
            bodies = [decode_body(e.body) for e in node.ledger.entries()]
            return sum(1 for b in bodies if b.author == d.public_key and isinstance(b.payload, Receipt))

        await until(lambda: all(minted_by_d(n) == 1 for n in nodes), 30)
        points = {n.ledger.balance(worker.public_key) for n in nodes if n.ledger is not None}
        assert len(points) == 1 and points.pop() > 0
        nursery.cancel_scope.cancel()


def test_the_cli_lists_and_approves_candidate_coordinators_and_votes_are_remembered(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from opengrid.cli.main import main

    candidate = peer_id_of(b"\x0c" * 32)
    assert admission.note_pending_coordinator(tmp_path, candidate, epoch=3)
    assert not admission.note_pending_coordinator(tmp_path, candidate, epoch=3)  # logged once
    assert main(["node", "pending", "--data-dir", str(tmp_path)]) == 0
    assert f"approve --coordinator --data-dir {tmp_path} {candidate}" in capsys.readouterr().out
    assert main(["node", "approve", "--coordinator", "--data-dir", str(tmp_path), candidate]) == 0
    assert admission.approved(tmp_path, coordinators=True) == {candidate}
    assert not admission.approved(tmp_path)  # not a worker
    assert not admission.pending(tmp_path, coordinators=True)

    admission.record_vote(tmp_path, 3, b"\x0c" * 32)
    admission.record_vote(tmp_path, 4, b"\x0d" * 32)
    assert admission.votes_given(tmp_path) == {3: b"\x0c" * 32, 4: b"\x0d" * 32}

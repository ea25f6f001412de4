"""Audit mode on nodes (issue 14; spec/verification.md §13): a coordinator started with
``verify="audit"`` runs an open job on one worker and has another worker holding the same weights re-score
the claim with llama.cpp; the receipt credits both. A worker that returns wrong tokens
(``WrongTokensEngine``, the ``wrong-tokens`` adversary) is caught by the audit: its answer never reaches
the client, it earns nothing, and the job is answered by an honest prover.

llama.cpp on the tiny model; the nodes run on the in-memory network in virtual time (``memnet``,
``memnet_clock``: the clock stands still while an engine computes in its thread)."""

from __future__ import annotations

import pathlib
import random
import secrets
from collections.abc import Sequence
from functools import partial
from typing import TypeVar

import trio
from opengrid_ledger import Receipt, decode_body, decode_entry
from trio.testing import MockClock

from opengrid.core.coordinator import CoordinatorConfig
from opengrid.core.reputation import Reputation
from opengrid.engines import Engine, GenerationRequest, LlamaEngine, ModelInfo, sha256_file
from opengrid.engines.adversarial import WrongTokensEngine
from opengrid.net.transport import LIBP2P, StreamHost, Transport
from opengrid.node.config import NodeConfig
from opengrid.node.service import Node
from opengrid.testing.memnet import MemoryNetwork
from opengrid.wire.messages import JobAccepted, SubmitJob
from tests.node.workers import client_host

T = TypeVar("T")
PROMPT = "Once upon a time"
MAX_TOKENS = 8


class _Preferring(random.Random):
    """The coordinator's random stream, seeded, except that a draw takes the peers in ``prefer`` first,
    in that order: the seam that decides who proves and who audits (the draws are the only random
    choices the coordinator makes here; with the plain policy every worker weighs the same, so each
    draw is one ``sample``)."""

    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        self.prefer: list[str] = []

    def sample(self, population: Sequence[T], k: int, **_: object) -> list[T]:  # type: ignore[override]
        rank = {peer: i for i, peer in enumerate(self.prefer)}
        wanted = [c for c in population if getattr(c, "peer", None) in rank]
        first = sorted(wanted, key=lambda c: rank[getattr(c, "peer", "")])[:k]
        rest = [c for c in population if c not in first]
        return first + super().sample(rest, min(k - len(first), len(rest)))


def _coordinator(base: pathlib.Path, memnet: MemoryNetwork, rng: random.Random | None = None) -> Node:
    return Node(
        NodeConfig(data_dir=base / "c", role="coordinator", heartbeat_s=0.5, verify="audit"),
        coordinator_config=CoordinatorConfig.plain(heartbeat_s=0.5, verify="audit"),
        rng=rng,
        transport=memnet,
    )


async def _workers(
    nursery: trio.Nursery,
    base: pathlib.Path,
    coordinator: Node,
    engines: dict[str, Engine],
    transport: Transport = LIBP2P,
) -> dict[str, Node]:
    assert coordinator.host is not None
    nodes = {}
    for name, engine in engines.items():
        config = NodeConfig(
            data_dir=base / name, role="worker", bootstrap=(coordinator.host.addrs()[0],), heartbeat_s=0.5
        )
        node = Node(config, engine=engine, transport=transport)
        await nursery.start(node.run)
        nodes[name] = node
    with trio.fail_after(30):
        for node in nodes.values():
            await node.registered.wait()
    return nodes


def _receipt(reply: JobAccepted) -> Receipt:
    payload = decode_body(decode_entry(reply.receipt).body).payload
    assert isinstance(payload, Receipt)
    return payload


async def _honest_tokens(info: ModelInfo) -> list[int]:
    def generate() -> list[int]:
        with LlamaEngine(info, n_threads=1) as engine:
            return list(engine.generate(GenerationRequest(prompt=PROMPT, max_tokens=MAX_TOKENS)).tokens)

    return await trio.to_thread.run_sync(generate)


async def test_an_open_job_is_generated_once_audited_once_and_both_are_credited(
    tmp_path: pathlib.Path, tiny_model_path: pathlib.Path, memnet: MemoryNetwork, memnet_clock: MockClock
) -> None:
    info = ModelInfo(name="tiny", path=tiny_model_path, sha256=sha256_file(tiny_model_path))
    coordinator = _coordinator(tmp_path, memnet)
    async with trio.open_nursery() as nursery:
        await nursery.start(coordinator.run)
        engines: dict[str, Engine] = {n: LlamaEngine(info, n_threads=1) for n in ("w1", "w2", "w3")}
        workers = await _workers(nursery, tmp_path, coordinator, engines, memnet)
        client: StreamHost = await nursery.start(partial(client_host, transport=memnet))
        assert coordinator.host is not None and coordinator.coordinator is not None
        peer = await client.connect(coordinator.host.addrs()[0])
        job = SubmitJob(
            job_id=secrets.token_bytes(16), model="tiny", prompt=PROMPT, max_tokens=MAX_TOKENS, replicas=2
        )
        with trio.fail_after(60):
            reply = await client.request(peer, job)
        assert isinstance(reply, JobAccepted), reply
        assert reply.tokens == await _honest_tokens(info)
        by_peer = {w.host.peer_id: w for w in workers.values() if w.host is not None}
        prover, auditor = (by_peer[p] for p in reply.workers)
        assert sum(w.jobs_run for w in workers.values()) == 1, "one generation, not two replicas"
        assert prover.jobs_run == 1 and auditor.worker_driver.audits_run == 1
        assert sum(w.worker_driver.audits_run for w in workers.values()) == 1
        receipt = _receipt(reply)
        n = max(1, len(reply.tokens))
        assert {c.account: c.points for c in receipt.credits} == {
            prover.public_key: n,
            auditor.public_key: -(-n // 2),
        }
        assert coordinator.ledger is not None
        assert coordinator.ledger.balance(auditor.public_key) == -(-n // 2)
        nursery.cancel_scope.cancel()


async def test_a_wrong_tokens_prover_is_caught_earns_nothing_and_the_client_gets_the_honest_answer(
    tmp_path: pathlib.Path, tiny_model_path: pathlib.Path, memnet: MemoryNetwork, memnet_clock: MockClock
) -> None:
    info = ModelInfo(name="tiny", path=tiny_model_path, sha256=sha256_file(tiny_model_path))
    honest = await _honest_tokens(info)
    assert len(honest) >= 2  # so the cheat changes tokens (it replaces the second half)
    rng = _Preferring(5)
    coordinator = _coordinator(tmp_path, memnet, rng)
    async with trio.open_nursery() as nursery:
        await nursery.start(coordinator.run)
        engines: dict[str, Engine] = {
            "cheat": WrongTokensEngine(LlamaEngine(info, n_threads=1)),  # what --adversary wrong-tokens runs
            "w1": LlamaEngine(info, n_threads=1),
            "w2": LlamaEngine(info, n_threads=1),
        }
        workers = await _workers(nursery, tmp_path, coordinator, engines, memnet)
        cheater = workers["cheat"]
        assert cheater.host is not None and coordinator.host is not None
        assert coordinator.coordinator is not None and coordinator.ledger is not None
        rng.prefer = [cheater.host.peer_id]
        client: StreamHost = await nursery.start(partial(client_host, transport=memnet))
        peer = await client.connect(coordinator.host.addrs()[0])
        job = SubmitJob(job_id=secrets.token_bytes(16), model="tiny", prompt=PROMPT, max_tokens=MAX_TOKENS)
        with trio.fail_after(90):
            reply = await client.request(peer, job)
        assert isinstance(reply, JobAccepted), reply
        assert cheater.jobs_run == 1, "the cheater was the first prover"
        assert reply.tokens == honest, "the cheat never reaches the client"
        assert cheater.host.peer_id not in reply.workers and cheater.host.peer_id in reply.failed
        assert cheater.public_key not in {c.account for c in _receipt(reply).credits}
        assert coordinator.ledger.balance(cheater.public_key) == 0
        record = coordinator.coordinator.reputation.get(cheater.public_key, Reputation())
        assert record.invalid == 1
        assert sum(w.jobs_run for w in workers.values()) == 2  # the cheat, then the honest re-run
        nursery.cancel_scope.cancel()


async def test_a_worker_that_cannot_score_is_replaced_as_auditor(
    tmp_path: pathlib.Path, tiny_model_path: pathlib.Path, memnet: MemoryNetwork, memnet_clock: MockClock
) -> None:
    info = ModelInfo(name="tiny", path=tiny_model_path, sha256=sha256_file(tiny_model_path))
    rng = _Preferring(6)
    coordinator = _coordinator(tmp_path, memnet, rng)
    async with trio.open_nursery() as nursery:
        await nursery.start(coordinator.run)
        engines: dict[str, Engine] = {
            "prover": LlamaEngine(info, n_threads=1),
            "noscore": WrongTokensEngine(LlamaEngine(info, n_threads=1)),  # has no score(): cannot audit
            "auditor": LlamaEngine(info, n_threads=1),
        }
        workers = await _workers(nursery, tmp_path, coordinator, engines, memnet)
        ids = {name: node.host.peer_id for name, node in workers.items() if node.host is not None}
        rng.prefer = [ids["prover"], ids["noscore"]]  # proves first, then is the first auditor drawn
        client: StreamHost = await nursery.start(partial(client_host, transport=memnet))
        assert coordinator.host is not None
        peer = await client.connect(coordinator.host.addrs()[0])
        job = SubmitJob(job_id=secrets.token_bytes(16), model="tiny", prompt=PROMPT, max_tokens=MAX_TOKENS)
        with trio.fail_after(90):
            reply = await client.request(peer, job)
        assert isinstance(reply, JobAccepted), reply
        assert reply.workers == [ids["prover"], ids["auditor"]] and reply.failed == [ids["noscore"]]
        assert reply.tokens == await _honest_tokens(info)
        assert workers["noscore"].worker_driver.audits_run == 0 and workers["noscore"].jobs_run == 0
        assert workers["auditor"].worker_driver.audits_run == 1
        nursery.cancel_scope.cancel()

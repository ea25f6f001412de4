"""The cheater matrix on nodes (issue 14; spec/verification.md §13.2, §13.6): in-process nodes on the
in-memory network in virtual time (``memnet``, ``memnet_clock``), llama.cpp with the tiny model, a
coordinator in audit mode (set explicitly). Provers that
cheat — lazy (random tokens), a model swap (the tiny model written with another seed), one token in 20
changed, an intermittent cheater (honest, then cheating on a fixed schedule) — and an auditor that passes
every claim without scoring it. For each: no wrong answer reaches the client, and the cheater earns
nothing for the jobs it cheated on (asserted on receipts and on the coordinator's ledger)."""

from __future__ import annotations

import pathlib
import random
import secrets
from functools import partial

import pytest
import trio
from opengrid_ledger import Receipt, decode_body, decode_entry
from trio.testing import MockClock

from opengrid.core.coordinator import CoordinatorConfig
from opengrid.core.reputation import Reputation
from opengrid.engines import Engine, Generation, GenerationRequest, LlamaEngine, ModelInfo, sha256_file
from opengrid.engines.adversarial import (
    IntermittentEngine,
    LazyEngine,
    OneInNEngine,
    RubberStampEngine,
    SwappedModelEngine,
    WrongTokensEngine,
)
from opengrid.engines.tiny_model import write_tiny_gguf
from opengrid.net.transport import StreamHost
from opengrid.node.config import NodeConfig
from opengrid.node.service import Node
from opengrid.testing.memnet import MemoryNetwork
from opengrid.wire.commitment import commit_output
from opengrid.wire.contract import DecodingContract
from opengrid.wire.messages import JobAccepted, SubmitJob
from tests.node.test_audit_mode import _Preferring
from tests.node.workers import client_host

MAX_TOKENS = 24
"""Long enough for the one-in-20 cheat to change a token (position 19)."""
PROMPTS = (
    "Once upon a time",
    "The capital of France",
    "List three colours",
    "Why is the sky blue",
    "A story about a cat",
    "Tell me a joke",
    "Write a poem about rain",
    "How do bees make honey",
    "Name a large river",
    "What is a prime number",
    "Describe a quiet morning",
    "Count to five",
)


def _info(path: pathlib.Path, name: str = "tiny") -> ModelInfo:
    return ModelInfo(name=name, path=path, sha256=sha256_file(path))


def _coordinator(base: pathlib.Path, rng: random.Random, memnet: MemoryNetwork, **audit: float) -> Node:
    config = CoordinatorConfig.plain(heartbeat_s=0.5, verify="audit", **audit)
    return Node(
        NodeConfig(data_dir=base / "c", role="coordinator", heartbeat_s=0.5, verify="audit"),
        coordinator_config=config,
        rng=rng,
        transport=memnet,
    )


async def _workers(
    nursery: trio.Nursery,
    base: pathlib.Path,
    coordinator: Node,
    engines: dict[str, Engine],
    memnet: MemoryNetwork,
) -> dict[str, Node]:
    assert coordinator.host is not None
    nodes = {}
    for name, engine in engines.items():
        config = NodeConfig(
            data_dir=base / name,
            role="worker",
            bootstrap=(coordinator.host.addrs()[0],),
            heartbeat_s=0.5,
            skip_speed_test=True,  # no start-up generation: the intermittent cheater counts job generations
        )
        node = Node(config, engine=engine, transport=memnet)
        await nursery.start(node.run)
        nodes[name] = node
    with trio.fail_after(30):
        for node in nodes.values():
            await node.registered.wait()
    return nodes


async def _honest(info: ModelInfo, prompts: tuple[str, ...]) -> dict[str, list[int]]:
    def generate() -> dict[str, list[int]]:
        with LlamaEngine(info, n_threads=1) as engine:
            return {
                p: list(engine.generate(GenerationRequest(prompt=p, max_tokens=MAX_TOKENS)).tokens)
                for p in prompts
            }

    return await trio.to_thread.run_sync(generate)


async def _outputs(
    info: ModelInfo, prompts: tuple[str, ...]
) -> tuple[DecodingContract, dict[str, Generation]]:
    """An honest engine's contract and its outputs to ``prompts``."""

    def generate() -> tuple[DecodingContract, dict[str, Generation]]:
        with LlamaEngine(info, n_threads=1) as engine:
            requests = {p: GenerationRequest(prompt=p, max_tokens=MAX_TOKENS) for p in prompts}
            return engine.contract, {p: engine.generate(r) for p, r in requests.items()}

    return await trio.to_thread.run_sync(generate)


def _receipt(reply: JobAccepted) -> Receipt:
    payload = decode_body(decode_entry(reply.receipt).body).payload
    assert isinstance(payload, Receipt)
    return payload


class _Grid:
    """A coordinator and named workers on the in-memory network, and a client to submit jobs."""

    def __init__(self, coordinator: Node, workers: dict[str, Node], client: StreamHost, peer: str) -> None:
        self.coordinator, self.workers, self.client, self.peer = coordinator, workers, client, peer
        self.ids = {name: node.host.peer_id for name, node in workers.items() if node.host is not None}

    async def submit(self, prompt: str) -> JobAccepted:
        job = SubmitJob(job_id=secrets.token_bytes(16), model="tiny", prompt=prompt, max_tokens=MAX_TOKENS)
        with trio.fail_after(90):
            reply = await self.client.request(self.peer, job)
        assert isinstance(reply, JobAccepted), reply
        return reply

    def balance(self, name: str) -> int:
        assert self.coordinator.ledger is not None
        return self.coordinator.ledger.balance(self.workers[name].public_key)

    def reputation(self, name: str) -> Reputation:
        assert self.coordinator.coordinator is not None
        return self.coordinator.coordinator.reputation.get(self.workers[name].public_key, Reputation())

    def audit_record(self, name: str) -> Reputation:
        assert self.coordinator.coordinator is not None
        table = self.coordinator.coordinator.audit_reputation
        return table.get(self.workers[name].public_key, Reputation())


async def _open(
    nursery: trio.Nursery,
    base: pathlib.Path,
    rng: random.Random,
    engines: dict[str, Engine],
    memnet: MemoryNetwork,
    **audit: float,
) -> _Grid:
    coordinator = _coordinator(base, rng, memnet, **audit)
    await nursery.start(coordinator.run)
    workers = await _workers(nursery, base, coordinator, engines, memnet)
    client: StreamHost = await nursery.start(partial(client_host, transport=memnet))
    assert coordinator.host is not None
    peer = await client.connect(coordinator.host.addrs()[0])
    return _Grid(coordinator, workers, client, peer)


def _cheating_engine(kind: str, info: ModelInfo, swap: ModelInfo) -> Engine:
    inner = LlamaEngine(info, n_threads=1)
    if kind == "lazy":
        return LazyEngine(inner, seed=3)
    if kind == "model-swap":
        return SwappedModelEngine(inner, LlamaEngine(swap, n_threads=1))
    return OneInNEngine(inner, n=20)


@pytest.mark.parametrize("kind", ["lazy", "model-swap", "one-in-20"])
async def test_a_cheating_prover_is_caught_by_its_audit_and_earns_nothing(
    tmp_path: pathlib.Path,
    tiny_model_path: pathlib.Path,
    memnet: MemoryNetwork,
    kind: str,
    memnet_clock: MockClock,
) -> None:
    info = _info(tiny_model_path)
    swap = _info(write_tiny_gguf(tmp_path / "tiny-seed1.gguf", seed=1), name="tiny-swap")
    prompt = PROMPTS[0]
    honest = (await _honest(info, (prompt,)))[prompt]
    assert len(honest) >= 20, "the one-in-20 cheat needs 20 tokens"
    rng = _Preferring(11)
    async with trio.open_nursery() as nursery:
        engines: dict[str, Engine] = {
            "cheat": _cheating_engine(kind, info, swap),
            "w1": LlamaEngine(info, n_threads=1),
            "w2": LlamaEngine(info, n_threads=1),
        }
        grid = await _open(nursery, tmp_path, rng, engines, memnet)
        rng.prefer = [grid.ids["cheat"]]  # the cheater proves first
        reply = await grid.submit(prompt)
        assert grid.workers["cheat"].jobs_run == 1, "the cheater's claim was the first"
        assert reply.tokens == honest, "the cheat never reaches the client"
        assert grid.ids["cheat"] in reply.failed and grid.ids["cheat"] not in reply.workers
        assert grid.workers["cheat"].public_key not in {c.account for c in _receipt(reply).credits}
        assert grid.balance("cheat") == 0
        assert grid.reputation("cheat").invalid == 1
        nursery.cancel_scope.cancel()


async def test_an_intermittent_cheater_earns_for_its_honest_jobs_and_nothing_for_its_cheats(
    tmp_path: pathlib.Path, tiny_model_path: pathlib.Path, memnet: MemoryNetwork, memnet_clock: MockClock
) -> None:
    info = _info(tiny_model_path)
    prompts = PROMPTS[:7]
    honest = await _honest(info, prompts)
    rng = _Preferring(12)
    inner = LlamaEngine(info, n_threads=1)
    # Honest for its first 3 generations, then wrong on every third (generations 3 and 6 of 7): a high
    # rate, so the bounded run sees two cheats, on a fixed schedule, so the test is deterministic.
    cheater = IntermittentEngine(inner, WrongTokensEngine(inner), honest_first=3, every=3)
    async with trio.open_nursery() as nursery:
        engines: dict[str, Engine] = {
            "cheat": cheater,
            "w1": LlamaEngine(info, n_threads=1),
            "w2": LlamaEngine(info, n_threads=1),
        }
        grid = await _open(nursery, tmp_path, rng, engines, memnet)
        rng.prefer = [grid.ids["cheat"]]  # it proves every job first
        key = grid.workers["cheat"].public_key
        earned = 0
        for number, prompt in enumerate(prompts):
            reply = await grid.submit(prompt)
            assert reply.tokens == honest[prompt], f"job {number}: no wrong answer reaches the client"
            credits = {c.account: c.points for c in _receipt(reply).credits}
            if cheater.cheats_on(number):
                assert key not in credits and grid.ids["cheat"] in reply.failed, f"job {number} was a cheat"
            else:
                assert credits[key] == len(honest[prompt]), f"job {number} was honest: paid as the prover"
                earned += credits[key]
        assert cheater.cheats == 2 and cheater.generations == len(prompts)
        assert earned > 0 and grid.balance("cheat") == earned, "paid for its 5 honest jobs only"
        assert grid.reputation("cheat").invalid == 2
        nursery.cancel_scope.cancel()


async def test_an_auditor_that_always_passes_is_caught_by_a_canary_audit_and_no_longer_drawn(
    tmp_path: pathlib.Path, tiny_model_path: pathlib.Path, memnet: MemoryNetwork, memnet_clock: MockClock
) -> None:
    info = _info(tiny_model_path)
    honest = await _honest(info, PROMPTS)
    stamp = RubberStampEngine(LlamaEngine(info, n_threads=1))
    async with trio.open_nursery() as nursery:
        engines: dict[str, Engine] = {
            "stamp": stamp,
            **{name: LlamaEngine(info, n_threads=1) for name in ("w1", "w2", "w3")},
        }
        # Every claim also sends a canary audit (rate 1). The draws prefer w1 as the prover, w2 as its
        # auditor and the stamp next, so the canary audit, drawn after the claim's auditor, goes to the
        # stamp (whenever it has an answer it never saw), which never audits a client's claim here.
        rng = _Preferring(21)
        grid = await _open(nursery, tmp_path, rng, engines, memnet, audit_canary_rate=1.0)
        rng.prefer = [grid.ids["w1"], grid.ids["w2"], grid.ids["stamp"]]
        # Answers a trusted node computed (``add_known_answer``): a small network's own verified answers
        # are soon all seen by its few workers, and a canary needs answers its target never saw.
        assert grid.coordinator.coordinator is not None
        contract, outputs = await _outputs(info, PROMPTS[8:])
        for prompt, output in outputs.items():
            grid.coordinator.coordinator.add_known_answer(
                prompt,
                contract,
                MAX_TOKENS,
                commit_output(output.tokens, output.text),
                claim=(output.tokens, output.text, output.finish_reason),
            )
        caught_after = None
        for number, prompt in enumerate(PROMPTS[:8]):
            reply = await grid.submit(prompt)
            assert reply.tokens == honest[prompt]
            if grid.audit_record("stamp").invalid:
                caught_after = number
                break
        assert caught_after is not None, f"caught within 8 jobs; it passed {stamp.stamped} claims"
        assert grid.reputation("stamp").invalid == 1
        audits_then = grid.workers["stamp"].worker_driver.audits_run
        rng.prefer = [grid.ids["w1"], grid.ids["stamp"]]  # now the stamp is the first choice to audit
        for prompt in PROMPTS[caught_after + 1 : caught_after + 4]:
            reply = await grid.submit(prompt)
            assert reply.tokens == honest[prompt] and grid.ids["stamp"] not in reply.workers[1:]
        assert grid.workers["stamp"].worker_driver.audits_run == audits_then, "no longer drawn to audit"
        nursery.cancel_scope.cancel()


async def test_a_cheat_passed_by_a_rubber_stamp_auditor_is_caught_by_the_second_audit(
    tmp_path: pathlib.Path, tiny_model_path: pathlib.Path, memnet: MemoryNetwork, memnet_clock: MockClock
) -> None:
    info = _info(tiny_model_path)
    prompts = PROMPTS[:3]
    honest = await _honest(info, prompts)
    rng = _Preferring(13)
    stamp = RubberStampEngine(LlamaEngine(info, n_threads=1))
    async with trio.open_nursery() as nursery:
        engines: dict[str, Engine] = {
            "cheat": OneInNEngine(LlamaEngine(info, n_threads=1), n=20),
            "stamp": stamp,
            "w1": LlamaEngine(info, n_threads=1),
            "w2": LlamaEngine(info, n_threads=1),
        }
        # Every claim gets a second auditor: a cartel's pass meets an honest failure, and a tie-break.
        grid = await _open(nursery, tmp_path, rng, engines, memnet, audit_second_rate=1.0)
        rng.prefer = [grid.ids["cheat"], grid.ids["stamp"]]  # the cheater proves, the stamp audits it
        reply = await grid.submit(prompts[0])
        assert stamp.stamped == 1, "the rubber stamp passed the cheat"
        assert reply.tokens == honest[prompts[0]], "the cheat never reaches the client"
        assert {grid.ids["cheat"], grid.ids["stamp"]} <= set(reply.failed)
        accounts = {c.account for c in _receipt(reply).credits}
        assert not accounts & {grid.workers["cheat"].public_key, grid.workers["stamp"].public_key}
        assert grid.balance("cheat") == grid.balance("stamp") == 0
        assert grid.reputation("cheat").invalid == 1 and grid.audit_record("stamp").invalid == 1
        audits_then = grid.workers["stamp"].worker_driver.audits_run
        for prompt in prompts[1:]:  # still preferred by the draw, but never drawn to audit again
            reply = await grid.submit(prompt)
            assert reply.tokens == honest[prompt]
        assert stamp.stamped == 1 and grid.workers["stamp"].worker_driver.audits_run == audits_then
        nursery.cancel_scope.cancel()

"""Sealed audits on real nodes (issue 14; spec/sealed-mode.md §11): a sealed job submitted through the SDK
to a coordinator in audit mode is generated once by a worker it was sealed to and re-scored with llama.cpp
by another; the client opens the answer and checks the receipt. A prover that returns wrong tokens
(``WrongTokensEngine``) is caught by its sealed auditor and the client still gets the honest answer. The
coordinator never holds plaintext: neither in the frames it received (``--trace-frames``) nor in the
files it stored (its job store and ledger). The nodes run on the in-memory network in virtual time
(``memnet``, ``memnet_clock``)."""

from __future__ import annotations

import pathlib

import trio
from opengrid_sdk import Client, Completion
from trio.testing import MockClock

from opengrid.core.coordinator import CoordinatorConfig
from opengrid.core.reputation import Reputation
from opengrid.engines import Engine, GenerationRequest, LlamaEngine, ModelInfo, sha256_file
from opengrid.engines.adversarial import WrongTokensEngine
from opengrid.node.config import NodeConfig
from opengrid.node.service import Node
from opengrid.testing.memnet import MemoryNetwork
from tests.node.test_audit_mode import MAX_TOKENS, _Preferring, _workers

SECRET = "The launch code is zebra-4711-omega. Once upon a time"


async def _honest_tokens(info: ModelInfo) -> list[int]:
    def generate() -> list[int]:
        with LlamaEngine(info, n_threads=1) as engine:
            return list(engine.generate(GenerationRequest(prompt=SECRET, max_tokens=MAX_TOKENS)).tokens)

    return await trio.to_thread.run_sync(generate)


def _coordinator(base: pathlib.Path, rng: _Preferring, trace: pathlib.Path, memnet: MemoryNetwork) -> Node:
    return Node(
        NodeConfig(data_dir=base / "c", role="coordinator", heartbeat_s=0.5, verify="audit"),
        coordinator_config=CoordinatorConfig.plain(heartbeat_s=0.5, verify="audit"),
        rng=rng,
        trace_frames=trace,
        transport=memnet,
    )


def _complete(address: str, trusted: list[str], memnet: MemoryNetwork) -> Completion:
    """The SDK's sealed ``complete`` (its default), from a worker thread as a program would call it."""
    with Client([address], timeout=120, transport=memnet) as client:
        return client.complete(SECRET, model="tiny", max_tokens=MAX_TOKENS, trusted=trusted, retries=0)


def _stored(base: pathlib.Path) -> bytes:
    """Every byte the coordinator keeps on disk (SQLite job store, ledger, keys, logs)."""
    return b"".join(p.read_bytes() for p in sorted((base / "c").rglob("*")) if p.is_file())


def _assert_never_plaintext(seen: bytes, done: Completion) -> None:
    assert len(seen) > 1000, "the capture should hold the quote, the submission, the claim and the report"
    for plaintext in (SECRET, "zebra-4711", done.text):
        assert plaintext.encode() not in seen


async def test_a_sealed_job_is_generated_once_audited_once_and_opened_by_the_client(
    tmp_path: pathlib.Path, tiny_model_path: pathlib.Path, memnet: MemoryNetwork, memnet_clock: MockClock
) -> None:
    info = ModelInfo(name="tiny", path=tiny_model_path, sha256=sha256_file(tiny_model_path))
    trace = tmp_path / "coordinator-frames.bin"
    coordinator = _coordinator(tmp_path, _Preferring(3), trace, memnet)
    async with trio.open_nursery() as nursery:
        await nursery.start(coordinator.run)
        engines: dict[str, Engine] = {n: LlamaEngine(info, n_threads=1) for n in ("w1", "w2", "w3")}
        workers = await _workers(nursery, tmp_path, coordinator, engines, memnet)
        assert coordinator.host is not None
        address = coordinator.host.addrs()[0]
        ids = [w.host.peer_id for w in workers.values() if w.host is not None]
        with trio.fail_after(120):
            done = await trio.to_thread.run_sync(_complete, address, ids, memnet)
        assert done.sealed and done.tokens == await _honest_tokens(info)
        done.receipt.verify(tokens=done.tokens, text=done.text, job_id=done.job_id)
        assert sum(w.jobs_run for w in workers.values()) == 1, "one generation, not replicas"
        assert sum(w.worker_driver.audits_run for w in workers.values()) == 1
        by_peer = {w.host.peer_id: w for w in workers.values() if w.host is not None}
        prover, auditor = (by_peer[p] for p in done.workers)
        assert prover.jobs_run == 1 and auditor.worker_driver.audits_run == 1
        n = max(1, len(done.tokens))
        assert done.receipt.credits == {prover.public_key: n, auditor.public_key: -(-n // 2)}
        _assert_never_plaintext(trace.read_bytes() + _stored(tmp_path), done)
        nursery.cancel_scope.cancel()


async def test_a_cheating_sealed_prover_is_caught_and_the_client_gets_the_honest_answer(
    tmp_path: pathlib.Path, tiny_model_path: pathlib.Path, memnet: MemoryNetwork, memnet_clock: MockClock
) -> None:
    info = ModelInfo(name="tiny", path=tiny_model_path, sha256=sha256_file(tiny_model_path))
    honest = await _honest_tokens(info)
    trace = tmp_path / "coordinator-frames.bin"
    rng = _Preferring(5)
    coordinator = _coordinator(tmp_path, rng, trace, memnet)
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
        rng.prefer = [cheater.host.peer_id]  # it is drawn first: it proves
        ids = [w.host.peer_id for w in workers.values() if w.host is not None]
        with trio.fail_after(150):
            done = await trio.to_thread.run_sync(_complete, coordinator.host.addrs()[0], ids, memnet)
        assert cheater.jobs_run == 1, "the cheater was the first prover"
        assert done.tokens == honest, "the cheat never reaches the client"
        done.receipt.verify(tokens=done.tokens, text=done.text, job_id=done.job_id)
        assert cheater.host.peer_id not in done.workers and cheater.host.peer_id in done.failed
        assert cheater.public_key not in done.receipt.credits
        assert coordinator.ledger.balance(cheater.public_key) == 0
        assert coordinator.coordinator.reputation.get(cheater.public_key, Reputation()).invalid == 1
        assert sum(w.jobs_run for w in workers.values()) == 2, "the cheat, then the honest re-run"
        assert done.resealed == (), "answered within the workers it was sealed to"
        _assert_never_plaintext(trace.read_bytes() + _stored(tmp_path), done)
        nursery.cancel_scope.cancel()

"""Sealed chunked streaming on real nodes (issue 14 item 5; spec/verification.md §14.3): the SDK's sealed
``stream`` against a coordinator in audit mode and workers running the tiny model in llama.cpp. The prover
seals each chunk to the client and to the workers that may audit it; the auditor opens its copy, scores it
in a scoring session that keeps its KV cache, and names the chunk's commitment in its verdict; the client
opens each verified chunk as it arrives. The coordinator never holds plaintext: neither in the frames it
received (``trace_frames``) nor in the files it stored.

The engines are paced (``_Paced``, as in test_audit_streaming.py) so that "before the prover ends" is
observable on a machine where the tiny model generates ~1,000 tokens a second. The nodes run on the
in-memory network in virtual time (``memnet``, ``memnet_clock``), where the pacing costs no real time; the
SDK's stream runs in a ``run_sync_waiting`` thread (virtual time flows while it waits for chunks)."""

from __future__ import annotations

import pathlib
from typing import Any

import trio
from opengrid_sdk import Client, Completion
from trio.testing import MockClock

from opengrid.core.audit import SamplingParams
from opengrid.core.coordinator import CoordinatorConfig
from opengrid.core.reputation import Reputation
from opengrid.engines import GenerationRequest, LlamaEngine, ModelInfo, sha256_file
from opengrid.node.config import NodeConfig
from opengrid.node.service import Node
from opengrid.testing.memnet import MemoryNetwork, run_sync_waiting
from tests.node.test_audit_mode import _Preferring, _workers
from tests.node.test_audit_streaming import _loop_time, _MidStreamLiar, _Paced

SECRET = "The launch code is zebra-4711-omega. Once upon a time"
MAX_TOKENS = 64


def _info(path: pathlib.Path) -> ModelInfo:
    return ModelInfo(name="tiny", path=path, sha256=sha256_file(path))


def _coordinator(base: pathlib.Path, rng: _Preferring, trace: pathlib.Path, memnet: MemoryNetwork) -> Node:
    return Node(
        NodeConfig(data_dir=base / "c", role="coordinator", heartbeat_s=0.5, verify="audit"),
        coordinator_config=CoordinatorConfig.plain(heartbeat_s=0.5, verify="audit"),
        rng=rng,
        trace_frames=trace,
        transport=memnet,
    )


async def _honest(info: ModelInfo) -> tuple[list[int], str]:
    def generate() -> tuple[list[int], str]:
        with LlamaEngine(info, n_threads=1) as engine:
            answer = engine.generate(GenerationRequest(prompt=SECRET, max_tokens=MAX_TOKENS))
            return list(answer.tokens), answer.text

    return await trio.to_thread.run_sync(generate)


async def _local(info: ModelInfo, job_id: bytes, sampling: SamplingParams) -> str:
    """What this model generates for the job, on one build, without the grid."""

    def generate() -> str:
        with LlamaEngine(info, n_threads=1) as engine:
            return engine.generate(
                GenerationRequest(SECRET, MAX_TOKENS, sampling=sampling, job_id=job_id)
            ).text

    return await trio.to_thread.run_sync(generate)


def _sealed_stream(
    address: str, trusted: list[str], memnet: MemoryNetwork, **sampling: Any
) -> tuple[list[tuple[float, str]], Completion]:
    """The SDK's sealed stream from a worker thread of the test's run: each verified text chunk with the
    time it arrived (the loop's clock), then the Completion."""
    with Client([address], timeout=120, transport=memnet) as client:
        chunks: list[tuple[float, str]] = []
        stream = client.stream(
            SECRET, model="tiny", max_tokens=MAX_TOKENS, sealed=True, trusted=trusted, **sampling
        )
        for item in stream:
            if isinstance(item, Completion):
                return chunks, item
            assert isinstance(item, str), "a sealed stream has no previews"
            chunks.append((_loop_time(), item))
    raise AssertionError("the stream ended without its Completion")


def _stored(base: pathlib.Path) -> bytes:
    """Every byte the coordinator keeps on disk (SQLite job store, ledger, keys, logs)."""
    return b"".join(p.read_bytes() for p in sorted((base / "c").rglob("*")) if p.is_file())


def _assert_never_plaintext(seen: bytes, texts: list[str]) -> None:
    assert len(seen) > 1000, "the capture should hold the quote, the submission, the chunks and the reports"
    for plaintext in (SECRET, "zebra-4711", *texts):
        assert plaintext.encode() not in seen, plaintext


async def test_a_sealed_stream_yields_verified_chunks_before_the_prover_ends(
    tmp_path: pathlib.Path, tiny_model_path: pathlib.Path, memnet: MemoryNetwork, memnet_clock: MockClock
) -> None:
    info = _info(tiny_model_path)
    tokens, text = await _honest(info)
    trace = tmp_path / "coordinator-frames.bin"
    coordinator = _coordinator(tmp_path, _Preferring(3), trace, memnet)
    async with trio.open_nursery() as nursery:
        await nursery.start(coordinator.run)
        engines = {n: _Paced(info, n_threads=1) for n in ("w1", "w2", "w3")}
        workers = await _workers(nursery, tmp_path, coordinator, dict(engines), memnet)
        assert coordinator.host is not None
        address = coordinator.host.addrs()[0]
        ids = [w.host.peer_id for w in workers.values() if w.host is not None]
        with trio.fail_after(150):
            chunks, done = await run_sync_waiting(_sealed_stream, address, ids, memnet)
        assert done.sealed and done.tokens == tokens and done.text == text
        done.receipt.verify(tokens=done.tokens, text=done.text, job_id=done.job_id)
        streamed = "".join(piece for _, piece in chunks)
        assert streamed == text, "the verified chunks are the whole answer"
        assert len(chunks) >= 3, "the answer came in several verified chunks, not one at the end"
        prover_ended = max(e.ended[-1] for e in engines.values() if getattr(e, "ended", None))
        assert chunks[0][0] < prover_ended, "a verified chunk arrived while the prover still generated"
        assert sum(w.jobs_run for w in workers.values()) == 1, "one generation"
        assert sum(w.worker_driver.audits_run for w in workers.values()) == 1, "one (chunked) audit"

        # The same job unstreamed (sealed, greedy: the same seed) gives the same answer.
        def complete() -> Completion:
            with Client([address], timeout=120, transport=memnet) as client:
                return client.complete(SECRET, model="tiny", max_tokens=MAX_TOKENS, trusted=ids, retries=0)

        with trio.fail_after(120):
            whole = await trio.to_thread.run_sync(complete)  # no stream: the clock stands still meanwhile
        assert whole.text == streamed and whole.tokens == done.tokens

        # A sampled job: the streamed text is the sample its job id and seed fix (spec §11), audited chunk
        # by chunk under the same Gumbel-max rule.
        with trio.fail_after(120):
            sampled_chunks, sampled = await run_sync_waiting(
                lambda: _sealed_stream(address, ids, memnet, temperature=0.8, seed=7)
            )
        expected = await _local(info, sampled.job_id, SamplingParams(temperature=0.8, seed=7))
        assert "".join(p for _, p in sampled_chunks) == sampled.text == expected
        _assert_never_plaintext(
            trace.read_bytes() + _stored(tmp_path), [text, *(p for _, p in chunks if len(p) > 8)]
        )
        nursery.cancel_scope.cancel()


async def test_a_cheating_sealed_prover_is_stopped_at_its_bad_chunk_which_never_reaches_the_client(
    tmp_path: pathlib.Path, tiny_model_path: pathlib.Path, memnet: MemoryNetwork, memnet_clock: MockClock
) -> None:
    info = _info(tiny_model_path)
    tokens, text = await _honest(info)
    trace = tmp_path / "coordinator-frames.bin"
    rng = _Preferring(5)
    coordinator = _coordinator(tmp_path, rng, trace, memnet)
    async with trio.open_nursery() as nursery:
        await nursery.start(coordinator.run)
        liar = _MidStreamLiar(info, n_threads=1)  # honest for 12 tokens, then other tokens
        engines = {"liar": liar, "w1": _Paced(info, n_threads=1), "w2": _Paced(info, n_threads=1)}
        workers = await _workers(nursery, tmp_path, coordinator, dict(engines), memnet)
        cheater = workers["liar"]
        assert (
            cheater.host is not None and coordinator.host is not None and coordinator.coordinator is not None
        )
        rng.prefer = [cheater.host.peer_id]  # drawn first: it proves
        before = liar.generated  # its start-up measurement's tokens
        ids = [w.host.peer_id for w in workers.values() if w.host is not None]
        with trio.fail_after(150):
            chunks, done = await run_sync_waiting(_sealed_stream, coordinator.host.addrs()[0], ids, memnet)
        lied = liar.generated - before
        assert cheater.jobs_run == 0 and lied >= _MidStreamLiar.LIE_AT, "it proved, and was stopped"
        assert lied < MAX_TOKENS, "stopped at the chunk that holds its lie, not at the end"
        assert "".join(piece for _, piece in chunks) == text, "no text of the lie was streamed"
        assert done.tokens == tokens and done.text == text
        assert cheater.host.peer_id in done.failed and cheater.public_key not in done.receipt.credits
        assert coordinator.coordinator.reputation.get(cheater.public_key, Reputation()).invalid == 1
        _assert_never_plaintext(trace.read_bytes() + _stored(tmp_path), [text])
        nursery.cancel_scope.cancel()

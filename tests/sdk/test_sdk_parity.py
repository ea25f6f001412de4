"""The SDK's parity with the API (issue 19): ``models()``, ``chat(messages)`` and ``receipt(job_id)`` on
the sync and the async client, against nodes (a coordinator, two workers running the tiny model in
llama.cpp), on the in-memory network in virtual time (``memnet``, ``memnet_clock``): the async client
takes the same ``transport`` as the sync one.

- ``models()`` lists the tiny model with its file's sha256, both workers and its weight; on the wire the
  chat template comes only for a named model, and a worker answers ``not_coordinator``;
- ``chat`` renders the workers' chat template here (sealed by default, open on request), and the job's
  verified tokens are exactly what llama.cpp generates locally from that rendered prompt in chat format
  (no extra BOS); bad messages are refused with ``ConfigError`` before anything is sent (a client whose
  bootstrap address leads nowhere raises that, not a transport error);
- ``receipt`` returns the verified receipt: with the answer checked against it for the job's own client
  while the coordinator keeps the answer (open jobs), the receipt alone otherwise; an unknown job id is
  ``UnknownJobError`` saying what to do; a malformed one ``ConfigError``. A worker answers for the
  receipts that credit it.
"""

from __future__ import annotations

import asyncio
import pathlib
import secrets
from functools import partial
from typing import Any

import pytest
import trio
from nacl.signing import SigningKey
from opengrid_ledger import Entry, Receipt, decode_body
from opengrid_sdk import AsyncClient, Client, Completion, FetchedReceipt, ServedModel
from trio.testing import MockClock

from opengrid.core.coordinator import CoordinatorConfig
from opengrid.engines import GenerationRequest, LlamaEngine, ModelInfo, sha256_file
from opengrid.errors import ConfigError, UnknownJobError, UnknownModelError
from opengrid.net.keys import peer_id_of
from opengrid.net.transport import LIBP2P, Transport
from opengrid.node.config import NodeConfig
from opengrid.node.service import Node
from opengrid.testing.memnet import MemoryNetwork, run_sync_waiting
from opengrid.wire.messages import MAX_PROMPT_CHARS, ErrorReply, ModelList, ModelsRequest
from tests.node.workers import client_host, start_workers
from tests.waiting import until

NETWORK = "sdk-parity-test"
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Once upon a time"}]
RENDERED = "<|system|>\nBe brief.\n<|user|>\nOnce upon a time\n<|assistant|>\n"
"""What the tiny model's chat template (opengrid/engines/tiny_model.py) makes of ``MESSAGES``."""
MAX_TOKENS = 8


def _coordinator(base: pathlib.Path, transport: Transport = LIBP2P) -> Node:
    config = NodeConfig(data_dir=base / "c", role="coordinator", network=NETWORK, heartbeat_s=0.5)
    return Node(config, coordinator_config=CoordinatorConfig.plain(heartbeat_s=0.5), transport=transport)


async def _local_chat_tokens(model: pathlib.Path) -> list[int]:
    """What one build of llama.cpp generates greedily from ``RENDERED`` tokenized as a chat prompt."""

    def generate() -> list[int]:
        info = ModelInfo(name="tiny", path=model, sha256=sha256_file(model))
        with LlamaEngine(info, n_threads=1) as engine:
            return list(engine.generate(GenerationRequest(RENDERED, MAX_TOKENS, add_bos=False)).tokens)

    return await trio.to_thread.run_sync(generate)


def _holds_receipt(entries: list[Entry], job_id: bytes) -> bool:
    receipts = (decode_body(e.body).payload for e in entries)
    return any(isinstance(r, Receipt) and r.job_id == job_id for r in receipts)


def _assert_receipt_of(fetched: FetchedReceipt, done: Completion) -> None:
    assert fetched.job_id == done.job_id
    assert fetched.receipt.entry == done.receipt.entry  # the very receipt the job's answer carried
    assert fetched.node == done.coordinator


async def test_models_chat_and_receipt_through_the_sync_client(
    tmp_path: pathlib.Path, tiny_model_path: pathlib.Path, memnet: MemoryNetwork, memnet_clock: MockClock
) -> None:
    coordinator = _coordinator(tmp_path, memnet)
    async with trio.open_nursery() as nursery:
        await nursery.start(coordinator.run)
        assert coordinator.host is not None
        address = coordinator.host.addrs()[0]
        workers = await start_workers(
            nursery, tmp_path, ("w1", "w2"), bootstrap=address, model_path=tiny_model_path,
            network=NETWORK, heartbeat_s=0.5, transport=memnet,
        )  # fmt: skip

        def through_the_sdk() -> dict[str, Any]:
            seen: dict[str, Any] = {}
            with Client([address], network=NETWORK, timeout=60, transport=memnet) as client:
                seen["models"] = client.models()
                seen["sealed"] = client.chat(MESSAGES, model="tiny", max_tokens=MAX_TOKENS)
                seen["open"] = client.chat(MESSAGES, model="tiny", max_tokens=MAX_TOKENS, sealed=False)
                seen["own_open"] = client.receipt(seen["open"].job_id)
                seen["own_sealed"] = client.receipt(seen["sealed"].job_id)
                seen["as_api_id"] = client.receipt(f"chatcmpl-{seen['open'].job_id.hex()}")
                with pytest.raises(UnknownJobError) as unknown:
                    client.receipt(b"\x42" * 16)
                seen["unknown"] = unknown.value
                with pytest.raises(UnknownModelError) as no_model:
                    client.chat(MESSAGES, model="no-such-model", max_tokens=MAX_TOKENS)
                seen["no_model"] = no_model.value
                for bad_id in (b"\x01" * 15, "not hex at all"):
                    with pytest.raises(ConfigError, match="job id"):
                        client.receipt(bad_id)
            with Client(
                [address], network=NETWORK, timeout=60, transport=memnet
            ) as stranger:  # another peer id
                seen["stranger"] = stranger.receipt(seen["open"].job_id)
            return seen

        seen = await trio.to_thread.run_sync(through_the_sdk)
        # A worker holds the receipts that credit it (pushed by the coordinator) and answers for them too.
        worker = workers[0]
        assert worker.host is not None and worker.ledger is not None
        ledger = worker.ledger
        await until(
            lambda: _holds_receipt(ledger.entries(), seen["open"].job_id), 20, lambda: f"{len(ledger)}"
        )

        def ask_the_worker() -> None:
            with Client([address], network=NETWORK, timeout=60, transport=memnet) as client:
                seen["from_worker"] = client.receipt(seen["open"].job_id, address=worker.host.addrs()[0])
                with pytest.raises(UnknownJobError) as unknown:
                    client.receipt(b"\x43" * 16, address=worker.host.addrs()[0])
                seen["unknown_at_worker"] = unknown.value

        await trio.to_thread.run_sync(ask_the_worker)
        # On the wire: templates come only for a named model; a worker lists no models (not_coordinator).
        host = await nursery.start(partial(client_host, transport=memnet))
        to_coordinator = await host.connect(address)
        listed = await host.request(to_coordinator, ModelsRequest())
        named = await host.request(to_coordinator, ModelsRequest(model=sha256_file(tiny_model_path)))
        refused = await host.request(await host.connect(worker.host.addrs()[0]), ModelsRequest())
        expected = await _local_chat_tokens(tiny_model_path)
        nursery.cancel_scope.cancel()

    assert isinstance(listed, ModelList) and [m.chat_template for m in listed.models] == [""]
    assert isinstance(named, ModelList) and len(named.models) == 1
    assert named.models[0].chat_template.startswith("{% for message in messages %}")
    assert isinstance(refused, ErrorReply) and refused.code == "not_coordinator"
    from_worker = seen["from_worker"]
    assert from_worker.receipt.entry == seen["open"].receipt.entry and not from_worker.output_verified
    assert from_worker.node == worker.host.peer_id and "on this worker" in str(seen["unknown_at_worker"])
    assert seen["models"] == [
        ServedModel(name="tiny", sha256=sha256_file(tiny_model_path), workers=2, weight=1)
    ]
    sealed, opened = seen["sealed"], seen["open"]
    assert sealed.sealed and not opened.sealed
    # Both were rendered from the workers' template and run in chat format: llama.cpp's own answer.
    assert sealed.tokens == opened.tokens == expected and sealed.text == opened.text
    assert len(sealed.workers) == len(opened.workers) == 2

    own_open, own_sealed, stranger = seen["own_open"], seen["own_sealed"], seen["stranger"]
    _assert_receipt_of(own_open, opened)
    assert own_open.output_verified and own_open.text == opened.text and own_open.tokens == opened.tokens
    _assert_receipt_of(own_sealed, sealed)  # the coordinator keeps only ciphertext: the receipt alone
    assert not own_sealed.output_verified and own_sealed.text is None and own_sealed.tokens is None
    _assert_receipt_of(stranger, opened)  # receipts are public; the answer goes to its client only
    assert not stranger.output_verified and stranger.text is None
    assert seen["as_api_id"].job_id == opened.job_id and seen["as_api_id"].output_verified
    assert own_open.receipt.receipt.n_tokens == len(opened.tokens)

    unknown = str(seen["unknown"])
    assert ("42" * 16) in unknown and "never ran here" in unknown and "ask the coordinator" in unknown
    assert "no-such-model" in str(seen["no_model"]) and "tiny" in str(seen["no_model"])


async def test_models_chat_and_receipt_through_the_async_client(
    tmp_path: pathlib.Path, tiny_model_path: pathlib.Path, memnet: MemoryNetwork, memnet_clock: MockClock
) -> None:
    coordinator = _coordinator(tmp_path, memnet)
    async with trio.open_nursery() as nursery:
        await nursery.start(coordinator.run)
        assert coordinator.host is not None
        address = coordinator.host.addrs()[0]
        await start_workers(
            nursery, tmp_path, ("w1", "w2"), bootstrap=address, model_path=tiny_model_path,
            network=NETWORK, heartbeat_s=0.5, transport=memnet,
        )  # fmt: skip

        async def in_asyncio() -> dict[str, Any]:
            seen: dict[str, Any] = {}
            async with await AsyncClient.connect(
                [address], network=NETWORK, timeout=60, transport=memnet
            ) as client:
                seen["models"] = await client.models()
                seen["chat"] = await client.chat(MESSAGES, model="tiny", max_tokens=MAX_TOKENS, sealed=False)
                seen["receipt"] = await client.receipt(seen["chat"].job_id)
                with pytest.raises(UnknownJobError):
                    await client.receipt(secrets.token_bytes(16))
                with pytest.raises(ConfigError, match="role"):
                    await client.chat([{"role": "wizard", "content": "hi"}], model="tiny")
            return seen

        # asyncio's loop in a thread of this run; the client's calls go from its worker threads into this
        # run (the transport's), where virtual time flows while they wait
        seen = await run_sync_waiting(asyncio.run, in_asyncio())
        expected = await _local_chat_tokens(tiny_model_path)
        nursery.cancel_scope.cancel()

    assert [(m.name, m.workers, m.weight) for m in seen["models"]] == [("tiny", 2, 1)]
    assert seen["chat"].tokens == expected
    _assert_receipt_of(seen["receipt"], seen["chat"])
    assert seen["receipt"].output_verified


@pytest.mark.parametrize(
    ("messages", "words"),
    [
        ([], "must not be empty"),
        ("hello", "must be a list"),
        ([{"role": "wizard", "content": "hi"}], "role 'wizard'"),
        ([{"role": "user", "content": 42}], "content is a int"),
        ([{"role": "user"}], "content is a NoneType"),
        ([{"role": "user", "content": "hi", "name": "bob"}], "key(s) ['name']"),
        (["hello"], "messages[0] is a str"),
        ([{"role": "user", "content": "x" * (MAX_PROMPT_CHARS + 1)}], "over the prompt limit"),
        ([{"role": "user", "content": "x"}] * 1025, "over the limit of 1024"),
    ],
)
def test_bad_messages_are_refused_before_anything_is_sent(messages: Any, words: str) -> None:
    # The bootstrap address leads nowhere: a chat that tried the network would raise TransportError.
    nobody = peer_id_of(bytes(SigningKey(bytes(32)).verify_key))
    nowhere = f"/ip4/127.0.0.1/tcp/1/p2p/{nobody}"
    with Client([nowhere], network=NETWORK, timeout=5) as client:
        with pytest.raises(ConfigError) as refused:
            client.chat(messages, model="tiny")
    assert words in str(refused.value)

"""A worker's registration heartbeat against a coordinator that answers late or never (spec/job-protocol.md
§6.1 step 6): the connection is kept through a late answer — re-dialling an overloaded coordinator only
adds a handshake to its load — and dropped for a fresh one after three beats without any answer.

A real worker node (libp2p host, llama.cpp on the tiny model) on 127.0.0.1 registers with a bare host that
reads every RegisterWorker and never replies.
"""

from __future__ import annotations

import pathlib
import secrets

import pytest
import trio

from opengrid.engines import LlamaEngine, ModelInfo, sha256_file
from opengrid.net.host import FrameStream, open_host
from opengrid.node import service
from opengrid.node.config import NodeConfig
from opengrid.node.service import Node
from opengrid.wire.messages import RegisterWorker

TIMEOUT_S = 0.4
"""The registration timeout for this test (the product's is at least 5 s)."""


async def test_a_silent_coordinator_keeps_its_connection_for_three_beats_then_gets_a_fresh_one(
    tmp_path: pathlib.Path, tiny_model_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service, "_registration_timeout", lambda heartbeat_s: TIMEOUT_S)
    connections: list[int] = []
    """The connection each registration arrived on, in order (identity of the muxed connection)."""

    async def never_answer(stream: FrameStream) -> None:
        if isinstance(await stream.receive(), RegisterWorker):  # (the worker also asks for our status)
            connections.append(id(stream._stream.muxed_conn))
            await trio.sleep_forever()  # the worker gives up on it (and resets the stream)

    async with open_host(secrets.token_bytes(32)) as silent, trio.open_nursery() as nursery:
        silent.set_handler(never_answer)
        model = ModelInfo(name="tiny", path=tiny_model_path, sha256=sha256_file(tiny_model_path))
        worker = Node(
            NodeConfig(
                data_dir=tmp_path / "w",
                role="worker",
                bootstrap=(silent.addrs()[0],),
                heartbeat_s=0.2,
            ),
            engine=LlamaEngine(model, n_threads=1),
        )
        await nursery.start(worker.run)
        with trio.fail_after(30):
            while len(connections) < 7:
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()

    first, second, third = connections[:3], connections[3:6], connections[6]
    assert len(set(first)) == 1, connections  # three unanswered beats on the same connection ...
    assert len(set(second)) == 1 and second[0] != first[0], connections  # ... then a fresh one, kept again
    assert third != second[0], connections
    assert not worker.registered.is_set()

"""A client's bad prompt does not take honest workers offline (issue 15, item 4): llama.cpp on the tiny
model, nodes on the in-memory network in virtual time.

Before: a prompt longer than the model's context came back from both workers as ``engine_error``; the
coordinator marked them offline and wrote a permanent EVIDENCE "timeout" entry against them, and the next
legitimate jobs failed. Now the workers answer ``malformed``, the client gets the context error, the
workers stay online with a clean record, and the next job is served at once.
"""

from __future__ import annotations

import pathlib
import secrets
from functools import partial

import trio
from opengrid_ledger import Evidence, decode_body
from trio.testing import MockClock

from opengrid.core.coordinator import CoordinatorConfig
from opengrid.engines import LlamaEngine, ModelInfo, sha256_file
from opengrid.net.transport import StreamHost
from opengrid.node.config import NodeConfig
from opengrid.node.service import Node
from opengrid.testing.memnet import MemoryNetwork
from opengrid.wire.messages import ErrorReply, JobAccepted, SubmitJob
from tests.node.workers import client_host


async def test_an_overlong_prompt_is_the_clients_error_and_the_workers_stay_online(
    tmp_path: pathlib.Path, tiny_model_path: pathlib.Path, memnet: MemoryNetwork, memnet_clock: MockClock
) -> None:
    info = ModelInfo(name="tiny", path=tiny_model_path, sha256=sha256_file(tiny_model_path))
    coordinator = Node(
        NodeConfig(data_dir=tmp_path / "c", role="coordinator", heartbeat_s=0.5),
        coordinator_config=CoordinatorConfig.plain(heartbeat_s=0.5),
        transport=memnet,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(coordinator.run)
        assert coordinator.host is not None and coordinator.coordinator is not None
        workers = []
        for name in ("w1", "w2"):
            config = NodeConfig(
                data_dir=tmp_path / name,
                role="worker",
                bootstrap=(coordinator.host.addrs()[0],),
                heartbeat_s=0.5,
            )
            worker = Node(config, engine=LlamaEngine(info, n_threads=1, n_ctx=128), transport=memnet)
            await nursery.start(worker.run)
            workers.append(worker)
        with trio.fail_after(30):
            for worker in workers:
                await worker.registered.wait()
        client: StreamHost = await nursery.start(partial(client_host, transport=memnet))
        peer = await client.connect(coordinator.host.addrs()[0])

        def job(prompt: str) -> SubmitJob:
            return SubmitJob(job_id=secrets.token_bytes(16), model="tiny", prompt=prompt, max_tokens=4)

        with trio.fail_after(30):
            refused = await client.request(peer, job("the quick brown fox " * 40))
        assert isinstance(refused, ErrorReply) and refused.code == "malformed", refused
        assert "context window" in refused.message
        records = coordinator.coordinator.workers
        assert len(records) == 2 and all(record.online for record in records.values())
        assert coordinator.ledger is not None
        evidence = [
            e for e in coordinator.ledger.entries() if isinstance(decode_body(e.body).payload, Evidence)
        ]
        assert evidence == []  # nothing permanent against the workers
        with trio.fail_after(30):  # served at once: nobody waits for a heartbeat to bring workers back
            served = await client.request(peer, job("Once upon a time"))
        assert isinstance(served, JobAccepted) and sorted(served.workers) == sorted(
            w.host.peer_id for w in workers if w.host is not None
        )
        nursery.cancel_scope.cancel()

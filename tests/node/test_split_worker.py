"""A split group serving jobs as a worker (issue 17): a worker node whose engine is a SplitEngine with its
layers on member processes (tunnelled over /opengrid/split/1) answers a job through the SDK with the
tokens one process of the same build gives. Needs llama-cpp-python built with ggml-rpc (scripts/setup.sh).
"""

from __future__ import annotations

import pathlib
import sys

import pytest
import trio
from opengrid_sdk import Client

from opengrid.core.coordinator import CoordinatorConfig
from opengrid.core.split_plan import SplitCandidate, plan_split
from opengrid.engines import GenerationRequest, LlamaEngine, ModelInfo, sha256_file
from opengrid.engines.footprint import model_footprint
from opengrid.engines.ggml_rpc import rpc_available
from opengrid.net.split import SplitHead
from opengrid.node.config import NodeConfig
from opengrid.node.service import Node

# The member processes and tunnel helpers of tests/net/test_split.py (one copy of them).
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "net"))
from test_split import head_host, member_processes, start_group

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not rpc_available(), reason="llama-cpp-python was built without ggml-rpc"),
]

NETWORK = "split-test"
PROMPT = "The quick brown fox"
SCRATCH = 4 * 1024 * 1024


async def test_a_split_worker_answers_through_the_sdk(
    tmp_path: pathlib.Path, tiny_model_path: pathlib.Path
) -> None:
    from opengrid.engines.split import SplitEngine

    info = ModelInfo(name="tiny", path=tiny_model_path, sha256=sha256_file(tiny_model_path))
    with LlamaEngine(info, n_ctx=256, n_threads=1) as engine:
        expected = engine.generate(GenerationRequest(PROMPT, max_tokens=16)).tokens
    fp = model_footprint(tiny_model_path, n_ctx=256, overhead_bytes=SCRATCH)
    with member_processes([SCRATCH + fp.layer_bytes[0]] * 2) as members:  # one layer each
        plan = plan_split(
            fp,
            SplitCandidate("head", fp.input_bytes + fp.output_bytes + SCRATCH),
            [SplitCandidate(m.peer, m.max_memory) for m in members],
        )
        assert len(plan.members) == 2
        coordinator = Node(
            NodeConfig(data_dir=tmp_path / "c", role="coordinator", network=NETWORK, heartbeat_s=0.5),
            coordinator_config=CoordinatorConfig.plain(heartbeat_s=0.5),
        )
        async with head_host() as tunnels, trio.open_nursery() as nursery:
            head = SplitHead(tunnels)
            _leases, endpoints = await start_group(head, tunnels, plan, members, info, nursery)

            def load() -> SplitEngine:
                return SplitEngine(info, endpoints, plan.tensor_split, plan.offloaded, n_ctx=256, n_threads=1)

            split = await trio.to_thread.run_sync(load)
            await nursery.start(coordinator.run)
            assert coordinator.host is not None
            address = coordinator.host.addrs()[0]
            config = NodeConfig(
                data_dir=tmp_path / "w",
                role="worker",
                network=NETWORK,
                bootstrap=(address,),
                heartbeat_s=0.5,
                skip_speed_test=True,
            )
            worker = Node(config, engine=split)
            await nursery.start(worker.run)
            with trio.fail_after(30):
                await worker.registered.wait()

            def submit() -> tuple[list[int], list[str]]:
                with Client([address], network=NETWORK, timeout=60) as client:
                    done = client.complete(PROMPT, model="tiny", max_tokens=16, replicas=1, sealed=False)
                    return done.tokens, done.workers

            tokens, workers = await trio.to_thread.run_sync(submit)
            assert tuple(tokens) == expected
            assert worker.host is not None and workers == [worker.host.peer_id]
            for share in plan.members:  # the members did run their layers for this job
                assert head.stats[share.peer].to_member > 0
            nursery.cancel_scope.cancel()

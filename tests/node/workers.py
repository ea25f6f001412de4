"""Real nodes for node tests: a paying network's coordinator, and workers started inside a test's
nursery (tiny model, llama.cpp, 127.0.0.1)."""

from __future__ import annotations

import pathlib
import secrets
from collections.abc import Sequence

import trio
from opengrid_ledger import Genesis, encode_genesis

from opengrid.core.coordinator import CoordinatorConfig
from opengrid.engines import LlamaEngine, ModelInfo, sha256_file
from opengrid.net.host import Host, open_host
from opengrid.node.api import ApiSettings
from opengrid.node.config import NodeConfig
from opengrid.node.service import Node


def paid_coordinator(
    base: pathlib.Path, network: str, *, grant: int, api: ApiSettings | None = None
) -> tuple[Node, pathlib.Path]:
    """A coordinator that runs only paid jobs, minting by the genesis it writes to ``base/genesis.json``
    (its own key, a starting grant of ``grant`` points); returns it (not started) and the genesis path."""
    genesis = base / "genesis.json"
    config = NodeConfig(
        data_dir=base / "c", role="coordinator", network=network, genesis=genesis, heartbeat_s=0.5
    )
    coordinator = Node(
        config, coordinator_config=CoordinatorConfig.plain(heartbeat_s=0.5, require_payment=True), api=api
    )
    genesis.write_bytes(encode_genesis(Genesis(network, (coordinator.public_key,), grant_points=grant)))
    return coordinator, genesis


async def start_workers(
    nursery: trio.Nursery,
    base: pathlib.Path,
    names: Sequence[str],
    *,
    bootstrap: str,
    model_path: pathlib.Path,
    timeout: float = 30.0,
    **config: object,
) -> list[Node]:
    """Start one worker per name (data dir ``base / name``) bootstrapped from ``bootstrap``; return once
    every one has registered with a coordinator. ``config``: further ``NodeConfig`` fields."""
    info = ModelInfo(name="tiny", path=model_path, sha256=sha256_file(model_path))
    workers = []
    for name in names:
        settings = NodeConfig(data_dir=base / name, role="worker", bootstrap=(bootstrap,), **config)  # type: ignore[arg-type]
        worker = Node(settings, engine=LlamaEngine(info, n_threads=1))
        await nursery.start(worker.run)
        workers.append(worker)
    with trio.fail_after(timeout):
        for worker in workers:
            await worker.registered.wait()
    return workers


async def client_host(*, task_status: trio.TaskStatus[Host]) -> None:
    """A bare libp2p host for a test's client side (``host = await nursery.start(client_host)``)."""
    async with open_host(secrets.token_bytes(32)) as host:
        task_status.started(host)
        await trio.sleep_forever()

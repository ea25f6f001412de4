"""Nodes for node tests: a paying network's coordinator, and workers started inside a test's nursery
(tiny model, llama.cpp), on 127.0.0.1 or, given ``transport=memnet``, on the in-memory network."""

from __future__ import annotations

import pathlib
import secrets
from collections.abc import Callable, Sequence

import trio
from opengrid_ledger import Genesis, encode_genesis

from opengrid.core.coordinator import CoordinatorConfig
from opengrid.engines import Engine, LlamaEngine, ModelInfo, sha256_file
from opengrid.net.transport import LIBP2P, StreamHost, Transport
from opengrid.node.api import ApiSettings
from opengrid.node.config import NodeConfig
from opengrid.node.service import Node


def paid_coordinator(
    base: pathlib.Path,
    network: str,
    *,
    grant: int,
    api: ApiSettings | None = None,
    transport: Transport = LIBP2P,
) -> tuple[Node, pathlib.Path]:
    """A coordinator that runs only paid jobs, minting by the genesis it writes to ``base/genesis.json``
    (its own key, a starting grant of ``grant`` points); returns it (not started) and the genesis path."""
    genesis = base / "genesis.json"
    config = NodeConfig(
        data_dir=base / "c", role="coordinator", network=network, genesis=genesis, heartbeat_s=0.5
    )
    coordinator = Node(
        config,
        coordinator_config=CoordinatorConfig.plain(heartbeat_s=0.5, require_payment=True),
        api=api,
        transport=transport,
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
    transport: Transport = LIBP2P,
    engine: Callable[[], Engine] | None = None,
    **config: object,
) -> list[Node]:
    """Start one worker per name (data dir ``base / name``) bootstrapped from ``bootstrap``; return once
    every one has registered with a coordinator. ``engine``: makes each worker's engine (default llama.cpp
    on ``model_path``); ``config``: further ``NodeConfig`` fields."""
    info = ModelInfo(name="tiny", path=model_path, sha256=sha256_file(model_path))
    workers = []
    for name in names:
        settings = NodeConfig(data_dir=base / name, role="worker", bootstrap=(bootstrap,), **config)  # type: ignore[arg-type]
        made = engine() if engine is not None else LlamaEngine(info, n_threads=1)
        worker = Node(settings, engine=made, transport=transport)
        await nursery.start(worker.run)
        workers.append(worker)
    with trio.fail_after(timeout):
        for worker in workers:
            await worker.registered.wait()
    return workers


async def client_host(*, task_status: trio.TaskStatus[StreamHost], transport: Transport = LIBP2P) -> None:
    """A bare host for a test's client side (``host = await nursery.start(client_host)``; on another
    transport: ``nursery.start(partial(client_host, transport=memnet))``)."""
    async with transport.open_host(secrets.token_bytes(32), ["/ip4/127.0.0.1/tcp/0"]) as host:
        task_status.started(host)
        await trio.sleep_forever()

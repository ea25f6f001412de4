"""Starting real worker nodes inside a test's nursery (tiny model, llama.cpp, 127.0.0.1)."""

from __future__ import annotations

import pathlib
from collections.abc import Sequence

import trio

from opengrid.engines import LlamaEngine, ModelInfo, sha256_file
from opengrid.node.config import NodeConfig
from opengrid.node.service import Node


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

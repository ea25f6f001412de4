"""Running py-libp2p services (pubsub, gossipsub, DHT, relay, DCUtR) without a task-tree walk per task.

py-libp2p 0.8.1's ``TrioManager.run_task`` looks up which of the service's tasks is starting the new one
(``_find_parent_task``) by walking the service's whole task tree, even when the caller is none of the
service's tasks, as on the hottest path: pubsub's stream readers run in the host's connection tasks and
start a ``push_msg`` task for every message received, so each received gossip message walked a tree that
grows with the number of peers (one sender task per peer): ~25 µs for 50 tasks, ~80 µs for 150, and 14 %
of a busy coordinator's CPU at 50 nodes (benchmarks/README.md, "Memory and the 50-node runs").

Every task a manager tracks runs in a trio task started by the manager's task nursery
(``_schedule_task``), so a trio task with another parent nursery matches none of them and the walk
would return None; ``_FastParentManager`` answers that case at once and walks only otherwise, so the task
tree it builds is the library's own.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio
from libp2p.tools.anyio_service import TrioManager
from libp2p.tools.anyio_service.api import ManagerAPI, ServiceAPI
from libp2p.tools.anyio_service.trio_tasks import TaskWithChildrenAPI


class _FastParentManager(TrioManager):
    def _find_parent_task(self, trio_task: trio.lowlevel.Task) -> TaskWithChildrenAPI | None:
        nursery = self._task_nursery
        if nursery is not None and trio_task.parent_nursery is not nursery:
            return None  # not one of our tasks: the walk could only come back empty
        return super()._find_parent_task(trio_task)


@asynccontextmanager
async def background_service(service: ServiceAPI) -> AsyncIterator[ManagerAPI]:
    """Run a py-libp2p service while the block runs, then stop it: what the library's
    ``background_trio_service`` does, with ``_FastParentManager`` as the manager."""
    async with trio.open_nursery() as nursery:
        manager = _FastParentManager(service)
        nursery.start_soon(manager.run)
        await manager.wait_started()
        try:
            yield manager
        finally:
            await manager.stop()

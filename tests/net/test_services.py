"""py-libp2p services run by ``background_service`` (services.py) build the task tree the library would:
a task started from a service task becomes its child, one started from elsewhere a root task."""

from __future__ import annotations

import trio
from libp2p.tools.anyio_service import Service, TrioManager

from opengrid.net.services import background_service


class TwoLevels(Service):
    """Starts a child task from its own run task; the test starts another from outside."""

    def __init__(self) -> None:
        self.child_started = trio.Event()
        self.run_task: trio.lowlevel.Task | None = None

    async def run(self) -> None:
        self.run_task = trio.lowlevel.current_task()
        self.manager.run_daemon_task(self._child)
        await trio.sleep_forever()

    async def _child(self) -> None:
        self.child_started.set()
        await trio.sleep_forever()


async def test_parents_are_found_as_the_library_finds_them() -> None:
    service = TwoLevels()
    async with background_service(service) as manager:
        assert isinstance(manager, TrioManager)
        with trio.fail_after(5):
            await service.child_started.wait()
        outsider = trio.lowlevel.current_task()
        assert service.run_task is not None
        for task in (outsider, service.run_task):
            assert manager._find_parent_task(task) is TrioManager._find_parent_task(manager, task)  # type: ignore[attr-defined]
        assert manager._find_parent_task(outsider) is None  # type: ignore[attr-defined]

        parent = manager._find_parent_task(service.run_task)  # type: ignore[attr-defined]
        assert parent is not None and [t.name for t in parent.children] == ["_child"]

        outside_started = trio.Event()

        async def from_outside() -> None:
            outside_started.set()
            await trio.sleep_forever()

        manager.run_task(from_outside)  # type: ignore[attr-defined]
        with trio.fail_after(5):
            await outside_started.wait()
        assert len(manager._root_tasks) == 2  # type: ignore[attr-defined]  # the service's run, and this one


class NestedNursery(Service):
    """Runs a helper in a nursery of its own run task: the helper is a trio task of the service's tree
    that the manager did not start."""

    def __init__(self) -> None:
        self.helper_task: trio.lowlevel.Task | None = None
        self.ready = trio.Event()

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._helper)
            await trio.sleep_forever()

    async def _helper(self) -> None:
        self.helper_task = trio.lowlevel.current_task()
        self.ready.set()
        await trio.sleep_forever()


async def test_a_task_in_a_nursery_of_a_service_task_gets_the_parent_the_library_gives_it() -> None:
    service = NestedNursery()
    async with background_service(service) as manager:
        with trio.fail_after(5):
            await service.ready.wait()
        helper = service.helper_task
        assert helper is not None and helper.parent_nursery is not manager._task_nursery  # type: ignore[attr-defined]
        expected = TrioManager._find_parent_task(manager, helper)  # type: ignore[attr-defined]
        assert manager._find_parent_task(helper) is expected  # type: ignore[attr-defined]

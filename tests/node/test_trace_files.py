"""``--trace-frames`` / ``--trace-timing``: their folders are created, an unwritable path is a clear error."""

from __future__ import annotations

import pathlib

import pytest
import trio
from trio.testing import MockClock

from opengrid.core.coordinator import CoordinatorConfig
from opengrid.errors import ConfigError
from opengrid.net.transport import LIBP2P, Transport
from opengrid.node.config import NodeConfig
from opengrid.node.service import Node
from opengrid.testing.memnet import MemoryNetwork


def _coordinator(
    tmp_path: pathlib.Path, frames: pathlib.Path, timing: pathlib.Path, transport: Transport = LIBP2P
) -> Node:
    return Node(
        NodeConfig(data_dir=tmp_path / "c", role="coordinator", heartbeat_s=0.5),
        coordinator_config=CoordinatorConfig.plain(heartbeat_s=0.5),
        trace_frames=frames,
        trace_timing=timing,
        transport=transport,
    )


async def test_trace_files_in_folders_that_do_not_exist_yet_are_created(
    tmp_path: pathlib.Path, memnet: MemoryNetwork, memnet_clock: MockClock
) -> None:
    frames, timing = tmp_path / "traces" / "today" / "frames.bin", tmp_path / "t" / "timing.jsonl"
    node = _coordinator(tmp_path, frames, timing, memnet)
    async with trio.open_nursery() as nursery:
        with trio.fail_after(30):
            await nursery.start(node.run)
        nursery.cancel_scope.cancel()
    assert frames.is_file() and timing.is_file()


@pytest.mark.parametrize("which", ["frames", "timing"])
async def test_a_trace_file_that_cannot_be_written_is_a_clear_error(
    tmp_path: pathlib.Path, which: str
) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    blocked = tmp_path / "a-file" / "trace.out"
    fine = tmp_path / "fine.out"
    node = _coordinator(
        tmp_path, blocked if which == "frames" else fine, blocked if which == "timing" else fine
    )
    with pytest.raises(ConfigError, match=r"cannot write the trace file .*a-file.*choose a writable path"):
        with trio.fail_after(30):
            await node.run()

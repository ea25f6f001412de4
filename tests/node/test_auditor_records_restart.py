"""A coordinator node keeps its auditor records across a restart (spec/verification.md §13.6): the node
journals them to ``auditors.sqlite3`` in its data dir and reads them back when it starts again, so an
auditor caught lying stays barred from audits (tests/core/test_auditor_records_kept.py drives the catch
itself through canary audits)."""

from __future__ import annotations

import pathlib

import trio

from opengrid.core.coordinator import CoordinatorConfig
from opengrid.core.reputation import Reputation
from opengrid.node.config import NodeConfig
from opengrid.node.service import Node
from opengrid.store.auditor_store import AUDITORS_FILE

CAUGHT_KEY = b"\x42" * 32


def _coordinator(data_dir: pathlib.Path) -> Node:
    return Node(
        NodeConfig(data_dir=data_dir, role="coordinator", heartbeat_s=0.5, verify="audit"),
        coordinator_config=CoordinatorConfig.plain(heartbeat_s=0.5, verify="audit"),
    )


async def test_a_restarted_coordinator_still_bars_a_caught_auditor(tmp_path: pathlib.Path) -> None:
    first = _coordinator(tmp_path / "c")
    async with trio.open_nursery() as nursery:
        await nursery.start(first.run)
        machine = first.coordinator
        assert machine is not None and machine.audit_journal is not None, "the node journals auditor records"
        machine.audit_journal.record(CAUGHT_KEY, Reputation().update("valid").update("invalid"))
        nursery.cancel_scope.cancel()
    assert (tmp_path / "c" / AUDITORS_FILE).is_file()

    second = _coordinator(tmp_path / "c")
    async with trio.open_nursery() as nursery:
        await nursery.start(second.run)
        machine = second.coordinator
        assert machine is not None
        assert machine.audit_reputation[CAUGHT_KEY] == Reputation().update("valid").update("invalid")
        assert machine._barred_auditor(CAUGHT_KEY), "caught once, never drawn to audit again"
        nursery.cancel_scope.cancel()

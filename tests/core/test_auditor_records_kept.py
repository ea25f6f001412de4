"""Auditor records survive a coordinator restart (issue 14; spec/verification.md §13.6): an auditor caught
by a canary audit is never drawn to audit again, also by the coordinator that starts next on the same data
dir, because its records are journalled to SQLite (``opengrid/store/auditor_store.py``). The coordinator
and real WorkerLogic instances are wired back to back (grid_harness); the store is a real SQLite file."""

from __future__ import annotations

import pathlib

import pytest
from grid_harness import Grid, finished, of_type
from test_auditor_checks import CANARIES, run

from opengrid.core.effects import DispatchAudit, Penalize
from opengrid.core.reputation import Reputation
from opengrid.store import auditor_store
from opengrid.store.auditor_store import AuditorStore, open_auditor_journal
from opengrid.wire.messages import AuditJob, JobAccepted

LIAR = "w4"


def _stamps(peer: str, audit: AuditJob) -> str:
    """The liar passes whatever it is sent; the others audit honestly."""
    return "pass" if peer == LIAR else "honest"


def _drawn_to_audit(grid: Grid, jobs: range) -> bool:
    """Whether the liar is sent any audit (a client claim's or a canary) over ``jobs``."""
    drawn = False
    for job in jobs:
        effects = run(grid, job, auditor=_stamps)
        assert isinstance(finished(effects), JobAccepted)
        drawn = drawn or any(a.peer == LIAR for a in of_type(effects, DispatchAudit))
    return drawn


def test_a_caught_auditor_stays_barred_after_a_restart(tmp_path: pathlib.Path) -> None:
    before = Grid(n=5, config=CANARIES)
    journal = open_auditor_journal(tmp_path, before.coordinator)
    before.register()
    caught = False
    for job in range(1, 40):
        effects = run(before, job, auditor=_stamps)
        if any(p.peer == LIAR for p in of_type(effects, Penalize)):
            caught = True
            break
    assert caught, "a canary audit caught the liar within 39 jobs"
    key = before.key(LIAR)
    assert before.coordinator.audit_reputation[key].invalid == 1
    kept = dict(journal.all())
    assert kept[key] == before.coordinator.audit_reputation[key], "written as it happened"
    assert all(kept[k] == r for k, r in before.coordinator.audit_reputation.items())
    journal.close()

    # A coordinator that starts on the same data dir: same keys, fresh memory, the journal read back.
    after = Grid(n=5, config=CANARIES)
    reopened = open_auditor_journal(tmp_path, after.coordinator)
    after.register()
    assert after.coordinator.audit_reputation.get(key, Reputation()).invalid == 1
    assert not _drawn_to_audit(after, range(100, 120)), "never drawn to audit again"
    reopened.close()

    # Without the journal a restart forgets: the same liar is drawn again (what the store prevents).
    forgetful = Grid(n=5, config=CANARIES)
    forgetful.register()
    assert _drawn_to_audit(forgetful, range(100, 120))


def test_the_store_keeps_caught_auditors_first_when_it_is_full(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(auditor_store, "MAX_ROWS", 3)
    store = AuditorStore(tmp_path / "auditors.sqlite3")
    caught = Reputation().update("invalid")
    store.record(b"\x01" * 32, caught)  # the oldest change, but a caught auditor
    for n in range(2, 6):
        store.record(bytes([n]) * 32, Reputation().update("valid"))
    store.record(b"\x05" * 32, Reputation().update("valid").update("valid"))
    kept = dict(store.all())
    assert sorted(kept) == [b"\x01" * 32, b"\x04" * 32, b"\x05" * 32], "the oldest clean records went"
    assert kept[b"\x01" * 32] == caught and kept[b"\x05" * 32].valid == 2
    store.close()
    assert dict(AuditorStore(tmp_path / "auditors.sqlite3").all()) == kept, "durable across a reopen"

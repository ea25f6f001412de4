"""A coordinator's auditor records, kept in SQLite so a caught auditor stays barred across restarts.

The coordinator keeps, per worker key, a ``Reputation`` of its outcomes **as an auditor**
(spec/verification.md §13.6): the auditor draw weighs by it, and a worker caught lying once is never drawn
to audit again. Kept only in memory, a restart forgot who was caught (the general reputation is rebuilt
from EVIDENCE entries, this one has no ledger trace of its passes). This store is the machine's
``AuditorJournal``: each change is written as it happens (WAL, ``synchronous=NORMAL``: it survives the
process being killed; a power cut may lose the last changes), and at start every row is handed back
(``Coordinator.restore_auditors``).

Bounded: one row per worker key, at most ``MAX_ROWS``; past that the rows changed longest ago go first,
except that rows of caught auditors (``invalid > 0``) are dropped only after every clean one.
"""

from __future__ import annotations

import pathlib
import sqlite3
from typing import Final

from opengrid.core.coordinator import Coordinator
from opengrid.core.reputation import Reputation
from opengrid.errors import LedgerError
from opengrid.store.transactions import Immediate

AUDITORS_FILE: Final = "auditors.sqlite3"
MAX_ROWS: Final = 65536
"""Most auditor records kept (a coordinator with more workers than this forgets its oldest clean ones)."""

_FIELDS: Final = ("streak", "valid", "invalid", "timeouts", "probation", "flaky", "divergent")


class AuditorStore:
    """Auditor records: one row per worker key, its ``Reputation`` as an auditor, under the data dir."""

    def __init__(self, path: pathlib.Path) -> None:
        """Open or create the store at ``path``. Raises LedgerError if it cannot."""
        self._path = path
        self._changes = 0
        try:
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            columns = ", ".join(f"{name} INTEGER NOT NULL" for name in _FIELDS)
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS auditors "
                f"(key BLOB PRIMARY KEY, {columns}, changed INTEGER NOT NULL)"
            )
            row = self._db.execute("SELECT MAX(changed) FROM auditors").fetchone()
            self._changes = int(row[0] or 0)
        except sqlite3.Error as exc:
            raise self._error("cannot open", exc) from exc

    def record(self, key: bytes, reputation: Reputation) -> None:
        """Keep ``key``'s record as an auditor (``AuditorJournal``), and the store within ``MAX_ROWS``."""
        self._changes += 1
        values = tuple(getattr(reputation, name) for name in _FIELDS)
        marks = ", ".join("?" for _ in range(len(_FIELDS) + 2))
        try:
            with Immediate(self._db):
                self._db.execute(
                    f"INSERT OR REPLACE INTO auditors VALUES ({marks})", (key, *values, self._changes)
                )
                self._db.execute(
                    "DELETE FROM auditors WHERE key IN (SELECT key FROM auditors "
                    "ORDER BY invalid > 0 DESC, changed DESC LIMIT -1 OFFSET ?)",
                    (MAX_ROWS,),
                )
        except sqlite3.Error as exc:
            raise self._error("cannot write", exc) from exc

    def all(self) -> list[tuple[bytes, Reputation]]:
        """Every record kept, oldest change first."""
        try:
            rows = self._db.execute(
                f"SELECT key, {', '.join(_FIELDS)} FROM auditors ORDER BY changed"
            ).fetchall()
        except sqlite3.Error as exc:
            raise self._error("cannot read", exc) from exc
        return [
            (bytes(row[0]), Reputation(**dict(zip(_FIELDS, map(int, row[1:]), strict=True)))) for row in rows
        ]

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    def _error(self, action: str, exc: sqlite3.Error) -> LedgerError:
        return LedgerError(
            f"auditor store: {action} {self._path}: {exc}; check the data dir is writable and that no other "
            "node process uses it"
        )


def open_auditor_journal(data_dir: pathlib.Path, coordinator: Coordinator) -> AuditorStore:
    """Open ``data_dir/auditors.sqlite3``, give ``coordinator`` the auditor records kept before and make the
    store its journal; returns the store (close it at stop)."""
    store = AuditorStore(data_dir / AUDITORS_FILE)
    coordinator.restore_auditors(store.all())
    coordinator.audit_journal = store
    return store

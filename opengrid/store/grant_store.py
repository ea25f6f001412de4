"""The starting-grant vouchers a coordinator issued, kept in SQLite so its rate limits survive restarts.

``opengrid.core.grants.GrantPolicy`` rate-limits vouchers per address bucket and in total per window (a
day). Kept only in memory, a kill -9 and restart gave the same address a fresh budget (issue 15, item 10).
This store is the policy's ``GrantJournal``: each voucher is written (WAL, ``synchronous=FULL``: durable
before the voucher leaves) and, at start, the vouchers of the last window are handed back to the policy.

Bounded: rows older than the window are deleted as new ones come, and at most ``MAX_ROWS`` are kept (the
oldest go first); the policy itself never allows more than its ``total`` per window.
"""

from __future__ import annotations

import pathlib
import sqlite3
from typing import Final

from opengrid.core.grants import GrantPolicy
from opengrid.errors import LedgerError
from opengrid.store.transactions import Immediate

GRANTS_FILE: Final = "grants.sqlite3"
MAX_ROWS: Final = 65536
"""Most vouchers kept (the policy's memory of vouched accounts is as long)."""


class GrantStore:
    """Vouchers issued: (account, bucket, time) rows under the node's data dir."""

    def __init__(self, path: pathlib.Path, *, window_s: float) -> None:
        """Open or create the store at ``path``; rows older than ``window_s`` are expired as it goes.
        Raises LedgerError if it cannot."""
        self._path = path
        self._window_s = window_s
        try:
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS vouchers "
                "(account BLOB PRIMARY KEY, bucket TEXT NOT NULL, at REAL NOT NULL)"
            )
            self._db.execute("CREATE INDEX IF NOT EXISTS vouchers_by_time ON vouchers (at)")
        except sqlite3.Error as exc:
            raise self._error("cannot open", exc) from exc

    def record(self, account: bytes, bucket: str, at: float) -> None:
        """Store one voucher durably, and drop the rows that left the window (``GrantJournal``)."""
        try:
            with Immediate(self._db):
                self._db.execute("INSERT OR REPLACE INTO vouchers VALUES (?, ?, ?)", (account, bucket, at))
                self._db.execute("DELETE FROM vouchers WHERE at <= ?", (at - self._window_s,))
                self._db.execute(
                    "DELETE FROM vouchers WHERE account IN "
                    "(SELECT account FROM vouchers ORDER BY at DESC LIMIT -1 OFFSET ?)",
                    (MAX_ROWS,),
                )
        except sqlite3.Error as exc:
            raise self._error("cannot write", exc) from exc

    def recent(self, now: float) -> list[tuple[float, str, bytes]]:
        """(time, bucket, account) of every voucher issued within the window before ``now``, oldest first."""
        try:
            rows = self._db.execute(
                "SELECT at, bucket, account FROM vouchers WHERE at > ? ORDER BY at", (now - self._window_s,)
            ).fetchall()
        except sqlite3.Error as exc:
            raise self._error("cannot read", exc) from exc
        return [(float(at), str(bucket), bytes(account)) for at, bucket, account in rows]

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    def _error(self, action: str, exc: sqlite3.Error) -> LedgerError:
        return LedgerError(
            f"grant store: {action} {self._path}: {exc}; check the data dir is writable and that no other "
            "node process uses it"
        )


def open_grant_journal(data_dir: pathlib.Path, policy: GrantPolicy, now: float) -> GrantStore:
    """Open ``data_dir/grants.sqlite3``, give ``policy`` the vouchers of its last window (``now``: Unix
    seconds) and make the store its journal; returns the store (close it at stop)."""
    store = GrantStore(data_dir / GRANTS_FILE, window_s=policy.limits.window_s)
    policy.restore(store.recent(now))
    policy.journal = store
    return store

"""Durable storage of ledger entries: one append-only SQLite table (WAL) in the node's data dir.

The store keeps entries; it does not judge them. ``open_ledger`` replays what is stored through a fresh
``LedgerState`` at startup, so the rules in effect are always today's (spec/ledger.md §7).

Durability: WAL with ``synchronous=FULL`` fsyncs the WAL on every commit, so an entry whose ``append``
returned survives kill -9 *and* power loss. NORMAL would survive kill -9 only; points are worth the fsync,
and appends are rare (one per verified job or spend).
"""

from __future__ import annotations

import logging
import pathlib
import sqlite3
from collections.abc import Iterable

from opengrid_ledger import Entry, LedgerState, decode_body

from opengrid.errors import InvalidEntryError, LedgerError

log = logging.getLogger(__name__)

LEDGER_FILE = "ledger.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    id        BLOB PRIMARY KEY NOT NULL,
    author    BLOB NOT NULL,
    seq       INTEGER NOT NULL,
    body      BLOB NOT NULL,
    signature BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS entries_by_author ON entries (author, seq);
"""
# The implicit rowid gives insertion order: nothing is ever deleted, so SQLite hands out max(rowid)+1.


class LedgerStore:
    """Append-only SQLite (WAL) table of entries under the node's data dir; survives restarts and kill -9.

    Calls must not overlap (one at a time), but may come from different threads (e.g. trio.to_thread).
    """

    def __init__(self, path: pathlib.Path) -> None:
        """Open or create the database at ``path``; raises LedgerError if it cannot."""
        self.path = path
        try:
            # isolation_level=None: autocommit, so each INSERT is its own durable transaction.
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise self._error("cannot open", exc) from exc
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            self._db.close()
            raise self._error("cannot initialise", exc) from exc

    def append(self, entry: Entry) -> bool:
        """Store ``entry`` durably; True if it was new, False if already stored (idempotent).

        Raises InvalidEntryError if the body does not even decode (the author and seq columns need it);
        validation proper is ``LedgerState.apply``'s job, so apply first and store what it returns.
        """
        body = decode_body(entry.body)
        try:
            cursor = self._db.execute(
                "INSERT OR IGNORE INTO entries (id, author, seq, body, signature) VALUES (?, ?, ?, ?, ?)",
                (entry.id, body.author, body.seq, entry.body, entry.signature),
            )
        except sqlite3.Error as exc:
            raise self._error("cannot append to", exc) from exc
        return cursor.rowcount == 1

    def entries(self) -> list[Entry]:
        """Every stored entry, in insertion order."""
        try:
            rows = self._db.execute("SELECT body, signature FROM entries ORDER BY rowid").fetchall()
        except sqlite3.Error as exc:
            raise self._error("cannot read", exc) from exc
        return [Entry(bytes(body), bytes(signature)) for body, signature in rows]

    def close(self) -> None:
        """Close the database; the store cannot be used afterwards."""
        try:
            self._db.close()
        except sqlite3.Error as exc:
            raise self._error("cannot close", exc) from exc

    def _error(self, action: str, exc: sqlite3.Error) -> LedgerError:
        return LedgerError(
            f"ledger store: {action} {self.path}: {exc}; check the data dir is writable and not on a "
            "network file system, and that no other node process uses it"
        )


def open_ledger(
    data_dir: pathlib.Path, network: str, minters: Iterable[bytes] = ()
) -> tuple[LedgerState, LedgerStore]:
    """Open ``data_dir/ledger.sqlite3`` and replay every stored entry into a fresh LedgerState.

    An entry that no longer validates (rules changed, minter removed, corrupt row) is logged and skipped:
    a node must always be able to start.
    """
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LedgerError(f"ledger store: cannot create data dir {data_dir}: {exc}") from exc
    store = LedgerStore(data_dir / LEDGER_FILE)
    state = LedgerState(network, minters)
    for entry in store.entries():
        try:
            state.apply(entry)
        except InvalidEntryError as exc:
            log.warning("ledger %s: skipping stored entry %s: %s", store.path, entry.id.hex(), exc)
    return state, store

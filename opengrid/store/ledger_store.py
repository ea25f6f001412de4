"""Durable storage of ledger entries: one append-only SQLite table (WAL) in the node's data dir.

The store keeps entries; it does not judge them. ``open_ledger`` replays what is stored through a fresh
``LedgerState`` at startup, so the rules in effect are always today's (spec/ledger.md §8).

Fast startup: only entries that ``LedgerState.apply`` accepted are stored (the node applies, then
appends), so replay uses ``apply_trusted``: every stateful rule runs, but signatures are not checked again.
Each row's id is recomputed (sha256 of body and signature) and must equal the stored ``id`` column, and the
chain links (``prev`` = id of seq-1) are checked by the fold, so a corrupted row is caught and skipped.
``open_ledger(..., verify=True)`` (``opengrid ledger verify``) re-verifies every signature instead.

Durability: WAL with ``synchronous=FULL`` fsyncs the WAL on every commit, so an entry whose ``append``
returned survives kill -9 *and* power loss. NORMAL would survive kill -9 only; points are worth the fsync,
and appends are rare (one per verified job or spend).
"""

from __future__ import annotations

import logging
import pathlib
import sqlite3
from collections.abc import Iterable

from opengrid_ledger import Entry, Genesis, LedgerState, decode_body
from opengrid_ledger.state import TrustedReplayError

from opengrid.errors import InvalidEntryError, LedgerError
from opengrid.store.transactions import Immediate

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

    def __init__(self, path: pathlib.Path, *, read_only: bool = False) -> None:
        """Open or create the database at ``path`` (``read_only``: open an existing one without writing,
        e.g. while a node runs on it); raises LedgerError if it cannot."""
        self.path = path
        self.read_only = read_only
        try:
            if read_only:
                if not path.exists():
                    raise sqlite3.OperationalError("no such file")
                uri = path.resolve().as_uri() + "?mode=ro"
                self._db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
            else:
                # isolation_level=None: autocommit, so each INSERT is its own durable transaction.
                self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise self._error("cannot open", exc) from exc
        try:
            if read_only:
                self._db.execute("SELECT count(*) FROM entries").fetchone()
            else:
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

    def append_many(self, entries: Iterable[Entry]) -> int:
        """Store ``entries`` in one durable transaction (one fsync); returns how many were new.

        All or nothing: a crash leaves either every one of them or none. Same contract as :meth:`append`.
        """
        rows = []
        for entry in entries:
            body = decode_body(entry.body)
            rows.append((entry.id, body.author, body.seq, entry.body, entry.signature))
        try:
            before = self._db.total_changes
            with self._transaction():
                self._db.executemany(
                    "INSERT OR IGNORE INTO entries (id, author, seq, body, signature) VALUES (?, ?, ?, ?, ?)",
                    rows,
                )
            return self._db.total_changes - before
        except sqlite3.Error as exc:
            raise self._error("cannot append to", exc) from exc

    def _transaction(self) -> Immediate:
        return Immediate(self._db)

    def entries(self) -> list[Entry]:
        """Every stored entry, in insertion order."""
        return [entry for _, entry in self.rows()]

    def rows(self) -> list[tuple[bytes, Entry]]:
        """(stored id, entry) for every stored entry, in insertion order (the id is not re-checked)."""
        return self._select("SELECT id, body, signature FROM entries ORDER BY rowid", ())

    def entries_by_author(self, author: bytes, from_seq: int = 1, limit: int = 1 << 62) -> list[Entry]:
        """The author's stored entries with seq >= ``from_seq``, by seq (at most ``limit``)."""
        rows = self._select(
            "SELECT id, body, signature FROM entries WHERE author = ? AND seq >= ? ORDER BY seq LIMIT ?",
            (author, from_seq, limit),
        )
        return [entry for _, entry in rows]

    def count(self) -> int:
        """Number of stored entries."""
        try:
            return int(self._db.execute("SELECT count(*) FROM entries").fetchone()[0])
        except sqlite3.Error as exc:
            raise self._error("cannot read", exc) from exc

    def _select(self, sql: str, params: tuple[object, ...]) -> list[tuple[bytes, Entry]]:
        try:
            rows = self._db.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise self._error("cannot read", exc) from exc
        return [(bytes(eid), Entry(bytes(body), bytes(signature))) for eid, body, signature in rows]

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


def replay(store: LedgerStore, state: LedgerState, *, verify: bool = False) -> list[tuple[bytes, str]]:
    """Apply every stored entry to ``state``; return (id, why) for each one skipped.

    ``verify=False`` (startup): trusted replay, see the module docstring. ``verify=True``: full checks.
    """
    skipped: list[tuple[bytes, str]] = []
    for stored_id, entry in store.rows():
        try:
            if verify:
                state.apply(entry)
            elif entry.id != stored_id:
                raise InvalidEntryError(f"stored row's id {stored_id.hex()} does not match its bytes")
            else:
                state.apply_trusted(entry)
        except InvalidEntryError as exc:
            skipped.append((stored_id, str(exc)))
    return skipped


def open_ledger(
    data_dir: pathlib.Path,
    network: str,
    minters: Iterable[bytes] = (),
    *,
    genesis: Genesis | None = None,
    verify: bool = False,
    read_only: bool = False,
    closed: bool = False,
) -> tuple[LedgerState, LedgerStore]:
    """Open ``data_dir/ledger.sqlite3`` and replay every stored entry into a fresh LedgerState.

    Replay is trusted (fast) unless ``verify``. An entry that no longer validates (rules changed, minter
    removed, corrupt row) is logged and skipped: a node must always be able to start. ``read_only`` opens
    an existing store without writing (the CLI, next to a running node). ``closed``: see LedgerState.
    """
    if not read_only:
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LedgerError(f"ledger store: cannot create data dir {data_dir}: {exc}") from exc
    store = LedgerStore(data_dir / LEDGER_FILE, read_only=read_only)
    state = LedgerState(network, minters, genesis=genesis, closed=closed)
    try:
        skipped = replay(store, state, verify=verify)
    except TrustedReplayError as exc:
        log.warning("ledger %s: %s; replaying again with full verification", store.path, exc)
        state = LedgerState(network, minters, genesis=genesis, closed=closed)
        skipped = replay(store, state, verify=True)
    for entry_id, why in skipped:
        log.warning("ledger %s: skipping stored entry %s: %s", store.path, entry_id.hex(), why)
    return state, store

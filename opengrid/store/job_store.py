"""Jobs a coordinator accepted and has not answered yet, kept in SQLite so a restart does not lose them.

A row is written before the job is dispatched and deleted when it is answered (verified or failed); at
start the coordinator resumes whatever is left (``Coordinator.resume``).
"""

from __future__ import annotations

import pathlib
import sqlite3

import msgspec

from opengrid.core.events import JobSubmitted
from opengrid.errors import LedgerError
from opengrid.wire.messages import SubmitJob

JOBS_FILE = "jobs.sqlite3"


class JobStore:
    """Append, delete and list in-flight client jobs (WAL, synchronous=FULL: survives kill -9)."""

    def __init__(self, path: pathlib.Path) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS jobs (job_id BLOB PRIMARY KEY, client TEXT NOT NULL, "
                "wall_ms INTEGER NOT NULL, request BLOB NOT NULL)"
            )
        except (sqlite3.Error, OSError) as exc:
            raise LedgerError(f"cannot open the job store {path}: {exc}") from exc
        self._path = path

    def put(self, event: JobSubmitted) -> None:
        self._write(
            "INSERT OR REPLACE INTO jobs VALUES (?, ?, ?, ?)",
            (event.request.job_id, event.client, event.wall_ms, msgspec.msgpack.encode(event.request)),
        )

    def delete(self, job_id: bytes) -> None:
        self._write("DELETE FROM jobs WHERE job_id = ?", (job_id,))

    def all(self) -> list[JobSubmitted]:
        """Every stored job; a row that no longer decodes is skipped (a node must always start)."""
        events = []
        for _job_id, client, wall_ms, request in self._db.execute("SELECT * FROM jobs ORDER BY job_id"):
            try:
                events.append(JobSubmitted(client, msgspec.msgpack.decode(request, type=SubmitJob), wall_ms))
            except msgspec.DecodeError:
                continue
        return events

    def close(self) -> None:
        self._db.close()

    def _write(self, sql: str, args: tuple[object, ...]) -> None:
        try:
            self._db.execute(sql, args)
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot write the job store {self._path}: {exc}") from exc

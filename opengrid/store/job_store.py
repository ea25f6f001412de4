"""Jobs a coordinator accepted, kept in SQLite so that neither a job nor its answer is lost to a crash.

A row of ``jobs`` is written before the job is dispatched; when the job is answered, the row goes and a
verified answer (the JobAccepted, its receipt inside; in sealed mode only ciphertext) is kept in
``answers`` for ``ANSWER_TTL_MS`` (at most ``MAX_ANSWERS`` rows), in one transaction. At start the
coordinator resumes whatever is left in ``jobs``; a client that retries a job id it submitted gets the
kept answer (spec/job-protocol.md §6.2).
"""

from __future__ import annotations

import pathlib
import sqlite3
import time
from typing import Final

import msgspec

from opengrid.core.events import JobSubmitted
from opengrid.errors import LedgerError
from opengrid.wire.messages import ErrorReply, JobAccepted, SubmitJob

JOBS_FILE = "jobs.sqlite3"
ANSWER_TTL_MS: Final = 24 * 3600 * 1000
"""How long a verified answer is kept for a client that lost it (a day: a client retries in minutes)."""
MAX_ANSWERS: Final = 20_000
"""Answers kept at most (the oldest go first): ~2 GB at the 64 KiB text limit, ~40 MB at 2 KB each."""
PRUNE_EVERY: Final = 256
"""Expired and surplus answers are deleted at open and every this many answers kept, not on every job
(the cap query sorts the table): the store holds at most ``MAX_ANSWERS + PRUNE_EVERY`` answers."""


class JobStore:
    """In-flight client jobs and recent verified answers (WAL, synchronous=FULL: survives kill -9)."""

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
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS answers (job_id BLOB PRIMARY KEY, client TEXT NOT NULL, "
                "stored_ms INTEGER NOT NULL, reply BLOB NOT NULL)"
            )
            self._db.execute("CREATE INDEX IF NOT EXISTS answers_by_age ON answers (stored_ms)")
            self._kept_since_prune = 0
            self._prune(time.time_ns() // 1_000_000)  # what a long stop left behind
        except (sqlite3.Error, OSError) as exc:
            raise LedgerError(f"cannot open the job store {path}: {exc}") from exc
        self._path = path

    def put(self, event: JobSubmitted) -> None:
        self._write(
            "INSERT OR REPLACE INTO jobs VALUES (?, ?, ?, ?)",
            (event.request.job_id, event.client, event.wall_ms, msgspec.msgpack.encode(event.request)),
        )

    def finish(self, job_id: bytes, reply: JobAccepted | ErrorReply, *, now_ms: int) -> None:
        """The job is answered: forget it, and keep a verified answer for its client (one transaction,
        so a crash leaves either the job to resume or the answer to give, never neither)."""
        try:
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                if isinstance(reply, JobAccepted):
                    self._db.execute(
                        "INSERT OR REPLACE INTO answers "
                        "SELECT job_id, client, ?, ? FROM jobs WHERE job_id = ?",
                        (now_ms, msgspec.msgpack.encode(reply), job_id),
                    )
                self._db.execute("DELETE FROM jobs WHERE job_id = ?", (job_id,))
                if isinstance(reply, JobAccepted):
                    self._kept_since_prune += 1
                if self._kept_since_prune >= PRUNE_EVERY:
                    self._prune(now_ms)
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot write the job store {self._path}: {exc}") from exc

    def _prune(self, now_ms: int) -> None:
        """Forget answers older than the TTL and all but the newest ``MAX_ANSWERS``."""
        self._db.execute("DELETE FROM answers WHERE stored_ms < ?", (now_ms - ANSWER_TTL_MS,))
        self._db.execute(
            "DELETE FROM answers WHERE job_id IN (SELECT job_id FROM answers "
            "ORDER BY stored_ms DESC LIMIT -1 OFFSET ?)",
            (MAX_ANSWERS,),
        )
        self._kept_since_prune = 0

    def answer(self, job_id: bytes, client: str) -> JobAccepted | None:
        """The kept answer of ``client``'s job ``job_id``, if any (another client's is never given: job
        ids are public in receipts, the answer is not)."""
        row = self._db.execute(
            "SELECT reply FROM answers WHERE job_id = ? AND client = ?", (job_id, client)
        ).fetchone()
        if row is None:
            return None
        try:
            return msgspec.msgpack.decode(row[0], type=JobAccepted)
        except msgspec.DecodeError:
            return None

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

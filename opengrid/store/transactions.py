"""One write transaction on an autocommit SQLite connection, as every store of the node opens it."""

from __future__ import annotations

import sqlite3


class Immediate:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, ``ROLLBACK`` on any error (the error goes on): the write lock is
    taken at the start, so a second process on the same file waits or fails at once, never half-way."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: object, value: object, traceback: object) -> None:
        self._db.execute("COMMIT" if kind is None else "ROLLBACK")

"""The SQLite ledger store: durable, idempotent, replayed at startup (spec/ledger.md §7)."""

from __future__ import annotations

import logging
import os
import pathlib
import re
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest
from ledger_factory import (
    COORDINATOR,
    MINTERS,
    NETWORK,
    OTHER_COORDINATOR,
    WORKERS,
    Author,
    job_id,
    make_receipt,
    pub,
)
from opengrid_ledger import Entry, LedgerState, encode_entry

from opengrid.errors import InvalidEntryError, LedgerError
from opengrid.store import LEDGER_FILE, LedgerStore, open_ledger

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture
def store(tmp_path: pathlib.Path) -> Iterator[LedgerStore]:
    opened = LedgerStore(tmp_path / LEDGER_FILE)
    yield opened
    opened.close()


def some_entries() -> list[Entry]:
    first, second = Author(COORDINATOR), Author(OTHER_COORDINATOR)
    return [
        first.append(make_receipt(job_id(1), [(WORKERS[0], 5), (WORKERS[1], 7)])),
        second.append(make_receipt(job_id(2), [(WORKERS[0], 3)])),
        first.append(make_receipt(job_id(3), [(WORKERS[2], 11)])),
    ]


def test_append_is_idempotent_and_ordered(store: LedgerStore) -> None:
    entries = some_entries()
    assert [store.append(entry) for entry in entries] == [True, True, True]
    assert store.append(entries[1]) is False
    assert store.entries() == entries


def test_entries_survive_a_new_store_on_the_same_path(tmp_path: pathlib.Path) -> None:
    entries = some_entries()
    first = LedgerStore(tmp_path / LEDGER_FILE)
    for entry in entries:
        first.append(entry)
    first.close()
    second = LedgerStore(tmp_path / LEDGER_FILE)
    try:
        assert second.entries() == entries
    finally:
        second.close()


def test_reopen_replays_to_the_same_balances(tmp_path: pathlib.Path) -> None:
    ledger, store = open_ledger(tmp_path, NETWORK, MINTERS)
    for entry in some_entries():
        for applied in ledger.apply(entry):
            store.append(applied)
    store.close()
    replayed, store = open_ledger(tmp_path, NETWORK, MINTERS)
    try:
        assert (
            replayed.balances()
            == ledger.balances()
            == {pub(WORKERS[0]): 8, pub(WORKERS[1]): 7, pub(WORKERS[2]): 11}
        )
        assert replayed.entries() == ledger.entries()
    finally:
        store.close()


def test_replay_skips_entries_that_no_longer_validate(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    entries = some_entries()
    store = LedgerStore(tmp_path / LEDGER_FILE)
    for entry in entries:
        store.append(entry)
    store.append(Entry(entries[0].body, bytes(64)))  # a corrupted row
    store.close()
    # OTHER_COORDINATOR is no longer a minter: its receipt is skipped, startup goes on.
    with caplog.at_level(logging.WARNING, logger="opengrid.store"):
        replayed, store = open_ledger(tmp_path, NETWORK, [pub(COORDINATOR)])
    try:
        assert replayed.entries() == [entries[0], entries[2]]
        assert "not a minter" in caplog.text and "bad signature" in caplog.text
    finally:
        store.close()


def test_append_refuses_undecodable_bodies(store: LedgerStore) -> None:
    with pytest.raises(InvalidEntryError):
        store.append(Entry(b"junk", bytes(64)))
    assert store.entries() == []


def test_sqlite_errors_become_ledger_errors_naming_the_file(tmp_path: pathlib.Path) -> None:
    missing = tmp_path / "no" / "such" / "dir" / LEDGER_FILE
    with pytest.raises(LedgerError, match=re.escape(str(missing))):
        LedgerStore(missing)
    not_a_db = tmp_path / "garbage.sqlite3"
    not_a_db.write_bytes(b"this is not a database" * 100)
    with pytest.raises(LedgerError, match=r"garbage\.sqlite3"):
        LedgerStore(not_a_db)


def test_open_ledger_creates_the_data_dir(tmp_path: pathlib.Path) -> None:
    ledger, store = open_ledger(tmp_path / "node", NETWORK, MINTERS)
    store.close()
    assert isinstance(ledger, LedgerState) and (tmp_path / "node" / LEDGER_FILE).exists()


CHILD = textwrap.dedent(
    """
    import pathlib, sys, time
    from opengrid.store import LedgerStore
    from opengrid_ledger import decode_entry
    store = LedgerStore(pathlib.Path(sys.argv[1]))
    store.append(decode_entry(bytes.fromhex(sys.argv[2])))
    print("appended", flush=True)
    time.sleep(60)
    """
)


def test_append_survives_sigkill(tmp_path: pathlib.Path) -> None:
    entry = some_entries()[0]
    path = tmp_path / LEDGER_FILE
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "ledger")])}
    with subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), encode_entry(entry).hex()],
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    ) as child:
        assert child.stdout is not None
        try:
            assert child.stdout.readline().strip() == "appended"
        finally:
            os.kill(child.pid, signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL
    reopened = LedgerStore(path)
    try:
        assert reopened.entries() == [entry]
    finally:
        reopened.close()

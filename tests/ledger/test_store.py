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


def test_append_many_is_one_idempotent_transaction(store: LedgerStore) -> None:
    entries = some_entries()
    assert store.append_many(entries[:2]) == 2
    assert store.append_many(entries) == 1
    assert store.entries() == entries and store.count() == 3
    assert store.entries_by_author(pub(COORDINATOR)) == [entries[0], entries[2]]
    assert store.entries_by_author(pub(COORDINATOR), from_seq=2) == [entries[2]]


def test_trusted_replay_equals_verified_replay(tmp_path: pathlib.Path) -> None:
    ledger, store = open_ledger(tmp_path, NETWORK, MINTERS)
    for entry in some_entries():
        store.append_many(ledger.apply(entry))
    store.close()
    fast, store = open_ledger(tmp_path, NETWORK, MINTERS)
    store.close()
    slow, store = open_ledger(tmp_path, NETWORK, MINTERS, verify=True)
    store.close()
    assert fast.entries() == slow.entries() == ledger.entries()
    assert fast.balances() == slow.balances() == ledger.balances()


def test_trusted_replay_catches_a_row_whose_bytes_do_not_match_its_id(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    entries = some_entries()
    store = LedgerStore(tmp_path / LEDGER_FILE)
    store.append_many(entries)
    store._db.execute("UPDATE entries SET signature = ? WHERE seq = 2", (bytes(64),))
    store.close()
    with caplog.at_level(logging.WARNING, logger="opengrid.store"):
        replayed, store = open_ledger(tmp_path, NETWORK, MINTERS)
    store.close()
    assert replayed.entries() == entries[:2] and "does not match its bytes" in caplog.text


def test_trusted_replay_falls_back_to_verification_when_a_bad_row_came_first(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    entries = some_entries()
    store = LedgerStore(tmp_path / LEDGER_FILE)
    store.append(Entry(entries[0].body[:-1] + b"\x00", entries[0].signature))  # forged, self-consistent id
    store.append_many(entries)
    store.close()
    with caplog.at_level(logging.WARNING, logger="opengrid.store"):
        replayed, store = open_ledger(tmp_path, NETWORK, MINTERS)
    store.close()
    assert not replayed.frozen() and replayed.entries() == entries


def test_read_only_store_cannot_write_and_needs_an_existing_file(tmp_path: pathlib.Path) -> None:
    with pytest.raises(LedgerError, match="cannot open"):
        LedgerStore(tmp_path / LEDGER_FILE, read_only=True)
    writer = LedgerStore(tmp_path / LEDGER_FILE)
    writer.append(some_entries()[0])
    reader = LedgerStore(tmp_path / LEDGER_FILE, read_only=True)
    try:
        assert reader.entries() == [some_entries()[0]]
        with pytest.raises(LedgerError):
            reader.append(some_entries()[1])
    finally:
        reader.close()
        writer.close()


def test_cli_balance_history_verify(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    import argparse
    import json

    from opengrid.cli import ledger as cli

    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command"))
    ledger, store = open_ledger(tmp_path, NETWORK, MINTERS)
    for entry in some_entries():
        store.append_many(ledger.apply(entry))
    store.close()
    worker = pub(WORKERS[0]).hex()
    base = ["--data-dir", str(tmp_path), "--network", NETWORK, "--json"]
    assert cli.run(parser.parse_args(["ledger", "balance", *base, "--account", worker])) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["balance"] == 8 and report["entries"] == 3 and report["minters_from_store"]
    assert cli.run(parser.parse_args(["ledger", "history", *base, "--account", worker])) == 0
    assert [item["delta"] for item in json.loads(capsys.readouterr().out)["history"]] == [5, 3]
    assert cli.run(parser.parse_args(["ledger", "verify", *base])) == 0
    capsys.readouterr()
    # A tampered row: verify finds it (signatures are checked, not trusted) and exits 1.
    db = LedgerStore(tmp_path / LEDGER_FILE)
    db._db.execute("UPDATE entries SET signature = ? WHERE rowid = 2", (bytes(64),))
    db.close()
    assert (
        cli.run(parser.parse_args(["ledger", "verify", "--data-dir", str(tmp_path), "--network", NETWORK]))
        == 1
    )
    assert "INVALID" in capsys.readouterr().out

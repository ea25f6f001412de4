"""kill -9 a node while it writes ledger entries; restart: the store opens, nothing committed is lost.

Issue 5's acceptance line, spec/ledger.md §8 (WAL, ``synchronous=FULL``). A child process
(``crash_writer.py``) opens the store like a restarting node and writes signed entries (single ``append``
calls and ``append_many`` batches), announcing each write call before it and confirming it after it
returned. The parent SIGKILLs it at a random moment (or, every third trial, the child SIGKILLs itself from
inside SQLite during a random write call, so some trials surely die inside one), then checks the store.
Every trial runs on the same data dir, so each child is also a restart of the previous (killed) one, and
the parent itself writes after every kill. Nothing depends on when the kill lands: a child killed before
its first commit still leaves a store that must open and hold everything committed so far.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import pathlib
import queue
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from typing import IO

import pytest
from crash_writer import MAX_BATCH, Op, prepare, store_batch
from ledger_factory import MINTERS, NETWORK, WORKERS, pub

from opengrid.store import LEDGER_FILE, open_ledger

pytestmark = pytest.mark.slow

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]
WRITER = HERE / "crash_writer.py"

SEED = int(os.environ.get("OPENGRID_CRASH_SEED", "5"))
"""Draws the kill delays and the children's entries; set OPENGRID_CRASH_SEED to try others."""
TRIALS = 9
MODES = ("after ready", "after start", "inside sqlite")
"""Trial k kills the child: at a random moment after it said ready; at a random moment after it was
started (maybe while it opens the store); or from inside SQLite at a random write call (``crash_writer``)."""
MAX_WRITES = 400
"""Write calls per child at most (it prints ``finished`` if the kill comes later than that)."""
MAX_KILL_DELAY = 0.5
"""Seconds after the child's ``ready`` or start until the parent's SIGKILL."""
JOB_BLOCK = 1_000_000
"""Job numbers of trial k start at (k + 1) * JOB_BLOCK; the parent's own writes at half a block later."""
STARTUP_TIMEOUT = 60.0
"""Seconds a child may take to open the store and say ``ready`` (a loaded CI machine is slow)."""


class Trial:
    """What the parent learned from one killed child's stdout."""

    def __init__(self, lines: Iterable[str]) -> None:
        self.ready = False
        self.finished = False
        self.committed: list[Op] = []
        self.in_flight: list[Op] = []
        """The write call announced but not confirmed when the kill landed: all of it is stored, or none."""
        for line in lines:
            if not line.endswith("\n"):
                break  # cut short by the kill: the child wrote nothing after it
            word, _, rest = line.strip().partition(" ")
            if word == "ready":
                self.ready = True
            elif word == "intent":
                self.in_flight = [(eid, [(i, d) for i, d in deltas]) for eid, deltas in json.loads(rest)]
            elif word == "committed":
                self.committed += self.in_flight
                self.in_flight = []
            elif word == "finished":
                self.finished = True


def _pump(stream: IO[str], lines: queue.Queue[str | None]) -> None:
    for line in iter(stream.readline, ""):
        lines.put(line)
    lines.put(None)


def run_and_kill(
    data_dir: pathlib.Path, seed: int, first_job: int, *, mode: str, delay: float, log: pathlib.Path
) -> tuple[Trial, int]:
    """Start a writer on ``data_dir`` and SIGKILL it (see ``MODES``; ``delay``: seconds after its ready or
    start; for "inside sqlite", the write call it dies in); return what it printed and its exit status
    (-9 if killed, 0 if it finished its writes first)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "ledger"), str(HERE)])}
    command = [sys.executable, str(WRITER), str(data_dir), str(seed), str(first_job), str(MAX_WRITES)]
    if mode == "inside sqlite":
        command += [str(int(delay * 100)), str(1 + seed % 25)]  # write call 0-50, 1-25 VM steps
    lines: queue.Queue[str | None] = queue.Queue()
    head: list[str] = []
    with (
        log.open("w") as stderr,
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, env=env, text=True) as child,
    ):
        assert child.stdout is not None
        # Drain stdout all along, so the child never blocks on a full pipe: it dies mid-write, not mid-print.
        pump = threading.Thread(target=_pump, args=(child.stdout, lines), daemon=True)
        pump.start()
        try:
            if mode == "after ready":
                first = lines.get(timeout=STARTUP_TIMEOUT)
                assert first is not None and first.startswith("ready"), f"no ready: {log.read_text()}"
                head.append(first)
            if mode == "inside sqlite":
                child.wait(timeout=STARTUP_TIMEOUT)  # it kills itself (or finishes its bounded writes)
            else:
                time.sleep(delay)  # the kill moment itself, drawn at random, not a wait for something
        finally:
            child.kill()  # SIGKILL
            child.wait()
            pump.join(timeout=STARTUP_TIMEOUT)
    assert not pump.is_alive(), "the child's stdout did not close after SIGKILL"
    return Trial(itertools.chain(head, iter(lines.get_nowait, None))), child.returncode


def integrity(path: pathlib.Path) -> list[tuple[str, ...]]:
    """``PRAGMA integrity_check`` of the SQLite file at ``path`` (``[("ok",)]`` when sound)."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        return db.execute("PRAGMA integrity_check").fetchall()


def balances_of(ops: Iterable[list[tuple[int, int]]]) -> dict[bytes, int]:
    """The balances the entries' deltas add up to, as ``LedgerState.balances`` gives them (no zeros)."""
    totals: dict[bytes, int] = {}
    for deltas in ops:
        for worker, delta in deltas:
            totals[pub(WORKERS[worker])] = totals.get(pub(WORKERS[worker]), 0) + delta
    return {account: points for account, points in sorted(totals.items()) if points}


def check_store(
    data_dir: pathlib.Path,
    expected: dict[str, list[tuple[int, int]]],
    in_flight: list[Op],
    caplog: pytest.LogCaptureFixture,
) -> list[Op]:
    """The store at ``data_dir`` is sound, opens (read-only first, as ``opengrid ledger`` next to a dead
    node would, then verified, then trusted as a restarting node does), holds exactly the ``expected``
    entries plus all or none of ``in_flight``, and they add up to the expected balances. Returns the
    in-flight ops that turned out to be stored."""
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="opengrid.store"):
        looked, store = open_ledger(data_dir, NETWORK, MINTERS, read_only=True)
        store.close()
        assert integrity(data_dir / LEDGER_FILE) == [("ok",)]
        verified, store = open_ledger(data_dir, NETWORK, MINTERS, verify=True)
        store.close()
        trusted, store = open_ledger(data_dir, NETWORK, MINTERS)
        try:
            stored = store.count()
        finally:
            store.close()
    assert not caplog.records, f"replay skipped stored entries: {caplog.text}"
    ids = [entry.id.hex() for entry in trusted.entries()]
    assert len(ids) == len(set(ids)) == stored
    flight = {eid for eid, _ in in_flight}
    landed = flight & set(ids)
    assert landed in (set(), flight), f"{len(landed)} of a {len(flight)}-entry write call were stored"
    found = in_flight if landed else []
    assert set(ids) == set(expected) | landed, "committed entries lost, or unknown entries stored"
    assert looked.entries() == verified.entries() == trusted.entries()
    want = balances_of([*expected.values(), *(deltas for _, deltas in found)])
    assert verified.balances() == trusted.balances() == want
    assert not trusted.pending() and not trusted.frozen()
    return found


def test_sigkill_mid_write_loses_nothing_committed(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    rng = random.Random(SEED)
    data_dir = tmp_path / "node"
    expected: dict[str, list[tuple[int, int]]] = {}
    for trial in range(TRIALS):
        mode = MODES[trial % len(MODES)]
        delay = rng.uniform(0, MAX_KILL_DELAY)
        first_job = (trial + 1) * JOB_BLOCK
        log = tmp_path / f"writer-{trial}.stderr"
        report, status = run_and_kill(
            data_dir, rng.randrange(2**32), first_job, mode=mode, delay=delay, log=log
        )
        # Shown by pytest when the test fails: enough to tell what was going on.
        print(
            f"seed {SEED} trial {trial}: SIGKILL {mode} "
            + (f"(from write call {int(delay * 100)})" if mode == "inside sqlite" else f"({delay:.3f} s)")
            + f", exit {status}, ready {report.ready}, "
            f"{len(expected)} entries before, {len(report.committed)} committed, "
            f"{len(report.in_flight)} in flight",
            end=", ",
        )
        assert status in (-signal.SIGKILL, 0), f"writer failed: {log.read_text()}"
        assert status == -signal.SIGKILL or report.finished
        expected.update(report.committed)
        landed = check_store(data_dir, expected, report.in_flight, caplog)
        print(f"{len(landed)} of them stored")
        expected.update(landed)

        # The restarted node writes on (one append, one append_many), then restarts cleanly.
        ledger, store = open_ledger(data_dir, NETWORK, MINTERS)
        try:
            job = first_job + JOB_BLOCK // 2
            for single, size in ((True, 1), (False, MAX_BATCH)):
                entries, ops = prepare(ledger, rng, job, size)
                store_batch(store, entries, single=single)
                expected.update(ops)
                job += size
        finally:
            store.close()
        check_store(data_dir, expected, [], caplog)

"""A node that writes signed ledger entries until it is killed: the child process of test_store_crash.py.

    python tests/ledger/crash_writer.py DATA_DIR SEED FIRST_JOB WRITES [DIE_AT STEPS]

Opens the ledger store in DATA_DIR the way a (re)starting node does (``open_ledger``: replay what is
stored), prints ``ready``, then makes at most WRITES write calls, alternating ``LedgerStore.append`` (one
entry) and ``LedgerStore.append_many`` (a batch of 1-12). Each entry is applied to the in-memory ledger
first and only what ``apply`` accepted is stored, as the node does. Around every write call it prints,
flushed, one line before the call and one after the call returned (i.e. after the commit):

    intent [["<entry id hex>", [[<worker index>, <balance delta>], ...]], ...]
    committed

so the parent knows exactly which entries are committed, and which one call may have been in flight when
it killed the process. With DIE_AT and STEPS the child kills itself (SIGKILL) from inside SQLite: from its
DIE_AT-th write call on, every STEPS virtual-machine instructions of a statement (SQLite's progress
handler, which also runs once a statement has finished, so after an autocommit INSERT's commit too), so
inside a write call by construction rather than by timing.

Entries are RECEIPTs from the three test coordinators (job numbers from FIRST_JOB up, so they never
repeat) and TRANSFERs between workers that can afford them.
"""

from __future__ import annotations

import json
import os
import pathlib
import random
import signal
import sys

from ledger_factory import (
    COORDINATOR,
    MINTERS,
    NETWORK,
    OTHER_COORDINATOR,
    THIRD_COORDINATOR,
    WORKERS,
    job_id,
    make_receipt,
    pub,
)
from opengrid_ledger import Entry, LedgerState, Payload, Transfer, sign_entry

from opengrid.store import LedgerStore, open_ledger

COORDINATORS = [COORDINATOR, OTHER_COORDINATOR, THIRD_COORDINATOR]
MAX_BATCH = 12

Op = tuple[str, list[tuple[int, int]]]
"""One entry as the parent sees it: (id hex, [(worker index, balance delta), ...])."""


def next_entry(ledger: LedgerState, rng: random.Random, job: int) -> tuple[Entry, Op]:
    """A valid next entry for ``ledger``: a receipt for ``job``, or a transfer between workers."""
    payload: Payload
    rich = [i for i, worker in enumerate(WORKERS) if ledger.balance(pub(worker)) > 0]
    if rich and rng.random() < 0.3:
        giver = rng.choice(rich)
        taker = rng.choice([i for i in range(len(WORKERS)) if i != giver])
        amount = rng.randint(1, ledger.balance(pub(WORKERS[giver])))
        author = WORKERS[giver]
        payload = Transfer(pub(WORKERS[taker]), amount)
        deltas = [(giver, -amount), (taker, amount)]
    else:
        author = rng.choice(COORDINATORS)
        paid = rng.sample(range(len(WORKERS)), rng.randint(1, 2))
        deltas = [(i, rng.randint(1, 50)) for i in paid]
        payload = make_receipt(job_id(job), [(WORKERS[i], points) for i, points in deltas])
    entry = sign_entry(author, ledger.next_body(pub(author), payload))
    return entry, (entry.id.hex(), deltas)


def prepare(ledger: LedgerState, rng: random.Random, job: int, size: int) -> tuple[list[Entry], list[Op]]:
    """``size`` new entries (job numbers from ``job``), applied to ``ledger`` in memory, not stored yet."""
    entries, ops = [], []
    for n in range(size):
        entry, op = next_entry(ledger, rng, job + n)
        if ledger.apply(entry) != [entry]:
            raise RuntimeError(f"the ledger did not apply the writer's own entry {op[0]}")
        entries.append(entry)
        ops.append(op)
    return entries, ops


def store_batch(store: LedgerStore, entries: list[Entry], *, single: bool) -> None:
    """One write call: ``append`` for a single entry, else ``append_many`` (one transaction)."""
    if single:
        [entry] = entries
        store.append(entry)
    else:
        store.append_many(entries)


def die_inside_sqlite(store: LedgerStore, steps: int) -> None:
    """From now on, SIGKILL this process from SQLite's progress handler, ``steps`` VM instructions into a
    statement: the write call in progress never returns and its transaction is left open on disk."""
    store._db.set_progress_handler(lambda: os.kill(os.getpid(), signal.SIGKILL), steps)


def main(argv: list[str]) -> None:
    data_dir, seed, first_job, writes = pathlib.Path(argv[0]), int(argv[1]), int(argv[2]), int(argv[3])
    die_at, steps = (int(argv[4]), int(argv[5])) if len(argv) > 4 else (writes, 0)
    rng = random.Random(seed)
    ledger, store = open_ledger(data_dir, NETWORK, MINTERS)
    print("ready", len(ledger), flush=True)
    job = first_job
    for n in range(writes):
        single = n % 2 == 0
        size = 1 if single else rng.randint(1, MAX_BATCH)
        entries, ops = prepare(ledger, rng, job, size)
        # Flushed before the call: every entry that may reach the disk has been announced.
        print("intent", json.dumps(ops), flush=True)
        if n == die_at:
            die_inside_sqlite(store, steps)
        store_batch(store, entries, single=single)
        print("committed", flush=True)
        job += size
    print("finished", flush=True)
    store.close()


if __name__ == "__main__":
    main(sys.argv[1:])

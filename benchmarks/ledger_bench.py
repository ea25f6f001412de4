"""Ledger benchmark: ingest rate vs raw Ed25519 verification, sync of two large ledgers, store startup.

    .venv/bin/python benchmarks/ledger_bench.py [--entries 1000000] [--diff 100] [--ingest 20000]

Prints a markdown table, then the same figures as JSON. Entries are real: signed with PyNaCl, chained,
verified by the receiving side. The sync and startup ledgers are EVIDENCE entries (one signature each)
from ``--authors`` coordinator chains; ingest also measures RECEIPTs (entry + 2 worker attestations).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import pathlib
import random
import sys
import tempfile
import time

import nacl.signing

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "ledger")]

from opengrid_ledger import (  # noqa: E402
    Credit,
    Entry,
    EntryBody,
    Evidence,
    LedgerState,
    Receipt,
    decode_entry,
    encode_entry,
    sign_attestation,
    sign_entry,
)
from opengrid_ledger.sync import SyncSession  # noqa: E402

from opengrid.store import LedgerStore, open_ledger  # noqa: E402

NETWORK = "bench"


def signing_key(label: str) -> nacl.signing.SigningKey:
    return nacl.signing.SigningKey(hashlib.sha256(label.encode()).digest())


WORKERS = [signing_key(f"worker {i}") for i in range(8)]


def evidence_ledger(n: int, authors: int) -> tuple[list[Entry], list[bytes]]:
    """``n`` chained EVIDENCE entries, round-robin over ``authors`` coordinators."""
    keys = [signing_key(f"coordinator {i}") for i in range(authors)]
    pubs = [bytes(k.verify_key) for k in keys]
    prev = [b""] * authors
    entries = []
    for i in range(n):
        a = i % authors
        worker = bytes(WORKERS[i % len(WORKERS)].verify_key)
        body = EntryBody(
            NETWORK, pubs[a], i // authors + 1, prev[a], Evidence(i.to_bytes(16, "big"), valid=(worker,))
        )
        entry = sign_entry(keys[a], body)
        prev[a] = entry.id
        entries.append(entry)
    return entries, pubs


def receipts(n: int) -> tuple[list[Entry], bytes]:
    coordinator = signing_key("receipt coordinator")
    ledger = LedgerState(NETWORK, [bytes(coordinator.verify_key)])
    out = []
    for i in range(n):
        job = (10**9 + i).to_bytes(16, "big")
        pair = WORKERS[i % 4 : i % 4 + 2]
        commitment = hashlib.sha256(b"%d" % i).digest()
        atts = tuple(sign_attestation(w, NETWORK, job, bytes(32), commitment, 50) for w in pair)
        receipt = Receipt(
            job, bytes(32), commitment, 50, tuple(Credit(bytes(w.verify_key), 50) for w in pair), atts
        )
        entry = sign_entry(coordinator, ledger.next_body(bytes(coordinator.verify_key), receipt))
        ledger.apply_trusted(entry)
        out.append(entry)
    return out, bytes(coordinator.verify_key)


def raw_verify_rate(n: int) -> float:
    key = signing_key("raw")
    public = bytes(key.verify_key)
    messages = [b"opengrid/entry/1\x00" + hashlib.sha256(b"%d" % i).digest() * 6 for i in range(n)]
    signed = [(m, key.sign(m).signature) for m in messages]
    start = time.perf_counter()
    for message, signature in signed:
        nacl.signing.VerifyKey(public).verify(message, signature)
    return n / (time.perf_counter() - start)


def ingest_rate(entries: list[Entry], minters: list[bytes], batch: int = 100) -> float:
    """Entries/s for decode + verify + apply + durable store (one transaction per ``batch``)."""
    wire = [encode_entry(e) for e in entries]
    with tempfile.TemporaryDirectory() as tmp:
        ledger, store = open_ledger(pathlib.Path(tmp), NETWORK, minters)
        start = time.perf_counter()
        for i in range(0, len(wire), batch):
            applied: list[Entry] = []
            for data in wire[i : i + batch]:
                applied += ledger.apply(decode_entry(data))
            store.append_many(applied)
        elapsed = time.perf_counter() - start
        store.close()
    assert len(ledger) == len(entries)
    return len(entries) / elapsed


def sync_figures(entries: list[Entry], minters: list[bytes], diff: int) -> dict[str, float]:
    rng = random.Random(7)
    missing = rng.sample(range(len(entries)), diff)
    left_out, right_out = set(missing[: diff // 2]), set(missing[diff // 2 :])
    start = time.perf_counter()
    left, right = LedgerState(NETWORK, minters), LedgerState(NETWORK, minters)
    for i, entry in enumerate(entries):
        if i not in left_out:
            left.apply_trusted(entry)
        if i not in right_out:
            right.apply_trusted(entry)
    load = time.perf_counter() - start
    start = time.perf_counter()
    a, b = SyncSession(left), SyncSession(right)
    index = time.perf_counter() - start
    start = time.perf_counter()
    flight, receiver, flights = a.start(), b, 0
    while flight:
        flights += 1
        replies: list[bytes] = []
        for frame in flight:
            replies += receiver.receive(frame)
        flight, receiver = replies, (a if receiver is b else b)
    elapsed = time.perf_counter() - start
    total = a.stats.bytes_sent + b.stats.bytes_sent
    entry_bytes = a.stats.entry_bytes_sent + b.stats.entry_bytes_sent
    assert {e.id for e in left.entries()} == {e.id for e in right.entries()}, "did not converge"
    assert len(left) == len(entries) and not left.pending() and not right.pending()
    return {
        "round_trips": (flights + 1) // 2,
        "turns": flights,
        "bytes_total": total,
        "bytes_entries": entry_bytes,
        "bytes_reconciliation": total - entry_bytes,
        "sync_seconds": round(elapsed, 3),
        "index_build_seconds": round(index, 3),
        "load_two_ledgers_seconds": round(load, 1),
        "refused": len(a.refused) + len(b.refused),
    }


def startup_figures(entries: list[Entry], minters: list[bytes], verify_sample: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp)
        store = LedgerStore(path / "ledger.sqlite3")
        start = time.perf_counter()
        for i in range(0, len(entries), 10_000):
            store.append_many(entries[i : i + 10_000])
        write = time.perf_counter() - start
        store.close()
        size = (path / "ledger.sqlite3").stat().st_size
        start = time.perf_counter()
        ledger, store = open_ledger(path, NETWORK, minters)
        trusted = time.perf_counter() - start
        store.close()
        assert len(ledger) == len(entries)
        del ledger
    sample = entries[:verify_sample]
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp)
        store = LedgerStore(path / "ledger.sqlite3")
        store.append_many(sample)
        store.close()
        start = time.perf_counter()
        _, store = open_ledger(path, NETWORK, minters, verify=True)
        verified = (time.perf_counter() - start) * len(entries) / len(sample)
        store.close()
    return {
        "store_write_seconds": round(write, 1),
        "store_megabytes": round(size / 2**20, 1),
        "startup_trusted_seconds": round(trusted, 2),
        "startup_verified_seconds_extrapolated": round(verified, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--entries", type=int, default=1_000_000, help="size of the sync/startup ledgers")
    parser.add_argument("--authors", type=int, default=1000, help="author chains in those ledgers")
    parser.add_argument("--diff", type=int, default=100, help="entries the two sync ledgers differ by")
    parser.add_argument("--ingest", type=int, default=20_000, help="entries in the ingest run")
    args = parser.parse_args()

    results: dict[str, object] = {"entries": args.entries, "authors": args.authors, "diff": args.diff}
    raw = raw_verify_rate(20_000)
    evidence, minters = evidence_ledger(args.ingest, 10)
    single = ingest_rate(evidence, minters)
    paid, coordinator = receipts(args.ingest // 4)
    triple = ingest_rate(paid, [coordinator])
    results["ingest"] = {
        "raw_verify_per_s": round(raw),
        "evidence_entries_per_s": round(single),
        "evidence_ratio": round(single / raw, 2),
        "receipt_entries_per_s": round(triple),
        "receipt_signatures_per_s": round(3 * triple),
        "receipt_signature_ratio": round(3 * triple / raw, 2),
    }
    start = time.perf_counter()
    big, minters = evidence_ledger(args.entries, args.authors)
    results["generate_seconds"] = round(time.perf_counter() - start, 1)
    results["sync"] = sync_figures(big, minters, args.diff)
    results["startup"] = startup_figures(big, minters, min(len(big), 50_000))

    ing, syn, sta = results["ingest"], results["sync"], results["startup"]
    assert isinstance(ing, dict) and isinstance(syn, dict) and isinstance(sta, dict)
    rows = [
        ("raw PyNaCl verify", f"{ing['raw_verify_per_s']:,} /s", ""),
        (
            "ingest EVIDENCE (1 sig): decode+verify+apply+store",
            f"{ing['evidence_entries_per_s']:,} entries/s",
            f"{ing['evidence_ratio']} x raw (goal >= 0.5)",
        ),
        (
            "ingest RECEIPT (entry + 2 attestations)",
            f"{ing['receipt_entries_per_s']:,} entries/s",
            f"{ing['receipt_signature_ratio']} x raw in signatures/s",
        ),
        (
            f"sync {args.entries:,} vs {args.entries:,} entries, {args.diff} differences",
            f"{syn['round_trips']} round trips",
            "goal <= 4",
        ),
        ("  bytes on the wire (all)", f"{syn['bytes_total']:,} B", f"entries {syn['bytes_entries']:,} B"),
        (
            "  bytes for reconciliation (without entries)",
            f"{syn['bytes_reconciliation']:,} B",
            "goal <= 64 KB",
        ),
        (
            "  sync time (after index build)",
            f"{syn['sync_seconds']} s",
            f"index build {syn['index_build_seconds']} s",
        ),
        (
            f"store {args.entries:,} entries",
            f"{sta['store_megabytes']} MiB",
            f"written in {sta['store_write_seconds']} s",
        ),
        ("startup, trusted replay", f"{sta['startup_trusted_seconds']} s", ""),
        (
            "startup, full verification (extrapolated)",
            f"{sta['startup_verified_seconds_extrapolated']} s",
            "from 50k entries",
        ),
    ]
    print("| measure | value | note |\n|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

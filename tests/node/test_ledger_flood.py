"""Ledger floods by free keys do not fill a node (issue 15, item 6), against a real coordinator on
127.0.0.1 attacked over ``/opengrid/ledger-sync/1`` by a bare py-libp2p host.

- Forks by fresh keys in one sync push used to leave one permanent FRAUD entry each, authored by the node
  and stored (and gossiped) for ever. A key with no standing (no credit, no applied entry, not a
  coordinator) now gets cut without evidence: no proof, nothing stored.
- Entries parked on a missing seq 1 (three fresh keys, thousands of far-future seqs of 8 KB each) grew the
  node by hundreds of MiB, and sync copied them on. The waiting pool is now capped, and authors without
  standing share a small part of it.
"""

from __future__ import annotations

import pathlib
import secrets
from collections.abc import Iterator

import pytest
import trio
from libp2p.custom_types import TProtocol
from nacl.signing import SigningKey
from opengrid_ledger import (
    Entry,
    EntryBody,
    Evidence,
    Fraud,
    Hold,
    LedgerState,
    decode_body,
    encode_entry,
    make_fraud,
    sign_entry,
)
from opengrid_ledger.state import MAX_UNBACKED_WAITING
from opengrid_ledger.sync import MAX_BATCH, MAX_BATCH_BYTES, SyncSession, Turn, encode_turn

from opengrid.cli.demo import DemoNetwork, DemoNode
from opengrid.net.host import Host
from opengrid.net.keys import public_key_of
from opengrid.node.ledger_sync import SYNC_PROTOCOL, initiate, receive_flight, send_flight
from opengrid.store.ledger_store import open_ledger
from tests.node.workers import client_host
from tests.waiting import until

NETWORK = "ledger-flood"
ENTRY_BYTES = 8600
"""About the size of each parked EVIDENCE entry below (250 keys)."""


@pytest.fixture
def coordinator(tmp_path: pathlib.Path) -> Iterator[DemoNode]:
    """A real coordinator process (no model needed: nobody runs jobs here)."""
    net = DemoNetwork(tmp_path, model="", network=NETWORK)
    try:
        node = net.start("coordinator", "coordinator")
        net.wait_ready(node)
        yield node
    finally:
        net.stop()


def _rss_mib(node: DemoNode) -> float:
    status = pathlib.Path(f"/proc/{node.process.pid}/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def _signed(key: SigningKey, seq: int, prev: bytes, payload: object) -> Entry:
    body = EntryBody(NETWORK, bytes(key.verify_key), seq, prev, payload)  # type: ignore[arg-type]
    return sign_entry(key, body)


async def _push(attacker: Host, node: DemoNode, entries: list[Entry]) -> None:
    """One sync exchange that pushes ``entries`` (in turns within the protocol's limits), then ends."""
    turns: list[bytes] = []
    batch: list[bytes] = []
    size = 0
    for entry in entries:
        data = encode_entry(entry)
        if batch and (len(batch) >= MAX_BATCH or size + len(data) > MAX_BATCH_BYTES):
            turns.append(encode_turn(Turn(NETWORK, entries=tuple(batch))))
            batch, size = [], 0
        batch.append(data)
        size += len(data)
    turns.append(encode_turn(Turn(NETWORK, entries=tuple(batch))))
    peer = await attacker.connect(node.addrs[0])
    stream = await attacker.open_stream(peer, TProtocol(SYNC_PROTOCOL))
    with trio.fail_after(120):
        await send_flight(stream, turns)
        await receive_flight(stream)  # the node's answer: it has taken the whole flight
        await send_flight(stream, [])  # nothing more to say: the exchange ends
    await stream.aclose()


async def _served_bytes(peer_host: Host, node: DemoNode) -> int:
    """Entry bytes the node hands an empty ledger that syncs with it (what sync copies on)."""
    peer = await peer_host.connect(node.addrs[0])
    stream = await peer_host.open_stream(peer, TProtocol(SYNC_PROTOCOL))
    session = SyncSession(LedgerState(NETWORK))
    with trio.fail_after(120):
        await initiate(stream, session)
    await stream.aclose()
    return session.stats.entry_bytes_received


def _stored(node: DemoNode) -> tuple[int, int]:
    """(entries the node stored, FRAUD entries it authored), read from its data dir beside it."""
    _, store = open_ledger(node.data_dir, NETWORK, read_only=True)
    try:
        me = public_key_of(node.peer_id)
        frauds = sum(isinstance(decode_body(e.body).payload, Fraud) for e in store.entries_by_author(me))
        return store.count(), frauds
    finally:
        store.close()


async def test_forks_and_parked_floods_by_fresh_keys_leave_nothing_behind(coordinator: DemoNode) -> None:
    async with trio.open_nursery() as nursery:
        attacker: Host = await nursery.start(client_host)
        stored, _ = _stored(coordinator)

        # 300 fresh keys each sign two different seq-1 HOLDs (a fork), and 300 more fresh keys each
        # publish a FRAUD proof of one of those forks.
        me = public_key_of(coordinator.peer_id)
        flood: list[Entry] = []
        for _ in range(300):
            key = SigningKey.generate()
            one = _signed(key, 1, b"", Hold(secrets.token_bytes(16), 10, me))
            two = _signed(key, 1, b"", Hold(secrets.token_bytes(16), 10, me))
            flood += [one, two, _signed(SigningKey.generate(), 1, b"", make_fraud(one, two))]
        await _push(attacker, coordinator, flood)
        # The node stores (and proves forks) once the exchange is over: its log says when.
        await until(lambda: "ledger sync with" in coordinator.log_path.read_text(), 30, coordinator.log_tail)
        assert _stored(coordinator) == (stored, 0), "the node stored FRAUD proofs of free keys' forks"

        # Three fresh keys, seq 1 withheld, 3 x 3000 entries of ~8.6 KB each parked behind it.
        before = _rss_mib(coordinator)
        witnesses = tuple(secrets.token_bytes(32) for _ in range(250))
        for _ in range(3):
            key, prev, chain = SigningKey.generate(), b"", []
            for seq in range(1, 3002):
                entry = _signed(key, seq, prev, Evidence(secrets.token_bytes(16), valid=witnesses))
                prev = entry.id
                chain.append(entry)
            await _push(attacker, coordinator, chain[1:])
        grown = _rss_mib(coordinator) - before
        assert grown < 100, f"the coordinator grew by {grown:.0f} MiB"
        assert _stored(coordinator) == (stored, 0)
        # What sync copies to a peer is bounded the same way (was: all of it, to every worker).
        served = await _served_bytes(attacker, coordinator)
        assert served <= (MAX_UNBACKED_WAITING + 600) * ENTRY_BYTES, served
        nursery.cancel_scope.cancel()

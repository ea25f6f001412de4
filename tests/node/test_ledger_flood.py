"""Ledger floods by free keys do not fill a node (issue 15, item 6): a coordinator attacked over
``/opengrid/ledger-sync/1`` by a bare host, in process on the in-memory network in virtual time (its
ledger's waiting pool read directly), and as a real process on 127.0.0.1 (its RSS; the multi-process tier).

- Forks by fresh keys in one sync push used to leave one permanent FRAUD entry each, authored by the node
  and stored (and gossiped) for ever. A key with no standing (no credit, no applied entry, not a
  coordinator) now gets cut without evidence: no proof, nothing stored.
- Entries parked on a missing seq 1 (three fresh keys, thousands of far-future seqs of 8 KB each) grew the
  node by hundreds of MiB, and sync copied them on. The waiting pool is now capped, and authors without
  standing share a small part of it.
"""

from __future__ import annotations

import logging
import pathlib
import secrets
from collections.abc import Iterator
from functools import partial

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
from trio.testing import MockClock

from opengrid.cli.demo import DemoNetwork, DemoNode
from opengrid.net.host import Host
from opengrid.net.keys import public_key_of
from opengrid.net.transport import StreamHost
from opengrid.node.config import NodeConfig
from opengrid.node.ledger_sync import SYNC_PROTOCOL, initiate, receive_flight, send_flight
from opengrid.node.service import Node
from opengrid.store.ledger_store import open_ledger
from opengrid.testing.memnet import MemoryNetwork
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


async def _push(attacker: StreamHost, address: str, entries: list[Entry]) -> None:
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
    peer = await attacker.connect(address)
    stream = await attacker.open_stream(peer, TProtocol(SYNC_PROTOCOL))
    with trio.fail_after(120):
        await send_flight(stream, turns)
        await receive_flight(stream)  # the node's answer: it has taken the whole flight
        await send_flight(stream, [])  # nothing more to say: the exchange ends
    await stream.aclose()


async def _served_bytes(peer_host: StreamHost, address: str) -> int:
    """Entry bytes the node hands an empty ledger that syncs with it (what sync copies on)."""
    peer = await peer_host.connect(address)
    stream = await peer_host.open_stream(peer, TProtocol(SYNC_PROTOCOL))
    session = SyncSession(LedgerState(NETWORK))
    with trio.fail_after(120):
        await initiate(stream, session)
    await stream.aclose()
    return session.stats.entry_bytes_received


def _stored(data_dir: pathlib.Path, peer_id: str) -> tuple[int, int]:
    """(entries the node stored, FRAUD entries it authored), read from its data dir beside it."""
    _, store = open_ledger(data_dir, NETWORK, read_only=True)
    try:
        me = public_key_of(peer_id)
        frauds = sum(isinstance(decode_body(e.body).payload, Fraud) for e in store.entries_by_author(me))
        return store.count(), frauds
    finally:
        store.close()


def _forks(me: bytes, n: int) -> list[Entry]:
    """``n`` fresh keys each sign two different seq-1 HOLDs (a fork), and ``n`` more fresh keys each
    publish a FRAUD proof of one of those forks."""
    flood: list[Entry] = []
    for _ in range(n):
        key = SigningKey.generate()
        one = _signed(key, 1, b"", Hold(secrets.token_bytes(16), 10, me))
        two = _signed(key, 1, b"", Hold(secrets.token_bytes(16), 10, me))
        flood += [one, two, _signed(SigningKey.generate(), 1, b"", make_fraud(one, two))]
    return flood


def _parked(seqs: int) -> list[Entry]:
    """A fresh key's chain of ``seqs`` EVIDENCE entries of ~8.6 KB each, without its seq 1: all parked."""
    witnesses = tuple(secrets.token_bytes(32) for _ in range(250))
    key, prev, chain = SigningKey.generate(), b"", []
    for seq in range(1, seqs + 2):
        entry = _signed(key, seq, prev, Evidence(secrets.token_bytes(16), valid=witnesses))
        prev = entry.id
        chain.append(entry)
    return chain[1:]


async def test_forks_and_parked_floods_by_fresh_keys_are_cut_and_capped(
    tmp_path: pathlib.Path, memnet: MemoryNetwork, memnet_clock: MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """In process: the forks leave nothing stored; parked entries by keys without standing stay within
    MAX_UNBACKED_WAITING in the waiting pool and in what sync serves (3 x 1,200 pushed: 3.5 times the cap,
    so an uncapped pool holds all 3,600)."""
    caplog.set_level(logging.INFO, logger="opengrid")
    config = NodeConfig(data_dir=tmp_path / "c", role="coordinator", network=NETWORK, heartbeat_s=0.5)
    node = Node(config, transport=memnet)
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        assert node.host is not None and node.ledger is not None
        address, ledger = node.host.addrs()[0], node.ledger
        attacker: StreamHost = await nursery.start(partial(client_host, transport=memnet))
        stored, _ = _stored(config.data_dir, node.host.peer_id)

        await _push(attacker, address, _forks(node.public_key, 300))
        # The node stores (and proves forks) once the exchange is over: its log says when.
        await until(lambda: "ledger sync with" in caplog.text, 30)
        assert _stored(config.data_dir, node.host.peer_id) == (stored, 0), "FRAUD proofs of free keys' forks"

        for _ in range(3):
            await _push(attacker, address, _parked(1200))
        waiting, waiting_bytes, unbacked = ledger.waiting_stats()
        assert unbacked <= MAX_UNBACKED_WAITING and waiting <= MAX_UNBACKED_WAITING, (waiting, unbacked)
        assert waiting_bytes <= (MAX_UNBACKED_WAITING + 600) * ENTRY_BYTES, waiting_bytes
        assert _stored(config.data_dir, node.host.peer_id) == (stored, 0)
        served = await _served_bytes(attacker, address)
        assert served <= (MAX_UNBACKED_WAITING + 600) * ENTRY_BYTES, served
        nursery.cancel_scope.cancel()


@pytest.mark.slow  # a node process's RSS: the in-process test above is the fast tier's
async def test_forks_and_parked_floods_by_fresh_keys_leave_nothing_behind(coordinator: DemoNode) -> None:
    async with trio.open_nursery() as nursery:
        attacker: Host = await nursery.start(client_host)
        stored, _ = _stored(coordinator.data_dir, coordinator.peer_id)

        # 300 fresh keys each sign two different seq-1 HOLDs (a fork), and 300 more fresh keys each
        # publish a FRAUD proof of one of those forks.
        await _push(attacker, coordinator.addrs[0], _forks(public_key_of(coordinator.peer_id), 300))
        # The node stores (and proves forks) once the exchange is over: its log says when.
        await until(lambda: "ledger sync with" in coordinator.log_path.read_text(), 30, coordinator.log_tail)
        assert _stored(coordinator.data_dir, coordinator.peer_id) == (stored, 0), (
            "the node stored FRAUD proofs of free keys' forks"
        )

        # Three fresh keys, seq 1 withheld, 3 x 3000 entries of ~8.6 KB each parked behind it.
        before = _rss_mib(coordinator)
        for _ in range(3):
            await _push(attacker, coordinator.addrs[0], _parked(3000))
        grown = _rss_mib(coordinator) - before
        assert grown < 100, f"the coordinator grew by {grown:.0f} MiB"
        assert _stored(coordinator.data_dir, coordinator.peer_id) == (stored, 0)
        # What sync copies to a peer is bounded the same way (was: all of it, to every worker).
        served = await _served_bytes(attacker, coordinator.addrs[0])
        assert served <= (MAX_UNBACKED_WAITING + 600) * ENTRY_BYTES, served
        nursery.cancel_scope.cancel()

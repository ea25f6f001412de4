"""Issue 19 on real node processes: sending points, and no double spend across coordinators.

Every test runs coordinator processes (``opengrid node start``) on 127.0.0.1 under one genesis that names
them and gives new accounts a starting grant, so an account has points without running jobs.

- ``opengrid wallet send`` (with its confirmation) and ``opengrid ledger history`` against a running node.
- A partition: coordinators A and B start apart; the same account spends its grant on both sides (an
  honest transfer through the SDK on A; on B a second entry at the same seq, signed out of band — the
  attacker's half). Then a bridge joins the sides: ledger sync carries each branch across, every node finds
  the fork, a FRAUD proof is published, and at most one branch stands (here none: the account is cut at
  the fork on every node).
- Concurrent sends: one account sends most of its points to two connected coordinators at the same time.
  Whatever the interleaving, at most one send stands everywhere, and if both were taken the fork is proven.
"""

from __future__ import annotations

import os
import pathlib
import secrets
import subprocess
import sys
import threading
import time

import pytest
from nacl.signing import SigningKey
from opengrid_ledger import (
    EntryBody,
    Fraud,
    Genesis,
    LedgerState,
    Transfer,
    decode_body,
    decode_entry,
    encode_entry,
    encode_genesis,
    open_entry,
    sign_entry,
)
from opengrid_sdk import Client

from opengrid.cli.demo import DemoNetwork, DemoNode
from opengrid.errors import OpenGridError, TransferError
from opengrid.node.identity import load_or_create_seed
from opengrid.store.ledger_store import open_ledger
from opengrid.wire.messages import AccountState, History, HistoryRequest, TransferRequest

pytestmark = pytest.mark.slow

NETWORK = "opengrid-transfers"
FLAGS = ["--heartbeat", "1", "--announce", "1"]
GRANT = 50
CONVERGE_TIMEOUT_S = 90.0


def coordinators_genesis(tmp_path: pathlib.Path, names: list[str]) -> tuple[list[str], pathlib.Path, Genesis]:
    """Genesis naming each coordinator (keys made before they start) with a starting grant."""
    keys = [bytes(SigningKey(load_or_create_seed(tmp_path / name)).verify_key) for name in names]
    genesis = Genesis(network=NETWORK, coordinators=tuple(keys), grant_points=GRANT)
    path = tmp_path / "genesis.json"
    path.write_bytes(encode_genesis(genesis))
    return [*FLAGS, "--genesis", str(path)], path, genesis


def view(node: DemoNode, genesis: Genesis) -> LedgerState:
    """The node's stored ledger, replayed with every signature checked (read-only, beside the node)."""
    state, store = open_ledger(node.data_dir, NETWORK, genesis=genesis, read_only=True, verify=True)
    store.close()
    return state


def opengrid(*argv: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, COLUMNS="200")
    return subprocess.run(
        [sys.executable, "-m", "opengrid", *argv],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def test_wallet_send_and_ledger_history_on_a_running_node(tmp_path: pathlib.Path) -> None:
    flags, _, genesis = coordinators_genesis(tmp_path, ["coordinator"])
    net = DemoNetwork(tmp_path, model="", network=NETWORK)
    seed = secrets.token_bytes(32)
    alice = bytes(SigningKey(seed).verify_key)
    try:
        node = net.start("coordinator", "coordinator", extra_args=flags)
        net.wait_ready(node)
        node_key = bytes(SigningKey(load_or_create_seed(node.data_dir)).verify_key)
        with Client([node.addrs[0]], network=NETWORK, timeout=60, identity_seed=seed) as client:
            client.claim_grant()
            client.transfer(node_key, 30, memo="for running the grid")
        data_dir = str(node.data_dir)

        declined = opengrid("wallet", "send", alice.hex(), "10", "--data-dir", data_dir, stdin="n\n")
        assert declined.returncode == 1 and "nothing sent" in declined.stdout
        assert "(30 points spendable)" in declined.stdout and "(a known account)" in declined.stdout
        sent = opengrid(
            "wallet", "send", alice.hex(), "10", "--memo", "thanks", "--data-dir", data_dir, stdin="y\n"
        )
        assert sent.returncode == 0, sent.stderr
        assert f"sent 10 points to {alice.hex()}" in sent.stdout and "balance now 20 points" in sent.stdout
        too_much = opengrid("wallet", "send", alice.hex(), "1000", "--yes", "--data-dir", data_dir)
        assert too_much.returncode == 1 and "has 20 spendable points" in too_much.stderr
        stranger = secrets.token_bytes(32).hex()
        unknown = opengrid("wallet", "send", stranger, "1", "--yes", "--data-dir", data_dir)
        assert unknown.returncode == 1 and "--new-recipient" in unknown.stderr
        bad = opengrid("wallet", "send", "not-a-key", "1", "--yes", "--data-dir", data_dir)
        assert bad.returncode == 2 and "neither an account key" in bad.stderr
        new = opengrid("wallet", "send", stranger, "2", "--yes", "--new-recipient", "--data-dir", data_dir)
        assert new.returncode == 0, new.stderr

        keyfile = tmp_path / "alice.key"
        keyfile.write_bytes(seed)
        client_send = opengrid(
            "wallet", "send", node_key.hex(), "1", "--yes", "--identity", str(keyfile),
            "--bootstrap", node.addrs[0], "--network", NETWORK,
        )  # fmt: skip
        assert client_send.returncode == 0, client_send.stderr

        history = opengrid(
            "ledger", "history", "--data-dir", data_dir, "--genesis", str(tmp_path / "genesis.json")
        )
        assert history.returncode == 0, history.stderr
        lines = history.stdout.splitlines()
        assert f'  +30  transfer from {alice.hex()} "for running the grid"' in lines
        assert f'  -10  transfer to {alice.hex()} "thanks"' in lines
        assert f"  -2  transfer to {stranger}" in lines
        assert f"  +1  transfer from {alice.hex()}" in lines
        ledger = view(node, genesis)
        assert ledger.balance(node_key) == 30 - 10 - 2 + 1 and ledger.balance(bytes.fromhex(stranger)) == 2
    finally:
        net.stop()


def raw_transfer(client: Client, address: str, request: TransferRequest) -> object:
    """Send a TransferRequest as signed by the caller (the attacker: no SDK checks in the way)."""
    return client._call(lambda: client._request(address, request))[1]


def chain_of(client: Client, address: str, account: bytes) -> list[bytes]:
    """The account's own encoded entries on that node, in chain order."""
    reply = client._call(lambda: client._request(address, HistoryRequest(account=account)))[1]
    assert isinstance(reply, History)
    own = [(open_entry(decode_entry(e), NETWORK), e) for e in reply.entries]
    return [data for body, data in sorted(own, key=lambda pair: pair[0].seq) if body.author == account]


def wait_converged(nodes: list[DemoNode], genesis: Genesis, done: object) -> dict[str, LedgerState]:
    deadline = time.monotonic() + CONVERGE_TIMEOUT_S
    while True:
        views = {n.name: view(n, genesis) for n in nodes}
        heads = {repr(sorted(v.heads().items())) for v in views.values()}
        if len(heads) == 1 and all(done(v) for v in views.values()):  # type: ignore[operator]
            return views
        if time.monotonic() > deadline:
            summary = {name: (len(v), v.frozen()) for name, v in views.items()}
            pytest.fail(f"ledgers did not converge in {CONVERGE_TIMEOUT_S:.0f} s: {summary}")
        time.sleep(0.5)


def test_a_double_spend_across_a_partition_is_proven_and_no_branch_stands(
    tmp_path: pathlib.Path, tiny_model_path: pathlib.Path
) -> None:
    flags, _, genesis = coordinators_genesis(tmp_path, ["coordinator-a", "coordinator-b"])
    net = DemoNetwork(tmp_path, model=str(tiny_model_path), network=NETWORK)
    seed = secrets.token_bytes(32)
    key = SigningKey(seed)
    spender = bytes(key.verify_key)
    to_a, to_b = secrets.token_bytes(32), secrets.token_bytes(32)
    try:
        a, b = (net.start(f"coordinator-{s}", "coordinator", extra_args=flags) for s in "ab")
        net.wait_ready(a)
        net.wait_ready(b)
        # side A: the honest half, through the SDK (the GRANT rides with the transfer)
        with Client([a.addrs[0]], network=NETWORK, timeout=60, identity_seed=seed) as client:
            client.claim_grant()
            sent = client.transfer(to_a, 40, memo="side A", new_recipient=True)
            grant_entry, _ = chain_of(client, a.addrs[0], spender)
            assert sent.balance == 10
            # An honest client that falls over to B (as after A became unreachable) does not sign after
            # the head B reports: it would reuse its own seq 2 — a fork of its own making.
            client._coordinator = b.addrs[0]
            with pytest.raises(TransferError, match="has not synced yet"):
                client.transfer(to_b, 5, new_recipient=True)
            # side B never heard of side A: the same GRANT, then another seq 2 spending the same points
            body = EntryBody(
                NETWORK, spender, 2, bytes(decode_entry(grant_entry).id), Transfer(to=to_b, amount=40)
            )
            request = TransferRequest(
                entry=encode_entry(sign_entry(key, body)), new_recipient=True, grant=grant_entry
            )
            taken = raw_transfer(client, b.addrs[0], request)
        assert isinstance(taken, AccountState) and taken.balance == 10  # B took it: it cannot know
        apart = {n.name: view(n, genesis) for n in (a, b)}
        assert apart["coordinator-a"].balance(to_a) == 40 and apart["coordinator-b"].balance(to_b) == 40

        healed = time.monotonic()
        bridge = net.start(
            "bridge", "worker", bootstrap=a.addrs[0], extra_args=[*flags, "--bootstrap", b.addrs[0]]
        )
        net.wait_ready(bridge)

        def proven(ledger: LedgerState) -> bool:
            frauds = [decode_body(e.body).payload for e in ledger.entries()]
            return ledger.frozen() == {spender: 2} and any(isinstance(p, Fraud) for p in frauds)

        views = wait_converged([a, b], genesis, proven)
        print(f"\nthe fork was proven on both coordinators {time.monotonic() - healed:.1f} s after the heal")
        for ledger in views.values():
            assert ledger.balance(to_a) == 0 and ledger.balance(to_b) == 0  # no branch stands
            assert ledger.balance(spender) == GRANT  # its grant (seq 1) stays, frozen
            assert ledger.minted() == GRANT
            assert all(points >= 0 for points in ledger.balances().values())
        assert views["coordinator-a"].balances() == views["coordinator-b"].balances()
        with Client([b.addrs[0]], network=NETWORK, timeout=60, identity_seed=seed) as client:
            with pytest.raises(OpenGridError, match="frozen"):
                client.transfer(to_b, 1, new_recipient=True)
    finally:
        net.stop()


def test_concurrent_sends_from_one_account_to_two_coordinators(tmp_path: pathlib.Path) -> None:
    flags, _, genesis = coordinators_genesis(tmp_path, ["coordinator-a", "coordinator-b"])
    net = DemoNetwork(tmp_path, model="", network=NETWORK)
    seed = secrets.token_bytes(32)
    spender = bytes(SigningKey(seed).verify_key)
    first, to_a, to_b = (secrets.token_bytes(32) for _ in range(3))
    try:
        a = net.start("coordinator-a", "coordinator", extra_args=flags)
        net.wait_ready(a)
        b = net.start("coordinator-b", "coordinator", extra_args=[*flags, "--bootstrap", a.addrs[0]])
        net.wait_ready(b)
        with Client([a.addrs[0]], network=NETWORK, timeout=60, identity_seed=seed) as client:
            client.claim_grant()
            client.transfer(first, 5, new_recipient=True)  # 45 left: room for one send of 40, not two
        wait_converged([a, b], genesis, lambda ledger: ledger.balance(first) == 5)

        barrier = threading.Barrier(2, timeout=60)
        outcomes: dict[str, object] = {}

        def send(side: str, address: str, to: bytes) -> None:
            with Client([address], network=NETWORK, timeout=60, identity_seed=seed) as client:
                client.account_info()  # connected and warm: the race is in the sends alone
                barrier.wait()
                try:
                    outcomes[side] = client.transfer(to, 40, new_recipient=True)
                except OpenGridError as exc:
                    outcomes[side] = exc

        threads = [
            threading.Thread(target=send, args=("a", a.addrs[0], to_a)),
            threading.Thread(target=send, args=("b", b.addrs[0], to_b)),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        taken = [side for side, outcome in outcomes.items() if not isinstance(outcome, Exception)]
        print(f"\nconcurrent sends: { ({side: type(o).__name__ for side, o in outcomes.items()}) }")
        assert len(outcomes) == 2 and taken  # the first of them always goes through somewhere

        def forked(ledger: LedgerState) -> bool:
            frauds = [decode_body(e.body).payload for e in ledger.entries()]
            return ledger.frozen() == {spender: 3} and any(isinstance(p, Fraud) for p in frauds)

        def settled(ledger: LedgerState) -> bool:
            one = ledger.balance(to_a) + ledger.balance(to_b) == 40 and not ledger.frozen()
            return forked(ledger) or one

        views = wait_converged([a, b], genesis, settled)
        for ledger in views.values():
            received = ledger.balance(to_a) + ledger.balance(to_b)
            assert received <= 40  # at most one send of 40 stands, everywhere
            if len(taken) == 2:  # both coordinators took one: a fork, proven, and neither stands
                assert forked(ledger)
            if forked(ledger):  # (also when the loser's coordinator saw both entries before answering)
                assert received == 0 and ledger.balance(spender) == 45
            else:  # the loser read the winner's entry and was refused for its balance
                assert received == 40 and ledger.balance(spender) == 5
            assert all(points >= 0 for points in ledger.balances().values())
            assert ledger.minted() == GRANT
        assert len({forked(v) for v in views.values()}) == 1
    finally:
        net.stop()

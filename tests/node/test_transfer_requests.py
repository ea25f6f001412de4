"""Sending points on a live coordinator (SDK clients in threads, the sync and the asyncio one), on the
in-memory network in virtual time.

A network whose genesis gives new accounts 50 points. A new identity claims its grant and sends points
with the SDK (its GRANT and TRANSFER go to the coordinator together); typed errors for every bad input,
checked before anything is signed; the coordinator refuses an overdraft saying the balance, a recipient it
has never seen unless confirmed new, and an entry that skips ahead of the chain it holds; a retry of the
same seq with another entry is a fork that freezes the account. The node's owner sends from the node's
own account through the node's one chain writer.
"""

from __future__ import annotations

import asyncio
import pathlib
import secrets
import time

import pytest
import trio
from nacl.signing import SigningKey
from opengrid_ledger import EntryBody, Fraud, Transfer, decode_body, encode_entry, sign_entry
from opengrid_sdk import AsyncClient, Client
from trio.testing import MockClock

from opengrid.errors import (
    ConfigError,
    InsufficientBalanceError,
    InvalidAmountError,
    InvalidMemoError,
    InvalidRecipientError,
    TransferError,
    UnknownRecipientError,
)
from opengrid.net.keys import peer_id_of
from opengrid.node.identity import IDENTITY_FILE
from opengrid.testing.memnet import MemoryNetwork, run_sync_waiting
from opengrid.wire.control import owner_transfer_signing_bytes
from opengrid.wire.messages import (
    AccountRequest,
    AccountState,
    ErrorReply,
    OwnerTransfer,
    TransferRequest,
)
from tests.node.workers import paid_coordinator, start_workers
from tests.waiting import until

NETWORK = "transfer-test"
GRANT = 50


async def test_send_points_with_the_sdk_and_from_the_node_s_own_account(
    tmp_path: pathlib.Path, memnet: MemoryNetwork, memnet_clock: MockClock
) -> None:
    coordinator, _ = paid_coordinator(tmp_path, NETWORK, grant=GRANT, transport=memnet)
    alice_seed, bob_seed = secrets.token_bytes(32), secrets.token_bytes(32)
    alice, bob = (bytes(SigningKey(s).verify_key) for s in (alice_seed, bob_seed))
    async with trio.open_nursery() as nursery:
        await nursery.start(coordinator.run)
        assert coordinator.host is not None and coordinator.ledger is not None
        address = coordinator.host.addrs()[0]
        ledger = coordinator.ledger
        node_key = coordinator.public_key

        def sdk() -> None:
            with Client(
                [address], network=NETWORK, timeout=30, identity_seed=alice_seed, transport=memnet
            ) as client:
                # bad input: typed errors, nothing signed or sent
                for to, points, memo, error in [
                    ("not-a-key", 1, "", InvalidRecipientError),
                    (alice, 1, "", InvalidRecipientError),
                    (bob, 0, "", InvalidAmountError),
                    (bob, True, "", InvalidAmountError),
                    (bob, 2**63, "", InvalidAmountError),
                    (bob, 1, "x" * 257, InvalidMemoError),
                    (bob, 1, "\x1b[31mred", InvalidMemoError),
                ]:
                    with pytest.raises(error):
                        client.transfer(to, points, memo=memo)  # type: ignore[arg-type]
                assert ledger.head(alice) is None
                with pytest.raises(InsufficientBalanceError, match="can spend 0 points") as caught:
                    client.transfer(bob, 1)  # no grant claimed: nothing to send
                assert (caught.value.balance, caught.value.amount) == (0, 1)

                assert client.claim_grant() == GRANT
                with pytest.raises(UnknownRecipientError, match="never appeared"):
                    client.transfer(bob, 10)  # bob is a key nobody has seen: a typo until confirmed
                assert ledger.balance(alice) == GRANT  # the GRANT that came along stays applied
                with pytest.raises(InsufficientBalanceError, match=f"can spend {GRANT} points") as caught:
                    client.transfer(bob, GRANT + 1, new_recipient=True)
                assert caught.value.balance == GRANT
                sent = client.transfer(bob.hex(), 20, memo="for the docs ✓", new_recipient=True)
                assert (sent.points, sent.balance, sent.to, sent.memo) == (20, 30, bob, "for the docs ✓")
                assert sent.node == coordinator.host.peer_id  # type: ignore[union-attr]
                info = client.account_info(bob)
                assert (info.balance, info.seq, info.standing, info.frozen) == (20, 0, True, False)
                # the node's own account (known: a coordinator) by its peer id
                client.transfer(peer_id_of(node_key), 10, memo="thanks")
                assert client.account_info().balance == 20

            with Client(
                [address], network=NETWORK, timeout=30, identity_seed=bob_seed, transport=memnet
            ) as client:
                back = client.transfer(alice, 5, memo="change")  # bob's chain starts with a TRANSFER
                assert back.balance == 15
                # the node's owner sends from the node's account; a stranger's key cannot
                with pytest.raises(ConfigError, match="identity given is node"):
                    client.send_from_node(address, alice, 1, identity_seed=bob_seed)
                seed = (tmp_path / "c" / IDENTITY_FILE).read_bytes()
                with pytest.raises(InsufficientBalanceError) as caught:
                    client.send_from_node(address, alice, 11, identity_seed=seed)
                assert caught.value.balance == 10
                own = client.send_from_node(address, alice, 4, identity_seed=seed, memo="refund")
                assert (own.sender, own.balance) == (node_key, 6)

        await trio.to_thread.run_sync(sdk)
        assert ledger.balance(alice) == GRANT - 20 - 10 + 5 + 4
        assert (ledger.balance(bob), ledger.balance(node_key)) == (15, 6)
        assert ledger.minted() == GRANT  # transfers move points, never make them
        history = [(i.kind, i.delta, i.counterparty, i.memo) for i in ledger.history(alice)]
        assert history == [
            ("grant", GRANT, b"", ""),
            ("transfer", -20, bob, "for the docs ✓"),
            ("transfer", -10, node_key, "thanks"),
            ("transfer", 5, bob, "change"),
            ("transfer", 4, node_key, "refund"),
        ]
        # everything applied was stored: the node's store replays to the same balances
        store = coordinator.ctx.store
        assert store is not None
        stored = {bytes(e.id) for e in store.entries()}
        assert {bytes(e.id) for e in ledger.entries()} <= stored

        async def from_asyncio() -> tuple[int, int]:
            async with await AsyncClient.connect(
                [address], network=NETWORK, identity_seed=bob_seed, transport=memnet
            ) as aio:
                sent = await aio.transfer(alice, 3, memo="async")
                return sent.balance, (await aio.account_info(alice)).balance

        # the asyncio twin, on an asyncio loop of its own (as an asyncio program would run it), in a thread
        # that waits on this run rather than computing (its calls come from asyncio's worker threads)
        assert await run_sync_waiting(lambda: asyncio.run(from_asyncio())) == (12, 32)
        nursery.cancel_scope.cancel()


async def test_a_second_entry_at_a_used_seq_freezes_the_account(
    tmp_path: pathlib.Path, memnet: MemoryNetwork, memnet_clock: MockClock
) -> None:
    """A client that signs two transfers with one seq (a double spend attempt against one coordinator) is
    caught: the second is applied as the fork it is, the account is frozen and a FRAUD proof published;
    an entry that skips seqs is refused without being kept."""
    coordinator, _ = paid_coordinator(tmp_path, NETWORK, grant=GRANT, transport=memnet)
    seed = secrets.token_bytes(32)
    key = SigningKey(seed)
    me = bytes(key.verify_key)
    async with trio.open_nursery() as nursery:
        await nursery.start(coordinator.run)
        assert coordinator.host is not None and coordinator.ledger is not None
        address = coordinator.host.addrs()[0]
        ledger = coordinator.ledger
        coordinator_key = coordinator.public_key

        def double_spend() -> tuple[object, object, object]:
            with Client(
                [address], network=NETWORK, timeout=30, transport=memnet, identity_seed=seed
            ) as client:
                client.claim_grant()
                first = client.transfer(coordinator_key, 30)
                state = client.account_info()
                assert state.seq == 2

                def send(seq: int, prev: bytes, to: bytes) -> object:
                    body = EntryBody(NETWORK, me, seq, prev, Transfer(to=to, amount=30))
                    request = TransferRequest(entry=encode_entry(sign_entry(key, body)), new_recipient=True)
                    return client._call(lambda: client._request(address, request))[1]

                grant_id = bytes(ledger.entries_by_author(me, to_seq=1)[0].id)
                skipped = send(4, bytes(first.entry_id), coordinator_key)
                forked = send(2, grant_id, secrets.token_bytes(32))
                after = client._call(lambda: client._request(address, AccountRequest(account=me)))[1]
                return skipped, forked, after

        skipped, forked, after = await trio.to_thread.run_sync(double_spend)
        assert isinstance(skipped, ErrorReply) and "only up to seq 2" in skipped.message
        assert isinstance(forked, ErrorReply) and "fork" in forked.message
        assert isinstance(after, AccountState) and after.frozen
        assert ledger.frozen() == {me: 2}
        assert ledger.balance(coordinator_key) == 0  # the first branch no longer stands either
        proofs = [decode_body(e.body).payload for e in ledger.entries_by_author(coordinator_key)]
        assert [p for p in proofs if isinstance(p, Fraud)]  # the coordinator published the proof

        def frozen_send() -> None:
            with Client(
                [address], network=NETWORK, timeout=30, transport=memnet, identity_seed=seed
            ) as client:
                with pytest.raises(TransferError, match="frozen"):
                    client.transfer(coordinator_key, 1)

        await trio.to_thread.run_sync(frozen_send)
        nursery.cancel_scope.cancel()


async def test_a_worker_s_owner_sends_points_and_the_coordinator_gets_them(
    tmp_path: pathlib.Path, tiny_model_path: pathlib.Path, memnet: MemoryNetwork, memnet_clock: MockClock
) -> None:
    """A worker writes its owner's transfer on its own chain, in its own ledger (synced from its
    coordinator); the entry reaches the coordinator (gossip, and the sync it asks for at once)."""
    coordinator, genesis = paid_coordinator(tmp_path, NETWORK, grant=GRANT, transport=memnet)
    seed = secrets.token_bytes(32)
    alice = bytes(SigningKey(seed).verify_key)
    async with trio.open_nursery() as nursery:
        await nursery.start(coordinator.run)
        assert coordinator.host is not None and coordinator.ledger is not None
        address = coordinator.host.addrs()[0]
        [worker] = await start_workers(
            nursery, tmp_path, ("w1",), bootstrap=address, model_path=tiny_model_path,
            network=NETWORK, genesis=genesis, heartbeat_s=0.5, transport=memnet,
        )  # fmt: skip
        assert worker.host is not None and worker.ctx.ledger is not None
        worker_key = worker.public_key

        def fund() -> None:
            with Client(
                [address], network=NETWORK, timeout=30, transport=memnet, identity_seed=seed
            ) as client:
                client.claim_grant()
                client.transfer(worker_key, 20, new_recipient=True)

        await trio.to_thread.run_sync(fund)
        worker_ledger = worker.ctx.ledger
        await until(lambda: worker_ledger.balance(worker_key) == 20, 30, lambda: "worker not synced")
        worker_address = worker.host.addrs()[0]
        worker_seed = (tmp_path / "w1" / IDENTITY_FILE).read_bytes()

        def send() -> int:
            with Client([address], network=NETWORK, timeout=30, transport=memnet) as client:
                return client.send_from_node(
                    worker_address, alice, 7, identity_seed=worker_seed, memo="back"
                ).balance

        assert await trio.to_thread.run_sync(send) == 13
        ledger = coordinator.ledger
        await until(lambda: ledger.balance(worker_key) == 13, 30, lambda: f"{ledger.balance(worker_key)}")
        assert ledger.balance(alice) == GRANT - 20 + 7
        assert [i.memo for i in ledger.history(alice) if i.delta > 0 and i.kind == "transfer"] == ["back"]
        nursery.cancel_scope.cancel()


async def test_an_owner_transfer_is_taken_once_and_only_from_the_owner(
    tmp_path: pathlib.Path, memnet: MemoryNetwork, memnet_clock: MockClock
) -> None:
    """The attacks on ``OwnerTransfer``: a request signed by another key, and the owner's own request
    played again (it would spend twice). The node refuses both; the points move once."""
    coordinator, _ = paid_coordinator(tmp_path, NETWORK, grant=GRANT, transport=memnet)
    seed = secrets.token_bytes(32)
    alice = bytes(SigningKey(seed).verify_key)
    async with trio.open_nursery() as nursery:
        await nursery.start(coordinator.run)
        assert coordinator.host is not None and coordinator.ledger is not None
        address, peer_id = coordinator.host.addrs()[0], coordinator.host.peer_id
        node_key = coordinator.public_key
        owner = SigningKey((tmp_path / "c" / IDENTITY_FILE).read_bytes())

        def signed(key: SigningKey, amount: int, issued_at_ms: int) -> OwnerTransfer:
            message = owner_transfer_signing_bytes(NETWORK, peer_id, alice, amount, "", False, issued_at_ms)
            return OwnerTransfer(
                to=alice, amount=amount, issued_at_ms=issued_at_ms, signature=key.sign(message).signature
            )

        def attacks() -> list[object]:
            with Client(
                [address], network=NETWORK, timeout=30, transport=memnet, identity_seed=seed
            ) as client:
                client.claim_grant()
                client.transfer(node_key, 30)  # the node's account has 30 points; alice 20
                now = int(time.time() * 1000)
                requests = [
                    signed(SigningKey(seed), 10, now),  # alice signs for the node: not the owner
                    signed(owner, 10, now),  # the owner's: taken
                    signed(owner, 10, now),  # the same bytes again: a replay
                    signed(owner, 10, now - 1),  # older than the last taken: a replay too
                    signed(owner, 10, now - 10 * 60 * 1000 + 1),  # outside the clock window
                ]
                return [client._call(lambda r=r: client._request(address, r))[1] for r in requests]

        replies = await trio.to_thread.run_sync(attacks)
        assert (
            isinstance(replies[0], ErrorReply)
            and "not signed by this node's identity key" in replies[0].message
        )
        assert isinstance(replies[1], AccountState) and replies[1].balance == 20
        for reply in replies[2:]:
            assert isinstance(reply, ErrorReply) and "stale or replayed" in reply.message
        ledger = coordinator.ledger
        assert (ledger.balance(node_key), ledger.balance(alice)) == (20, GRANT - 30 + 10)
        nursery.cancel_scope.cancel()

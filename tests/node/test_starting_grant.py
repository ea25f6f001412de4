"""Starting grants and mandatory payment on live nodes (real libp2p hosts on 127.0.0.1, the tiny model).

The network's genesis gives new accounts 50 points. The coordinator runs only paid jobs: an anonymous
client is refused with ``payment_required``; a brand-new identity gets a voucher, sends its GRANT with its
first job's HOLD, and every balance moves as the receipt and the settlement say.
"""

from __future__ import annotations

import pathlib
import secrets

import pytest
import trio
from nacl.signing import SigningKey
from opengrid_ledger import Settle, decode_body
from opengrid_sdk.client import Client, Completion

from opengrid.errors import PaymentError
from opengrid.node.config import NodeConfig
from opengrid.node.service import Node
from opengrid.wire.messages import job_cost
from tests.node.workers import paid_coordinator, start_workers

NETWORK = "grant-test"
GRANT = 50


async def test_a_new_identity_claims_the_grant_and_pays_a_coordinator_that_requires_payment(
    tmp_path: pathlib.Path, tiny_model_path: pathlib.Path
) -> None:
    coordinator, genesis = paid_coordinator(tmp_path, NETWORK, grant=GRANT)
    async with trio.open_nursery() as nursery:
        await nursery.start(coordinator.run)
        assert coordinator.host is not None and coordinator.ledger is not None
        address = coordinator.host.addrs()[0]
        await start_workers(
            nursery, tmp_path, ("w1", "w2"), bootstrap=address, model_path=tiny_model_path,
            network=NETWORK, genesis=genesis, heartbeat_s=0.5,
        )  # fmt: skip

        def anonymous() -> None:
            with Client([address], network=NETWORK, timeout=60) as client:
                with pytest.raises(PaymentError, match="only paid jobs"):
                    client.complete("free?", model="tiny", max_tokens=4, replicas=2, sealed=False)

        await trio.to_thread.run_sync(anonymous)

        seed = secrets.token_bytes(32)

        def paid() -> tuple[int, int, Completion, int]:
            with Client([address], network=NETWORK, timeout=60, identity_seed=seed) as client:
                before = client.balance()
                claimed = client.claim_grant()  # optional: complete() would claim it by itself
                done = client.complete("Paid for", model="tiny", max_tokens=4, replicas=2, sealed=False)
                return before, claimed, done, client.balance()

        before, claimed, done, after = await trio.to_thread.run_sync(paid)
        assert (before, claimed) == (0, GRANT)
        ledger = coordinator.ledger
        payer = bytes(SigningKey(seed).verify_key)
        settles = [decode_body(e.body).payload for e in ledger.entries()]
        settle = next(p for p in settles if isinstance(p, Settle))
        payouts = {c.account: c.points for c in settle.payouts}
        share = job_cost(4, 2) // len(done.receipt.credits)
        assert payouts == {key: min(points, share) for key, points in done.receipt.credits.items()}
        assert after == ledger.balance(payer) == GRANT - sum(payouts.values())
        assert ledger.held(payer) == 0
        for key, points in done.receipt.credits.items():  # minted by the receipt + paid by the new user
            assert ledger.balance(key) == points + payouts[key]
        assert ledger.minted() == GRANT + sum(done.receipt.credits.values())
        nursery.cancel_scope.cancel()


def test_the_require_payment_setting_reaches_the_coordinator(tmp_path: pathlib.Path) -> None:
    node = Node(NodeConfig(data_dir=tmp_path / "c", role="coordinator", require_payment=True))
    assert node._coordinator_config.require_payment
    assert not Node(
        NodeConfig(data_dir=tmp_path / "d", role="coordinator")
    )._coordinator_config.require_payment

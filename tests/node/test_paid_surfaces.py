"""Every way into a coordinator that requires payment is paid (real libp2p hosts on 127.0.0.1, the tiny
model): the node's own OpenAI-compatible API pays from the node's account (claiming its starting grant),
and answers 402 when that account cannot pay; the SDK's ``stream`` pays like ``complete``; a Quote says
the real price (spec/ledger.md §7)."""

from __future__ import annotations

import pathlib
import secrets
from typing import Any

import httpx
import pytest
import trio
from nacl.signing import SigningKey
from opengrid_ledger import Grant, Hold, Settle, decode_body
from opengrid_sdk.client import Client, Completion

from opengrid.errors import PaymentError
from opengrid.node.api import ApiSettings
from opengrid.wire.messages import job_cost
from tests.node.workers import paid_coordinator, start_workers

NETWORK = "paid-surfaces-test"
GRANT = 50


def _post(url: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{url}/v1/completions", json=body, timeout=60)


async def test_api_and_stream_jobs_are_paid_on_a_coordinator_that_requires_payment(
    tmp_path: pathlib.Path, tiny_model_path: pathlib.Path
) -> None:
    coordinator, genesis = paid_coordinator(
        tmp_path, NETWORK, grant=GRANT, api=ApiSettings(address="127.0.0.1:0")
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(coordinator.run)
        assert coordinator.host is not None and coordinator.ledger is not None and coordinator.api_urls
        address, url = coordinator.host.addrs()[0], coordinator.api_urls[0]
        await start_workers(
            nursery, tmp_path, ("w1", "w2"), bootstrap=address, model_path=tiny_model_path,
            network=NETWORK, genesis=genesis, heartbeat_s=0.5,
        )  # fmt: skip
        ledger, me = coordinator.ledger, coordinator.public_key

        # The API's job is paid by the node's own account, which claims the starting grant first.
        ok = await trio.to_thread.run_sync(_post, url, {"model": "tiny", "prompt": "Mine", "max_tokens": 4})
        assert ok.status_code == 200, ok.text
        mine = [decode_body(e.body) for e in ledger.entries_by_author(me)]
        assert [type(b.payload) for b in mine[:2]] == [Grant, Hold]
        settle = next(b.payload for b in mine if isinstance(b.payload, Settle))
        spent = sum(c.points for c in settle.payouts)
        assert 0 < spent <= job_cost(4, 2)
        assert (ledger.balance(me), ledger.held(me)) == (GRANT - spent, 0)

        # A job the account cannot pay for: an OpenAI-style 402 that says what it costs and what to do.
        broke = await trio.to_thread.run_sync(
            _post, url, {"model": "tiny", "prompt": "Big", "max_tokens": 64}
        )
        assert broke.status_code == 402
        error = broke.json()["error"]
        assert error["type"] == "insufficient_quota" and error["code"] == "payment_required"
        assert f"has {GRANT - spent} points" in error["message"] and "costs up to 128" in error["message"]

        seed = secrets.token_bytes(32)

        def anonymous_stream() -> None:
            with Client([address], network=NETWORK, timeout=60) as client:
                with pytest.raises(PaymentError, match="only paid jobs"):
                    list(client.stream("free?", model="tiny", max_tokens=4, replicas=2))

        def paid_stream() -> tuple[int, list[str | Completion], Completion | None, int]:
            with Client([address], network=NETWORK, timeout=60, identity_seed=seed) as client:
                price = client.price(model="tiny", max_tokens=4, replicas=2)
                items: list[str | Completion] = []
                nested = None
                for item in client.stream("Streamed and paid", model="tiny", max_tokens=4, replicas=2):
                    if nested is None:  # another paid job while iterating: must not deadlock
                        nested = client.complete("Paid meanwhile", model="tiny", max_tokens=4, sealed=False)
                    items.append(item)
                return price, items, nested, client.balance()

        await trio.to_thread.run_sync(anonymous_stream)
        price, items, nested, after = await trio.to_thread.run_sync(paid_stream)
        assert price == job_cost(4, 2)  # the tiny model weighs 1 point per token
        assert isinstance(nested, Completion) and nested.receipt is not None
        done = items[-1]
        assert isinstance(done, Completion) and all(isinstance(i, str) for i in items[:-1])
        payer = bytes(SigningKey(seed).verify_key)
        paid = sum(
            c.points
            for e in ledger.entries_by_author(me)
            if isinstance(p := decode_body(e.body).payload, Settle)
            for c in p.payouts
        )
        assert after == ledger.balance(payer) == GRANT - (paid - spent)
        assert ledger.held(payer) == 0
        nursery.cancel_scope.cancel()

"""Every way into a coordinator that requires payment is paid (the tiny model; the in-memory network in
virtual time, the busy-coordinator test on real libp2p hosts on 127.0.0.1): the node's own
OpenAI-compatible API pays from the node's account (claiming its starting grant), and answers 402 with the
price and the balance when that account cannot pay; a worker node's API pays from the worker's account at
its coordinator; the SDK's ``stream`` pays like ``complete``, and a job the account cannot pay raises
``PaymentError`` with the same figures; a Quote says the real price (spec/ledger.md §7). And a busy
coordinator runs a paid job ahead of free ones, which still finish (spec/job-protocol.md §8.1)."""

from __future__ import annotations

import pathlib
import secrets
import threading
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import trio
from nacl.signing import SigningKey
from opengrid_ledger import Genesis, Grant, Hold, Receipt, Settle, decode_body, encode_genesis
from opengrid_sdk.client import Client, Completion
from trio.testing import MockClock

from opengrid.core.coordinator import CoordinatorConfig
from opengrid.engines import LlamaEngine, ModelInfo, sha256_file
from opengrid.engines.base import Generation, GenerationRequest
from opengrid.errors import PaymentError
from opengrid.node.api import ApiSettings
from opengrid.node.config import NodeConfig
from opengrid.node.identity import IDENTITY_FILE
from opengrid.node.service import Node
from opengrid.testing.memnet import MemoryNetwork, run_sync_waiting
from opengrid.wire.messages import JobAccepted, Message, SubmitJob, job_cost
from tests.node.workers import client_host, paid_coordinator, start_workers
from tests.waiting import until

NETWORK = "paid-surfaces-test"
GRANT = 50


def _post(url: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{url}/v1/completions", json=body, timeout=60)


async def test_api_and_stream_jobs_are_paid_on_a_coordinator_that_requires_payment(
    tmp_path: pathlib.Path, tiny_model_path: pathlib.Path, memnet: MemoryNetwork, memnet_clock: MockClock
) -> None:
    coordinator, genesis = paid_coordinator(
        tmp_path, NETWORK, grant=GRANT, api=ApiSettings(address="127.0.0.1:0"), transport=memnet
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(coordinator.run)
        assert coordinator.host is not None and coordinator.ledger is not None and coordinator.api_urls
        address, url = coordinator.host.addrs()[0], coordinator.api_urls[0]
        await start_workers(
            nursery, tmp_path, ("w1", "w2"), bootstrap=address, model_path=tiny_model_path,
            network=NETWORK, genesis=genesis, heartbeat_s=0.5, transport=memnet,
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
        assert (error["price"], error["balance"]) == (128, GRANT - spent)  # the figures, as data too
        streamed = await trio.to_thread.run_sync(
            _post, url, {"model": "tiny", "prompt": "Big", "max_tokens": 64, "stream": True}
        )
        assert streamed.status_code == 402 and streamed.json()["error"]["price"] == 128

        seed = secrets.token_bytes(32)

        def anonymous_stream() -> None:
            with Client([address], network=NETWORK, timeout=60, transport=memnet) as client:
                with pytest.raises(PaymentError, match="only paid jobs"):
                    list(client.stream("free?", model="tiny", max_tokens=4, replicas=2))

        def paid_stream() -> tuple[int, list[str | Completion], Completion | None, int]:
            with Client(
                [address], network=NETWORK, timeout=60, identity_seed=seed, transport=memnet
            ) as client:
                price = client.price(model="tiny", max_tokens=4, replicas=2)
                items: list[str | Completion] = []
                nested = None
                for item in client.stream("Streamed and paid", model="tiny", max_tokens=4, replicas=2):
                    if nested is None:  # another paid job while iterating: must not deadlock
                        nested = client.complete("Paid meanwhile", model="tiny", max_tokens=4, sealed=False)
                    items.append(item)
                left = client.balance()
                # More than the account has: a typed error with the price and the balance, and no HOLD
                # signed (one above the balance would wait in the ledger and block the chain).
                with pytest.raises(PaymentError, match=f"has {left} points.*costs up to 128") as caught:
                    client.complete("Too dear", model="tiny", max_tokens=64, replicas=2, sealed=False)
                assert (caught.value.price, caught.value.balance) == (128, left)
                return price, items, nested, left

        await run_sync_waiting(anonymous_stream)  # streams: virtual time flows while they wait
        price, items, nested, after = await run_sync_waiting(paid_stream)
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


async def test_a_worker_nodes_api_pays_from_the_workers_own_account(
    tmp_path: pathlib.Path, tiny_model_path: pathlib.Path, memnet: MemoryNetwork, memnet_clock: MockClock
) -> None:
    coordinator, genesis = paid_coordinator(tmp_path, NETWORK, grant=GRANT, transport=memnet)
    async with trio.open_nursery() as nursery:
        await nursery.start(coordinator.run)
        assert coordinator.host is not None and coordinator.ledger is not None
        address = coordinator.host.addrs()[0]
        info = ModelInfo(name="tiny", path=tiny_model_path, sha256=sha256_file(tiny_model_path))
        settings = NodeConfig(
            data_dir=tmp_path / "api-worker", role="worker", bootstrap=(address,), network=NETWORK,
            genesis=genesis, heartbeat_s=0.5,
        )  # fmt: skip
        worker = Node(
            settings,
            engine=LlamaEngine(info, n_threads=1),
            api=ApiSettings(address="127.0.0.1:0"),
            transport=memnet,
        )
        await nursery.start(worker.run)
        await start_workers(
            nursery, tmp_path, ("w2",), bootstrap=address, model_path=tiny_model_path, network=NETWORK,
            genesis=genesis, heartbeat_s=0.5, transport=memnet,
        )  # fmt: skip
        with trio.fail_after(30):
            await worker.registered.wait()
        ledger, me, url = coordinator.ledger, worker.public_key, worker.api_urls[0]

        # Forwarded to a coordinator that runs only paid jobs: paid by the worker's own key, which claims
        # its starting grant first (a GRANT, then the HOLD, the first links of its chain).
        ok = await trio.to_thread.run_sync(_post, url, {"model": "tiny", "prompt": "Mine", "max_tokens": 4})
        assert ok.status_code == 200, ok.text
        job_id = bytes.fromhex(ok.json()["opengrid"]["job_id"])
        mine = [decode_body(e.body).payload for e in ledger.entries_by_author(me)]
        assert [type(p) for p in mine] == [Grant, Hold]
        hold = mine[1]
        assert isinstance(hold, Hold) and hold.job_id == job_id and hold.amount == job_cost(4, 2)
        assert ledger.held(me) == 0  # settled
        balance = ledger.balance(me)

        # A second job is the next link of the chain, after the first HOLD.
        again = await trio.to_thread.run_sync(
            _post, url, {"model": "tiny", "prompt": "More", "max_tokens": 2}
        )
        assert again.status_code == 200, again.text
        assert [type(decode_body(e.body).payload) for e in ledger.entries_by_author(me)] == [
            Grant,
            Hold,
            Hold,
        ]
        # Before answering, the worker learned that its coordinator took both HOLDs and applied them to its
        # own ledger, so its chain writer continues after them: its owner's transfer right now is the
        # next link (seq 4) on both ledgers, not a second entry at a HOLD's seq (a fork).
        assert worker.ledger is not None and not worker.ctx.chain_reserved
        assert worker.ledger.head(me) == ledger.head(me)
        seed = (tmp_path / "api-worker" / IDENTITY_FILE).read_bytes()

        assert worker.host is not None
        worker_address = worker.host.addrs()[0]

        def owner_sends() -> Any:
            with Client([address], network=NETWORK, timeout=30, transport=memnet) as client:
                return client.send_from_node(worker_address, coordinator.public_key, 1, identity_seed=seed)

        await trio.to_thread.run_sync(owner_sends)
        with trio.fail_after(30):
            while len(ledger.entries_by_author(me)) < 4:
                await trio.sleep(0.05)
        assert [decode_body(e.body).seq for e in ledger.entries_by_author(me)] == [1, 2, 3, 4]
        assert not ledger.is_frozen(me) and not worker.ledger.is_frozen(me)
        balance = ledger.balance(me)

        # More than the account has: 402 with the price and the balance; nothing signed.
        broke = await trio.to_thread.run_sync(
            _post, url, {"model": "tiny", "prompt": "Big", "max_tokens": 512}
        )
        assert broke.status_code == 402, broke.text
        error = broke.json()["error"]
        assert error["type"] == "insufficient_quota" and error["code"] == "payment_required"
        assert (error["price"], error["balance"]) == (job_cost(512, 2), balance)
        assert f"which has {balance} points" in error["message"]
        assert len(ledger.entries_by_author(me)) == 4
        nursery.cancel_scope.cancel()


class _Gated(LlamaEngine):
    """A real llama.cpp engine that holds a job whose prompt starts with ``GATED`` until ``gate`` is set:
    the worker stays busy, so the coordinator's queue fills while the test watches."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gate = threading.Event()

    def generate_streaming(
        self,
        request: GenerationRequest,
        on_text: Callable[[str], None] | None,
        on_token: Callable[[int, str], None] | None = None,
    ) -> Generation:
        if request.prompt.startswith("GATED"):
            self.gate.wait(timeout=60)
        return super().generate_streaming(request, on_text, on_token)


async def test_a_busy_coordinator_runs_a_paid_job_before_free_ones_that_still_finish(
    tmp_path: pathlib.Path, tiny_model_path: pathlib.Path
) -> None:
    genesis = tmp_path / "genesis.json"
    config = NodeConfig(
        data_dir=tmp_path / "c", role="coordinator", network=NETWORK, genesis=genesis, heartbeat_s=0.5
    )
    # Free jobs are welcome here (require_payment off); verification set explicitly, as the test counts
    # one replica per job on the one worker.
    coordinator = Node(
        config, coordinator_config=CoordinatorConfig.plain(heartbeat_s=0.5, verify="replicate")
    )
    genesis.write_bytes(encode_genesis(Genesis(NETWORK, (coordinator.public_key,), grant_points=GRANT)))
    info = ModelInfo(name="tiny", path=tiny_model_path, sha256=sha256_file(tiny_model_path))
    engine = _Gated(info, n_threads=1)
    async with trio.open_nursery() as nursery:
        await nursery.start(coordinator.run)
        assert coordinator.host is not None and coordinator.ledger is not None
        core = coordinator.coordinator
        assert core is not None
        address = coordinator.host.addrs()[0]
        worker = Node(
            NodeConfig(
                data_dir=tmp_path / "w", role="worker", bootstrap=(address,), network=NETWORK,
                genesis=genesis, heartbeat_s=0.5,
            ),
            engine=engine,
        )  # fmt: skip
        await nursery.start(worker.run)
        with trio.fail_after(30):
            await worker.registered.wait()
        host = await nursery.start(client_host)
        peer = await host.connect(address)
        answers: dict[bytes, Message] = {}

        async def free(n: int, prompt: str) -> None:
            job = SubmitJob(
                job_id=n.to_bytes(16, "big"), model="tiny", prompt=prompt, max_tokens=4, replicas=1
            )
            answers[job.job_id] = await host.request(peer, job)

        def state() -> str:
            return f"active {core.active_jobs}, queued {core.queued_jobs}, free slots {core.free_slots()}"

        nursery.start_soon(free, 1, "GATED: the worker is busy with this one")
        await until(lambda: core.active_jobs == 1 and core.free_slots() == 0, 30, state)
        nursery.start_soon(free, 2, "Free, queued first")
        await until(lambda: core.queued_jobs == 1, 30, state)
        nursery.start_soon(free, 3, "Free, queued second")
        await until(lambda: core.queued_jobs == 2, 30, state)

        seed = secrets.token_bytes(32)
        paid: list[Completion] = []

        def pay() -> None:
            with Client([address], network=NETWORK, timeout=60, identity_seed=seed) as client:
                paid.append(
                    client.complete("Paid, queued last", model="tiny", max_tokens=4, replicas=1, sealed=False)
                )

        async def paying() -> None:
            await trio.to_thread.run_sync(pay)

        nursery.start_soon(paying)
        await until(lambda: core.queued_jobs == 3, 60, state)  # the paid job waits behind the free ones
        engine.gate.set()
        await until(
            lambda: len(answers) == 3 and len(paid) == 1, 60, lambda: f"{state()}, answers {len(answers)}"
        )

        assert all(isinstance(a, JobAccepted) for a in answers.values()), answers
        receipts = [
            p.job_id
            for e in coordinator.ledger.entries_by_author(coordinator.public_key)
            if isinstance(p := decode_body(e.body).payload, Receipt)
        ]
        free_ids = [n.to_bytes(16, "big") for n in (1, 2, 3)]
        assert receipts == [free_ids[0], paid[0].job_id, free_ids[1], free_ids[2]]
        nursery.cancel_scope.cancel()

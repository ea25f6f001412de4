"""The dashboard's routes on a real coordinator node (opengrid/node/dashboard.py): the page is served with
its CSP and holds no data; the state asks for the API key; its lists and texts are bounded; browsers polling
share one build. The routes' test runs on the in-memory network in virtual time (the API serves HTTP on
127.0.0.1), the state-of-a-job test on real hosts. The page in a real browser: tests/e2e/test_dashboard.py."""

from __future__ import annotations

import pathlib
import secrets
from functools import partial

import httpx
import pytest
import trio
from opengrid_ledger import Transfer
from trio.testing import MockClock

from opengrid.core.coordinator import CoordinatorConfig
from opengrid.net.keys import public_key_of
from opengrid.net.transport import StreamHost
from opengrid.node import dashboard
from opengrid.node.api import ApiSettings
from opengrid.node.config import NodeConfig
from opengrid.node.job_log import JobLog, percentile
from opengrid.node.service import Node
from opengrid.testing.memnet import MemoryNetwork
from opengrid.wire.messages import DecodingContract, JobAccepted, ModelOffer, Registered, RegisterWorker
from tests.node.workers import client_host, start_workers
from tests.waiting import until

NETWORK = "dashboard"
KEY = "dashboard-key"
HOSTILE = (
    "<script>alert(1)</script>" + "x" * 200
)  # markup, and longer than the page keeps (256 is the wire's)


async def _fake_worker(
    coordinator: Node, name: str, memnet: MemoryNetwork, *, task_status: trio.TaskStatus[str]
) -> None:
    """A bare host that registers as a worker serving a model called ``name`` (heartbeats go on)."""
    async with trio.open_nursery() as nursery:
        host: StreamHost = await nursery.start(partial(client_host, transport=memnet))
        assert coordinator.host is not None
        peer = await host.connect(coordinator.host.addrs()[0])
        offer = ModelOffer(name=name, contract=DecodingContract(model_sha256=secrets.token_hex(32)))
        message = RegisterWorker(
            network=NETWORK, public_key=public_key_of(host.peer_id), listen_addrs=host.addrs(), models=[offer]
        )
        for beat in range(1000):
            with trio.fail_after(10):
                assert isinstance(await host.request(peer, message), Registered)
            if beat == 0:
                task_status.started(host.peer_id)
            await trio.sleep(0.25)


async def test_the_page_is_open_and_the_state_is_guarded_bounded_and_shared(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, memnet: MemoryNetwork, memnet_clock: MockClock
) -> None:
    monkeypatch.setattr(dashboard, "MAX_WORKERS", 2)
    monkeypatch.setattr(dashboard, "STATE_MAX_AGE_S", 3600.0)  # one build for the whole test
    settings = NodeConfig(data_dir=tmp_path / "c", role="coordinator", network=NETWORK, heartbeat_s=0.5)
    coordinator = Node(
        settings,
        coordinator_config=CoordinatorConfig.plain(heartbeat_s=0.5),
        api=ApiSettings(address="127.0.0.1:0", api_key=KEY),
        transport=memnet,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(coordinator.run)
        url = coordinator.api_urls[0]
        peers = [await nursery.start(_fake_worker, coordinator, HOSTILE, memnet) for _ in range(3)]
        assert coordinator.coordinator is not None
        machine = coordinator.coordinator
        await until(lambda: len(machine.workers) == 3, 10, lambda: f"{len(machine.workers)} registered")

        def fetch() -> list[httpx.Response]:
            with httpx.Client(base_url=url, timeout=30) as client:
                bearer = {"authorization": f"Bearer {KEY}"}
                return [
                    client.get("/"),
                    client.get("/dashboard/dashboard.js"),
                    client.get("/dashboard/state"),
                    client.get("/dashboard/state", headers={"authorization": "Bearer wrong"}),
                    client.get("/dashboard/state", headers=bearer),
                    client.get("/dashboard/state", headers=bearer),
                ]

        page, script, no_key, wrong_key, state, again = await trio.to_thread.run_sync(fetch)
        nursery.cancel_scope.cancel()

    # The page and its files: open (they hold no data), and nothing may come from anywhere else.
    for response, kind in ((page, "text/html"), (script, "text/javascript")):
        assert response.status_code == 200 and response.headers["content-type"].startswith(kind)
        assert response.headers["content-security-policy"] == dashboard.CONTENT_SECURITY_POLICY
        assert response.headers["x-content-type-options"] == "nosniff"
    assert b"/dashboard/dashboard.js" in page.content and b"innerHTML" not in script.content
    # The state: only with the key, like every /v1 route.
    for refused in (no_key, wrong_key):
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
    assert state.status_code == 200 and state.headers["content-type"] == "application/json"
    assert state.headers["x-content-type-options"] == "nosniff"  # never sniffed into HTML
    grid = state.json()
    assert grid["node"]["coordinates"] is True and grid["node"]["role"] == "coordinator"
    assert grid["workers_total"] == 3 and grid["workers_online"] == 3
    assert len(grid["workers"]) == 2  # MAX_WORKERS
    assert {w["peer_id"] for w in grid["workers"]} < set(peers)
    for worker in grid["workers"]:
        (model,) = worker["models"]
        assert len(model) == dashboard.MAX_TEXT and model == HOSTILE[: dashboard.MAX_TEXT - 1] + "…"
    assert grid["jobs"]["answered"] == 0 and grid["jobs"]["per_minute"] == [0] * dashboard.MINUTES
    assert grid["receipts"] == [] and grid["balances"] == []
    # Two browsers polling within STATE_MAX_AGE_S got the same bytes: one build, not one per request.
    assert again.content == state.content


async def test_the_state_shows_a_job_its_receipt_a_transfer_and_the_balances(
    tmp_path: pathlib.Path, tiny_model_path: pathlib.Path
) -> None:
    # Real hosts and real time: in virtual time a job's latency (the clock stands still while engines
    # compute) would be 0, and the state's latency figure is part of what is checked.
    settings = NodeConfig(data_dir=tmp_path / "c", role="coordinator", network=NETWORK, heartbeat_s=0.5)
    coordinator = Node(
        settings,
        coordinator_config=CoordinatorConfig.plain(heartbeat_s=0.5),
        api=ApiSettings(address="127.0.0.1:0"),
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(coordinator.run)
        assert coordinator.host is not None
        w1, w2 = await start_workers(
            nursery, tmp_path, ("w1", "w2"), bootstrap=coordinator.host.addrs()[0],
            model_path=tiny_model_path, network=NETWORK, heartbeat_s=0.5,
        )  # fmt: skip
        reply = await coordinator.api_submit(
            prompt="Hello", model="tiny", max_tokens=4, replicas=2, format="text"
        )
        assert isinstance(reply, JobAccepted), reply
        await until(lambda: w1.points() > 0, 20, lambda: f"w1 has {w1.points()} points")
        earned = w1.points()
        # w1 gives w2 one point (a TRANSFER of its own chain) and syncs it to the coordinator.
        assert w1.ctx.chain is not None and w1.host is not None and w2.host is not None
        entry, _ = w1.ctx.chain.write(Transfer(to=w2.public_key, amount=1))
        w1.ledger_service.append(entry)
        await w1.sync_ledger(coordinator.host.peer_id)
        ledger = coordinator.ledger
        assert ledger is not None
        await until(lambda: ledger.balance(w2.public_key) == earned + 1, 20, lambda: str(ledger.balances()))
        url = coordinator.api_urls[0]
        state = await trio.to_thread.run_sync(lambda: httpx.get(f"{url}/dashboard/state", timeout=30))
        nursery.cancel_scope.cancel()

    grid = state.json()
    jobs = grid["jobs"]
    assert jobs["answered"] == 1 and jobs["failed"] == 0 and jobs["last_minute"] == 1
    assert jobs["per_minute"][-1] == 1 and jobs["latency_p50_ms"] > 0
    (receipt,) = grid["receipts"]
    assert receipt["job_id"] == reply.job_id.hex() and receipt["tokens"] == len(reply.tokens)
    assert receipt["model"] == "tiny" and set(receipt["workers"]) == {w1.host.peer_id, w2.host.peer_id}
    assert receipt["coordinator"] == coordinator.host.peer_id and receipt["points"] == 2 * earned
    assert grid["transfers"] == [{"from": w1.host.peer_id, "to": w2.host.peer_id, "points": 1, "memo": ""}]
    balances = {b["account"]: b["points"] for b in grid["balances"]}
    assert balances == {w1.host.peer_id: earned - 1, w2.host.peer_id: earned + 1}
    assert grid["balances"][0]["account"] == w2.host.peer_id  # largest first
    assert grid["accounts"] == 2 and grid["minted"] == 2 * earned
    assert {w["peer_id"]: w["jobs_done"] for w in grid["workers"]} == {w1.host.peer_id: 1, w2.host.peer_id: 1}


def test_the_job_log_counts_minutes_and_keeps_only_its_newest() -> None:
    log = JobLog(kept=5)
    for at, latency, verified in (
        (10.0, 1.0, True),
        (70.0, 2.0, False),
        (100.0, 3.0, True),
        (119.0, 4.0, True),
    ):
        log.record(at=at, latency_s=latency, verified=verified)
    # Minutes end at ``now``: ages [120, 180) s, [60, 120) s (the job at 10 s), [0, 60) s (the other three).
    assert log.per_minute(120.0, 3) == [0, 1, 3]
    assert log.per_minute(120.0, 1) == [3]
    assert [a.at for a in log.recent(120.0, 60.0)] == [70.0, 100.0, 119.0]
    assert log.total == 4 and log.failed == 1
    for i in range(10):
        log.record(at=200.0 + i, latency_s=0.5, verified=True)
    assert len(log.recent(1000.0, 1000.0)) == 5 and log.total == 14  # bounded; the totals go on
    assert percentile([], 0.5) is None
    assert percentile([3.0, 1.0, 2.0, 4.0], 0.5) == 2.0 and percentile([3.0, 1.0, 2.0, 4.0], 0.95) == 4.0
    assert percentile([7.0], 0.95) == 7.0

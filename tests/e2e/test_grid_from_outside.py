"""A grid of node processes as an outsider meets it: found through the DHT from a worker's address alone
(the coordinator is the grid's only DHT server), and used through the SDK's API-parity calls (models,
chat, receipt). Node processes on 127.0.0.1 (issue 19: each bullet against real node processes; the
in-process versions are tests/node/test_dht_lone_coordinator.py and tests/sdk/test_sdk_parity.py)."""

from __future__ import annotations

import pathlib
import time
from collections.abc import Iterator

import pytest
from opengrid_sdk import Client

from opengrid.cli.demo import DemoNetwork, wait_for_workers
from opengrid.engines import sha256_file

pytestmark = pytest.mark.slow

NETWORK = "outside-test"
MESSAGES = [{"role": "user", "content": "Name a colour."}]


@pytest.fixture
def grid(tmp_path: pathlib.Path, tiny_model_path: pathlib.Path) -> Iterator[tuple[str, str, str]]:
    """(the coordinator's peer id, its address, a worker's address): one coordinator, two workers."""
    net = DemoNetwork(tmp_path, model=str(tiny_model_path), network=NETWORK)
    try:
        coordinator = net.start("coordinator", "coordinator")
        net.wait_ready(coordinator)
        address = coordinator.addrs[0]
        workers = [net.start(f"worker-{i}", "worker", bootstrap=address) for i in (1, 2)]
        for worker in workers:
            net.wait_ready(worker)
        with Client([address], network=NETWORK, timeout=60) as client:
            wait_for_workers(client, 2, timeout=120)
        yield coordinator.peer_id, address, workers[0].addrs[0]
    finally:
        net.stop()


def test_an_outsider_finds_the_coordinator_through_the_dht_and_uses_the_sdk(
    grid: tuple[str, str, str], tiny_model_path: pathlib.Path
) -> None:
    coordinator, address, worker_address = grid
    # Given only a worker's address (a DHT client, which answers no lookup itself), the SDK finds the
    # coordinator's role:coordinator provider record, which the coordinator holds with an empty routing table.
    # (The worker lists the coordinator as a DHT server once it heard its gossip announcement: a few s.)
    found: list[str] = []
    with Client([worker_address], network=NETWORK, timeout=60) as client:
        deadline = time.monotonic() + 60
        while not found and time.monotonic() < deadline:
            found = client.find_coordinators()
            if not found:
                time.sleep(1.0)  # the next announcement (5 s period): bounded by the deadline
    assert [a.rsplit("/p2p/", 1)[1] for a in found] == [coordinator], found
    with Client([address], network=NETWORK, timeout=60) as client:
        [served] = client.models()
        assert (served.name, served.workers) == ("tiny", 2)
        assert served.sha256 == sha256_file(tiny_model_path) and served.weight >= 1
        answer = client.chat(MESSAGES, model="tiny", max_tokens=8, sealed=False)
        assert answer.text and answer.receipt is not None
        fetched = client.receipt(answer.job_id)  # verified by the SDK on arrival
        assert fetched.job_id == answer.job_id and fetched.receipt.entry == answer.receipt.entry
        assert fetched.output_verified and (fetched.text, fetched.tokens) == (answer.text, answer.tokens)

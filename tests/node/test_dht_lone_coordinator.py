"""A grid of one coordinator and its workers (DHT clients) is found through the DHT.

The coordinator is the grid's only DHT server, so its routing table stays empty; it must still hold its own
``role:coordinator`` provider record, so that a DHT client that reaches it (an outside libp2p peer, a
worker, the SDK) finds it. Real nodes in one process on 127.0.0.1.
"""

from __future__ import annotations

import pathlib
import secrets

import trio
from nacl.signing import SigningKey
from opengrid_sdk import Client

from opengrid.net.discovery import Discovery, role_key
from opengrid.net.host import open_host, quiet_libp2p_logging
from opengrid.node.service import Node
from tests.node.test_membership import fast, tiny_engine
from tests.waiting import until


async def test_a_lone_coordinator_is_found_by_dht_clients(
    tmp_path: pathlib.Path, tiny_model_path: pathlib.Path
) -> None:
    async with trio.open_nursery() as nursery:
        coordinator = Node(fast(tmp_path / "c", "coordinator"))
        await nursery.start(coordinator.run)
        worker = Node(
            fast(tmp_path / "w", "worker", bootstrap=coordinator), engine=tiny_engine(tiny_model_path)
        )
        await nursery.start(worker.run)
        assert coordinator.host is not None and worker.host is not None
        assert coordinator.membership is not None and worker.membership is not None
        me = coordinator.host.peer_id
        network = coordinator.config.network
        # the grid's only DHT server: nothing in its routing table, ever
        assert coordinator.membership.discovery.routing_table_size() == 0

        # the worker's own DHT rounds (a DHT client asking its one server) find the coordinator
        await until(lambda: worker.membership.coordinators_in_dht() == [me], timeout=30)  # type: ignore[union-attr]

        # an outside libp2p peer in DHT client mode that reaches the coordinator finds it
        quiet_libp2p_logging()
        seed = secrets.token_bytes(32)
        async with open_host(seed) as host, trio.open_nursery() as inner:
            outside = Discovery(host, network=network, signing_key=SigningKey(seed), server=False)
            await inner.start(outside.run)
            with trio.fail_after(20):
                assert await outside.bootstrap(coordinator.host.addrs()[:1]) == [me]
                found = await outside.find_providers(role_key(network, "coordinator"))
            assert [p.peer_id for p in found] == [me] and found[0].addrs
            inner.cancel_scope.cancel()

        # the SDK, given only the worker's address (a DHT client that answers no lookup), finds it too
        def client_lookup() -> list[str]:
            with Client(worker.host.addrs()[:1], network=network, timeout=30) as client:  # type: ignore[union-attr]
                return client.find_coordinators()

        found_by_sdk = await trio.to_thread.run_sync(client_lookup)
        assert [a.rsplit("/p2p/", 1)[1] for a in found_by_sdk] == [me]
        nursery.cancel_scope.cancel()

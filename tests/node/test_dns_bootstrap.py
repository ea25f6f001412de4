"""Workers join through bootstrap names: ``/dns4/localhost/...`` and a ``/dnsaddr/`` name whose TXT
records appear only after the worker started (it keeps retrying, like for a bootstrap that is not up).

Real nodes in one process on 127.0.0.1; the TXT lookup is a function the test controls (no DNS query leaves
the machine), ``localhost`` goes through the system resolver.
"""

from __future__ import annotations

import logging
import pathlib

import msgspec
import pytest
import trio
from opengrid_sdk import Client

from opengrid.net.host import Host
from opengrid.net.names import Resolver
from opengrid.node.config import NodeConfig
from opengrid.node.service import Node
from tests.node.test_membership import fast, online_workers, tiny_engine
from tests.waiting import until


def by_name(node: Node) -> str:
    assert node.host is not None
    address = node.host.addrs()[0]
    assert address.startswith("/ip4/127.0.0.1/")
    return address.replace("/ip4/127.0.0.1/", "/dns4/localhost/", 1)


def with_bootstrap(config: NodeConfig, *addresses: str) -> NodeConfig:
    return msgspec.structs.replace(config, bootstrap=addresses)


async def test_workers_join_through_dns4_and_dnsaddr_names(
    tmp_path: pathlib.Path,
    tiny_model_path: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="opengrid.node.membership")
    published: list[str] = []
    asked: list[str] = []

    async def lookup_txt(name: str) -> list[str]:
        asked.append(name)
        return list(published) if name == "_dnsaddr.grid.test" else []

    monkeypatch.setattr(Host, "resolver", Resolver(lookup_txt=lookup_txt))
    async with trio.open_nursery() as nursery:
        coordinator = Node(fast(tmp_path / "c", "coordinator"))
        await nursery.start(coordinator.run)
        first = Node(
            with_bootstrap(fast(tmp_path / "w1", "worker"), by_name(coordinator)),
            engine=tiny_engine(tiny_model_path),
        )
        await nursery.start(first.run)
        second = Node(
            with_bootstrap(fast(tmp_path / "w2", "worker"), "/dnsaddr/grid.test"),
            engine=tiny_engine(tiny_model_path),
        )
        await nursery.start(second.run)
        assert first.host is not None and second.host is not None and second.membership is not None

        # /dns4/localhost: resolved by the system, dialled, joined and registered
        await until(lambda: first.host.peer_id in online_workers(coordinator), timeout=20)  # type: ignore[union-attr]

        # /dnsaddr/ with no record yet: a clear reason in the log, and retries
        def refused() -> list[str]:
            return [r.getMessage() for r in caplog.records if "grid.test" in r.getMessage()]

        await until(lambda: len(asked) >= 3, timeout=20)
        assert not second.membership.joined.is_set() and not second.registered.is_set()
        assert any("not reachable yet" in m and "no dnsaddr= TXT record" in m for m in refused())

        # the name is published (pointing at the coordinator by /dns4/localhost): the worker joins and
        # registers, with one registration loop for the coordinator (the name is keyed by the peer it led to)
        published.append(f"dnsaddr={by_name(coordinator)}")
        await until(lambda: second.host.peer_id in online_workers(coordinator), timeout=40)  # type: ignore[union-attr]
        await until(second.membership.joined.is_set, timeout=40)
        assert second.registration is not None
        targets = second.registration._targets()
        assert list(targets) == [coordinator.host.peer_id]  # type: ignore[union-attr]

        # the SDK takes a name too: it finds the coordinator through /dnsaddr/ (resolved by its own host)
        def sdk_coordinator() -> str:
            with Client(["/dnsaddr/grid.test"], network=coordinator.config.network, timeout=30) as client:
                return client.status().peer_id

        assert await trio.to_thread.run_sync(sdk_coordinator) == coordinator.host.peer_id  # type: ignore[union-attr]
        nursery.cancel_scope.cancel()

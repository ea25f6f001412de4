"""Helpers for tests of the network layer: several real libp2p nodes on 127.0.0.1 in one process."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio
from nacl.signing import SigningKey

from opengrid.net.announce import ModelAd
from opengrid.net.discovery import Discovery
from opengrid.net.gossip import Gossip
from opengrid.net.host import Host, open_host, quiet_libp2p_logging

NETWORK = "testnet"


@dataclass
class NetNode:
    host: Host
    key: SigningKey
    discovery: Discovery
    gossip: Gossip


@asynccontextmanager
async def open_node(
    *,
    network: str = NETWORK,
    bootstrap: Sequence[str] = (),
    roles: Sequence[str] = ("worker",),
    models: Sequence[ModelAd] = (),
    beat_s: float = 0.5,
    psk: bytes | None = None,
) -> AsyncIterator[NetNode]:
    """One node: host + DHT (server mode) + gossip, bootstrapped from ``bootstrap``."""
    quiet_libp2p_logging()
    seed = secrets.token_bytes(32)
    key = SigningKey(seed)
    async with open_host(seed, psk=psk) as host, trio.open_nursery() as nursery:
        discovery = Discovery(host, network=network, signing_key=key)
        gossip = Gossip(host, network=network, signing_key=key, roles=roles, models=models, beat_s=beat_s)
        await nursery.start(discovery.run)
        await nursery.start(gossip.run)
        if bootstrap:
            await discovery.bootstrap(bootstrap)
        yield NetNode(host, key, discovery, gossip)
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def open_grid(n: int, **kwargs: object) -> AsyncIterator[list[NetNode]]:
    """``n`` nodes; all but the first know only the first one's address. They stop together (each
    closing connection pauses 0.2 s in py-libp2p: one after another, a grid took seconds to stop)."""
    done = trio.Event()

    async def hold(
        bootstrap: Sequence[str], *, task_status: trio.TaskStatus[NetNode] = trio.TASK_STATUS_IGNORED
    ) -> None:
        async with open_node(bootstrap=bootstrap, **kwargs) as node:  # type: ignore[arg-type]
            task_status.started(node)
            await done.wait()

    async with trio.open_nursery() as nursery:
        first: NetNode = await nursery.start(hold, ())
        nodes = [first]
        for _ in range(n - 1):
            nodes.append(await nursery.start(hold, first.host.addrs()[:1]))
        try:
            yield nodes
        finally:
            done.set()

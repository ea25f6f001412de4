"""Helpers for tests of the network layer: several real libp2p nodes on 127.0.0.1 in one process."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
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
    """``n`` nodes; all but the first know only the first one's address."""
    async with AsyncExitStack() as stack:
        first = await stack.enter_async_context(open_node(**kwargs))  # type: ignore[arg-type]
        nodes = [first]
        for _ in range(n - 1):
            nodes.append(
                await stack.enter_async_context(open_node(bootstrap=first.host.addrs()[:1], **kwargs))  # type: ignore[arg-type]
            )
        yield nodes

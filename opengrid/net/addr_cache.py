"""A memo for the addresses a py-libp2p host advertises, so signed peer records cost little to send.

py-libp2p 0.8.1 attaches our signed peer record to every pubsub RPC, DHT message, identify and relay
exchange it sends (``libp2p.peer.peerstore.env_to_send_in_RPC``). The record itself is cached and reused
while our addresses are unchanged, but finding that out calls ``BasicHost.get_addrs()``, which rebuilds
every multiaddr and its ``/p2p/<id>`` suffix from scratch on each call: ~80 µs on this 2-core machine
(~1 ms under cProfile), 85 % of ``env_to_send_in_RPC``, 15 % of a busy coordinator's CPU at 50 nodes
(benchmarks/README.md, "Memory and the 50-node runs"). With the memo: ~12 µs, ``env_to_send_in_RPC`` ~17.

Without an ``addrs_factory`` (OpenGrid sets none; tests that fake a node behind NAT set one on a running
host), ``get_addrs()`` is a function of the transport listen addresses and the confirmed observed
addresses only (the host's peer id never changes), so the memo compares those inputs on every call and
recomputes with the library's own method whenever they differ: a new listener, a closed one, an observed
address confirmed or dropped all change the answer at once, as they would without the memo. While a
factory is set, every call goes to the library (a factory may answer differently for the same inputs).

Relayed addresses (``Host.add_relay_address``) are ours, not libp2p's: they are not in ``get_addrs()`` nor
in the signed peer record either way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import multiaddr
from libp2p.abc import IHost

log = logging.getLogger("opengrid.net")

_Inputs = tuple[tuple[multiaddr.Multiaddr, ...], tuple[multiaddr.Multiaddr, ...]]


class AdvertisedAddrs:
    """``get_addrs`` for a py-libp2p ``BasicHost``, recomputed only when its inputs change."""

    def __init__(self, host: Any) -> None:
        self._host = host
        self._compute: Callable[[], list[multiaddr.Multiaddr]] = host.get_addrs
        self._inputs: _Inputs | None = None
        self._addrs: tuple[multiaddr.Multiaddr, ...] = ()
        self.computed = 0
        """How many times the library's ``get_addrs`` ran (tests and profiling)."""

    def get_addrs(self) -> list[multiaddr.Multiaddr]:
        """What ``BasicHost.get_addrs()`` returns now (a fresh list each call; multiaddrs are immutable)."""
        if self._host._addrs_factory is not None:
            self._inputs = None
            return self._compute()
        inputs = self._current_inputs()
        if inputs != self._inputs:
            self._addrs = tuple(self._compute())
            self._inputs = inputs
            self.computed += 1
        return list(self._addrs)

    def _current_inputs(self) -> _Inputs:
        observed = self._host._observed_addr_manager
        return (
            tuple(self._host.get_transport_addrs()),
            tuple(observed.addrs()) if observed is not None else (),
        )


def cache_advertised_addrs(host: IHost) -> AdvertisedAddrs | None:
    """Make ``host.get_addrs()`` cheap when nothing changed; None (host untouched) when this host is not
    the kind the memo was written for: a py-libp2p version whose host lacks the attributes read here."""
    names = ("_observed_addr_manager", "_addrs_factory", "get_transport_addrs")
    if not all(hasattr(host, name) for name in names):
        log.debug("not caching advertised addresses for %s", type(host).__name__)
        return None
    cache = AdvertisedAddrs(host)
    # An instance attribute shadows the method for every caller, the library's own included.
    host.get_addrs = cache.get_addrs  # type: ignore[method-assign]
    return cache

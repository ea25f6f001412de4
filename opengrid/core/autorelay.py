"""Automatic relay: which relay a node that peers cannot dial takes by itself, and when it lets it go
(spec/discovery.md §9.3). Pure functions over plain data; the driver is ``opengrid/node/autorelay.py``.

A node that peers cannot reach by itself — it listens but is found **private** by its dial-backs
(§9.2), or it listens on nothing (**relayed**) — and that no relay it was given serves (it was given
none with ``--relay-via``, or they have all held no reservation for ``SWITCH_AFTER_S``; a node that does
not listen is given its bootstrap nodes) picks one of the relays it knows of, holds a reservation there
and announces the relayed address next to its direct ones. It drops that reservation when a later check
finds it **public**, or when a relay it was given holds a reservation again.

Every relayed job's bytes pass through the relay, so distance comes first: candidates whose round trip
the node measured, nearest first in steps of ``RTT_STEP_S`` (within one step they count as equally near),
then those it could not measure. Ties go to the rank, best first:

1. peers that provide ``relay`` in the DHT (they said they relay);
2. coordinators (they relay unless started with ``--no-relay``), heard on gossip or found in the DHT;
3. its bootstrap nodes (any node; it may or may not relay).

then to the peer id (deterministic). A candidate is skipped when it is this node, has no direct TCP
address (a relay must be dialable itself), announces that it is private or relayed itself, or refused or
failed within the last ``RETRY_FAILED_S``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Final, Literal

Source = Literal["dht", "coordinator", "bootstrap"]

RANK: Final[Mapping[Source, int]] = {"dht": 0, "coordinator": 1, "bootstrap": 2}
RETRY_FAILED_S: Final = 300.0
"""A relay that refused a reservation (full, or does not relay) or could not be reached is not tried again
for this long."""
RTT_STEP_S: Final = 0.025
"""Candidates whose round trips fall in the same 25 ms step are equally near: the better rank wins. Finer
steps would let measurement noise on a LAN override "this peer said it relays"."""
SWITCH_AFTER_S: Final = 60.0
"""A relay we chose that has held no reservation for this long (it went away) is given up for another."""


@dataclass(frozen=True)
class RelayCandidate:
    """A peer that might relay for us, and how we know of it."""

    peer_id: str
    address: str
    """A full multiaddr of the candidate (``/ip4/…/tcp/…/p2p/<peer_id>``)."""
    source: Source
    reachability: str = "unknown"
    """What the candidate announces about itself (§9.2); "" or "unknown" when we did not hear it."""
    rtt_s: float | None = None
    """Round trip this node measured to the candidate; None when it did not (or got no answer)."""


@dataclass(frozen=True)
class HeldRelay:
    """The relay this node chose automatically."""

    peer_id: str
    lost_since: float | None
    """When the reservation was lost (monotonic seconds), None while one is held."""


@dataclass(frozen=True)
class TakeRelay:
    relay: RelayCandidate


@dataclass(frozen=True)
class DropRelay:
    peer_id: str
    reason: str
    failed: bool
    """True when the relay let us down (mark it failed before looking for another)."""


Step = TakeRelay | DropRelay | None


def wants_relay(reachability: str, *, given_relays_up: bool) -> bool:
    """A node takes a relay by itself only when peers cannot dial it and no relay it was given serves it
    (``given_relays_up``)."""
    return reachability in ("private", "relayed") and not given_relays_up


def given_relays_up(
    given: int, lost_since: float | None, *, now: float, switch_after_s: float = SWITCH_AFTER_S
) -> bool:
    """Whether the relays a node was given (``--relay-via``, or the bootstrap nodes of a node that does
    not listen; ``given`` of them) still serve it: ``lost_since`` is when the last of them stopped holding
    a reservation (when the node started, if none ever held one), None while one holds. They get
    ``switch_after_s`` (``SWITCH_AFTER_S``) to come back (their keepers keep retrying) before another relay
    is taken."""
    if given == 0:
        return False
    return lost_since is None or now - lost_since < switch_after_s


def is_direct_tcp(address: str) -> bool:
    """``/ip4|ip6/<ip>/tcp/<port>/p2p/<id>`` and nothing relayed."""
    parts = address.split("/")
    return (
        "p2p-circuit" not in parts
        and len(parts) >= 7
        and parts[1] in ("ip4", "ip6")
        and parts[3] == "tcp"
        and parts[5] == "p2p"
    )


def usable_relays(
    candidates: Iterable[RelayCandidate], *, me: str, failed: Mapping[str, float], now: float
) -> list[RelayCandidate]:
    """One candidate per peer that may be asked to relay (skip rules in the module docstring), at its best
    rank and with the round trip measured to it if any, best first (``choose_relay`` takes the first)."""
    best: dict[str, RelayCandidate] = {}
    for c in candidates:
        if c.peer_id == me or not is_direct_tcp(c.address) or not c.address.endswith(f"/p2p/{c.peer_id}"):
            continue
        if c.reachability in ("private", "relayed"):
            continue
        if c.peer_id in failed and now - failed[c.peer_id] < RETRY_FAILED_S:
            continue
        known = best.get(c.peer_id)
        if known is not None:  # one peer known several ways: its best rank, and a round trip if any
            better, other = (c, known) if RANK[c.source] < RANK[known.source] else (known, c)
            c = better if better.rtt_s is not None else replace(better, rtt_s=other.rtt_s)
        best[c.peer_id] = c
    return sorted(best.values(), key=_preference)


def _preference(c: RelayCandidate) -> tuple[float, int, str]:
    nearness = math.inf if c.rtt_s is None else math.floor(c.rtt_s / RTT_STEP_S)
    return (nearness, RANK[c.source], c.peer_id)


def choose_relay(
    candidates: Iterable[RelayCandidate], *, me: str, failed: Mapping[str, float], now: float
) -> RelayCandidate | None:
    """The best usable candidate (module docstring), or None."""
    usable = usable_relays(candidates, me=me, failed=failed, now=now)
    return usable[0] if usable else None


def next_step(
    reachability: str,
    *,
    given_relays_up: bool,
    held: HeldRelay | None,
    candidates: Iterable[RelayCandidate],
    me: str,
    failed: Mapping[str, float],
    now: float,
    switch_after_s: float = SWITCH_AFTER_S,
) -> Step:
    """What to do now: take a relay, drop the one held, or nothing (None).

    Drop when peers can dial us directly again (``public``), when a relay the node was given serves it
    again (``given_relays_up``), or when the chosen relay has held no reservation for ``switch_after_s``
    (``SWITCH_AFTER_S``) and another candidate exists. ``unknown`` (no checker answered) changes nothing:
    one failed check must not undo a good choice."""
    if held is not None:
        if reachability == "public":
            return DropRelay(held.peer_id, "peers can dial this node directly now", failed=False)
        if given_relays_up:
            why = "a relay this node was given holds a reservation again"
            return DropRelay(held.peer_id, why, failed=False)
        if held.lost_since is not None and now - held.lost_since >= switch_after_s:
            others = {**failed, held.peer_id: now}
            if choose_relay(candidates, me=me, failed=others, now=now) is not None:
                lost_s = now - held.lost_since
                return DropRelay(held.peer_id, f"no reservation there for {lost_s:.0f} s", failed=True)
        return None
    if not wants_relay(reachability, given_relays_up=given_relays_up):
        return None
    relay = choose_relay(candidates, me=me, failed=failed, now=now)
    return TakeRelay(relay) if relay is not None else None

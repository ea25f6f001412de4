"""What the wallet shows, computed from plain data: pure functions, no I/O, no clock, no Textual.

The app feeds these the latest ``NodeStatus`` and ``HistoryItem`` list it fetched through the SDK; tests
feed them hand-built values.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from opengrid_sdk import HistoryItem

_UNITS = ((86_400_000, "d"), (3_600_000, "h"), (60_000, "min"), (1_000, "s"))


def short_id(peer_id: str, *, head: int = 12, tail: int = 6) -> str:
    """``12D3KooWAbCd…x9Yz1a``: long enough to tell peers apart, short enough for 80 columns."""
    if len(peer_id) <= head + tail + 1:
        return peer_id
    return f"{peer_id[:head]}…{peer_id[-tail:]}"


def format_points(points: int) -> str:
    """Points are integers; group thousands for reading."""
    return f"{points:,}"


def format_duration_ms(ms: int) -> str:
    """``90_000`` → ``"1.5 min"``; used to label chart buckets."""
    for unit_ms, name in _UNITS:
        if ms >= unit_ms:
            value = ms / unit_ms
            return f"{value:.0f} {name}" if value >= 10 or value == int(value) else f"{value:.1f} {name}"
    return f"{ms} ms"


def format_time(ms: int, tz: dt.tzinfo | None = None, *, with_date: bool = True) -> str:
    """A coordinator's millisecond timestamp as local (or ``tz``) time; ``"—"`` when it gave none."""
    if ms <= 0:
        return "—"
    when = dt.datetime.fromtimestamp(ms / 1000, tz=tz)
    return when.strftime("%m-%d %H:%M:%S" if with_date else "%H:%M:%S")


@dataclass(frozen=True)
class EarningsSeries:
    """Points earned per time bucket, oldest bucket first."""

    points: list[int]
    start_ms: int
    bucket_ms: int

    @property
    def total(self) -> int:
        """All points in the series."""
        return sum(self.points)


def earnings_series(items: Sequence[HistoryItem], now_ms: int, buckets: int = 48) -> EarningsSeries:
    """Spread the paid points of ``items`` over ``buckets`` equal spans from the oldest item to ``now_ms``.

    Items without a timestamp (``issued_at_ms == 0``) cannot be placed and are left out, and so are
    transfers: they are not earnings.
    """
    earned = (i for i in items if i.issued_at_ms > 0 and not i.is_transfer)
    dated = sorted(earned, key=lambda i: i.issued_at_ms)
    if not dated or buckets < 1:
        return EarningsSeries(points=[0] * max(buckets, 0), start_ms=now_ms, bucket_ms=0)
    start = dated[0].issued_at_ms
    end = max(now_ms, dated[-1].issued_at_ms) + 1
    bucket_ms = max(1, -(-(end - start) // buckets))  # ceiling division: the last item fits
    points = [0] * buckets
    for item in dated:
        points[min(buckets - 1, (item.issued_at_ms - start) // bucket_ms)] += item.points
    return EarningsSeries(points=points, start_ms=start, bucket_ms=bucket_ms)


@dataclass(frozen=True)
class ReputationSummary:
    """Verified outcomes of one account, as its history shows them."""

    paid: int
    outvoted: int
    streak: int
    """Paid jobs since the last outvote (or since the start)."""
    points: int

    @property
    def verified(self) -> int:
        """Jobs whose outcome was verified by comparison with other workers."""
        return self.paid + self.outvoted

    @property
    def agreement_rate(self) -> float | None:
        """Share of verified jobs that agreed with the majority; None before the first one."""
        return self.paid / self.verified if self.verified else None


def summarize_reputation(items: Sequence[HistoryItem]) -> ReputationSummary:
    """Count paid and outvoted outcomes, and the current streak of paid ones (oldest item first).
    Transfers are not work: they count for none of it."""
    ordered = sorted((i for i in items if not i.is_transfer), key=lambda i: (i.issued_at_ms, i.entry_id))
    streak = 0
    for item in ordered:
        streak = streak + 1 if item.outcome == "paid" else 0
    return ReputationSummary(
        paid=sum(1 for i in ordered if i.outcome == "paid"),
        outvoted=sum(1 for i in ordered if i.outcome == "outvoted"),
        streak=streak,
        points=sum(i.points for i in ordered),
    )


@dataclass(frozen=True)
class CoordinatorSeen:
    """A coordinator as an account's history shows it: the key that signed its receipts."""

    key: bytes
    jobs: int
    points: int
    last_ms: int


def coordinators_seen(items: Sequence[HistoryItem]) -> list[CoordinatorSeen]:
    """Coordinators that signed receipts for this account, most recently seen first."""
    by_key: dict[bytes, list[HistoryItem]] = {}
    for item in items:
        if item.is_transfer:  # signed by the sender, not by a coordinator
            continue
        by_key.setdefault(item.coordinator_key, []).append(item)
    seen = [
        CoordinatorSeen(
            key=key,
            jobs=len(group),
            points=sum(i.points for i in group),
            last_ms=max(i.issued_at_ms for i in group),
        )
        for key, group in by_key.items()
    ]
    return sorted(seen, key=lambda c: (-c.last_ms, c.key))


def pick_address(addrs: Sequence[str]) -> str | None:
    """The address to dial among a node's own: loopback first (the wallet usually runs beside the node),
    then any routable one; a wildcard listen address is dialled as loopback."""
    for addr in addrs:
        if addr.startswith("/ip4/127.") or addr.startswith("/ip6/::1/"):
            return addr
    for addr in addrs:
        if addr.startswith("/ip4/0.0.0.0/"):
            return "/ip4/127.0.0.1/" + addr.removeprefix("/ip4/0.0.0.0/")
    return addrs[0] if addrs else None

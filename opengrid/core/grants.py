"""Who gets a starting-grant voucher, and how often: a pure policy over plain data (spec/ledger.md §7).

A new account's first ledger entry may be a GRANT of the genesis ``grant_points``, valid only with a
voucher signed by a minting coordinator. Keys cost nothing, so a Sybil can ask for a grant with as many
accounts as it likes: the voucher is where the supply is controlled. This module decides, per request,
whether a coordinator signs one:

- the network must have a starting grant (genesis ``grant_points > 0``) — the caller checks that and the
  account's ledger state (a GRANT can only be an account's first entry);
- each **operator bucket** — the requesting peer's public IP (an IPv6 address counts as its /64, what one
  subscriber usually gets), or one shared bucket for every loopback / private / unknown address — gets at
  most ``per_operator`` vouchers per ``window_s``;
- all buckets together get at most ``total`` vouchers per ``window_s``, which bounds what a botnet with
  many addresses can mint through one coordinator.

An account vouched for before (its GRANT not on the ledger yet, e.g. the job carrying it was refused)
gets the same voucher again (signatures are deterministic) without spending any budget.

The limits guard minting, so they must survive a restart (issue 15, item 10: a kill -9 used to refill
every bucket). The policy is pure; the driver gives it a ``GrantJournal`` (``opengrid.store.grant_store``:
SQLite in the data dir) that durably records each voucher *before* it is issued, and ``restore``s the
journal's vouchers of the last window at start. ``now`` must then be a wall clock (Unix seconds), the one
clock that survives a restart.
"""

from __future__ import annotations

import ipaddress
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from opengrid.core.refusal import Refusal

GRANTS_PER_OPERATOR: int = 3
"""Vouchers one operator bucket (an IP address, or every private address together) gets per window."""
GRANTS_TOTAL: int = 1000
"""Vouchers all requesters together get per window, from one coordinator."""
GRANT_WINDOW_S: float = 24 * 3600.0
"""The rate limits' window: a sliding day."""
MAX_REMEMBERED: int = 65536
"""Accounts vouched for that are remembered (so a repeat costs nothing); the oldest are forgotten."""
LOCAL_BUCKET = "local"
"""The one bucket shared by loopback, private and unknown addresses (a LAN, a test network)."""


def operator_bucket(operator: str) -> str:
    """The rate-limit bucket of a requester whose public IP is ``operator`` ("" if private or unknown)."""
    try:
        address = ipaddress.ip_address(operator)
    except ValueError:
        return LOCAL_BUCKET
    if not address.is_global:
        return LOCAL_BUCKET
    if address.version == 6:
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


@dataclass(frozen=True)
class GrantLimits:
    """The rate limits of a coordinator's grant vouchers (defaults above, justified in spec/ledger.md §7)."""

    per_operator: int = GRANTS_PER_OPERATOR
    total: int = GRANTS_TOTAL
    window_s: float = GRANT_WINDOW_S


class GrantJournal(Protocol):
    """Durable record of issued vouchers (the driver's store), written before a voucher leaves."""

    def record(self, account: bytes, bucket: str, at: float) -> None:
        """Store that ``account`` got a voucher counted against ``bucket`` at ``at``; raise if it cannot."""
        ...


class GrantPolicy:
    """Remembers which vouchers were issued when, and to whom, to rate-limit the next ones."""

    def __init__(self, limits: GrantLimits | None = None, journal: GrantJournal | None = None) -> None:
        self.limits = limits or GrantLimits()
        self.journal = journal
        """Where each voucher is recorded durably before it is issued (None: memory only)."""
        self._issued: deque[tuple[float, str]] = deque()
        """(time, bucket) of every voucher issued within the window, oldest first."""
        self._per_bucket: dict[str, int] = {}
        self._vouched: dict[bytes, None] = {}
        """Accounts vouched for, oldest first (a dict as an ordered set)."""

    def refusal(self, account: bytes, operator: str, now: float) -> Refusal | None:
        """Why ``account``, asked for from ``operator``'s address, gets no voucher now (``busy``: retry
        later), or None if it does. Does not record anything: call :meth:`record` once the voucher is
        issued."""
        if account in self._vouched:
            return None
        self._expire(now)
        bucket = operator_bucket(operator)
        limits = self.limits
        if self._per_bucket.get(bucket, 0) >= limits.per_operator:
            who = "private and loopback addresses (one shared bucket)" if bucket == LOCAL_BUCKET else bucket
            return Refusal(
                "busy",
                f"{limits.per_operator} starting grant(s) per {_span(limits.window_s)} are allowed from "
                f"{who}, and they are spent; retry in {self._retry_after(now, bucket):.0f} s",
            )
        if len(self._issued) >= limits.total:
            return Refusal(
                "busy",
                f"this coordinator vouched for its {limits.total} starting grants per "
                f"{_span(limits.window_s)}; retry in {self._retry_after(now, None):.0f} s or ask another",
            )
        return None

    def record(self, account: bytes, operator: str, now: float) -> None:
        """Count a voucher issued for ``account`` (a repeat for an account vouched before is free)."""
        if account in self._vouched:
            return
        bucket = operator_bucket(operator)
        if self.journal is not None:  # first: a crash right after must not give the budget back
            self.journal.record(account, bucket, now)
        self._count(account, bucket, now)

    def restore(self, vouchers: Iterable[tuple[float, str, bytes]]) -> None:
        """Count vouchers issued before a restart, as (time, bucket, account) from the journal (not
        journaled again); those older than the window are dropped at the next check."""
        for at, bucket, account in sorted(vouchers):
            if account not in self._vouched:
                self._count(account, bucket, at)

    def _count(self, account: bytes, bucket: str, now: float) -> None:
        self._issued.append((now, bucket))
        self._per_bucket[bucket] = self._per_bucket.get(bucket, 0) + 1
        self._vouched[account] = None
        while len(self._vouched) > MAX_REMEMBERED:
            del self._vouched[next(iter(self._vouched))]

    def _expire(self, now: float) -> None:
        while self._issued and now - self._issued[0][0] >= self.limits.window_s:
            _, bucket = self._issued.popleft()
            self._per_bucket[bucket] -= 1
            if not self._per_bucket[bucket]:
                del self._per_bucket[bucket]

    def _retry_after(self, now: float, bucket: str | None) -> float:
        """Seconds until the oldest voucher counted against ``bucket`` (None: any) leaves the window."""
        oldest = next((t for t, b in self._issued if bucket is None or b == bucket), now)
        return max(0.0, oldest + self.limits.window_s - now)


def _span(seconds: float) -> str:
    return "day" if seconds == 24 * 3600.0 else f"{seconds:.0f} s"

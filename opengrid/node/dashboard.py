"""The read-only web dashboard a node's ``--api`` serves at ``/`` (the same address as ``/v1``).

A coordinator's page shows its grid: the workers online (tier, models, round-trip time, reputation), the
jobs it answered a minute and how fast, its newest receipts and transfers, and the ledger's balances. A
worker's page shows what a worker knows (its models, its coordinator, its points) and says that the grid's
dashboard is its coordinator's.

How it works: ``GET /`` answers one static page (``static/dashboard.html`` with its CSS and JS, all served
from here: no build step, no outside origin; the Content-Security-Policy header forbids any). The page polls
``GET /dashboard/state`` once a second and draws the JSON it gets with ``textContent`` only, never as
HTML, so a peer id, a model name or a memo that looks like markup shows as text.

Bounds: the state is built at most once per ``STATE_MAX_AGE_S`` whatever the number of browsers polling
(each gets the cached bytes), from at most ``LEDGER_SCAN`` of the newest ledger entries, with at most
``MAX_WORKERS`` workers, ``MAX_RECEIPTS`` receipts, ``MAX_TRANSFERS`` transfers and ``MAX_BALANCES``
balances in it; every text from the network is cut to ``MAX_TEXT`` characters. With ``--api-key``, the
state asks for the key as every ``/v1`` route does (the page prompts for it); the page itself holds no data.
"""

from __future__ import annotations

import functools
import heapq
import importlib.resources
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import trio
from opengrid_ledger import Receipt, Transfer, decode_body
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

import opengrid
from opengrid.net.keys import peer_id_of
from opengrid.node.context import NodeContext
from opengrid.node.coordinator_driver import CoordinatorDriver
from opengrid.node.job_log import percentile
from opengrid.node.registration import Registration

__all__ = [
    "CONTENT_SECURITY_POLICY",
    "Dashboard",
    "DashboardSource",
    "dashboard_routes",
]

MAX_WORKERS = 200
"""Workers listed (online first, then by peer id); the state says how many there are in all."""
MAX_RECEIPTS = 20
"""Newest receipts listed."""
MAX_TRANSFERS = 20
"""Newest transfers listed."""
MAX_BALANCES = 50
"""Largest balances listed; the state says how many accounts there are in all."""
LEDGER_SCAN = 5000
"""Newest ledger entries read for receipts and transfers: the work per state is bounded, not the ledger."""
MAX_TEXT = 200
"""Characters kept of any text a peer chose (model names, tiers, memos)."""
MINUTES = 15
"""Minutes of the jobs-a-minute chart."""
LATENCY_WINDOW_S = 300.0
"""Latency percentiles are over the jobs answered in this many seconds."""
STATE_MAX_AGE_S = 1.0
"""A state is reused for this long: many browsers polling cost one build a second."""
POLL_MS = 1000
"""How often the page asks for the state (it says so in the state; the page reads it)."""

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
"""Everything the page loads comes from this node; no inline script, no other origin, not framed."""

_STATIC = {
    "/": ("dashboard.html", "text/html; charset=utf-8"),
    "/dashboard/dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
    "/dashboard/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    "/dashboard/favicon.svg": ("favicon.svg", "image/svg+xml"),
}


class DashboardSource(Protocol):
    """What the dashboard's routes need: the state as JSON-ready data."""

    def state(self) -> dict[str, Any]:
        """The node's state for the page (bounded as the module docstring says)."""
        ...


def _text(value: str) -> str:
    return value if len(value) <= MAX_TEXT else value[: MAX_TEXT - 1] + "…"


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


class Dashboard:
    """A node's dashboard state, built from its live parts (``DashboardSource``)."""

    def __init__(self, ctx: NodeContext, coordinator: CoordinatorDriver, registration: Registration) -> None:
        self._ctx = ctx
        self._coordinator = coordinator
        self._registration = registration

    def state(self) -> dict[str, Any]:
        """What the page shows now: the grid for a coordinator, the node itself otherwise."""
        ctx = self._ctx
        host, ledger = ctx.host, ctx.ledger
        node: dict[str, Any] = {
            "peer_id": host.peer_id if host is not None else "",
            "role": ctx.config.role,
            "network": _text(ctx.config.network),
            "version": opengrid.__version__,
            "points": ctx.points(),
            "ledger_entries": len(ledger) if ledger is not None else 0,
            "coordinates": ctx.coordinator is not None,
        }
        now_ms = time.time_ns() // 1_000_000
        state: dict[str, Any] = {"node": node, "poll_ms": POLL_MS, "generated_ms": now_ms}
        if ctx.coordinator is None:
            state["worker"] = self._worker_view()
            return state
        names = self._names()
        state["workers"], state["workers_total"], state["workers_online"] = self._workers()
        state["jobs"] = self._jobs()
        state["receipts"], state["transfers"] = self._ledger_news(names)
        state["balances"], state["accounts"], state["minted"] = self._balances(names)
        return state

    # ── a coordinator's grid ─────────────────────────────────────────────────────────────────────────
    def _workers(self) -> tuple[list[dict[str, Any]], int, int]:
        machine, ledger, membership = self._ctx.coordinator, self._ctx.ledger, self._ctx.membership
        assert machine is not None and ledger is not None
        records = sorted(machine.workers.values(), key=lambda r: (not r.online, r.peer))
        shown = []
        for record in records[:MAX_WORKERS]:
            heard = membership.gossip.directory.get(record.peer) if membership is not None else None
            reputation = machine.reputation.get(record.key)
            shown.append(
                {
                    "peer_id": record.peer,
                    "online": record.online,
                    "tier": _text(heard.announcement.tier) if heard is not None else "",
                    "models": [_text(offer.name) for offer in record.offers],
                    "rtt_ms": _ms(record.rtt_s) if record.rtt_s > 0 else None,
                    "tokens_per_s": round(record.tokens_per_s or record.probed_tokens_per_s, 1),
                    "slots": record.slots,
                    "valid": reputation.valid if reputation is not None else 0,
                    "invalid": reputation.invalid if reputation is not None else 0,
                    "timeouts": reputation.timeouts if reputation is not None else 0,
                    "streak": reputation.streak if reputation is not None else 0,
                    "jobs_done": ledger.jobs_done(record.key),
                    "points": ledger.balance(record.key),
                }
            )
        return shown, len(records), sum(1 for r in records if r.online)

    def _jobs(self) -> dict[str, Any]:
        machine = self._ctx.coordinator
        assert machine is not None
        log, now = self._coordinator.job_log, trio.current_time()
        latest = log.recent(now, LATENCY_WINDOW_S)
        latencies = [a.latency_s for a in latest if a.verified]
        last_minute = log.recent(now, 60.0)
        return {
            "last_minute": len(last_minute),
            "failed_last_minute": sum(1 for a in last_minute if not a.verified),
            "per_minute": log.per_minute(now, MINUTES),
            "latency_p50_ms": _ms(percentile(latencies, 0.5)),
            "latency_p95_ms": _ms(percentile(latencies, 0.95)),
            "answered": log.total,
            "failed": log.failed,
            "running": machine.active_jobs,
            "queued": machine.queued_jobs,
        }

    def _names(self) -> dict[bytes, str]:
        """Peer ids of the accounts this coordinator knows: itself and its workers (others show as keys)."""
        machine = self._ctx.coordinator
        assert machine is not None
        names = {record.key: record.peer for record in machine.workers.values()}
        if self._ctx.host is not None:
            names[self._ctx.public_key] = self._ctx.host.peer_id
        return names

    def _ledger_news(self, names: dict[bytes, str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        ledger, machine = self._ctx.ledger, self._ctx.coordinator
        assert ledger is not None and machine is not None
        models = {o.contract.digest(): o.name for r in machine.workers.values() for o in r.offers}
        receipts: list[dict[str, Any]] = []
        transfers: list[dict[str, Any]] = []
        for entry in reversed(ledger.entries_since(max(0, len(ledger) - LEDGER_SCAN))):
            if len(receipts) == MAX_RECEIPTS and len(transfers) == MAX_TRANSFERS:
                break
            body = decode_body(entry.body)  # verified when it was applied
            payload = body.payload
            if isinstance(payload, Receipt) and len(receipts) < MAX_RECEIPTS:
                receipts.append(
                    {
                        "job_id": payload.job_id.hex(),
                        "issued_at_ms": payload.issued_at_ms,
                        "model": _text(models.get(payload.contract_hash, "")),
                        "tokens": payload.n_tokens,
                        "points": sum(c.points for c in payload.credits),
                        "workers": [_account(c.account, names) for c in payload.credits],
                        "dissenters": len(payload.dissenters),
                        "coordinator": _account(body.author, names),
                    }
                )
            elif isinstance(payload, Transfer) and len(transfers) < MAX_TRANSFERS:
                transfers.append(
                    {
                        "from": _account(body.author, names),
                        "to": _account(payload.to, names),
                        "points": payload.amount,
                        # memos come with issue 19's transfers; a ledger without them shows none
                        "memo": _text(str(getattr(payload, "memo", "") or "")),
                    }
                )
        return receipts, transfers

    def _balances(self, names: dict[bytes, str]) -> tuple[list[dict[str, Any]], int, int]:
        ledger = self._ctx.ledger
        assert ledger is not None
        balances = ledger.balances()
        top = heapq.nlargest(MAX_BALANCES, balances.items(), key=lambda item: (item[1], item[0]))
        shown = [
            {"account": _account(key, names), "key": key.hex(), "points": points, "held": ledger.held(key)}
            for key, points in top
        ]
        return shown, len(balances), ledger.minted()

    # ── a worker's own view ──────────────────────────────────────────────────────────────────────────
    def _worker_view(self) -> dict[str, Any]:
        ctx = self._ctx
        ledger = ctx.ledger
        offers = ctx.worker.offers if ctx.worker is not None else ()
        address = self._registration.coordinator_address()
        return {
            "models": [_text(o.name) for o in offers],
            "tier": _text(ctx.tier),
            "tokens_per_s": round(ctx.tokens_per_s, 1),
            "coordinator": address.rsplit("/p2p/", 1)[-1] if address else "",
            "coordinators": len(self._registration.coordinators),
            "jobs_done": ledger.jobs_done(ctx.public_key) if ledger is not None else 0,
        }


def _account(key: bytes, names: dict[bytes, str]) -> str:
    """An account as the page shows it: the peer id of a known node, else its key in hex."""
    name = names.get(key)
    return name if name is not None else _peer_id(key)


@functools.lru_cache(maxsize=4096)  # the same accounts come back every second
def _peer_id(key: bytes) -> str:
    try:
        return peer_id_of(key)
    except ValueError:  # not 32 bytes (the ledger checks it does not happen): its hex still names it
        return key.hex()


class _CachedState:
    """The state's JSON bytes, rebuilt at most once per ``STATE_MAX_AGE_S``."""

    def __init__(self, source: DashboardSource) -> None:
        self._source = source
        self._body = b""
        self._built = -float("inf")

    def body(self) -> bytes:
        now = time.monotonic()
        if now - self._built >= STATE_MAX_AGE_S:
            self._body = json.dumps(self._source.state(), separators=(",", ":")).encode()
            self._built = now
        return self._body


_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}


Endpoint = Callable[[Request], Awaitable[Response]]


def _static(name: str, media_type: str) -> Endpoint:
    content = importlib.resources.files("opengrid.node").joinpath("static", name).read_bytes()

    async def serve(_: Request) -> Response:
        return Response(content, media_type=media_type, headers=_HEADERS)

    return serve


def dashboard_routes(
    source: DashboardSource,
    *,
    guard: Callable[[Endpoint], Endpoint],
) -> list[BaseRoute]:
    """The dashboard's routes: the page and its files at ``/`` and ``/dashboard/``, open to anyone who
    reaches the API (they hold no data), and ``/dashboard/state``, behind ``guard`` (the API key)."""
    cached = _CachedState(source)

    async def state(_: Request) -> Response:
        return Response(cached.body(), media_type="application/json", headers=_HEADERS)

    routes: list[BaseRoute] = [
        Route(path, _static(name, media_type), methods=["GET"])
        for path, (name, media_type) in _STATIC.items()
    ]
    routes.append(Route("/dashboard/state", guard(state), methods=["GET"]))
    return routes

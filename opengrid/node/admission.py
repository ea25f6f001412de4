"""Admin approval of new workers on a coordinator (``opengrid node start --approve-workers``).

A coordinator started with approval on serves only the workers its operator approved: a worker that
registers without approval is refused (``busy``, "awaiting approval") and listed as pending, and the
operator approves it with ``opengrid node approve --data-dir DIR PEER_ID`` (or rejects it by not doing
so). Both lists are small JSON files in the coordinator's data dir, written atomically, so approving
needs no network round trip and no running node (the running node reads the file at each registration):

* ``approved-workers.json``: peer ids the operator approved;
* ``pending-workers.json``: peer id -> the first time (unix s) it asked, and the models it offered.
"""

from __future__ import annotations

import json
import logging
import pathlib
import time
from typing import Any

from opengrid.errors import ConfigError, RemoteProtocolError
from opengrid.net.keys import public_key_of

APPROVED_FILE = "approved-workers.json"
PENDING_FILE = "pending-workers.json"
MAX_PENDING = 1024
"""Pending requests kept at most (the oldest are dropped): a flood of new keys cannot grow the file."""
log = logging.getLogger("opengrid.node")


def _read(path: pathlib.Path, default: Any) -> Any:
    try:
        return json.loads(path.read_text()) if path.exists() else default
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path} is unreadable ({exc}); fix or remove it") from exc


def _write(path: pathlib.Path, data: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def approved(data_dir: pathlib.Path) -> set[str]:
    """Peer ids the operator approved."""
    return {p for p in _read(data_dir / APPROVED_FILE, []) if isinstance(p, str)}


def pending(data_dir: pathlib.Path) -> dict[str, dict[str, Any]]:
    """Workers that asked to join and are not approved yet: peer id -> {"since": unix s, "models": [...]}."""
    data = _read(data_dir / PENDING_FILE, {})
    return {p: v for p, v in data.items() if isinstance(v, dict)} if isinstance(data, dict) else {}


def note_pending(data_dir: pathlib.Path, peer: str, models: list[str]) -> bool:
    """Record that ``peer`` asks to join; True the first time (so the node logs it once)."""
    waiting = pending(data_dir)
    if peer in waiting:
        return False
    waiting[peer] = {"since": round(time.time()), "models": models}
    if len(waiting) > MAX_PENDING:
        for oldest in sorted(waiting, key=lambda p: waiting[p].get("since", 0))[: len(waiting) - MAX_PENDING]:
            del waiting[oldest]
    _write(data_dir / PENDING_FILE, waiting)
    return True


def approve(data_dir: pathlib.Path, peer: str) -> bool:
    """Approve ``peer`` (and drop it from the pending list); True if it was not approved before."""
    try:
        public_key_of(peer)  # the same parse every registration's peer id goes through
    except RemoteProtocolError as exc:
        raise ConfigError(f"{exc}; `opengrid node pending` lists the workers asking to join") from exc
    known = approved(data_dir)
    waiting = pending(data_dir)
    if peer in waiting:
        del waiting[peer]
        _write(data_dir / PENDING_FILE, waiting)
    if peer in known:
        return False
    _write(data_dir / APPROVED_FILE, sorted(known | {peer}))
    return True

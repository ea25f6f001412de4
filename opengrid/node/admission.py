"""Admin approval of new workers, and of new coordinators, on a coordinator.

A coordinator started with approval on serves only the workers its operator approved: a worker that
registers without approval is refused (``busy``, "awaiting approval") and listed as pending, and the
operator approves it with ``opengrid node approve --data-dir DIR PEER_ID`` (or rejects it by not doing
so). Both lists are small JSON files in the coordinator's data dir, written atomically, so approving
needs no network round trip and no running node (the running node reads the file at each registration):

* ``approved-workers.json``: peer ids the operator approved;
* ``pending-workers.json``: peer id -> the first time (unix s) it asked, and the models it offered.

A minting coordinator of a network with a genesis file co-signs the admission of a new coordinator
(spec/ledger.md §7.1) once its operator approves it with ``opengrid node approve --coordinator``; the
same pair of files, for coordinators, plus the votes it gave (never two candidates for one epoch, even
across a restart):

* ``approved-coordinators.json``, ``pending-coordinators.json`` (peer id -> since, epoch asked);
* ``admission-votes.json``: admission epoch -> hex key of the candidate co-signed at that epoch.
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
APPROVED_COORDINATORS_FILE = "approved-coordinators.json"
PENDING_COORDINATORS_FILE = "pending-coordinators.json"
VOTES_FILE = "admission-votes.json"
MAX_PENDING = 1024
"""Pending requests kept at most (the oldest are dropped): a flood of new keys cannot grow the file."""
log = logging.getLogger("opengrid.node")


def _read(path: pathlib.Path, default: Any) -> Any:
    try:
        return json.loads(path.read_text()) if path.exists() else default
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path} is unreadable ({exc}); fix or remove it") from exc


def _write(path: pathlib.Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def approved(data_dir: pathlib.Path, *, coordinators: bool = False) -> set[str]:
    """Peer ids the operator approved (as workers; ``coordinators``: as new coordinators)."""
    name = APPROVED_COORDINATORS_FILE if coordinators else APPROVED_FILE
    return {p for p in _read(data_dir / name, []) if isinstance(p, str)}


def pending(data_dir: pathlib.Path, *, coordinators: bool = False) -> dict[str, dict[str, Any]]:
    """Workers (or ``coordinators``) that asked to join and are not approved yet: peer id -> what they
    asked ({"since": unix s, "models": [...]} for a worker, {"since", "epoch"} for a coordinator)."""
    data = _read(data_dir / (PENDING_COORDINATORS_FILE if coordinators else PENDING_FILE), {})
    return {p: v for p, v in data.items() if isinstance(v, dict)} if isinstance(data, dict) else {}


def note_pending(data_dir: pathlib.Path, peer: str, models: list[str]) -> bool:
    """Record that ``peer`` asks to join; True the first time (so the node logs it once)."""
    return _note(data_dir / PENDING_FILE, peer, {"models": models})


def note_pending_coordinator(data_dir: pathlib.Path, peer: str, epoch: int) -> bool:
    """Record that ``peer`` asks to be admitted as a coordinator; True the first time."""
    return _note(data_dir / PENDING_COORDINATORS_FILE, peer, {"epoch": epoch})


def _note(path: pathlib.Path, peer: str, what: dict[str, Any]) -> bool:
    data = _read(path, {})
    waiting = {p: v for p, v in data.items() if isinstance(v, dict)} if isinstance(data, dict) else {}
    if peer in waiting:
        return False
    waiting[peer] = {"since": round(time.time()), **what}
    if len(waiting) > MAX_PENDING:
        for oldest in sorted(waiting, key=lambda p: waiting[p].get("since", 0))[: len(waiting) - MAX_PENDING]:
            del waiting[oldest]
    _write(path, waiting)
    return True


def approve(data_dir: pathlib.Path, peer: str, *, coordinator: bool = False) -> bool:
    """Approve ``peer`` as a worker (or, with ``coordinator``, co-sign its admission as a coordinator) and
    drop it from the pending list; True if it was not approved before."""
    try:
        public_key_of(peer)  # the same parse every registration's peer id goes through
    except RemoteProtocolError as exc:
        listed = "coordinators asking to be admitted" if coordinator else "workers asking to join"
        raise ConfigError(f"{exc}; `opengrid node pending` lists the {listed}") from exc
    known = approved(data_dir, coordinators=coordinator)
    waiting = pending(data_dir, coordinators=coordinator)
    if peer in waiting:
        del waiting[peer]
        _write(data_dir / (PENDING_COORDINATORS_FILE if coordinator else PENDING_FILE), waiting)
    if peer in known:
        return False
    _write(data_dir / (APPROVED_COORDINATORS_FILE if coordinator else APPROVED_FILE), sorted(known | {peer}))
    return True


def votes_given(data_dir: pathlib.Path) -> dict[int, bytes]:
    """The candidate this coordinator co-signed at each admission epoch."""
    data = _read(data_dir / VOTES_FILE, {})
    if not isinstance(data, dict):
        return {}
    return {int(e): bytes.fromhex(k) for e, k in data.items() if e.isdigit() and isinstance(k, str)}


def record_vote(data_dir: pathlib.Path, epoch: int, candidate: bytes) -> None:
    """Remember, before the co-signature leaves this node, that it co-signed ``candidate`` at ``epoch``."""
    votes = {str(e): k.hex() for e, k in votes_given(data_dir).items()}
    votes[str(epoch)] = candidate.hex()
    _write(data_dir / VOTES_FILE, votes)

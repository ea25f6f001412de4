"""The coordinators a node accepts receipts from, remembered in its data dir across restarts.

Until networks have genesis files and admitted coordinator sets (spec/ledger.md, issue 5), a node trusts
itself (if it coordinates) and the coordinators it has registered with; without remembering them, a
restarted node would replay its stored receipts with no known minter and skip them.
"""

from __future__ import annotations

import json
import logging
import pathlib

from opengrid.errors import ConfigError

TRUST_FILE = "coordinators.json"
log = logging.getLogger("opengrid.node")


def load_trusted(data_dir: pathlib.Path) -> list[bytes]:
    """Keys of the coordinators this node trusted before (empty on first start)."""
    path = data_dir / TRUST_FILE
    try:
        keys = json.loads(path.read_text()) if path.exists() else []
        return [bytes.fromhex(k) for k in keys if isinstance(k, str) and len(k) == 64]
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path} is unreadable ({exc}); fix or remove it") from exc


def remember_trusted(data_dir: pathlib.Path, key: bytes) -> bool:
    """Add ``key`` to the trusted coordinators; True if it was new. Written atomically."""
    known = load_trusted(data_dir)
    if key in known:
        return False
    path = data_dir / TRUST_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(sorted(k.hex() for k in [*known, key]), indent=2) + "\n")
    tmp.replace(path)
    log.info("now trusting receipts from coordinator %s…", key.hex()[:12])
    return True

"""Owner control of a node (pause / resume), authenticated with the node's own identity key.

Only whoever holds the node's identity seed (its data dir) can steer it; the node also refuses stale or
replayed requests (spec/job-protocol.md §Control).
"""

from __future__ import annotations

from typing import Final

import msgspec

CONTROL_TAG: Final = "opengrid/control/1"
MAX_CLOCK_SKEW_MS: Final = 5 * 60 * 1000
"""A control request older or newer than this (by the node's clock) is refused as a possible replay."""


def control_signing_bytes(network: str, peer_id: str, action: str, issued_at_ms: int) -> bytes:
    """The exact bytes an owner signs: domain tag, network, target peer, action, time."""
    return msgspec.msgpack.encode([CONTROL_TAG, network, peer_id, action, issued_at_ms])


OWNER_TRANSFER_TAG: Final = "opengrid/owner-transfer/1"


def owner_transfer_signing_bytes(
    network: str, peer_id: str, to: bytes, amount: int, memo: str, new_recipient: bool, issued_at_ms: int
) -> bytes:
    """The exact bytes a node's owner signs to send points from the node's account: domain tag, network,
    the node, recipient, amount, memo, the new-recipient confirmation, time."""
    return msgspec.msgpack.encode(
        [OWNER_TRANSFER_TAG, network, peer_id, to, amount, memo, new_recipient, issued_at_ms]
    )

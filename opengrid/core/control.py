"""Owner control of a node (pause / resume, spec/job-protocol.md §Control), decided sans-IO: is this
``ControlRequest`` the owner's, fresh and not replayed? The driver passes the node's public key, its
peer id and its wall clock; ``OwnerControl`` keeps the one piece of state the decision needs (the newest
request taken, so a captured request cannot be played again) and says which action to take, or why not.
"""

from __future__ import annotations

from typing import Literal

from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from opengrid.core.refusal import Refusal
from opengrid.wire.control import MAX_CLOCK_SKEW_MS, control_signing_bytes
from opengrid.wire.messages import ControlRequest

NOT_THE_OWNER = Refusal("malformed", "control request not signed by this node's identity key")
STALE = Refusal("malformed", "control request is stale or replayed; sign a fresh one")


class OwnerControl:
    """Decides a node's owner control requests: signed by the node's own identity key, within
    ``MAX_CLOCK_SKEW_MS`` of the node's clock, and newer than the last one taken."""

    def __init__(self, *, network: str, peer_id: str, public_key: bytes) -> None:
        self._network = network
        self._peer_id = peer_id
        self._key = VerifyKey(public_key)
        self.last_ms = 0
        """``issued_at_ms`` of the newest request taken; an older or equal one is a replay."""

    def decide(self, message: ControlRequest, *, now_ms: int) -> Literal["pause", "resume"] | Refusal:
        """The action to take for ``message`` at the node's wall clock ``now_ms`` (Unix ms), recorded as
        taken; or why it is refused (``NOT_THE_OWNER``, ``STALE``), with nothing recorded."""
        signed = control_signing_bytes(self._network, self._peer_id, message.action, message.issued_at_ms)
        try:
            self._key.verify(signed, message.signature)
        except BadSignatureError:
            return NOT_THE_OWNER
        if abs(now_ms - message.issued_at_ms) > MAX_CLOCK_SKEW_MS or message.issued_at_ms <= self.last_ms:
            return STALE
        self.last_ms = message.issued_at_ms
        return message.action

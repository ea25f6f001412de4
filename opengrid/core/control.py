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
from opengrid.wire.control import MAX_CLOCK_SKEW_MS, control_signing_bytes, owner_transfer_signing_bytes
from opengrid.wire.messages import ControlRequest, OwnerTransfer

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


class OwnerTransfers:
    """Decides a node's owner's requests to send points from the node's account (``OwnerTransfer``): the
    same rules as ``OwnerControl`` — the node's own key, fresh, newer than the last one taken — with a
    clock of their own, so a pause never makes a transfer look replayed. A replayed transfer would spend
    twice, so this state matters more here than for pause/resume."""

    def __init__(self, *, network: str, peer_id: str, public_key: bytes) -> None:
        self._network = network
        self._peer_id = peer_id
        self._key = VerifyKey(public_key)
        self.last_ms = 0
        """``issued_at_ms`` of the newest request taken; an older or equal one is a replay."""

    def decide(self, message: OwnerTransfer, *, now_ms: int) -> Refusal | None:
        """None if ``message`` is the owner's, fresh and new at the node's wall clock ``now_ms`` (Unix
        ms) — recorded as taken, so the caller must now write the transfer or report why it could not;
        otherwise why not, with nothing recorded."""
        signed = owner_transfer_signing_bytes(
            self._network,
            self._peer_id,
            message.to,
            message.amount,
            message.memo,
            message.new_recipient,
            message.issued_at_ms,
        )
        try:
            self._key.verify(signed, message.signature)
        except BadSignatureError:
            return Refusal(
                "malformed",
                "transfer request not signed by this node's identity key: only the node's owner (who holds "
                "identity.key in its data dir) can send points from its account",
            )
        if abs(now_ms - message.issued_at_ms) > MAX_CLOCK_SKEW_MS or message.issued_at_ms <= self.last_ms:
            return Refusal("malformed", "transfer request is stale or replayed; sign a fresh one")
        self.last_ms = message.issued_at_ms
        return None

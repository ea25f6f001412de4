"""Owner control (pause / resume) decided in the core, without a network: only the node's own key, only
fresh requests, never the same one twice (spec/job-protocol.md §Control)."""

from __future__ import annotations

from typing import Literal

from nacl.signing import SigningKey

from opengrid.core.control import NOT_THE_OWNER, STALE, OwnerControl
from opengrid.wire.control import MAX_CLOCK_SKEW_MS, control_signing_bytes
from opengrid.wire.messages import ControlRequest

NETWORK, PEER = "testnet", "12D3KooWnode"
OWNER = SigningKey(b"\x01" * 32)
NOW_MS = 1_800_000_000_000


def _request(
    action: Literal["pause", "resume"], issued_at_ms: int, key: SigningKey = OWNER, peer: str = PEER
) -> ControlRequest:
    signed = control_signing_bytes(NETWORK, peer, action, issued_at_ms)
    return ControlRequest(action=action, issued_at_ms=issued_at_ms, signature=key.sign(signed).signature)


def _control() -> OwnerControl:
    return OwnerControl(network=NETWORK, peer_id=PEER, public_key=bytes(OWNER.verify_key))


def test_the_owner_pauses_and_resumes() -> None:
    control = _control()
    assert control.decide(_request("pause", NOW_MS), now_ms=NOW_MS) == "pause"
    assert control.decide(_request("resume", NOW_MS + 1), now_ms=NOW_MS + 5) == "resume"
    assert control.last_ms == NOW_MS + 1


def test_a_request_signed_by_another_key_or_for_another_node_is_refused() -> None:
    control = _control()
    assert (
        control.decide(_request("pause", NOW_MS, key=SigningKey(b"\x02" * 32)), now_ms=NOW_MS)
        == NOT_THE_OWNER
    )
    assert control.decide(_request("pause", NOW_MS, peer="12D3KooWother"), now_ms=NOW_MS) == NOT_THE_OWNER
    assert NOT_THE_OWNER.code == "malformed" and control.last_ms == 0  # nothing taken


def test_a_replayed_request_is_refused_even_within_the_clock_window() -> None:
    control = _control()
    pause = _request("pause", NOW_MS)
    assert control.decide(pause, now_ms=NOW_MS) == "pause"
    assert control.decide(pause, now_ms=NOW_MS + 10) == STALE
    assert control.decide(_request("resume", NOW_MS - 1), now_ms=NOW_MS + 10) == STALE  # older than taken


def test_a_request_from_outside_the_clock_window_is_refused() -> None:
    control = _control()
    skew = MAX_CLOCK_SKEW_MS + 1
    assert control.decide(_request("pause", NOW_MS - skew), now_ms=NOW_MS) == STALE
    assert control.decide(_request("pause", NOW_MS + skew), now_ms=NOW_MS) == STALE
    assert control.decide(_request("pause", NOW_MS - MAX_CLOCK_SKEW_MS), now_ms=NOW_MS) == "pause"

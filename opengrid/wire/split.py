"""Messages of the split protocol ``/opengrid/split/1`` (spec/split.md §2): msgpack, one per frame.

A stream starts with one of :data:`SplitRequest` from the head; the member answers with one of
:data:`SplitReply`. After a ``SplitTunnel`` answered by ``SplitTunnelOk`` the stream carries raw ggml-rpc
bytes both ways until either side closes it. Every field is bounded here; the member bounds the rest
(sessions, streams, bytes, idle time) itself.
"""

from __future__ import annotations

from typing import Annotated, Final

import msgspec

from opengrid.errors import MalformedMessageError
from opengrid.wire.contract import Sha256Text

__all__ = [
    "MAX_REASON_CHARS",
    "SESSION_ID_BYTES",
    "TOKEN_BYTES",
    "SplitAccept",
    "SplitAttest",
    "SplitAttested",
    "SplitClose",
    "SplitInvite",
    "SplitRefuse",
    "SplitReply",
    "SplitRequest",
    "SplitTunnel",
    "SplitTunnelOk",
    "decode_reply",
    "decode_request",
    "encode",
]

SESSION_ID_BYTES: Final = 16
TOKEN_BYTES: Final = 32
MAX_REASON_CHARS: Final = 512
MAX_SPLIT_FRAME: Final = 4096
"""No split message is larger; a bigger first frame is refused before decoding."""

SessionId = Annotated[bytes, msgspec.Meta(min_length=SESSION_ID_BYTES, max_length=SESSION_ID_BYTES)]
Token = Annotated[bytes, msgspec.Meta(min_length=TOKEN_BYTES, max_length=TOKEN_BYTES)]
Bytes = Annotated[int, msgspec.Meta(ge=0, le=2**50)]
Seconds = Annotated[int, msgspec.Meta(ge=1, le=7 * 24 * 3600)]
Units = Annotated[int, msgspec.Meta(ge=1, le=4096)]
Reason = Annotated[str, msgspec.Meta(max_length=MAX_REASON_CHARS)]


class SplitInvite(msgspec.Struct, tag="invite", forbid_unknown_fields=True):
    """Head -> member: hold ``units`` layers of the model ``model_sha256`` in at most ``bytes`` bytes, for
    at most ``ttl_s`` seconds, in session ``session`` (chosen at random by the head)."""

    session: SessionId
    model_sha256: Sha256Text
    units: Units
    bytes: Bytes
    ttl_s: Seconds


class SplitAccept(msgspec.Struct, tag="accept", forbid_unknown_fields=True):
    """Member -> head: agreed. ``token`` (random, the member's) must open every tunnel of the session,
    from this head's peer id only."""

    session: SessionId
    token: Token
    bytes: Bytes
    ttl_s: Seconds


class SplitRefuse(msgspec.Struct, tag="refuse", forbid_unknown_fields=True):
    """Member -> head: no (no memory left, not the agreed head, unknown session, over a bound)."""

    session: SessionId
    reason: Reason


class SplitTunnel(msgspec.Struct, tag="tunnel", forbid_unknown_fields=True):
    """Head -> member: connect this stream to the session's RPC server."""

    session: SessionId
    token: Token


class SplitTunnelOk(msgspec.Struct, tag="tunnel-ok", forbid_unknown_fields=True):
    """Member -> head: from the next byte on, the stream is the RPC connection."""

    session: SessionId


class SplitClose(msgspec.Struct, tag="close", forbid_unknown_fields=True):
    """Head -> member: the session is over; the member frees its memory (answered by SplitTunnelOk)."""

    session: SessionId
    token: Token


class SplitAttest(msgspec.Struct, tag="attest", forbid_unknown_fields=True):
    """Head -> member: co-sign the output of a job the group ran (an ``opengrid_ledger.Attestation`` over
    these fields, by the member's key), so the receipt can credit the member (spec/split.md §8)."""

    session: SessionId
    token: Token
    job_id: Annotated[bytes, msgspec.Meta(min_length=16, max_length=16)]
    contract_hash: Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]
    output_commitment: Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]
    n_tokens: Annotated[int, msgspec.Meta(ge=0, le=2**32 - 1)]


class SplitAttested(msgspec.Struct, tag="attested", forbid_unknown_fields=True):
    """Member -> head: the attestation (its msgpack, as ``ReplicaResult.attestation`` carries one)."""

    session: SessionId
    attestation: Annotated[bytes, msgspec.Meta(max_length=1024)]


SplitRequest = SplitInvite | SplitTunnel | SplitClose | SplitAttest
SplitReply = SplitAccept | SplitRefuse | SplitTunnelOk | SplitAttested

_request_decoder = msgspec.msgpack.Decoder(SplitRequest)
_reply_decoder = msgspec.msgpack.Decoder(SplitReply)
_encoder = msgspec.msgpack.Encoder()


def encode(message: SplitRequest | SplitReply) -> bytes:
    """The message's msgpack bytes (one frame's body)."""
    return _encoder.encode(message)


def decode_request(body: bytes, *, peer: str | None = None) -> SplitRequest:
    """A head's request, or :class:`MalformedMessageError` naming the peer."""
    if len(body) > MAX_SPLIT_FRAME:
        raise MalformedMessageError(
            f"a split request of {len(body)} bytes, over {MAX_SPLIT_FRAME}", peer=peer
        )
    try:
        return _request_decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise MalformedMessageError(f"malformed split request: {exc}", peer=peer) from exc


def decode_reply(body: bytes, *, peer: str | None = None) -> SplitReply:
    """A member's reply, or :class:`MalformedMessageError` naming the peer."""
    if len(body) > MAX_SPLIT_FRAME:
        raise MalformedMessageError(f"a split reply of {len(body)} bytes, over {MAX_SPLIT_FRAME}", peer=peer)
    try:
        return _reply_decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise MalformedMessageError(f"malformed split reply: {exc}", peer=peer) from exc

"""Frames and the one decoder of ``/opengrid/job/1`` (spec/job-protocol.md §Framing).

A frame is a 4-byte big-endian unsigned length followed by that many bytes of msgpack (one message).
The length is checked against the limit *before* any body byte is read, so a hostile prefix can never make
us allocate. Decoding errors of every kind become ``MalformedMessageError``: callers see a message or a
typed protocol error, nothing else.
"""

from __future__ import annotations

import struct
from typing import Final

import msgspec

from opengrid.errors import FrameTooLargeError, LocalProtocolError, MalformedMessageError
from opengrid.wire.messages import Message

HEADER_BYTES: Final = 4
MAX_FRAME_BYTES: Final = 4 * 1024 * 1024
"""4 MiB: above any legal message (prompt ≤ 256 KiB chars, ≤ 8192 tokens), and below the ~6.5 MB at which
py-libp2p's own exact-read helper gives up (shared/notes/py-libp2p.md, pitfall 2)."""

_HEADER = struct.Struct(">I")
_encoder = msgspec.msgpack.Encoder()
_decoder: msgspec.msgpack.Decoder[Message] = msgspec.msgpack.Decoder(Message)


def encode_message(message: Message) -> bytes:
    """Return the msgpack body of ``message`` (no length prefix)."""
    return _encoder.encode(message)


def decode_message(body: bytes, *, peer: str | None = None) -> Message:
    """Decode one message body; any failure is a ``MalformedMessageError`` naming the peer."""
    try:
        return _decoder.decode(body)
    # ValidationError subclasses DecodeError; msgspec raises UnicodeDecodeError for bad UTF-8 in map keys
    # and RecursionError when skipping a deeply nested unknown field (a ~1 KB frame suffices).
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise MalformedMessageError(f"undecodable job-protocol message: {exc}", peer=peer) from exc


def encode_frame(message: Message, *, limit: int = MAX_FRAME_BYTES) -> bytes:
    """Length-prefix the encoded message; refuse to build a frame the peer would reject."""
    body = encode_message(message)
    if len(body) > limit:
        raise LocalProtocolError(
            f"{type(message).__name__} encodes to {len(body)} bytes, over the {limit}-byte frame limit; "
            "shorten the prompt or lower max_tokens"
        )
    return _HEADER.pack(len(body)) + body


def parse_header(header: bytes, *, limit: int = MAX_FRAME_BYTES, peer: str | None = None) -> int:
    """Return the body length announced by a 4-byte header, or raise before anything is allocated."""
    if len(header) != HEADER_BYTES:
        raise MalformedMessageError(
            f"frame header must be {HEADER_BYTES} bytes, got {len(header)}", peer=peer
        )
    (length,) = _HEADER.unpack(header)
    if length == 0:
        raise MalformedMessageError("empty frame", peer=peer)
    if length > limit:
        raise FrameTooLargeError(f"frame announces {length} bytes, over the {limit}-byte limit", peer=peer)
    return int(length)


class FrameBuffer:
    """Incremental frame parser: feed bytes as they arrive, take complete message bodies out.

    Sans-IO, so the libp2p driver, the simulator and the fuzz tests share one framing implementation.
    """

    def __init__(self, *, limit: int = MAX_FRAME_BYTES, peer: str | None = None) -> None:
        self._buffer = bytearray()
        self._limit = limit
        self._peer = peer

    def feed(self, data: bytes) -> None:
        """Append received bytes; raises ``FrameTooLargeError`` as soon as a header announces too much."""
        self._buffer += data
        if len(self._buffer) >= HEADER_BYTES:
            parse_header(bytes(self._buffer[:HEADER_BYTES]), limit=self._limit, peer=self._peer)

    def wanted(self) -> int:
        """How many more bytes complete the current frame (at least 1 when nothing is buffered)."""
        if len(self._buffer) < HEADER_BYTES:
            return HEADER_BYTES - len(self._buffer)
        length = parse_header(bytes(self._buffer[:HEADER_BYTES]), limit=self._limit, peer=self._peer)
        return max(0, HEADER_BYTES + length - len(self._buffer))

    def next_body(self) -> bytes | None:
        """Pop one complete message body, or None when the current frame is incomplete."""
        if len(self._buffer) < HEADER_BYTES:
            return None
        length = parse_header(bytes(self._buffer[:HEADER_BYTES]), limit=self._limit, peer=self._peer)
        end = HEADER_BYTES + length
        if len(self._buffer) < end:
            return None
        body = bytes(self._buffer[HEADER_BYTES:end])
        del self._buffer[:end]
        return body

    @property
    def announced(self) -> int | None:
        """The body length the current frame's header announced, or None while the header is incomplete."""
        if len(self._buffer) < HEADER_BYTES:
            return None
        return parse_header(bytes(self._buffer[:HEADER_BYTES]), limit=self._limit, peer=self._peer)

    @property
    def pending(self) -> int:
        """Bytes buffered but not yet returned."""
        return len(self._buffer)

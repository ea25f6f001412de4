"""Framing and the one decoder of /opengrid/job/1: round trips, limits, and typed errors for bad input."""

from __future__ import annotations

import random
import struct
from collections.abc import Callable
from typing import Any

import msgspec
import pytest
from wire_samples import JOB, MESSAGE_TYPES, sample, sample_messages

from opengrid.errors import (
    FrameTooLargeError,
    LocalProtocolError,
    MalformedMessageError,
    RemoteProtocolError,
)
from opengrid.wire.codec import (
    HEADER_BYTES,
    MAX_FRAME_BYTES,
    FrameBuffer,
    decode_message,
    encode_frame,
    encode_message,
    parse_header,
)
from opengrid.wire.messages import (
    MAX_REPLICAS,
    MAX_TOKENS_LIMIT,
    Message,
    ReplicaResult,
    StatusRequest,
    SubmitJob,
)


def drain(buffer: FrameBuffer) -> list[bytes]:
    bodies = []
    while (body := buffer.next_body()) is not None:
        bodies.append(body)
    return bodies


def raw(message: Message) -> dict[str, Any]:
    """The message as the plain msgpack map a peer would send (bytes stay bytes)."""
    decoded = msgspec.msgpack.decode(encode_message(message))
    assert isinstance(decoded, dict)
    return decoded


# ── round trips ─────────────────────────────────────────────────────────────────────────────────────


def test_samples_cover_every_message_type() -> None:
    assert [type(m) for m in sample_messages()] == list(MESSAGE_TYPES)


@pytest.mark.parametrize("message", sample_messages(), ids=lambda m: type(m).__name__)
def test_every_message_round_trips_through_a_frame(message: Message) -> None:
    frame = encode_frame(message)
    assert struct.unpack(">I", frame[:HEADER_BYTES])[0] == len(frame) - HEADER_BYTES

    buffer = FrameBuffer(peer="peerX")
    buffer.feed(frame)
    body = buffer.next_body()

    assert body is not None
    decoded = decode_message(body, peer="peerX")
    assert decoded == message
    assert type(decoded) is type(message)
    assert buffer.next_body() is None
    assert buffer.pending == 0


def test_byte_by_byte_feeding_yields_every_message_once_and_in_order() -> None:
    messages = sample_messages()
    stream = b"".join(encode_frame(m) for m in messages)
    buffer = FrameBuffer()
    bodies: list[bytes] = []
    for i in range(len(stream)):
        buffer.feed(stream[i : i + 1])
        bodies += drain(buffer)

    assert [decode_message(b) for b in bodies] == messages
    assert buffer.pending == 0


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_random_chunk_sizes_yield_the_same_messages(seed: int) -> None:
    rng = random.Random(seed)
    messages = sample_messages() * 3
    rng.shuffle(messages)
    stream = b"".join(encode_frame(m) for m in messages)
    buffer = FrameBuffer()
    bodies: list[bytes] = []
    position = 0
    while position < len(stream):
        size = rng.randint(1, 97)
        buffer.feed(stream[position : position + size])
        position += size
        bodies += drain(buffer)

    assert [decode_message(b) for b in bodies] == messages
    assert buffer.pending == 0


def test_two_frames_in_one_chunk_come_out_separately() -> None:
    first, second = sample(SubmitJob), sample(StatusRequest)
    buffer = FrameBuffer()
    buffer.feed(encode_frame(first) + encode_frame(second))

    assert decode_message(buffer.next_body() or b"") == first
    assert decode_message(buffer.next_body() or b"") == second
    assert buffer.next_body() is None


def test_partial_frame_is_held_until_complete_and_wanted_counts_down() -> None:
    frame = encode_frame(sample(SubmitJob))
    body_length = len(frame) - HEADER_BYTES
    buffer = FrameBuffer()
    assert buffer.wanted() == HEADER_BYTES

    buffer.feed(frame[:2])
    assert buffer.wanted() == 2
    assert buffer.next_body() is None

    buffer.feed(frame[2:10])
    assert buffer.wanted() == body_length - 6
    assert buffer.next_body() is None
    assert buffer.pending == 10

    buffer.feed(frame[10:])
    assert buffer.wanted() == 0
    assert buffer.next_body() == frame[HEADER_BYTES:]


# ── header and frame limits ─────────────────────────────────────────────────────────────────────────


def test_oversized_header_raises_from_feed_as_soon_as_the_fourth_header_byte_arrives() -> None:
    header = struct.pack(">I", 101)
    buffer = FrameBuffer(limit=100, peer="peerX")
    buffer.feed(header[:3])  # not a whole header yet: nothing to judge

    with pytest.raises(FrameTooLargeError) as info:
        buffer.feed(header[3:])  # no body byte sent at all

    assert info.value.peer == "peerX"
    assert "101" in str(info.value) and "100" in str(info.value)
    assert isinstance(info.value, RemoteProtocolError)


def test_default_limit_rejects_a_hostile_length_prefix_before_any_body() -> None:
    buffer = FrameBuffer()
    with pytest.raises(FrameTooLargeError):
        buffer.feed(struct.pack(">I", MAX_FRAME_BYTES + 1))
    assert parse_header(struct.pack(">I", MAX_FRAME_BYTES)) == MAX_FRAME_BYTES


def test_frame_exactly_at_the_limit_is_accepted() -> None:
    message = sample(SubmitJob)
    body = encode_message(message)
    frame = encode_frame(message, limit=len(body))
    buffer = FrameBuffer(limit=len(body))
    buffer.feed(frame)
    assert decode_message(buffer.next_body() or b"") == message


@pytest.mark.parametrize("feed", [True, False], ids=["feed", "parse_header"])
def test_zero_length_frame_is_malformed(feed: bool) -> None:
    header = struct.pack(">I", 0)
    with pytest.raises(MalformedMessageError) as info:
        if feed:
            FrameBuffer(peer="peerX").feed(header)
        else:
            parse_header(header, peer="peerX")
    assert info.value.peer == "peerX"


@pytest.mark.parametrize("header", [b"", b"\x00\x00\x01", b"\x00\x00\x00\x01\x00"])
def test_parse_header_refuses_a_header_of_the_wrong_size(header: bytes) -> None:
    with pytest.raises(MalformedMessageError):
        parse_header(header)


def test_encode_frame_over_the_limit_is_our_bug_not_the_peers() -> None:
    message = SubmitJob(job_id=JOB, model="tiny", prompt="x" * 200, max_tokens=4)
    with pytest.raises(LocalProtocolError) as info:
        encode_frame(message, limit=100)
    assert not isinstance(info.value, RemoteProtocolError)
    assert "SubmitJob" in str(info.value)


# ── decode_message refuses bad input with a typed, attributed error ─────────────────────────────────


def _submit() -> dict[str, Any]:
    return raw(sample(SubmitJob))


def _result() -> dict[str, Any]:
    return raw(sample(ReplicaResult))


def _with(base: Callable[[], dict[str, Any]], **changes: Any) -> bytes:
    fields = base()
    fields.update(changes)
    return msgspec.msgpack.encode(fields)


def _without(base: Callable[[], dict[str, Any]], key: str) -> bytes:
    fields = base()
    del fields[key]
    return msgspec.msgpack.encode(fields)


BAD_BODIES: dict[str, bytes] = {
    "empty": b"",
    "reserved msgpack byte": b"\xc1",
    "ascii garbage": b"this is not msgpack at all",
    "truncated message": encode_message(sample(SubmitJob))[:-3],
    "trailing bytes": encode_message(sample(SubmitJob)) + b"\x00",
    "array instead of map": msgspec.msgpack.encode([1, 2, 3]),
    "bare integer": msgspec.msgpack.encode(42),
    "bare tag string": msgspec.msgpack.encode("submit"),
    "missing type tag": _without(_submit, "type"),
    "unknown type tag": _with(_submit, type="submit_v2"),
    "non-string type tag": _with(_submit, type=3),
    "unknown extra field": _with(_submit, priority=1),
    "missing required field": _without(_submit, "prompt"),
    "field of wrong type": _with(_submit, max_tokens="16"),
    "job_id 15 bytes": _with(_submit, job_id=b"\x00" * 15),
    "job_id 17 bytes": _with(_submit, job_id=b"\x00" * 17),
    "job_id as str": _with(_submit, job_id="0" * 16),
    "max_tokens 0": _with(_submit, max_tokens=0),
    "max_tokens over limit": _with(_submit, max_tokens=MAX_TOKENS_LIMIT + 1),
    "replicas 0": _with(_submit, replicas=0),
    "replicas over limit": _with(_submit, replicas=MAX_REPLICAS + 1),
    "token id negative": _with(_result, tokens=[1, -1, 2]),
    "token id over u32": _with(_result, tokens=[2**32]),
    "bad utf-8 in a map key": b"\x82\xa4type\xa6submit\xa2\xff\xfe\x01",
    "bad utf-8 in the tag": b"\x81\xa4type\xa2\xff\xfe",
}


@pytest.mark.parametrize("body", BAD_BODIES.values(), ids=BAD_BODIES.keys())
def test_bad_bodies_raise_malformed_message_error_naming_the_peer(body: bytes) -> None:
    with pytest.raises(MalformedMessageError) as info:
        decode_message(body, peer="12D3KooWbad")
    assert isinstance(info.value, RemoteProtocolError)
    assert info.value.peer == "12D3KooWbad"
    assert "12D3KooWbad" in str(info.value)


def test_malformed_message_without_a_peer_carries_none() -> None:
    with pytest.raises(MalformedMessageError) as info:
        decode_message(b"\xc1")
    assert info.value.peer is None


LIMIT_EDGES: dict[str, bytes] = {
    "job_id 16 bytes": _with(_submit, job_id=b"\xff" * 16),
    "max_tokens 1": _with(_submit, max_tokens=1),
    "max_tokens at limit": _with(_submit, max_tokens=MAX_TOKENS_LIMIT),
    "replicas 1": _with(_submit, replicas=1),
    "replicas at limit": _with(_submit, replicas=MAX_REPLICAS),
    "token ids 0 and u32 max": _with(_result, tokens=[0, 2**32 - 1]),
}


@pytest.mark.parametrize("body", LIMIT_EDGES.values(), ids=LIMIT_EDGES.keys())
def test_values_at_the_limits_still_decode(body: bytes) -> None:
    assert isinstance(decode_message(body), SubmitJob | ReplicaResult)


def test_omitted_optional_fields_take_their_defaults() -> None:
    fields = _submit()
    del fields["replicas"], fields["client_key"]
    decoded = decode_message(msgspec.msgpack.encode(fields))
    assert isinstance(decoded, SubmitJob)
    assert (decoded.replicas, decoded.client_key) == (2, b"")


def test_deeply_nested_input_is_malformed_not_a_recursion_error() -> None:
    body = b"\x82\xa1a" + b"\x91" * 5000 + b"\xc0" + b"\xa4type\xa6submit"
    with pytest.raises(MalformedMessageError):
        decode_message(body, peer="peerX")

"""Fuzz the decoder and the framer: any input gives messages or a RemoteProtocolError, nothing else.

Derandomized so CI is reproducible; set OPENGRID_FUZZ_EXAMPLES to run more examples locally.
"""

from __future__ import annotations

import os

import hypothesis.strategies as st
from hypothesis import HealthCheck, given, settings
from wire_samples import MESSAGE_TYPES, sample, sample_messages

from opengrid.errors import FrameTooLargeError, MalformedMessageError
from opengrid.wire.codec import HEADER_BYTES, FrameBuffer, decode_message, encode_message
from opengrid.wire.messages import SubmitJob

FUZZ = settings(
    max_examples=int(os.environ.get("OPENGRID_FUZZ_EXAMPLES", "300")),
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

ENCODED = [encode_message(m) for m in sample_messages()]


def decode_or_malformed(body: bytes) -> None:
    try:
        message = decode_message(body, peer="fuzzer")
    except MalformedMessageError as exc:
        assert exc.peer == "fuzzer"
    else:
        assert isinstance(message, MESSAGE_TYPES)


@FUZZ
@given(st.binary(max_size=512))
def test_arbitrary_bytes_decode_to_a_message_or_malformed(body: bytes) -> None:
    decode_or_malformed(body)


# Byte soup biased towards msgpack map/str/bin/array headers and the protocol's own key names.
MSGPACK_TOKENS = st.sampled_from(
    [b"\x81", b"\x82", b"\x86", b"\x91", b"\x93", b"\xa4type", b"\xa6submit", b"\xa6result", b"\xa5model",
     b"\xa6job_id", b"\xc4\x10" + b"\x00" * 16, b"\xcd\x01\x00", b"\xff", b"\xc0", b"\xc3", b"\xcb", b"\xdc"]
)  # fmt: skip


@FUZZ
@given(st.lists(MSGPACK_TOKENS | st.binary(max_size=8), max_size=40))
def test_msgpack_shaped_soup_decodes_or_is_malformed(parts: list[bytes]) -> None:
    decode_or_malformed(b"".join(parts))


@FUZZ
@given(
    st.lists(st.binary(max_size=64), max_size=20),
    st.sampled_from([1, 16, 64, 4 * 1024 * 1024]),
)
def test_frame_buffer_yields_bodies_or_a_remote_protocol_error(chunks: list[bytes], limit: int) -> None:
    buffer = FrameBuffer(limit=limit, peer="fuzzer")
    consumed = 0
    try:
        for chunk in chunks:
            buffer.feed(chunk)
            while (body := buffer.next_body()) is not None:
                assert 1 <= len(body) <= limit
                consumed += HEADER_BYTES + len(body)
    except (FrameTooLargeError, MalformedMessageError) as exc:
        assert exc.peer == "fuzzer"
    else:
        # Nothing lost, nothing invented: every byte fed was returned in a frame or is still buffered.
        assert consumed + buffer.pending == sum(map(len, chunks))


MUTATION = st.tuples(
    st.sampled_from(["flip", "insert", "delete", "overwrite"]),
    st.integers(min_value=0, max_value=10_000),
    st.integers(min_value=0, max_value=255),
)


@FUZZ
@given(st.sampled_from(range(len(ENCODED))), st.lists(MUTATION, min_size=1, max_size=6))
def test_mutated_valid_messages_decode_or_are_malformed(
    which: int, mutations: list[tuple[str, int, int]]
) -> None:
    data = bytearray(ENCODED[which])
    for kind, position, value in mutations:
        index = position % (len(data) + 1)
        if kind == "insert":
            data.insert(index, value)
        elif data and index < len(data):
            if kind == "flip":
                data[index] ^= 1 << (value % 8)
            elif kind == "overwrite":
                data[index] = value
            else:
                del data[index]
    decode_or_malformed(bytes(data))


def test_every_single_bit_flip_of_a_submit_job_decodes_or_is_malformed() -> None:
    submit = encode_message(sample(SubmitJob))
    for index in range(len(submit)):
        for bit in range(8):
            data = bytearray(submit)
            data[index] ^= 1 << bit
            decode_or_malformed(bytes(data))

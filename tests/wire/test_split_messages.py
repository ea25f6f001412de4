"""Messages of /opengrid/split/1 (opengrid/wire/split.py, spec/split.md §2): round trips and bounds."""

from __future__ import annotations

import msgspec
import pytest

from opengrid.errors import MalformedMessageError
from opengrid.wire.split import (
    MAX_SPLIT_FRAME,
    SplitAccept,
    SplitAttest,
    SplitAttested,
    SplitInvite,
    SplitRefuse,
    SplitTunnel,
    decode_reply,
    decode_request,
    encode,
)

SESSION = bytes(range(16))
TOKEN = bytes(range(32))


def test_round_trips() -> None:
    invite = SplitInvite(SESSION, "ab" * 32, units=3, bytes=10_000, ttl_s=60)
    assert decode_request(encode(invite)) == invite
    assert decode_request(encode(SplitTunnel(SESSION, TOKEN))) == SplitTunnel(SESSION, TOKEN)
    accept = SplitAccept(SESSION, TOKEN, 10_000, 60)
    assert decode_reply(encode(accept)) == accept
    attest = SplitAttest(SESSION, TOKEN, bytes(16), bytes(32), bytes(32), 7)
    assert decode_request(encode(attest)) == attest
    attested = SplitAttested(SESSION, b"\x01" * 200)
    assert decode_reply(encode(attested)) == attested


@pytest.mark.parametrize(
    "message",
    [
        {"type": "tunnel", "session": bytes(15), "token": TOKEN},  # short session id
        {"type": "tunnel", "session": SESSION, "token": bytes(33)},  # long token
        {"type": "invite", "session": SESSION, "model_sha256": "a" * 65, "units": 1, "bytes": 1, "ttl_s": 1},
        {"type": "invite", "session": SESSION, "model_sha256": "a", "units": 0, "bytes": 1, "ttl_s": 1},
        {"type": "invite", "session": SESSION, "model_sha256": "a", "units": 1, "bytes": -1, "ttl_s": 1},
        {"type": "invite", "session": SESSION, "model_sha256": "a", "units": 1, "bytes": 1, "ttl_s": 10**9},
        {"type": "tunnel", "session": SESSION, "token": TOKEN, "extra": 1},  # unknown field
        {  # a job id of the wrong size
            "type": "attest",
            "session": SESSION,
            "token": TOKEN,
            "job_id": bytes(15),
            "contract_hash": bytes(32),
            "output_commitment": bytes(32),
            "n_tokens": 1,
        },
        {
            "type": "accept",
            "session": SESSION,
            "token": TOKEN,
            "bytes": 1,
            "ttl_s": 1,
        },  # a reply, not a request
    ],
)
def test_out_of_bounds_requests_are_refused_by_name(message: dict[str, object]) -> None:
    with pytest.raises(MalformedMessageError, match="malformed split request"):
        decode_request(msgspec.msgpack.encode(message), peer="p")


def test_frames_over_the_bound_are_refused_before_decoding() -> None:
    with pytest.raises(MalformedMessageError, match="over 4096"):
        decode_request(b"\x00" * (MAX_SPLIT_FRAME + 1))
    with pytest.raises(MalformedMessageError, match="malformed split reply"):
        decode_reply(msgspec.msgpack.encode({"type": "refuse", "session": SESSION, "reason": "x" * 513}))
    assert decode_reply(encode(SplitRefuse(SESSION, "no"))) == SplitRefuse(SESSION, "no")

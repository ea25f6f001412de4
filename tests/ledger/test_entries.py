"""Entry envelope: signing, canonical bytes, decoding and opening (spec/ledger.md §2-3)."""

from __future__ import annotations

import os

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ledger_factory import (
    COMMITMENT,
    CONTRACT,
    COORDINATOR,
    N_TOKENS,
    NETWORK,
    USERS,
    WORKERS,
    Author,
    grant,
    job_id,
    key,
    make_receipt,
    pub,
    raw_sign,
)
from opengrid_ledger import (
    MAX_ENTRY_SIZE,
    Entry,
    EntryBody,
    attestation_signing_bytes,
    decode_entry,
    encode_entry,
    latest_of,
    open_entry,
    sign_attestation,
    sign_entry,
    verify_attestation,
)

from opengrid.errors import InvalidEntryError

FUZZ = settings(
    max_examples=int(os.environ.get("OPENGRID_FUZZ_EXAMPLES", "200")),
    derandomize=True,
    database=None,
    deadline=None,
)


def first_entry() -> Entry:
    return Author(COORDINATOR).append(make_receipt(job_id(1), [(WORKERS[0], 5)]))


def test_round_trip() -> None:
    entry = first_entry()
    decoded = decode_entry(encode_entry(entry))
    assert decoded == entry
    assert decoded.id == entry.id and len(entry.id) == 32
    body = open_entry(decoded, NETWORK)
    assert body.author == pub(COORDINATOR) and body.seq == 1 and body.prev == b""
    assert body.payload.credits[0].account == pub(WORKERS[0])


def test_body_bytes_are_canonical_and_deterministic() -> None:
    assert first_entry() == first_entry()
    entry = first_entry()
    assert msgspec.msgpack.encode(open_entry(entry, NETWORK)) == entry.body


def test_tampered_body_byte_is_refused() -> None:
    entry = first_entry()
    for index in (0, len(entry.body) // 2, len(entry.body) - 1):
        body = bytearray(entry.body)
        body[index] ^= 0x01
        with pytest.raises(InvalidEntryError):
            open_entry(Entry(bytes(body), entry.signature), NETWORK)


def test_tampered_signature_is_refused() -> None:
    entry = first_entry()
    signature = bytearray(entry.signature)
    signature[10] ^= 0x80
    with pytest.raises(InvalidEntryError, match="bad signature"):
        open_entry(Entry(entry.body, bytes(signature)), NETWORK)


def test_wrong_network_is_refused() -> None:
    with pytest.raises(InvalidEntryError, match="network"):
        open_entry(first_entry(), "othernet")


def test_signed_by_another_key_is_refused() -> None:
    body = Author(COORDINATOR).body(make_receipt(job_id(1), [(WORKERS[0], 5)]))
    with pytest.raises(InvalidEntryError, match="signing key"):
        sign_entry(key(99), body)
    with pytest.raises(InvalidEntryError, match="bad signature"):
        open_entry(raw_sign(key(99), body), NETWORK)


def test_signature_is_domain_separated() -> None:
    body = Author(COORDINATOR).body(make_receipt(job_id(1), [(WORKERS[0], 5)]))
    encoded = msgspec.msgpack.encode(body)
    bare = Entry(encoded, COORDINATOR.sign(encoded).signature)  # no "opengrid/entry/1" prefix
    with pytest.raises(InvalidEntryError, match="bad signature"):
        open_entry(bare, NETWORK)


@pytest.mark.parametrize(
    ("seq", "prev", "match"),
    [
        (0, b"", "seq"),
        (-1, b"", "seq"),
        (1, b"\x00" * 32, "empty prev"),
        (2, b"", "prev"),
        (2, b"x" * 31, "prev"),
    ],
)
def test_bad_chain_fields_are_refused(seq: int, prev: bytes, match: str) -> None:
    body = EntryBody(NETWORK, pub(COORDINATOR), seq, prev, make_receipt(job_id(1), [(WORKERS[0], 5)]))
    with pytest.raises(InvalidEntryError, match=match):
        sign_entry(COORDINATOR, body)
    with pytest.raises(InvalidEntryError, match=match):
        open_entry(raw_sign(COORDINATOR, body), NETWORK)


def test_non_canonical_body_is_refused() -> None:
    body = Author(COORDINATOR).body(make_receipt(job_id(1), [(WORKERS[0], 5)]))
    as_map = msgspec.to_builtins(body, builtin_types=(bytes,))
    reordered = msgspec.msgpack.encode(dict(reversed(list(as_map.items()))))
    assert msgspec.msgpack.decode(reordered, type=EntryBody) == body
    entry = Entry(reordered, COORDINATOR.sign(b"opengrid/entry/1\x00" + reordered).signature)
    with pytest.raises(InvalidEntryError, match="canonical"):
        open_entry(entry, NETWORK)


def test_unknown_field_is_refused() -> None:
    body = msgspec.to_builtins(
        Author(COORDINATOR).body(make_receipt(job_id(1), [(WORKERS[0], 5)])), builtin_types=(bytes,)
    )
    body["extra"] = 1
    encoded = msgspec.msgpack.encode(body)
    entry = Entry(encoded, COORDINATOR.sign(b"opengrid/entry/1\x00" + encoded).signature)
    with pytest.raises(InvalidEntryError, match="does not decode"):
        open_entry(entry, NETWORK)


def test_oversized_entry_is_refused_before_decoding() -> None:
    with pytest.raises(InvalidEntryError, match="limit"):
        decode_entry(b"\x00" * (MAX_ENTRY_SIZE + 1))


def test_decode_entry_checks_signature_size() -> None:
    with pytest.raises(InvalidEntryError, match="signature"):
        decode_entry(msgspec.msgpack.encode({"body": b"", "signature": b"short"}))


def test_attestation_round_trip_and_separation() -> None:
    worker = WORKERS[0]
    att = sign_attestation(worker, NETWORK, job_id(7), CONTRACT, COMMITMENT, N_TOKENS)
    verify_attestation(att, NETWORK)
    assert att.worker == pub(worker)
    with pytest.raises(InvalidEntryError, match="bad signature"):
        verify_attestation(att, "othernet")
    message = attestation_signing_bytes(NETWORK, pub(worker), job_id(7), CONTRACT, COMMITMENT, N_TOKENS)
    assert msgspec.msgpack.decode(message)[0] == "opengrid/attestation/1"
    assert NETWORK in msgspec.msgpack.decode(message)
    with pytest.raises(InvalidEntryError, match="job_id"):
        sign_attestation(worker, NETWORK, b"short", CONTRACT, COMMITMENT, N_TOKENS)
    with pytest.raises(InvalidEntryError, match="n_tokens"):
        sign_attestation(worker, NETWORK, job_id(7), CONTRACT, COMMITMENT, -1)


@FUZZ
@given(st.binary(max_size=512))
def test_decode_entry_on_arbitrary_bytes(data: bytes) -> None:
    try:
        entry = decode_entry(data)
    except InvalidEntryError:
        return
    try:
        open_entry(entry, NETWORK)
    except InvalidEntryError:
        pass


@FUZZ
@given(st.binary(max_size=512))
def test_open_entry_on_arbitrary_signed_bodies(body: bytes) -> None:
    # A valid signature over junk gets past the signature check and exercises body decoding.
    with pytest.raises(InvalidEntryError):
        open_entry(Entry(body, COORDINATOR.sign(b"opengrid/entry/1\x00" + body).signature), NETWORK)


@FUZZ
@given(st.data())
def test_open_entry_on_mutated_signed_bodies(data: st.DataObject) -> None:
    body = bytearray(first_entry().body)
    for _ in range(data.draw(st.integers(1, 4))):
        index = data.draw(st.integers(0, len(body) - 1))
        body[index] = data.draw(st.integers(0, 255))
    signed = bytes(body)
    try:
        opened = open_entry(
            Entry(signed, COORDINATOR.sign(b"opengrid/entry/1\x00" + signed).signature), NETWORK
        )
    except InvalidEntryError:
        return
    assert msgspec.msgpack.encode(opened) == signed


def test_latest_of_finds_an_authors_last_verified_entry_and_skips_the_rest() -> None:
    """The chain head a payer reads from a coordinator's History (SDK and worker API alike)."""
    me, other = Author(USERS[0]), Author(USERS[1])
    first, second = grant(me), grant(other)
    forged = Entry(first.body, bytes(64))  # our body, a signature that does not verify
    entries = [encode_entry(e) for e in (second, first, forged)] + [b"\x00 not an entry"]
    assert latest_of(pub(me.key), entries, NETWORK) == (1, bytes(first.id))
    assert latest_of(pub(me.key), [encode_entry(second)], NETWORK) is None
    later = (7, b"\x01" * 32)  # our own writer is ahead of what the coordinator holds
    assert latest_of(pub(me.key), entries, NETWORK, since=later) == later
    assert latest_of(pub(me.key), entries, "another-network") is None

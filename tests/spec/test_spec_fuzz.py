"""Fuzz the decoders that tests/wire and tests/ledger do not reach, and size-before-decode everywhere.

Every decoder of untrusted bytes gives a value or its typed error, nothing else (STYLE.md: "fuzz every
decoder"): sealed-mode plaintexts (open_prompt / open_output), the attestation a worker returns, the
ledger-sync turn decoder and session, the ledger validator (LedgerState.apply) on validly signed
mutated entries, genesis files and owner control requests. tests/wire/test_wire_fuzz.py covers
decode_message and FrameBuffer; tests/ledger/test_entries.py decode_entry / open_entry.

Derandomized; each test runs OPENGRID_FUZZ_EXAMPLES examples (default 200).
"""

from __future__ import annotations

import json
import os
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import hypothesis.strategies as st
import msgspec
import nacl.exceptions
import nacl.signing
import pytest
from hypothesis import HealthCheck, given, settings
from nacl.public import Box, PrivateKey
from opengrid_ledger import (
    ENTRY_DOMAIN,
    MAX_ENTRY_SIZE,
    Attestation,
    Entry,
    Genesis,
    LedgerState,
    decode_entry,
    decode_genesis,
    verify_attestation,
)
from opengrid_ledger.genesis import MAX_GENESIS_SIZE
from opengrid_ledger.sync import (
    MAX_TURN_SIZE,
    Head,
    IdList,
    SeqRange,
    Split,
    SyncSession,
    Turn,
    decode_turn,
    encode_turn,
)
from spec_vectors import load

from opengrid.errors import (
    FrameTooLargeError,
    InvalidEntryError,
    LedgerError,
    MalformedMessageError,
    RemoteProtocolError,
    VerificationError,
)
from opengrid.wire.codec import MAX_FRAME_BYTES, FrameBuffer, decode_message, parse_header
from opengrid.wire.control import control_signing_bytes
from opengrid.wire.messages import ControlRequest
from opengrid.wire.sealed import SEALED_TAG, SealedOutput, SealedPrompt, open_output, open_prompt

EXAMPLES = int(os.environ.get("OPENGRID_FUZZ_EXAMPLES", "200"))
FUZZ = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

SEALED = load("sealed.json")
LEDGER = load("ledger-entries.json")
WORKER = nacl.signing.SigningKey(bytes.fromhex(SEALED["keys"]["W1"]["seed"]))
EPHEMERAL = PrivateKey(bytes.fromhex(SEALED["client_ephemeral_private_key"]))
JOB_ID = bytes.fromhex(SEALED["job_id"])
PROMPT_PLAIN = bytes.fromhex(SEALED["prompt"]["plaintext"])
OUTPUT_PLAIN = bytes.fromhex(SEALED["output"]["plaintext"])
TO_WORKER = Box(EPHEMERAL, WORKER.verify_key.to_curve25519_public_key())
TO_CLIENT = Box(WORKER.to_curve25519_private_key(), EPHEMERAL.public_key)
NONCE = bytes(24)

MUTATION = st.tuples(
    st.sampled_from(["flip", "insert", "delete", "overwrite"]),
    st.integers(min_value=0, max_value=100_000),
    st.integers(min_value=0, max_value=255),
)


def mutate(data: bytes, mutations: list[tuple[str, int, int]]) -> bytes:
    """Apply byte-level mutations (positions wrap around the current length)."""
    out = bytearray(data)
    for kind, position, value in mutations:
        index = position % (len(out) + 1)
        if kind == "insert":
            out.insert(index, value)
        elif out and index < len(out):
            if kind == "flip":
                out[index] ^= 1 << (value % 8)
            elif kind == "overwrite":
                out[index] = value
            else:
                del out[index]
    return bytes(out)


MUTATIONS = st.lists(MUTATION, min_size=1, max_size=6)
KEYS = st.binary(max_size=40) | st.binary(min_size=32, max_size=32)
"""Public keys: wrong lengths, and 32 random bytes (often not a valid curve point: libsodium refuses)."""

# Arbitrary msgpack-encodable values: wrong types, wrong lengths, nesting, surrogates.
LEAVES = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=True)
    | st.text(max_size=20)
    | st.binary(max_size=40)
    | st.just(SEALED_TAG)
    | st.just(JOB_ID)
)
VALUES = st.recursive(
    LEAVES,
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
PLAINTEXTS = (
    st.binary(max_size=256)
    | VALUES.map(msgspec.msgpack.encode)
    | st.builds(
        lambda *fields: msgspec.msgpack.encode(list(fields)),
        st.sampled_from([SEALED_TAG, "opengrid/sealed/2", ""]),
        st.sampled_from([JOB_ID, b"", bytes(16)]) | st.binary(max_size=20),
        VALUES,
        VALUES,
    )
    | st.builds(mutate, st.sampled_from([PROMPT_PLAIN, OUTPUT_PLAIN]), MUTATIONS)
)


# ── sealed mode ───────────────────────────────────────────────────────────────────────────────────────


def open_prompt_or_remote_error(ciphertext: bytes, client_box_key: bytes) -> None:
    try:
        sealed = open_prompt(ciphertext, job_id=JOB_ID, client_box_key=client_box_key, signing_key=WORKER)
    except RemoteProtocolError:
        return
    assert isinstance(sealed, SealedPrompt) and sealed.job_id == JOB_ID and len(sealed.salt) == 16


def open_output_or_verification_error(ciphertext: bytes, worker_key: bytes) -> None:
    try:
        sealed = open_output(ciphertext, job_id=JOB_ID, worker_key=worker_key, ephemeral=EPHEMERAL)
    except VerificationError:
        return
    assert isinstance(sealed, SealedOutput) and sealed.job_id == JOB_ID and sealed.tag == SEALED_TAG


@FUZZ
@given(st.binary(max_size=300), KEYS | st.just(bytes(EPHEMERAL.public_key)))
def test_open_prompt_on_arbitrary_ciphertexts_and_keys(ciphertext: bytes, client_box_key: bytes) -> None:
    open_prompt_or_remote_error(ciphertext, client_box_key)


@FUZZ
@given(PLAINTEXTS)
def test_open_prompt_on_validly_boxed_arbitrary_plaintexts(plaintext: bytes) -> None:
    # The client holds the ephemeral key: it can box anything to the worker.
    open_prompt_or_remote_error(bytes(TO_WORKER.encrypt(plaintext, NONCE)), bytes(EPHEMERAL.public_key))


@FUZZ
@given(st.binary(max_size=300), KEYS | st.just(bytes(WORKER.verify_key)))
def test_open_output_on_arbitrary_ciphertexts_and_keys(ciphertext: bytes, worker_key: bytes) -> None:
    open_output_or_verification_error(ciphertext, worker_key)


@FUZZ
@given(PLAINTEXTS)
def test_open_output_on_validly_boxed_arbitrary_plaintexts(plaintext: bytes) -> None:
    # A worker can box anything to the client.
    open_output_or_verification_error(bytes(TO_CLIENT.encrypt(plaintext, NONCE)), bytes(WORKER.verify_key))


# ── the attestation in a ReplicaResult, decoded as the coordinator does ───────────────────────────────

ATTESTATION = bytes.fromhex(load("attestation.json")["encoded"])


@FUZZ
@given(
    st.binary(max_size=300)
    | st.builds(mutate, st.just(ATTESTATION), MUTATIONS)
    | VALUES.map(msgspec.msgpack.encode)
)
def test_attestation_decodes_and_verifies_or_raises_what_the_coordinator_catches(data: bytes) -> None:
    # opengrid/core/coordinator/ (results.py, audits.py) catches exactly
    # (DecodeError, UnicodeDecodeError, InvalidEntryError).
    try:
        verify_attestation(msgspec.msgpack.decode(data, type=Attestation), "opengrid-vectors")
    except (msgspec.DecodeError, UnicodeDecodeError, InvalidEntryError):
        pass


# ── ledger sync turns ─────────────────────────────────────────────────────────────────────────────────

NETWORK = LEDGER["network"]
GENESIS_JSON = json.dumps(LEDGER["genesis"]).encode()
ENTRIES = [bytes.fromhex(s["entry"]) for s in LEDGER["steps"]]
KEY = bytes(range(32))
TURNS = [
    encode_turn(t)
    for t in (
        Turn(NETWORK, heads=(Head(KEY, 3, bytes(32)),), heads_complete=True),
        Turn(NETWORK, want=(SeqRange(KEY, 1, 5),), entries=tuple(ENTRIES[:3])),
        Turn(NETWORK, splits=(Split(0, 0, bytes(128)), Split(4, 3, bytes(range(128))))),
        Turn(NETWORK, lists=(IdList(8, 200, bytes(16)),), fetch=bytes(8)),
    )
]


def decode_turn_or_remote_error(data: bytes) -> None:
    try:
        turn = decode_turn(data, NETWORK)
    except (MalformedMessageError, FrameTooLargeError):
        return
    assert isinstance(turn, Turn) and turn.network == NETWORK


@FUZZ
@given(st.sampled_from(TURNS), MUTATIONS)
def test_mutated_sync_turns_decode_or_are_malformed(
    turn: bytes, mutations: list[tuple[str, int, int]]
) -> None:
    decode_turn_or_remote_error(mutate(turn, mutations))


def _turn_map(names: list[str], *values: Any) -> bytes:
    return msgspec.msgpack.encode(dict(zip(("type", "network", *names), values, strict=False)))


TURN_FIELDS = ["heads", "heads_complete", "want", "entries", "splits", "lists", "fetch"]


@FUZZ
@given(
    st.builds(
        _turn_map,
        st.lists(st.sampled_from(TURN_FIELDS), max_size=3, unique=True),
        st.sampled_from(["turn", "Turn", "entry"]),
        st.sampled_from([NETWORK, "othernet", ""]),
        VALUES,
        VALUES,
        VALUES,
    )
)
def test_structured_sync_turns_decode_or_are_malformed(data: bytes) -> None:
    decode_turn_or_remote_error(data)


def _session() -> SyncSession:
    ledger = LedgerState.from_genesis(decode_genesis(GENESIS_JSON))
    for data in ENTRIES[:3]:
        ledger.apply(decode_entry(data))
    return SyncSession(ledger)


@FUZZ
@given(st.sampled_from(TURNS), st.lists(MUTATION, max_size=6))
def test_a_sync_session_answers_mutated_turns_or_raises_a_remote_protocol_error(
    turn: bytes, mutations: list[tuple[str, int, int]]
) -> None:
    session = _session()
    try:
        replies = session.receive(mutate(turn, mutations))
    except RemoteProtocolError:
        return
    for reply in replies:
        decode_turn(reply, NETWORK)  # whatever we answer, a peer of ours accepts


# ── the ledger validator on validly signed, mutated entries ───────────────────────────────────────────

SIGNERS = {
    bytes.fromhex(k["public_key"]): nacl.signing.SigningKey(bytes.fromhex(k["seed"]))
    for k in LEDGER["keys"].values()
}
VALID = [
    decode_entry(data)
    for data, step in zip(ENTRIES, LEDGER["steps"], strict=True)
    if step["expected"]["result"] == "applied"
]


def _base_ledger() -> LedgerState:
    ledger = LedgerState.from_genesis(decode_genesis(GENESIS_JSON))
    for entry in VALID[:10]:
        ledger.apply_trusted(entry)
    return ledger


def _resign(body: bytes, fallback: Entry) -> Entry:
    """Sign mutated body bytes with their author's key when we hold it, so the validator gets past the
    signature check and into decoding, canonical form, chain and payload rules."""
    try:
        author = msgspec.msgpack.decode(body).get("author")
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError, AttributeError):
        author = None
    key = SIGNERS.get(author) if isinstance(author, bytes) else None
    signature = key.sign(ENTRY_DOMAIN + body).signature if key else fallback.signature
    return Entry(body, signature)


@FUZZ
@given(st.sampled_from(range(len(VALID))), MUTATIONS)
def test_ledger_apply_on_resigned_mutated_entries_applies_waits_or_refuses(
    which: int, mutations: list[tuple[str, int, int]]
) -> None:
    original = VALID[which]
    entry = _resign(mutate(original.body, mutations), original)
    ledger = _base_ledger()
    try:
        applied = ledger.apply(entry)
    except InvalidEntryError:
        return
    assert all(isinstance(e, Entry) for e in applied)
    assert ledger.minted() == sum(ledger.balances().values()) + sum(ledger.held(a) for a in SIGNERS)


@FUZZ
@given(st.sampled_from(ENTRIES), MUTATIONS)
def test_ledger_apply_on_mutated_wire_entries(data: bytes, mutations: list[tuple[str, int, int]]) -> None:
    try:
        entry = decode_entry(mutate(data, mutations))
        _base_ledger().apply(entry)
    except InvalidEntryError:
        pass


# ── genesis files ─────────────────────────────────────────────────────────────────────────────────────

GENESIS_FIELDS = st.sampled_from(["network", "coordinators", "grant_points", "x"])


@FUZZ
@given(
    st.binary(max_size=200)
    | st.builds(mutate, st.just(GENESIS_JSON), MUTATIONS)
    | st.dictionaries(GENESIS_FIELDS, VALUES.map(msgspec.to_builtins), max_size=4).map(msgspec.json.encode)
)
def test_genesis_files_decode_or_raise_ledger_error(data: bytes) -> None:
    try:
        genesis = decode_genesis(data)
    except LedgerError:
        return
    assert isinstance(genesis, Genesis) and genesis.network


# ── owner control requests ────────────────────────────────────────────────────────────────────────────

CONTROL = load("control.json")
NODE_KEY = nacl.signing.VerifyKey(bytes.fromhex(CONTROL["keys"]["NODE"]["public_key"]))
CONTROL_FRAME = bytes.fromhex(CONTROL["frame"])


def check_control(request: ControlRequest) -> None:
    # opengrid/node/service.py catches exactly BadSignatureError around this call.
    signed = control_signing_bytes(
        CONTROL["network"], CONTROL["peer_id"], request.action, request.issued_at_ms
    )
    try:
        NODE_KEY.verify(signed, request.signature)
    except nacl.exceptions.BadSignatureError:
        return


@FUZZ
@given(
    st.sampled_from(["pause", "resume"]),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.binary(min_size=64, max_size=64),
)
def test_control_requests_verify_or_raise_bad_signature(
    action: str, issued_at_ms: int, signature: bytes
) -> None:
    check_control(ControlRequest(action=action, issued_at_ms=issued_at_ms, signature=signature))  # type: ignore[arg-type]


@FUZZ
@given(MUTATIONS)
def test_mutated_control_frames_decode_and_verify_or_raise_typed_errors(
    mutations: list[tuple[str, int, int]],
) -> None:
    try:
        request = decode_message(mutate(CONTROL_FRAME[4:], mutations))
    except MalformedMessageError:
        return
    if isinstance(request, ControlRequest):
        check_control(request)


# ── sizes are checked before decoding ─────────────────────────────────────────────────────────────────

HUGE_BIN = b"\xc6\xff\xff\xff\xff"  # msgpack bin32 announcing 4 GiB
HUGE_ARRAY = b"\xdd\xff\xff\xff\xff"  # msgpack array32 announcing 4 Gi items
HUGE_MAP = b"\xdf\xff\xff\xff\xff"


def _fast_and_small(call: Callable[[], Any], error: type[Exception] | tuple[type[Exception], ...]) -> None:
    """``call`` raises ``error`` within 50 ms, allocating under 1 MiB on the way."""
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(error):
            call()
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert elapsed < 0.05, f"took {elapsed * 1000:.1f} ms"
    assert peak < 1024 * 1024, f"allocated {peak} bytes"


@pytest.mark.parametrize("prefix", [HUGE_BIN, HUGE_ARRAY, HUGE_MAP, b"\x82\xa4body" + HUGE_BIN])
def test_small_inputs_announcing_huge_lengths_fail_fast_without_allocating(prefix: bytes) -> None:
    _fast_and_small(lambda: decode_entry(prefix), InvalidEntryError)
    _fast_and_small(lambda: decode_turn(prefix, NETWORK), MalformedMessageError)
    _fast_and_small(lambda: decode_message(prefix), MalformedMessageError)
    _fast_and_small(lambda: decode_message(b"\x81\xa4type" + prefix), MalformedMessageError)


@pytest.mark.parametrize(
    ("decode", "limit", "error"),
    [
        (decode_entry, MAX_ENTRY_SIZE, InvalidEntryError),
        (lambda data: decode_turn(data, NETWORK), MAX_TURN_SIZE, FrameTooLargeError),
        (decode_genesis, MAX_GENESIS_SIZE, LedgerError),
    ],
    ids=["entry", "sync turn", "genesis"],
)
def test_oversized_inputs_are_refused_before_decoding(
    decode: Callable[[bytes], Any], limit: int, error: type[Exception]
) -> None:
    # A valid-looking prefix followed by junk: a decoder that parsed first would fail on the junk, slowly.
    blob = (b"\x82\xa4body\xc6" + (limit).to_bytes(4, "big")).ljust(limit + 1, b"\x00")
    started = time.perf_counter()
    with pytest.raises(error, match="limit"):
        decode(blob)
    assert time.perf_counter() - started < 0.05


def test_frame_headers_over_the_limit_are_refused_before_any_body_byte() -> None:
    header = (MAX_FRAME_BYTES + 1).to_bytes(4, "big")
    _fast_and_small(lambda: parse_header(header), FrameTooLargeError)
    buffer = FrameBuffer()
    _fast_and_small(lambda: buffer.feed(header), FrameTooLargeError)
    assert buffer.pending == 4  # nothing beyond the header was needed to decide

"""Golden vectors (spec/vectors/): the code decodes, re-encodes, verifies and folds them exactly.

These tests read only the JSON files and the product code, never scripts/gen_vectors.py, so they hold
the code to the spec's bytes; test_spec_schemas.py checks that the generator reproduces the files.
"""

from __future__ import annotations

import hashlib
import json
import random
import typing
from typing import Any

import msgspec
import nacl.signing
import pytest
from nacl.public import PrivateKey
from opengrid_ledger import (
    Attestation,
    Entry,
    LedgerState,
    Payload,
    attestation_signing_bytes,
    decode_entry,
    decode_genesis,
    encode_entry,
    verify_attestation,
)
from spec_vectors import ROOT, hexify, load, structure

from opengrid import errors
from opengrid.errors import InvalidEntryError, RemoteProtocolError, VerificationError
from opengrid.wire.codec import FrameBuffer, decode_message, encode_frame, encode_message
from opengrid.wire.commitment import commit_output
from opengrid.wire.contract import DecodingContract
from opengrid.wire.control import control_signing_bytes
from opengrid.wire.grant import grant_request_signing_bytes
from opengrid.wire.messages import ControlRequest, GrantRequest, GrantVoucher, Message, SubmitJob
from opengrid.wire.sealed import box_public_key, open_output, open_prompt

FRAMES = load("job-protocol.json")
LEDGER = load("ledger-entries.json")
SMALL = load("ledger-small.json")
SEALED = load("sealed.json")


def signing_key(keys: dict[str, Any], name: str) -> nacl.signing.SigningKey:
    key = nacl.signing.SigningKey(bytes.fromhex(keys[name]["seed"]))
    assert bytes(key.verify_key).hex() == keys[name]["public_key"]
    return key


# ── job protocol ──────────────────────────────────────────────────────────────────────────────────────


def test_every_message_type_has_a_vector() -> None:
    covered = {frame["name"] for frame in FRAMES["frames"]}
    missing = sorted(t.__name__ for t in typing.get_args(Message) if t.__name__ not in covered)
    assert not missing, f"no vector for {missing}; add one in scripts/gen_vectors.py and regenerate"


@pytest.mark.parametrize("vector", FRAMES["frames"], ids=lambda f: f["what"])
def test_frames_decode_to_the_expected_message_and_re_encode_to_the_same_bytes(
    vector: dict[str, Any],
) -> None:
    frame, body = bytes.fromhex(vector["frame"]), bytes.fromhex(vector["body"])
    buffer = FrameBuffer()
    for i in range(len(frame)):  # byte by byte: the framer must not care how bytes arrive
        buffer.feed(frame[i : i + 1])
    assert buffer.next_body() == body and buffer.pending == 0
    message = decode_message(body)
    assert type(message).__name__ == vector["name"]
    assert type(message).__struct_config__.tag == vector["type"] == vector["value"]["type"]
    assert structure(message) == vector["value"]
    assert encode_message(message) == body  # canonical: one message, one byte string
    assert encode_frame(message) == frame


@pytest.mark.parametrize("vector", FRAMES["invalid"], ids=lambda f: f["what"])
def test_invalid_frames_raise_the_named_remote_protocol_error(vector: dict[str, Any]) -> None:
    error = getattr(errors, vector["error"])
    assert issubclass(error, RemoteProtocolError)
    buffer = FrameBuffer(peer="vector")
    with pytest.raises(error) as caught:
        buffer.feed(bytes.fromhex(vector["frame"]))
        body = buffer.next_body()
        assert body is not None, "a complete frame yields its body"
        decode_message(body, peer="vector")
    assert caught.value.peer == "vector"


# ── verification: contracts, commitments, attestations ────────────────────────────────────────────────


@pytest.mark.parametrize("vector", load("contract.json")["contracts"], ids=lambda c: c["digest"][:12])
def test_contract_encoding_and_digest(vector: dict[str, Any]) -> None:
    contract = DecodingContract(**vector["value"])
    encoded = bytes.fromhex(vector["encoded"])
    assert msgspec.msgpack.encode(contract) == encoded
    assert msgspec.msgpack.decode(encoded, type=DecodingContract) == contract
    assert contract.digest().hex() == vector["digest"] == hashlib.sha256(encoded).hexdigest()


def test_spec_text_quotes_the_vectors() -> None:
    text = (ROOT / "spec" / "verification.md").read_text(encoding="utf-8")
    assert load("contract.json")["contracts"][0]["digest"] in text
    for vector in load("commitments.json")["commitments"][:2]:
        assert vector["commitment"] in text


@pytest.mark.parametrize(
    "vector", load("commitments.json")["commitments"], ids=lambda c: c["commitment"][:12]
)
def test_output_commitments(vector: dict[str, Any]) -> None:
    salt = bytes.fromhex(vector["salt"])
    assert commit_output(vector["tokens"], vector["text"], salt).hex() == vector["commitment"]
    # Re-implemented from spec/verification.md §3, to keep the code honest about the spec.
    data = b"opengrid/output/1\x00" + salt + len(vector["tokens"]).to_bytes(4, "big")
    data += b"".join(t.to_bytes(4, "big") for t in vector["tokens"]) + vector["text"].encode()
    assert hashlib.sha256(data).hexdigest() == vector["commitment"]


def test_attestation_signature() -> None:
    vector = load("attestation.json")
    key = signing_key(vector["keys"], vector["worker"])
    fields = vector["fields"]
    signed = bytes.fromhex(vector["signing_bytes"])
    assert signed == attestation_signing_bytes(
        vector["network"],
        bytes(key.verify_key),
        bytes.fromhex(fields["job_id"]),
        bytes.fromhex(fields["contract_hash"]),
        bytes.fromhex(fields["output_commitment"]),
        fields["n_tokens"],
    )
    key.verify_key.verify(signed, bytes.fromhex(vector["signature"]))
    encoded = bytes.fromhex(vector["encoded"])
    att = msgspec.msgpack.decode(encoded, type=Attestation)
    assert structure(att) == vector["value"] and msgspec.msgpack.encode(att) == encoded
    verify_attestation(att, vector["network"])
    with pytest.raises(InvalidEntryError, match="bad signature"):
        verify_attestation(att, vector["refused_on_network"])


def test_control_request_signature() -> None:
    from opengrid.net.keys import peer_id_of

    vector = load("control.json")
    key = signing_key(vector["keys"], "NODE")
    assert peer_id_of(bytes(key.verify_key)) == vector["peer_id"]
    signed = control_signing_bytes(
        vector["network"], vector["peer_id"], vector["action"], vector["issued_at_ms"]
    )
    assert signed.hex() == vector["signing_bytes"]
    assert msgspec.msgpack.decode(signed) == [
        "opengrid/control/1",
        vector["network"],
        vector["peer_id"],
        vector["action"],
        vector["issued_at_ms"],
    ]
    frame = bytes.fromhex(vector["frame"])
    request = decode_message(frame[4:])
    assert isinstance(request, ControlRequest) and request.signature.hex() == vector["signature"]
    key.verify_key.verify(signed, request.signature)
    with pytest.raises(nacl.exceptions.BadSignatureError):
        key.verify_key.verify(
            control_signing_bytes(vector["network"], vector["peer_id"], "resume", 0), request.signature
        )


def test_grant_request_voucher_and_first_paid_job() -> None:
    from opengrid_ledger import Genesis, Grant, Hold, LedgerState, decode_body, decode_entry

    vector = load("grant.json")
    account, coordinator = signing_key(vector["keys"], "G"), signing_key(vector["keys"], "C1")
    account_key, coordinator_key = bytes(account.verify_key), bytes(coordinator.verify_key)
    signed = grant_request_signing_bytes(
        vector["network"], coordinator_key, account_key, vector["issued_at_ms"]
    )
    assert signed.hex() == vector["request_signing_bytes"]
    request = decode_message(bytes.fromhex(vector["request_frame"])[4:])
    assert isinstance(request, GrantRequest) and request.account == account_key
    account.verify_key.verify(signed, request.signature)
    voucher = decode_message(bytes.fromhex(vector["voucher_frame"])[4:])
    assert isinstance(voucher, GrantVoucher) and voucher.signer == coordinator_key
    points = vector["genesis_grant_points"]
    assert msgspec.msgpack.decode(bytes.fromhex(vector["voucher_signing_bytes"])) == [
        "opengrid/grant/1",
        vector["network"],
        account_key,
        points,
    ]
    coordinator.verify_key.verify(bytes.fromhex(vector["voucher_signing_bytes"]), voucher.signature)
    submit = decode_message(bytes.fromhex(vector["submit_frame"])[4:])
    assert isinstance(submit, SubmitJob)
    assert (submit.grant.hex(), submit.hold.hex()) == (vector["grant_entry"], vector["hold_entry"])
    ledger = LedgerState.from_genesis(Genesis(vector["network"], (coordinator_key,), grant_points=points))
    grant, hold = decode_entry(submit.grant), decode_entry(submit.hold)
    assert isinstance(decode_body(grant.body).payload, Grant)
    assert isinstance(decode_body(hold.body).payload, Hold)
    assert ledger.apply(grant) == [grant] and ledger.apply(hold) == [hold]
    assert (ledger.balance(account_key), ledger.held(account_key)) == (points - 16, 16)


# ── sealed mode ───────────────────────────────────────────────────────────────────────────────────────


def test_sealed_round_trip_opens_with_the_fixed_keys() -> None:
    worker = signing_key(SEALED["keys"], SEALED["worker"])
    ephemeral = PrivateKey(bytes.fromhex(SEALED["client_ephemeral_private_key"]))
    client_box_key = bytes.fromhex(SEALED["client_box_key"])
    job_id = bytes.fromhex(SEALED["job_id"])
    assert bytes(ephemeral.public_key) == client_box_key
    assert box_public_key(bytes(worker.verify_key)).hex() == SEALED["worker_box_public_key"]

    prompt = open_prompt(
        bytes.fromhex(SEALED["prompt"]["ciphertext"]),
        job_id=job_id,
        client_box_key=client_box_key,
        signing_key=worker,
    )
    assert structure(prompt) == SEALED["prompt"]["value"]
    # An empty ``readers`` (an unaudited job) is left out of the array, as seal_prompt writes it.
    assert prompt.readers == []
    bare = (prompt.tag, prompt.job_id, prompt.prompt, prompt.salt)
    assert msgspec.msgpack.encode(bare).hex() == SEALED["prompt"]["plaintext"]
    assert bytes.fromhex(SEALED["prompt"]["ciphertext"])[:24].hex() == SEALED["prompt"]["nonce"]

    output = open_output(
        bytes.fromhex(SEALED["output"]["ciphertext"]),
        job_id=job_id,
        worker_key=bytes(worker.verify_key),
        ephemeral=ephemeral,
    )
    assert structure(output) == SEALED["output"]["value"]
    assert msgspec.msgpack.encode(output).hex() == SEALED["output"]["plaintext"]

    salt = bytes.fromhex(SEALED["salt"])
    assert prompt.salt == salt
    assert commit_output(output.tokens, output.text, salt).hex() == SEALED["salted_commitment"]
    att = msgspec.msgpack.decode(bytes.fromhex(SEALED["attestation"]), type=Attestation)
    verify_attestation(att, SEALED["network"])
    assert att.output_commitment.hex() == SEALED["salted_commitment"] and att.job_id == job_id


def test_sealed_vectors_refuse_another_job() -> None:
    worker = signing_key(SEALED["keys"], SEALED["worker"])
    ephemeral = PrivateKey(bytes.fromhex(SEALED["client_ephemeral_private_key"]))
    with pytest.raises(RemoteProtocolError, match="another job"):
        open_prompt(
            bytes.fromhex(SEALED["prompt"]["ciphertext"]),
            job_id=bytes(16),
            client_box_key=bytes(ephemeral.public_key),
            signing_key=worker,
        )
    with pytest.raises(VerificationError, match="another job"):
        open_output(
            bytes.fromhex(SEALED["output"]["ciphertext"]),
            job_id=bytes(16),
            worker_key=bytes(worker.verify_key),
            ephemeral=ephemeral,
        )


def test_sealed_frames_carry_the_sealed_vector() -> None:
    by_name = {f["name"]: f for f in FRAMES["frames"] if "sealed" in f["what"]}
    assert by_name["RunJob"]["value"]["sealed_prompt"] == SEALED["prompt"]["ciphertext"]
    assert by_name["SubmitJob"]["value"]["sealed"][0]["ciphertext"] == SEALED["prompt"]["ciphertext"]
    assert by_name["ReplicaResult"]["value"]["sealed_output"] == SEALED["output"]["ciphertext"]


# ── ledger ────────────────────────────────────────────────────────────────────────────────────────────


def fresh_ledger(doc: dict[str, Any]) -> LedgerState:
    genesis = decode_genesis(json.dumps(doc["genesis"]).encode())
    assert msgspec.msgpack.encode(genesis).hex() == doc["genesis_msgpack"]
    return LedgerState.from_genesis(genesis)


def summary(ledger: LedgerState, keys: dict[str, Any]) -> dict[str, Any]:
    """The state a ledger vector's ``final`` records (accounts: every key of the file, and balances)."""
    accounts = sorted({*ledger.balances(), *(bytes.fromhex(k["public_key"]) for k in keys.values())})
    return {
        "balances": {a.hex(): ledger.balance(a) for a in accounts if ledger.balance(a)},
        "held": {a.hex(): ledger.held(a) for a in accounts if ledger.held(a)},
        "jobs_done": {a.hex(): ledger.jobs_done(a) for a in accounts if ledger.jobs_done(a)},
        "reputation": {a.hex(): list(ledger.reputation(a)) for a in accounts if any(ledger.reputation(a))},
        "minted": ledger.minted(),
        "minters": sorted(m.hex() for m in ledger.minters()),
        "frozen": {a.hex(): cut for a, cut in sorted(ledger.frozen().items())},
        "applied": len(ledger),
        "waiting": sorted(e.id.hex() for e in ledger.pending()),
    }


def test_every_payload_kind_has_a_valid_entry_vector() -> None:
    kinds = {str(k.__struct_config__.tag) for k in typing.get_args(Payload)}
    valid = {s["kind"] for s in LEDGER["steps"] if s["expected"]["result"] == "applied"}
    assert valid == kinds, f"no valid vector for {sorted(kinds - valid)}"


def test_entry_vectors_decode_and_re_encode() -> None:
    for step in LEDGER["steps"]:
        data = bytes.fromhex(step["entry"])
        entry = decode_entry(data)
        assert entry.id.hex() == step["id"] == hashlib.sha256(entry.body + entry.signature).hexdigest()
        assert encode_entry(entry) == data
        assert hexify(msgspec.msgpack.decode(entry.body)) == step["body"]


def test_entry_vectors_give_their_expected_results_in_order() -> None:
    ledger = fresh_ledger(LEDGER)
    for step in LEDGER["steps"]:
        expected = step["expected"]
        entry = decode_entry(bytes.fromhex(step["entry"]))
        if expected["result"] == "refused":
            with pytest.raises(InvalidEntryError, match=expected["error"]):
                ledger.apply(entry)
            continue
        applied = [e.id.hex() for e in ledger.apply(entry)]
        assert applied == expected["applied"], step["what"]
        assert (expected["result"] == "waiting") == (entry.id in {e.id for e in ledger.pending()}), step[
            "what"
        ]
    assert summary(ledger, LEDGER["keys"]) == LEDGER["final"]


def apply_until_stable(ledger: LedgerState, entries: list[Entry]) -> None:
    """Offer every entry, re-offering refused ones while anything changes (as sync re-fetches)."""
    for _ in range(len(entries) + 1):
        before = (len(ledger), len(ledger.pending()), tuple(sorted(ledger.frozen().items())))
        for entry in entries:
            try:
                ledger.apply(entry)
            except InvalidEntryError:
                pass
        if (len(ledger), len(ledger.pending()), tuple(sorted(ledger.frozen().items()))) == before:
            return


@pytest.mark.parametrize("seed", [None, 0, 1, 2, 3, 4])
def test_small_ledger_folds_to_its_balances_in_any_order(seed: int | None) -> None:
    entries = [decode_entry(bytes.fromhex(h)) for h in SMALL["entries"]]
    if seed is not None:
        random.Random(seed).shuffle(entries)
    ledger = fresh_ledger(SMALL)
    apply_until_stable(ledger, entries)
    assert summary(ledger, SMALL["keys"]) == SMALL["final"]
    assert SMALL["final"] == LEDGER["final"]


def test_sealed_mode_spec_text_vector() -> None:
    from opengrid.net.keys import peer_id_of

    text = (ROOT / "spec" / "sealed-mode.md").read_text(encoding="utf-8")
    key = nacl.signing.SigningKey(bytes(range(32)))
    public = bytes(key.verify_key)
    box = box_public_key(public)
    assert bytes(key.to_curve25519_private_key().public_key) == box  # the same from either side
    for quoted in (public.hex(), peer_id_of(public), box.hex()):
        assert quoted in text, f"spec/sealed-mode.md §2 should quote {quoted}"

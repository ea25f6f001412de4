"""Output commitments and the decoding contract's digest (spec/verification.md §Commitment)."""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec
import pytest

from opengrid.errors import LocalProtocolError
from opengrid.wire.commitment import commit_output
from opengrid.wire.contract import DecodingContract

TOKENS = [15496, 11, 995, 0, 2**32 - 1]
TEXT = "Hello, world ✓"


def reference_commitment(tokens: list[int], text: str) -> bytes:
    """The encoding as the module docstring states it, written independently."""
    data = b"opengrid/output/1\x00" + len(tokens).to_bytes(4, "big")
    data += b"".join(t.to_bytes(4, "big") for t in tokens)
    return hashlib.sha256(data + text.encode("utf-8")).digest()


def test_commitment_is_deterministic_and_matches_the_documented_encoding() -> None:
    first = commit_output(TOKENS, TEXT)
    assert first == commit_output(tuple(TOKENS), TEXT)
    assert first == reference_commitment(TOKENS, TEXT)
    assert len(first) == 32


def test_empty_output_has_a_commitment() -> None:
    assert commit_output([], "") == reference_commitment([], "")


@pytest.mark.parametrize("index", range(len(TOKENS)))
def test_changing_any_one_token_changes_the_commitment(index: int) -> None:
    changed = list(TOKENS)
    changed[index] = (changed[index] + 1) % 2**32
    assert commit_output(changed, TEXT) != commit_output(TOKENS, TEXT)


@pytest.mark.parametrize("text", ["Hello, world ✗", "Hello, world ✓ ", "", "hello, world ✓"])
def test_changing_the_text_changes_the_commitment(text: str) -> None:
    assert commit_output(TOKENS, text) != commit_output(TOKENS, TEXT)


def test_length_prefix_keeps_a_token_from_moving_into_the_text() -> None:
    # Without the count prefix both would hash tag || 00000001 00000002.
    assert commit_output([1, 2], "") != commit_output([1], "\x00\x00\x00\x02")
    assert commit_output([], "\x00\x00\x00\x01") != commit_output([1], "")


def test_token_order_matters() -> None:
    assert commit_output([1, 2, 3], "") != commit_output([3, 2, 1], "")


@pytest.mark.parametrize("token", [-1, 2**32, 2**64])
def test_out_of_range_token_is_a_local_protocol_error(token: int) -> None:
    with pytest.raises(LocalProtocolError) as info:
        commit_output([1, token], "x")
    assert str(token) in str(info.value)


BASE = DecodingContract(model_sha256="ab" * 32, backend_version="0.3.36")

CHANGES: dict[str, Any] = {
    "model_sha256": "cd" * 32,
    "backend": "vllm",
    "backend_version": "0.3.37",
    "temperature": 0.7,
    "top_k": 40,
    "repeat_penalty": 1.1,
    "seed": 1,
    "n_batch": 256,
    "flash_attn": True,
    "kv_cache_type": "q8_0",
    "top_p": 0.9,
}


def test_every_contract_field_is_covered_by_the_change_table() -> None:
    assert set(CHANGES) == set(DecodingContract.__struct_fields__)


@pytest.mark.parametrize(("field", "value"), CHANGES.items(), ids=CHANGES.keys())
def test_contract_digest_changes_when_any_field_changes(field: str, value: Any) -> None:
    changed = msgspec.structs.replace(BASE, **{field: value})
    assert changed.digest() != BASE.digest()


def test_contract_digest_is_a_stable_32_byte_value_of_the_contents() -> None:
    same = DecodingContract(model_sha256="ab" * 32, backend_version="0.3.36")
    assert BASE.digest() == same.digest()
    assert len(BASE.digest()) == 32
    assert BASE.digest() != DecodingContract(model_sha256="ab" * 32).digest()


def test_a_contract_without_top_p_keeps_the_bytes_it_had_before_the_field_existed() -> None:
    # spec/verification.md §2: top_p is encoded only below 1, so every greedy class keeps its digest.
    encoded = msgspec.msgpack.encode(BASE)
    assert encoded[0] == 0x8A  # a map of ten fields
    assert b"top_p" not in encoded
    assert BASE.top_p_value == 1.0


def test_an_explicit_top_p_of_one_is_refused_so_each_contract_has_one_encoding() -> None:
    raw = msgspec.msgpack.decode(msgspec.msgpack.encode(BASE))
    with pytest.raises(msgspec.ValidationError, match="top_p"):
        msgspec.msgpack.decode(msgspec.msgpack.encode({**raw, "top_p": 1.0}), type=DecodingContract)
    kept = msgspec.msgpack.decode(msgspec.msgpack.encode({**raw, "top_p": 0.5}), type=DecodingContract)
    assert kept.top_p_value == 0.5


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", -0.1),
        ("temperature", 10.5),
        ("temperature", float("nan")),
        ("top_k", -1),
        ("top_k", 2**32),
        ("top_p", 0.0),
        ("top_p", 1.5),
        ("seed", -1),
    ],
)
def test_sampling_fields_out_of_range_are_refused_on_decode(field: str, value: Any) -> None:
    raw = {**msgspec.msgpack.decode(msgspec.msgpack.encode(BASE)), field: value}
    with pytest.raises(msgspec.ValidationError, match=field):
        msgspec.msgpack.decode(msgspec.msgpack.encode(raw), type=DecodingContract)


def test_a_sampled_job_contract_reduces_to_its_class() -> None:
    sampled = BASE.sampled(temperature=0.8, top_k=0, top_p=0.95, seed=2**64 - 1)
    assert sampled.digest() != BASE.digest()  # the receipt signs the client's settings
    assert sampled.numerical_class() == BASE
    settings = (sampled.temperature, sampled.top_k, sampled.top_p_value, sampled.seed)
    assert settings == (0.8, 0, 0.95, 2**64 - 1)
    # Greedy settings give the class itself, whatever seed and masks say; top_p 1 is left out.
    assert BASE.sampled(temperature=0.0, top_k=5, top_p=0.5, seed=9) == BASE
    assert BASE.sampled(temperature=0.5, top_k=0, top_p=1.0, seed=1).top_p is msgspec.UNSET

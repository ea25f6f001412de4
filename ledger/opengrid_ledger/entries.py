"""Entries: signed, content-addressed envelopes around a payload, chained per author (spec/ledger.md §2-4).

An ``Entry`` carries the body as the exact bytes that were signed. Verification always runs over those
received bytes, never over a re-encoding, and a body is accepted only if it *is* the canonical encoding of
what it decodes to, so one logical body has exactly one byte string and one EntryId.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable

import msgspec
import nacl.signing

from opengrid.errors import InvalidEntryError

from .ids import HASH_SIZE, KEY_SIZE, SIGNATURE_SIZE, EntryId, require_count, require_size
from .payloads import Fraud, Payload, check_payload
from .signatures import ED25519, SignatureScheme

ENTRY_DOMAIN = b"opengrid/entry/1\x00"
"""Prefix of the message an author signs (prefix + body bytes): an entry signature means nothing else."""

MAX_ENTRY_SIZE = 64 * 1024
"""Largest encoded entry accepted, checked before decoding. A receipt for a few replicas is ~1 KiB."""

MAX_NETWORK_ID_SIZE = 64


class EntryBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """What an author signs: one link of its hash chain."""

    network: str
    """Network id; an entry is valid on one network only."""
    author: bytes
    """32-byte Ed25519 public key that signs the entry."""
    seq: int
    """1, 2, 3 ... per author."""
    prev: bytes
    """b"" when seq == 1, else the EntryId of the author's entry seq-1 (hash chain)."""
    payload: Payload


class Entry(msgspec.Struct, frozen=True, forbid_unknown_fields=True, dict=True):
    """A signed entry as it travels and is stored. (``dict=True`` only lets ``id`` be cached.)"""

    body: bytes
    """Canonical msgpack of EntryBody: signatures are over these exact bytes."""
    signature: bytes
    """64-byte Ed25519 signature by the body's author over ``ENTRY_DOMAIN + body``."""

    @functools.cached_property
    def id(self) -> EntryId:
        """sha256(body || signature): names this exact entry; two different entries never share an id."""
        return EntryId(hashlib.sha256(self.body + self.signature).digest())


_entry_decoder = msgspec.msgpack.Decoder(Entry)
_body_decoder = msgspec.msgpack.Decoder(EntryBody)


def sign_entry(key: nacl.signing.SigningKey, body: EntryBody, *, scheme: SignatureScheme = ED25519) -> Entry:
    """Encode ``body`` canonically and sign it with ``key``.

    Runs the same checks a receiver will (shape and the payload's stateless rules), so a node never signs
    an entry its peers would refuse. Raises InvalidEntryError if ``body.author`` is not ``key``'s public key
    or a check fails: both are bugs in the caller.
    """
    if body.author != bytes(key.verify_key):
        raise InvalidEntryError(
            f"body author {body.author.hex()} is not the signing key {bytes(key.verify_key).hex()}; "
            "build the body with this node's key (LedgerState.next_body)"
        )
    _check_body(body, body.network, scheme)
    encoded = msgspec.msgpack.encode(body)
    return Entry(encoded, scheme.sign(key, ENTRY_DOMAIN + encoded))


def encode_entry(entry: Entry) -> bytes:
    """The wire and storage form of an entry (a msgpack map of body and signature)."""
    return msgspec.msgpack.encode(entry)


def decode_entry(data: bytes) -> Entry:
    """Parse the wire form. Any malformed input raises InvalidEntryError (never a msgspec error).

    Only the envelope is checked here; call :func:`open_entry` to verify and read the body.
    """
    if len(data) > MAX_ENTRY_SIZE:
        raise InvalidEntryError(f"entry is {len(data)} bytes, over the {MAX_ENTRY_SIZE}-byte limit")
    try:
        entry = _entry_decoder.decode(data)
    # msgspec lets bad UTF-8 in map keys, and RecursionError on deep nesting, escape its DecodeError.
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise InvalidEntryError(f"entry does not decode: {exc}") from exc
    require_size("entry signature", entry.signature, SIGNATURE_SIZE)
    return entry


def decode_body(body: bytes) -> EntryBody:
    """Decode body bytes WITHOUT verifying anything (for storage indexes and debugging).

    Never trust the result of this for anything a peer sent; use :func:`open_entry`.
    """
    try:
        return _body_decoder.decode(body)
    # msgspec lets bad UTF-8 in map keys, and RecursionError on deep nesting, escape its DecodeError.
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise InvalidEntryError(f"entry body does not decode: {exc}") from exc


def latest_of(
    author: bytes, encoded: Iterable[bytes], network: str, *, since: tuple[int, bytes] | None = None
) -> tuple[int, bytes] | None:
    """(seq, id) of ``author``'s latest entry among ``encoded`` ones (a History's, say) that verify, or
    ``since`` when it is later (or none is found). Entries that do not decode or verify say nothing about the
    chain and are skipped; so are other authors'."""
    head = since
    for data in encoded:
        try:
            entry = decode_entry(data)
            body = open_entry(entry, network)
        except InvalidEntryError:
            continue
        if body.author == author and (head is None or body.seq > head[0]):
            head = (body.seq, bytes(entry.id))
    return head


def open_entry(entry: Entry, network: str, *, scheme: SignatureScheme = ED25519) -> EntryBody:
    """Verify ``entry`` and return its body.

    Checks, in order: sizes, the author's signature over the exact received body bytes, that the body
    decodes and is canonical, the network, ``seq >= 1`` and the shape of ``prev``, and the payload's
    stateless rules (attestation signatures included). Chain and ledger rules need state: see
    ``LedgerState.apply``. Raises InvalidEntryError saying what is wrong. ``scheme`` checks the signatures
    (real Ed25519 unless a simulator passes another: see signatures.py).
    """
    if len(entry.body) + len(entry.signature) > MAX_ENTRY_SIZE:
        raise InvalidEntryError(
            f"entry body is {len(entry.body)} bytes, over the {MAX_ENTRY_SIZE}-byte limit"
        )
    require_size("entry signature", entry.signature, SIGNATURE_SIZE)
    body = decode_body(entry.body)
    require_size("entry author", body.author, KEY_SIZE)
    try:
        scheme.verify(body.author, ENTRY_DOMAIN + entry.body, entry.signature)
    except InvalidEntryError as exc:
        raise InvalidEntryError(
            f"entry {entry.id.hex()} (author {body.author.hex()}, seq {body.seq}) has a bad signature"
        ) from exc
    # Canonical form: otherwise one signed statement could travel as several byte strings (several ids).
    if msgspec.msgpack.encode(body) != entry.body:
        raise InvalidEntryError(f"entry {entry.id.hex()} body is not in canonical msgpack form")
    _check_body(body, network, scheme)
    return body


def _check_body(body: EntryBody, network: str, scheme: SignatureScheme) -> None:
    if not body.network or len(body.network) > MAX_NETWORK_ID_SIZE:
        raise InvalidEntryError(
            f"network id {body.network!r} is empty or over {MAX_NETWORK_ID_SIZE} characters"
        )
    if body.network != network:
        raise InvalidEntryError(f"entry is for network {body.network!r}, this ledger is {network!r}")
    require_size("entry author", body.author, KEY_SIZE)
    require_count("entry seq", body.seq, minimum=1)
    if body.seq == 1:
        if body.prev != b"":
            raise InvalidEntryError(f"entry seq 1 of {body.author.hex()} must have an empty prev")
    else:
        require_size(f"prev of entry seq {body.seq}", body.prev, HASH_SIZE)
    check_payload(body.payload, network, body.author, scheme=scheme)
    if isinstance(body.payload, Fraud):
        check_fraud(body.payload, network, scheme=scheme)


def check_fraud(
    fraud: Fraud, network: str, *, scheme: SignatureScheme = ED25519
) -> tuple[Entry, EntryBody, Entry, EntryBody]:
    """Open both entries of a fork proof and check they really fork: one author, one seq, two ids.

    Returns (first, first body, second, second body), lower EntryId first. Raises InvalidEntryError.
    """
    first, second = decode_entry(fraud.first), decode_entry(fraud.second)
    first_body = open_entry(first, network, scheme=scheme)
    second_body = open_entry(second, network, scheme=scheme)
    if (first_body.author, first_body.seq) != (second_body.author, second_body.seq):
        raise InvalidEntryError(
            f"fraud proof entries are (author {first_body.author.hex()}, seq {first_body.seq}) and "
            f"(author {second_body.author.hex()}, seq {second_body.seq}): not a fork"
        )
    if first.id == second.id:
        raise InvalidEntryError("fraud proof carries the same entry twice")
    if first.id > second.id:
        raise InvalidEntryError("fraud proof entries must be in EntryId order (lower first)")
    return first, first_body, second, second_body


def make_fraud(first: Entry, second: Entry) -> Fraud:
    """The FRAUD payload proving that ``first`` and ``second`` fork (in either order)."""
    low, high = (first, second) if first.id < second.id else (second, first)
    return Fraud(encode_entry(low), encode_entry(high))

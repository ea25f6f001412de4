"""A network's genesis rules: its id, its first coordinators and the starting grant (spec/ledger.md §7).

A genesis file is JSON (byte fields base64, as msgspec writes them). Every node of a network must use the
same one; :func:`genesis_id` names it so nodes can compare theirs cheaply.
"""

from __future__ import annotations

import hashlib

import msgspec

from opengrid.errors import LedgerError

from .ids import KEY_SIZE, MAX_UINT64

MAX_GENESIS_SIZE = 1024 * 1024
"""Largest genesis file accepted, checked before decoding."""


class Genesis(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """The rules a network starts with."""

    network: str
    """The network id every entry signs."""
    coordinators: tuple[bytes, ...]
    """32-byte keys of the first coordinators (minters); admissions (ADMIT) add more."""
    grant_points: int = 0
    """Points a new account's GRANT mints (0: no starting grant on this network)."""


def genesis_id(genesis: Genesis) -> bytes:
    """sha256 of the genesis' canonical msgpack: equal ids, equal rules."""
    return hashlib.sha256(msgspec.msgpack.encode(genesis)).digest()


def encode_genesis(genesis: Genesis) -> bytes:
    """The JSON form of a genesis file."""
    return msgspec.json.format(msgspec.json.encode(genesis))


def decode_genesis(data: bytes) -> Genesis:
    """Parse and check a genesis file; LedgerError saying what is wrong."""
    if len(data) > MAX_GENESIS_SIZE:
        raise LedgerError(f"genesis file is {len(data)} bytes, over the {MAX_GENESIS_SIZE}-byte limit")
    try:
        genesis = msgspec.json.decode(data, type=Genesis)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise LedgerError(f"genesis file does not decode: {exc}") from exc
    if not genesis.network:
        raise LedgerError("genesis network id is empty")
    if any(len(key) != KEY_SIZE for key in genesis.coordinators):
        raise LedgerError(f"every genesis coordinator must be a {KEY_SIZE}-byte key")
    if len(set(genesis.coordinators)) != len(genesis.coordinators):
        raise LedgerError("genesis lists a coordinator twice")
    if not 0 <= genesis.grant_points <= MAX_UINT64:
        raise LedgerError(f"genesis grant_points {genesis.grant_points} is out of range")
    return genesis

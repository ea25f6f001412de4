"""Identifier types and the field sizes every ledger object shares (spec/ledger.md §2)."""

from __future__ import annotations

from typing import NewType

from opengrid.errors import InvalidEntryError

AccountKey = NewType("AccountKey", bytes)
"""A 32-byte Ed25519 public key. Ledger accounts *are* node keys: no separate wallet keys."""

EntryId = NewType("EntryId", bytes)
"""The 32-byte sha256 of an entry's body bytes followed by its signature."""

KEY_SIZE = 32
SIGNATURE_SIZE = 64
JOB_ID_SIZE = 16
HASH_SIZE = 32
MAX_UINT64 = 2**64 - 1
"""Counts travel as msgpack integers; anything above uint64 cannot be encoded, so refuse it up front."""


def require_size(what: str, value: bytes, size: int) -> None:
    """Raise InvalidEntryError unless ``value`` is bytes of exactly ``size`` bytes."""
    if not isinstance(value, bytes) or len(value) != size:
        shown = f"{len(value)} bytes" if isinstance(value, bytes) else type(value).__name__
        raise InvalidEntryError(f"{what} must be {size} bytes, got {shown}")


def require_count(what: str, value: int, *, minimum: int) -> None:
    """Raise InvalidEntryError unless ``value`` is an int (not a bool) in ``[minimum, 2**64 - 1]``."""
    # bool is an int subclass; True points would be a silly, confusing way to mint 1.
    if type(value) is not int or not minimum <= value <= MAX_UINT64:
        raise InvalidEntryError(f"{what} must be an integer in [{minimum}, 2**64-1], got {value!r}")

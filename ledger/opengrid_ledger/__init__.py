"""The OpenGrid points ledger, sans-IO: entries, signing, validation, merge and balances.

Pure and deterministic: no I/O, no clocks, no randomness (a test enforces the imports). The node stores
entries with ``opengrid.store`` and syncs them over the network; this package only decides what they mean.
The normative description is spec/ledger.md.
"""

from __future__ import annotations

from .attestation import (
    ATTESTATION_DOMAIN,
    Attestation,
    attestation_signing_bytes,
    sign_attestation,
    verify_attestation,
)
from .entries import (
    ENTRY_DOMAIN,
    MAX_ENTRY_SIZE,
    Entry,
    EntryBody,
    decode_body,
    decode_entry,
    encode_entry,
    open_entry,
    sign_entry,
)
from .ids import AccountKey, EntryId
from .payloads import Credit, Payload, Receipt
from .state import LedgerState

__all__ = [
    "ATTESTATION_DOMAIN",
    "ENTRY_DOMAIN",
    "MAX_ENTRY_SIZE",
    "AccountKey",
    "Attestation",
    "Credit",
    "Entry",
    "EntryBody",
    "EntryId",
    "LedgerState",
    "Payload",
    "Receipt",
    "attestation_signing_bytes",
    "decode_body",
    "decode_entry",
    "encode_entry",
    "open_entry",
    "sign_attestation",
    "sign_entry",
    "verify_attestation",
]

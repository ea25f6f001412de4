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
    check_fraud,
    decode_body,
    decode_entry,
    encode_entry,
    latest_of,
    make_fraud,
    open_entry,
    sign_entry,
)
from .genesis import Genesis, decode_genesis, encode_genesis, genesis_id
from .ids import AccountKey, EntryId
from .payloads import (
    MAX_MEMO_CHARS,
    Admit,
    Cosignature,
    Credit,
    Evidence,
    Fraud,
    Grant,
    Hold,
    Payload,
    Receipt,
    Refund,
    Settle,
    Transfer,
    admit_signing_bytes,
    grant_signing_bytes,
    memo_problem,
    sign_admit,
    sign_grant_voucher,
)
from .signatures import ED25519, Ed25519, SignatureScheme
from .state import HistoryItem, HoldInfo, LedgerState, TrustedReplayError, payload_kind
from .transfers import IntakeRefusal, intake_problem, spend_problem
from .writer import ChainWriter

__all__ = [
    "ATTESTATION_DOMAIN",
    "ED25519",
    "ENTRY_DOMAIN",
    "MAX_ENTRY_SIZE",
    "MAX_MEMO_CHARS",
    "AccountKey",
    "Admit",
    "Attestation",
    "ChainWriter",
    "Cosignature",
    "Credit",
    "Ed25519",
    "Entry",
    "EntryBody",
    "EntryId",
    "Evidence",
    "Fraud",
    "Genesis",
    "Grant",
    "HistoryItem",
    "Hold",
    "HoldInfo",
    "IntakeRefusal",
    "LedgerState",
    "Payload",
    "Receipt",
    "Refund",
    "Settle",
    "SignatureScheme",
    "Transfer",
    "TrustedReplayError",
    "admit_signing_bytes",
    "attestation_signing_bytes",
    "check_fraud",
    "decode_body",
    "decode_entry",
    "decode_genesis",
    "encode_entry",
    "encode_genesis",
    "genesis_id",
    "grant_signing_bytes",
    "intake_problem",
    "latest_of",
    "make_fraud",
    "memo_problem",
    "open_entry",
    "payload_kind",
    "sign_admit",
    "sign_attestation",
    "sign_entry",
    "sign_grant_voucher",
    "spend_problem",
    "verify_attestation",
]

"""Grant requests: a client proves it holds an account's key when it asks a coordinator for a voucher.

The coordinator vouches for the account's starting grant (a GRANT entry, spec/ledger.md §5.7) only to the
holder of its key, and refuses stale requests (spec/job-protocol.md §5.14).
"""

from __future__ import annotations

from typing import Final

import msgspec

GRANT_REQUEST_TAG: Final = "opengrid/grant-request/1"


def grant_request_signing_bytes(network: str, coordinator: bytes, account: bytes, issued_at_ms: int) -> bytes:
    """The exact bytes an account signs to ask ``coordinator`` (its 32-byte key) for a voucher."""
    return msgspec.msgpack.encode([GRANT_REQUEST_TAG, network, coordinator, account, issued_at_ms])

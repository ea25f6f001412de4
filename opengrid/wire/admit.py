"""Admission requests: a candidate coordinator proves it holds its key when it asks for a co-signature.

A coordinator of a network with a genesis file that is not in the coordinator set asks each minting
coordinator to co-sign its admission (an ADMIT entry, spec/ledger.md §5.8, §7.1). The request is signed by
the candidate's key over these bytes, so nobody can put another key on an operator's pending list, and
it is refused when stale (spec/job-protocol.md §5.15).
"""

from __future__ import annotations

from typing import Final

import msgspec

ADMIT_REQUEST_TAG: Final = "opengrid/admit-request/1"


def admit_request_signing_bytes(
    network: str, coordinator: bytes, epoch: int, candidate: bytes, issued_at_ms: int
) -> bytes:
    """The exact bytes ``candidate`` signs to ask ``coordinator`` (its 32-byte key) for a co-signature of
    its admission at ``epoch``."""
    return msgspec.msgpack.encode([ADMIT_REQUEST_TAG, network, coordinator, epoch, candidate, issued_at_ms])

"""The signature scheme seam: every signature the ledger makes or checks goes through one object.

The product always uses :data:`ED25519` (PyNaCl), the default of every ``scheme=`` parameter
(``sign_entry``, ``open_entry``, ``sign_attestation``, ``verify_attestation``, ``LedgerState``, the core's
``Coordinator`` and ``WorkerLogic``). The seam exists so a simulator can pass a cheaper scheme that checks
a sample of signatures for real (simulations/signatures.py); nothing in the product passes another one.
"""

from __future__ import annotations

from typing import Final, Protocol

import nacl.exceptions
import nacl.signing

from opengrid.errors import InvalidEntryError


class SignatureScheme(Protocol):
    """Signs messages with a node's key and checks signatures against a public key."""

    def sign(self, key: nacl.signing.SigningKey, message: bytes) -> bytes:
        """The 64-byte signature of ``message`` by ``key``."""
        ...

    def verify(self, public_key: bytes, message: bytes, signature: bytes) -> None:
        """Return if ``signature`` is ``public_key``'s over ``message``; raise InvalidEntryError if not
        (callers re-raise with what was being checked)."""
        ...


class Ed25519:
    """Real Ed25519 signatures (PyNaCl): the product's one scheme."""

    def sign(self, key: nacl.signing.SigningKey, message: bytes) -> bytes:
        return key.sign(message).signature

    def verify(self, public_key: bytes, message: bytes, signature: bytes) -> None:
        try:
            nacl.signing.VerifyKey(public_key).verify(message, signature)
        except (nacl.exceptions.CryptoError, ValueError) as exc:
            raise InvalidEntryError(f"bad Ed25519 signature by {public_key.hex()}") from exc


ED25519: Final[SignatureScheme] = Ed25519()
"""The default scheme everywhere."""

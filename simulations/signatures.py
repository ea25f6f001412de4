"""Stubbed signatures with a sampled real check: the simulator's ``SignatureScheme``.

Real Ed25519 costs ~30 µs to sign and ~75 µs to verify, and at full fidelity every credited worker
re-verifies every receipt of its coordinator: crypto was more than half of a full-fidelity run. The real
core and ledger take a ``scheme=`` (opengrid_ledger.signatures); the simulator passes a
:class:`SampledScheme`:

- ``sign``: a seeded sample (probability ``rate``, drawn from the run's ``signatures`` stream) is signed
  for real; the rest get a *stub*: a 32-byte BLAKE2b tag keyed by the signer's public key over the exact
  message, followed by a 32-byte marker (``0xff`` * 32).
- ``verify``: a stub is recomputed and compared (any change to the signed bytes, or a signature moved to
  another key, is refused, as a real check would); anything else goes to the real scheme. A real Ed25519
  signature can never end with the marker (its second half is a scalar below the group order, < 2**253),
  so the two kinds cannot be confused, and a real signature is always checked for real.

What a stub does not model: forgery. Anyone who knows a public key can compute its stubs, so a simulated
adversary that forges signatures would succeed against stubs. No behaviour plug-in forges (they lie about
outputs, not about keys); a scenario that studies forgery must keep ``real_signatures = 1``.

The sign/verify decisions never change what the core decides: entry ids change (they hash the signature),
but no scheduling, vote or event-log line depends on them, so a run has the same event-log hash whatever
``rate`` is (tests/simulations/test_signatures.py).
"""

from __future__ import annotations

import hashlib
import hmac
import random
from typing import Final

from nacl.signing import SigningKey
from opengrid_ledger import SignatureScheme

from opengrid.errors import InvalidEntryError

STUB_MARK: Final = b"\xff" * 32
"""Second half of every stub signature: never the second half of a valid Ed25519 signature."""
_PERSON: Final = b"opengrid-sim-sig"


def stub_signature(public_key: bytes, message: bytes) -> bytes:
    """The 64-byte stub of ``message`` by the holder of ``public_key``."""
    tag = hashlib.blake2b(message, key=public_key, digest_size=32, person=_PERSON).digest()
    return tag + STUB_MARK


class SampledScheme:
    """Signs a seeded ``rate`` of messages for real (with ``real``) and stubs the rest; checks both."""

    def __init__(self, real: SignatureScheme, rate: float, rng: random.Random) -> None:
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"rate must be in [0, 1], got {rate}")
        self.real = real
        self.rate = rate
        self._rng = rng
        self.signed_real = 0
        self.signed_stub = 0
        self.verified_real = 0
        self.verified_stub = 0

    def sign(self, key: SigningKey, message: bytes) -> bytes:
        if self.rate > 0.0 and (self.rate >= 1.0 or self._rng.random() < self.rate):
            self.signed_real += 1
            return self.real.sign(key, message)
        self.signed_stub += 1
        return stub_signature(bytes(key.verify_key), message)

    def verify(self, public_key: bytes, message: bytes, signature: bytes) -> None:
        if signature[32:] == STUB_MARK:
            if not hmac.compare_digest(signature, stub_signature(public_key, message)):
                raise InvalidEntryError(
                    f"stub signature by {public_key.hex()} does not match the signed bytes "
                    "(they were changed, or the signature is another key's)"
                )
            self.verified_stub += 1
            return
        self.real.verify(public_key, message, signature)
        self.verified_real += 1

    def counters(self) -> dict[str, int]:
        """How many signatures were made and checked each way (for a run's metrics)."""
        return {
            "signatures_signed_real": self.signed_real,
            "signatures_signed_stub": self.signed_stub,
            "signatures_verified_real": self.verified_real,
            "signatures_verified_stub": self.verified_stub,
        }

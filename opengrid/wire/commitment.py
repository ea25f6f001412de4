"""Commitments to a job's output (spec/verification.md §Commitment).

Replicas are compared by commitment, so a coordinator (and, in sealed mode later, anyone who never sees
the plaintext) can check agreement, and a client can check the answer it got against the signed receipt.
The commitment covers the token ids *and* the decoded text, so a worker cannot return agreeing tokens
with a doctored text. The encoding is trivial to re-implement::

    sha256( "opengrid/output/1" 0x00 || [salt] || u32be(len(tokens)) || u32be(token)* || utf8(text) )

``salt`` is empty in open mode; in sealed mode it is 16 secret bytes shared by the client and the workers
(opengrid/wire/sealed.py), so a coordinator that sees only commitments cannot test guesses against them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Final

from opengrid.errors import LocalProtocolError

OUTPUT_TAG: Final = b"opengrid/output/1\x00"
SALT_BYTES: Final = 16
_MAX_TOKEN_ID: Final = 2**32 - 1


def commit_output(tokens: Sequence[int], text: str, salt: bytes = b"") -> bytes:
    """Return the 32-byte commitment to a generated token sequence and its text (salted in sealed mode)."""
    if len(salt) not in (0, SALT_BYTES):
        raise LocalProtocolError(f"a commitment salt is empty or {SALT_BYTES} bytes, got {len(salt)}")
    digest = hashlib.sha256(OUTPUT_TAG)
    digest.update(salt)
    digest.update(len(tokens).to_bytes(4, "big"))
    for token in tokens:
        if not 0 <= token <= _MAX_TOKEN_ID:
            raise LocalProtocolError(f"token id {token} is outside 0..{_MAX_TOKEN_ID}")
        digest.update(token.to_bytes(4, "big"))
    digest.update(text.encode("utf-8", errors="surrogatepass"))
    return digest.digest()

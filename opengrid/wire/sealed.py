"""Sealed mode: end-to-end encryption of prompts and outputs between a client and each worker.

The coordinator routes and verifies sealed jobs without ever seeing plaintext (spec/sealed-mode.md):

- Each worker's X25519 box key is *derived* from its Ed25519 identity (the key inlined in its peer id), so
  anyone can compute it from the peer id alone and nobody — a coordinator included — can substitute one.
- The client makes one ephemeral X25519 key per job and seals the prompt separately to every worker it
  allows to see it (the exposure cap), binding the job id and a random salt into each ciphertext.
- Workers seal their output (tokens, text, finish reason) back to the client's ephemeral key and attest to
  a *salted* commitment; the coordinator compares commitments only. The salt, known to the client and the
  workers alone, stops the coordinator from confirming guesses of the output against a commitment.
"""

from __future__ import annotations

from typing import Annotated, Final

import msgspec
from nacl.bindings import crypto_sign_ed25519_pk_to_curve25519
from nacl.exceptions import CryptoError
from nacl.public import Box, PrivateKey, PublicKey
from nacl.signing import SigningKey

from opengrid.errors import RemoteProtocolError, VerificationError
from opengrid.wire.commitment import SALT_BYTES
from opengrid.wire.messages import (
    JOB_ID_BYTES,
    MAX_EXPOSURE,
    MAX_TOKENS_LIMIT,
    KeyBytes,
    OutputText,
    Prompt,
    ShortText,
    TokenId,
)

SEALED_TAG: Final = "opengrid/sealed/1"


class SealedPrompt(msgspec.Struct, frozen=True, forbid_unknown_fields=True, array_like=True):
    """What the client seals to one worker."""

    tag: ShortText
    job_id: Annotated[bytes, msgspec.Meta(max_length=JOB_ID_BYTES)]
    prompt: Prompt
    """At most ``MAX_PROMPT_CHARS``, as in the clear."""
    salt: Annotated[bytes, msgspec.Meta(max_length=SALT_BYTES)]
    readers: Annotated[list[KeyBytes], msgspec.Meta(max_length=MAX_EXPOSURE)] = []
    """The Ed25519 keys of every worker the client sealed this prompt to (spec/sealed-mode.md §11): a
    prover seals its claimed output only to these, so an audit shows it to nobody who could not read the
    prompt already. Empty (omitted on the wire, as before the field existed): nobody may audit it."""


class SealedOutput(msgspec.Struct, frozen=True, forbid_unknown_fields=True, array_like=True):
    """What a worker seals back to the client."""

    tag: ShortText
    job_id: Annotated[bytes, msgspec.Meta(max_length=JOB_ID_BYTES)]
    tokens: Annotated[list[TokenId], msgspec.Meta(max_length=MAX_TOKENS_LIMIT)]
    text: OutputText
    """At most ``MAX_OUTPUT_CHARS``, as in the clear."""
    finish_reason: ShortText


def box_public_key(ed25519_public_key: bytes) -> bytes:
    """The X25519 public key derived from an Ed25519 identity key (libsodium's birational map)."""
    return bytes(crypto_sign_ed25519_pk_to_curve25519(ed25519_public_key))


def _box_private_key(signing_key: SigningKey) -> PrivateKey:
    return signing_key.to_curve25519_private_key()


def seal_prompt(
    prompt: str,
    *,
    job_id: bytes,
    salt: bytes,
    worker_key: bytes,
    ephemeral: PrivateKey,
    readers: list[bytes] | None = None,
) -> bytes:
    """Encrypt ``prompt`` (with the job id and salt) so only the worker with Ed25519 key ``worker_key``
    can read it; authenticated with the client's ephemeral key. ``readers``: the keys of every worker the
    prompt is sealed to, who may audit each other's claims (``SealedPrompt.readers``)."""
    fields: tuple[object, ...] = (SEALED_TAG, job_id, prompt, salt)
    if readers:
        fields += (list(readers),)
    payload = msgspec.msgpack.encode(fields)
    return bytes(Box(ephemeral, PublicKey(box_public_key(worker_key))).encrypt(payload))


def open_prompt(
    ciphertext: bytes, *, job_id: bytes, client_box_key: bytes, signing_key: SigningKey
) -> SealedPrompt:
    """Worker side: decrypt a sealed prompt and check it was made for this job."""
    try:
        box = Box(_box_private_key(signing_key), PublicKey(client_box_key))
        sealed = msgspec.msgpack.decode(box.decrypt(ciphertext), type=SealedPrompt)
    except (CryptoError, ValueError, TypeError, msgspec.DecodeError) as exc:
        raise RemoteProtocolError(f"sealed prompt does not open with this worker's key: {exc}") from exc
    if sealed.tag != SEALED_TAG or sealed.job_id != job_id or len(sealed.salt) != SALT_BYTES:
        raise RemoteProtocolError("sealed prompt was made for another job (replayed by the coordinator?)")
    return sealed


def seal_output(
    tokens: list[int],
    text: str,
    finish_reason: str,
    *,
    job_id: bytes,
    client_box_key: bytes,
    signing_key: SigningKey,
) -> bytes:
    """Worker side: encrypt the output to the client's ephemeral key."""
    payload = msgspec.msgpack.encode(SealedOutput(SEALED_TAG, job_id, tokens, text, finish_reason))
    return bytes(Box(_box_private_key(signing_key), PublicKey(client_box_key)).encrypt(payload))


def open_output(
    ciphertext: bytes, *, job_id: bytes, worker_key: bytes, ephemeral: PrivateKey
) -> SealedOutput:
    """Client side: decrypt one worker's sealed output; raises VerificationError if it does not open."""
    try:
        box = Box(ephemeral, PublicKey(box_public_key(worker_key)))
        sealed = msgspec.msgpack.decode(box.decrypt(ciphertext), type=SealedOutput)
    except (CryptoError, ValueError, TypeError, msgspec.DecodeError) as exc:
        raise VerificationError(f"a worker's sealed output does not open: {exc}") from exc
    if sealed.tag != SEALED_TAG or sealed.job_id != job_id:
        raise VerificationError("a sealed output was made for another job")
    return sealed


def seal_claim(
    tokens: list[int],
    text: str,
    finish_reason: str,
    *,
    job_id: bytes,
    reader_key: bytes,
    signing_key: SigningKey,
) -> bytes:
    """Prover side of a sealed audit: encrypt the claimed output to another worker the prompt was sealed
    to (Ed25519 key ``reader_key``), authenticated with the prover's own identity (spec/sealed-mode.md
    §11). The plaintext is a SealedOutput, as sealed to the client."""
    payload = msgspec.msgpack.encode(SealedOutput(SEALED_TAG, job_id, tokens, text, finish_reason))
    return bytes(Box(_box_private_key(signing_key), PublicKey(box_public_key(reader_key))).encrypt(payload))


def open_claim(
    ciphertext: bytes, *, job_id: bytes, prover_key: bytes, signing_key: SigningKey
) -> SealedOutput:
    """Auditor side: decrypt a prover's sealed claim; ``VerificationError`` if it does not open with the
    prover's key and ours, or names another job (the prover's fault, or the coordinator's tampering)."""
    try:
        box = Box(_box_private_key(signing_key), PublicKey(box_public_key(prover_key)))
        sealed = msgspec.msgpack.decode(box.decrypt(ciphertext), type=SealedOutput)
    except (CryptoError, ValueError, TypeError, msgspec.DecodeError) as exc:
        raise VerificationError(f"the prover's sealed claim does not open: {exc}") from exc
    if sealed.tag != SEALED_TAG or sealed.job_id != job_id:
        raise VerificationError("the prover's sealed claim was made for another job")
    return sealed

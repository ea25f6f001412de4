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

import hashlib
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
    MAX_PROGRESS_TOKENS,
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


CHUNK_TAG: Final = b"opengrid/sealed-chunk/1\x00"
"""Domain tag of a sealed chunk's commitment (spec/verification.md §14.3)."""


class SealedChunk(msgspec.Struct, frozen=True, forbid_unknown_fields=True, array_like=True):
    """One chunk of a sealed streaming job's output, as its prover seals it to the client and to each
    auditor (spec/verification.md §14.3): output positions ``offset ..`` with one text piece per token."""

    tag: ShortText
    job_id: Annotated[bytes, msgspec.Meta(max_length=JOB_ID_BYTES)]
    offset: Annotated[int, msgspec.Meta(ge=0, le=MAX_TOKENS_LIMIT)]
    tokens: Annotated[list[TokenId], msgspec.Meta(max_length=MAX_PROGRESS_TOKENS)]
    pieces: Annotated[list[OutputText], msgspec.Meta(max_length=MAX_PROGRESS_TOKENS)]


def commit_chunk(job_id: bytes, salt: bytes, offset: int, tokens: list[int], pieces: list[str]) -> bytes:
    """The salted commitment to one sealed chunk, which the coordinator holds and the auditors' verdicts
    name: ``sha256(CHUNK_TAG || msgpack([job_id, salt, offset, tokens, pieces]))``. The salt (the job's,
    known to the client and the workers it sealed to) keeps the coordinator from testing guesses."""
    payload = msgspec.msgpack.encode((job_id, salt, offset, list(tokens), list(pieces)))
    return hashlib.sha256(CHUNK_TAG + payload).digest()


def seal_chunk(
    tokens: list[int],
    pieces: list[str],
    *,
    offset: int,
    job_id: bytes,
    to_box_key: bytes,
    signing_key: SigningKey,
) -> bytes:
    """Prover side: encrypt one chunk to an X25519 key (the client's ephemeral key, or a reader's box key
    from ``box_public_key``), authenticated with the prover's identity."""
    payload = msgspec.msgpack.encode(SealedChunk(SEALED_TAG, job_id, offset, tokens, pieces))
    return bytes(Box(_box_private_key(signing_key), PublicKey(to_box_key)).encrypt(payload))


def _open_chunk(box: Box, ciphertext: bytes, job_id: bytes, offset: int, n_tokens: int | None) -> SealedChunk:
    try:
        chunk = msgspec.msgpack.decode(box.decrypt(ciphertext), type=SealedChunk)
    except (CryptoError, ValueError, TypeError, msgspec.DecodeError) as exc:
        raise VerificationError(f"a sealed chunk does not open: {exc}") from exc
    if chunk.tag != SEALED_TAG or chunk.job_id != job_id:
        raise VerificationError("a sealed chunk was made for another job")
    count = len(chunk.tokens) if n_tokens is None else n_tokens
    if chunk.offset != offset or not 0 < len(chunk.tokens) == count == len(chunk.pieces):
        raise VerificationError(
            f"a sealed chunk holds positions {chunk.offset}.. with {len(chunk.tokens)} tokens and "
            f"{len(chunk.pieces)} pieces, not the {count} token(s) at {offset} it was sent as"
        )
    return chunk


def open_chunk_as_auditor(
    ciphertext: bytes,
    *,
    job_id: bytes,
    offset: int,
    n_tokens: int,
    prover_key: bytes,
    signing_key: SigningKey,
) -> SealedChunk:
    """Auditor side: a prover's chunk sealed to us; ``VerificationError`` if it does not open with the
    prover's key and ours, names another job, or is not the chunk it was sent as."""
    box = Box(_box_private_key(signing_key), PublicKey(box_public_key(prover_key)))
    return _open_chunk(box, ciphertext, job_id, offset, n_tokens)


def open_chunk_as_client(
    ciphertext: bytes, *, job_id: bytes, offset: int, prover_key: bytes, ephemeral: PrivateKey
) -> SealedChunk:
    """Client side: a verified chunk of its answer, sealed by the prover; ``VerificationError`` if it does
    not open, names another job or does not start at ``offset`` (the text streamed so far)."""
    box = Box(ephemeral, PublicKey(box_public_key(prover_key)))
    return _open_chunk(box, ciphertext, job_id, offset, None)

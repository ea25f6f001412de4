"""The client's half of sealed mode: pick workers from a quote, seal the prompt to each, open the answer.

The coordinator never sees the prompt or the output; the client checks everything it relies on:
- each quoted worker's box key is re-derived from the worker's own peer id (a swapped key is refused);
- the opened output matches the receipt's salted commitment, which the agreeing workers attested to.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from nacl.public import PrivateKey

from opengrid.errors import VerificationError
from opengrid.net.keys import public_key_of
from opengrid.wire.commitment import SALT_BYTES, commit_output
from opengrid.wire.messages import JobAccepted, PromptFormat, Quote, Sealed, SubmitJob
from opengrid.wire.sealed import SealedOutput, box_public_key, open_output, seal_prompt


@dataclass(frozen=True)
class SealedJob:
    """A sealed submission and the secrets needed to open its answer (kept by the client only)."""

    request: SubmitJob
    ephemeral: PrivateKey
    salt: bytes


def check_quote(
    quote: Quote, *, trusted: list[str] | None, exposure: int | None = None, replicas: int = 1
) -> list[str]:
    """Peer ids of the quoted workers, after checking every key binding and the exposure cap."""
    if exposure is not None and len(quote.workers) > exposure:
        raise VerificationError(
            f"the coordinator quoted {len(quote.workers)} workers, more than the {exposure} allowed to see "
            "the prompt; not sealing to any of them"
        )
    if len(quote.workers) < replicas:
        raise VerificationError(
            f"the quote lists {len(quote.workers)} workers, fewer than {replicas} replicas"
        )
    peers = []
    for worker in quote.workers:
        if public_key_of(worker.peer_id) != worker.public_key:
            raise VerificationError(f"the coordinator quoted a public key that is not {worker.peer_id}'s")
        if box_public_key(worker.public_key) != worker.box_key:
            raise VerificationError(
                f"the coordinator swapped the encryption key of worker {worker.peer_id}; not sealing to it"
            )
        if trusted and worker.peer_id not in trusted:
            raise VerificationError(
                f"the coordinator offered {worker.peer_id}, which is not in your trusted list"
            )
        peers.append(worker.peer_id)
    if len(set(peers)) != len(peers):
        raise VerificationError("the quote lists a worker twice")
    return peers


def seal_job(
    prompt: str,
    *,
    peers: list[str],
    model: str,
    max_tokens: int,
    replicas: int,
    format: PromptFormat = "text",
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int = 0,
) -> SealedJob:
    """Seal ``prompt`` to each of ``peers`` under one fresh ephemeral key and salt. The sampling settings
    travel in the clear (the coordinator writes them into the job's contract, spec/verification.md §2)."""
    ephemeral = PrivateKey.generate()
    salt = secrets.token_bytes(SALT_BYTES)
    job_id = secrets.token_bytes(16)
    # Every worker sealed to learns who else was (their keys): a prover seals its claimed output to those
    # alone, so that any of them can audit it (spec/sealed-mode.md §11) and nobody else can read it.
    readers = [public_key_of(peer) for peer in peers]
    sealed = [
        Sealed(
            peer_id=peer,
            ciphertext=seal_prompt(
                prompt, job_id=job_id, salt=salt, worker_key=key, ephemeral=ephemeral, readers=readers
            ),
        )
        for peer, key in zip(peers, readers, strict=True)
    ]
    request = SubmitJob(
        job_id=job_id,
        model=model,
        prompt="",
        max_tokens=max_tokens,
        replicas=replicas,
        format=format,
        sealed=sealed,
        client_box_key=bytes(ephemeral.public_key),
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
    )
    return SealedJob(request=request, ephemeral=ephemeral, salt=salt)


def open_answer(job: SealedJob, reply: JobAccepted, commitment: bytes) -> SealedOutput:
    """Open the first agreeing worker's output that matches ``commitment`` (from the verified receipt).

    A worker whose ciphertext does not match what it attested is skipped; if none matches, the answer
    was tampered with and ``VerificationError`` says so.
    """
    problems = []
    for sealed in reply.sealed_outputs:
        if sealed.peer_id not in reply.workers:
            continue
        try:
            output = open_output(
                sealed.ciphertext,
                job_id=job.request.job_id,
                worker_key=public_key_of(sealed.peer_id),
                ephemeral=job.ephemeral,
            )
        except VerificationError as exc:
            problems.append(f"{sealed.peer_id}: {exc}")
            continue
        if commit_output(output.tokens, output.text, job.salt) == commitment:
            return output
        problems.append(f"{sealed.peer_id}: its sealed output does not match the commitment it attested")
    raise VerificationError(
        "no sealed output matches the receipt: " + ("; ".join(problems) or "none was sent")
    )

"""The client's sealed-mode checks, without a network: quotes, sealing and opening."""

from __future__ import annotations

import msgspec
import pytest
from nacl.signing import SigningKey
from opengrid_sdk.sealed import check_quote, open_answer, seal_job

from opengrid.errors import VerificationError
from opengrid.net.keys import peer_id_of
from opengrid.wire.commitment import commit_output
from opengrid.wire.messages import JobAccepted, Quote, QuotedWorker, Sealed
from opengrid.wire.sealed import box_public_key, open_prompt, seal_output

WORKERS = [SigningKey(bytes([i]) * 32) for i in range(1, 4)]


def _quoted(key: SigningKey, *, box_key: bytes | None = None) -> QuotedWorker:
    public = bytes(key.verify_key)
    return QuotedWorker(
        peer_id=peer_id_of(public), public_key=public, box_key=box_key or box_public_key(public)
    )


def test_an_honest_quote_is_accepted() -> None:
    quote = Quote(model="tiny", workers=[_quoted(k) for k in WORKERS])
    assert check_quote(quote, trusted=None) == [peer_id_of(bytes(k.verify_key)) for k in WORKERS]


def test_a_coordinator_swapping_a_worker_key_is_caught() -> None:
    attacker = SigningKey(b"\x66" * 32)
    swapped = _quoted(WORKERS[0], box_key=box_public_key(bytes(attacker.verify_key)))
    with pytest.raises(VerificationError, match="swapped the encryption key"):
        check_quote(Quote(model="tiny", workers=[swapped, _quoted(WORKERS[1])]), trusted=None)


def test_a_quote_claiming_someone_elses_public_key_is_caught() -> None:
    honest = _quoted(WORKERS[0])
    lying = msgspec.structs.replace(honest, public_key=bytes(WORKERS[1].verify_key))
    with pytest.raises(VerificationError, match="not"):
        check_quote(Quote(model="tiny", workers=[lying]), trusted=None)


def test_untrusted_workers_are_refused() -> None:
    quote = Quote(model="tiny", workers=[_quoted(WORKERS[0])])
    with pytest.raises(VerificationError, match="trusted"):
        check_quote(quote, trusted=[peer_id_of(bytes(WORKERS[1].verify_key))])


def test_each_worker_opens_only_its_own_copy_and_outputs_are_checked_against_the_commitment() -> None:
    peers = [peer_id_of(bytes(k.verify_key)) for k in WORKERS[:2]]
    job = seal_job("secret prompt", peers=peers, model="tiny", max_tokens=4, replicas=2)
    assert b"secret prompt" not in msgspec.msgpack.encode(job.request)
    client_key = job.request.client_box_key
    opened = open_prompt(
        job.request.sealed[0].ciphertext,
        job_id=job.request.job_id,
        client_box_key=client_key,
        signing_key=WORKERS[0],
    )
    assert opened.prompt == "secret prompt" and opened.salt == job.salt
    with pytest.raises(Exception, match="does not open"):
        open_prompt(
            job.request.sealed[0].ciphertext,
            job_id=job.request.job_id,
            client_box_key=client_key,
            signing_key=WORKERS[1],
        )

    tokens, text = [5, 6, 7], "abc"
    commitment = commit_output(tokens, text, job.salt)
    good = seal_output(
        tokens, text, "length", job_id=job.request.job_id, client_box_key=client_key, signing_key=WORKERS[1]
    )
    bad = seal_output(
        tokens, "xyz", "length", job_id=job.request.job_id, client_box_key=client_key, signing_key=WORKERS[0]
    )
    reply = JobAccepted(
        job_id=job.request.job_id,
        text="",
        tokens=[],
        finish_reason="",
        receipt=b"",
        workers=peers,
        sealed_outputs=[Sealed(peer_id=peers[0], ciphertext=bad), Sealed(peer_id=peers[1], ciphertext=good)],
    )
    assert open_answer(job, reply, commitment).text == "abc"  # the lie is skipped
    only_bad = msgspec.structs.replace(reply, sealed_outputs=[Sealed(peer_id=peers[0], ciphertext=bad)])
    with pytest.raises(VerificationError, match="does not match"):
        open_answer(job, only_bad, commitment)


def test_a_quote_over_the_exposure_cap_is_refused() -> None:
    quote = Quote(model="tiny", workers=[_quoted(k) for k in WORKERS])
    with pytest.raises(VerificationError, match="more than the 2 allowed"):
        check_quote(quote, trusted=None, exposure=2, replicas=2)
    with pytest.raises(VerificationError, match="fewer than 4 replicas"):
        check_quote(quote, trusted=None, exposure=8, replicas=4)

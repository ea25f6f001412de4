"""Sealed chunked streaming (spec/verification.md §14.3, spec/sealed-mode.md §12): a sealed job in audit
mode streams its answer chunk by chunk, each chunk sealed by the prover to the client and to the auditors
with a salted commitment; the coordinator relays ciphertexts, commitments and verdicts only, and forwards
the client's ciphertext of a chunk once every auditor passed it. No network: the machine fed events
directly, with real keys, real sealing and opening (WorkerLogic, the SDK's helpers)."""

from __future__ import annotations

from collections.abc import Sequence

import msgspec
import pytest
from grid_harness import HONEST, Grid, audits, dispatches, evidence_for, finished, of_type
from opengrid_sdk.receipts import SignedReceipt
from opengrid_sdk.sealed import SealedJob, open_answer, seal_job

from opengrid.core.audit import PositionEvidence
from opengrid.core.coordinator import CoordinatorConfig, streaming
from opengrid.core.effects import (
    CancelReplica,
    DispatchAudit,
    DispatchReplica,
    Effect,
    FinishJob,
    ForwardVerified,
    Penalize,
    SendAuditChunk,
)
from opengrid.core.events import (
    AuditReturned,
    ChunkAudited,
    JobSubmitted,
    ReplicaFailed,
    ReplicaReturned,
    SealedChunkReported,
)
from opengrid.core.stream_chunks import chunk_verdict
from opengrid.core.worker import Output
from opengrid.net.keys import peer_id_of, public_key_of
from opengrid.wire.codec import decode_message, encode_message
from opengrid.wire.messages import AuditReport, ChunkVerdict, ErrorReply, JobAccepted, Message, SealedProgress
from opengrid.wire.sealed import commit_chunk, open_chunk_as_client

# Chunks of 2 tokens, then up to 4: HONEST's 5 tokens stream as [0, 2) and [2, 5).
CONFIG = CoordinatorConfig(
    verify="audit", canary_rate=0.0, adaptive=False, stream_chunk_first=2, stream_chunk_max=4
)
SECRET = "the launch code is 0000"
PIECES = (" the", " quick", " brown", " fox", "")
LIE = Output(tokens=(101, 202, 999, 998, 997), text=" the quick red hen", finish_reason="length")
LIE_PIECES = (" the", " quick", " red", " hen", "")


def _grid(n: int) -> tuple[Grid, list[str]]:
    """A grid in audit mode whose worker names are their real peer ids (sealing derives keys from them)."""
    grid = Grid(n=n, config=CONFIG)
    names = {peer: peer_id_of(grid.key(peer)) for peer in grid.workers}
    grid.workers = {names[p]: w for p, w in grid.workers.items()}
    grid.register()
    return grid, sorted(names.values())


def _submit(grid: Grid, peers: list[str]) -> tuple[SealedJob, DispatchReplica, DispatchAudit]:
    """The sealed streaming job, its prover and the chunked audit opened with it (its auditor is drawn
    at dispatch among the prover's readers and opens the sealed prompt meanwhile, §14.2-§14.3)."""
    job = seal_job(SECRET, peers=peers, model="tiny", max_tokens=16, replicas=1)
    job = SealedJob(
        request=msgspec.structs.replace(job.request, stream=True), ephemeral=job.ephemeral, salt=job.salt
    )
    effects = grid.coordinator.handle(JobSubmitted(client="client", request=job.request), 0.0)
    runs = dispatches(effects)
    assert len(runs) == 1, "audit mode generates once"
    [opening] = audits(effects)
    return job, runs[0], opening


def _chunk(
    grid: Grid,
    run: DispatchReplica,
    start: int,
    end: int,
    *,
    output: Output = HONEST,
    pieces: Sequence[str] = PIECES,
) -> SealedProgress:
    """What the prover sends: tokens ``start .. end - 1`` sealed to the client and to its readers."""
    worker = grid.workers[run.peer]
    salt = worker.open_sealed(run.run).salt
    sealed = worker.seal_chunk(
        run.run, start, list(output.tokens[start:end]), list(pieces[start:end]), salt=salt
    )
    decoded = decode_message(encode_message(sealed))
    assert isinstance(decoded, SealedProgress)
    return decoded


def _report_chunk(grid: Grid, opening: DispatchAudit, sent: SendAuditChunk) -> ChunkVerdict:
    """An honest auditor's verdict: it opens the chunk itself, checks the commitment and scores it (gap 12
    where the chunk departs from HONEST)."""
    auditor = grid.workers[opening.peer]
    prompt = auditor.open_sealed_stream_audit(opening.audit)
    assert prompt.prompt == SECRET
    opened = auditor.open_sealed_chunk(opening.audit, sent.chunk, prompt.salt)
    assert not isinstance(opened, str), opened
    tokens, _pieces = opened
    honest = HONEST.tokens[sent.chunk.offset :]
    evidence = [
        PositionEvidence(
            token=t,
            logprob=-0.05,
            gap=0.05 if i < len(honest) and honest[i] == t else 12.0,
            rank=0,
            mask_margin=0.0,
        )
        for i, t in enumerate(tokens)
    ]
    verdict = chunk_verdict(opening.audit.job_id, sent.chunk.offset, evidence, CONFIG.audit_tolerance)
    return msgspec.structs.replace(verdict, commitment=sent.chunk.commitment)


def _final_report(
    grid: Grid, opening: DispatchAudit, sent: SendAuditChunk, streamed: list[int]
) -> AuditReport:
    """What the auditor answers to the final chunk: the prover's whole claim opened and checked against
    the chunks it scored, then reported as a sealed audit."""
    auditor = grid.workers[opening.peer]
    whole = msgspec.structs.replace(
        opening.audit, sealed_claim=sent.chunk.sealed_claim, claim_attestation=sent.chunk.claim_attestation
    )
    opened = auditor.open_sealed_audit(whole)
    assert not isinstance(opened, str), opened
    prompt, claim = opened
    assert list(claim.tokens) == streamed, "the claim is the chunks it scored"
    as_open = msgspec.structs.replace(
        whole, tokens=claim.tokens, text=claim.text, finish_reason=claim.finish_reason, chunked=False
    )
    return auditor.report(whole, evidence_for(as_open, 12.0), claim=claim, salt=prompt.salt)


def _opened(job: SealedJob, effects: Sequence[Effect], offset: int) -> tuple[list[int], str]:
    """The client's side: open each verified chunk forwarded, in order from ``offset``."""
    tokens: list[int] = []
    text = ""
    for forward in of_type(effects, ForwardVerified):
        assert forward.sealed is not None and forward.text == ""
        chunk = open_chunk_as_client(
            forward.sealed.ciphertext,
            job_id=job.request.job_id,
            offset=offset + len(tokens),
            prover_key=public_key_of(forward.sealed.peer_id),
            ephemeral=job.ephemeral,
        )
        assert forward.commitment == commit_chunk(
            job.request.job_id, job.salt, chunk.offset, chunk.tokens, chunk.pieces
        ), "the client checks each chunk against the commitment its auditors named"
        tokens += chunk.tokens
        text += "".join(chunk.pieces)
    return tokens, text


def _wire(effects: Sequence[Effect], received: Sequence[Message]) -> bytes:
    """Every message the coordinator sent or received, as wire bytes."""
    out = b"".join(encode_message(m) for m in received)
    for effect in effects:
        if isinstance(effect, DispatchReplica):
            out += encode_message(effect.run)
        elif isinstance(effect, DispatchAudit):
            out += encode_message(effect.audit)
        elif isinstance(effect, SendAuditChunk):
            out += encode_message(effect.chunk)
        elif isinstance(effect, FinishJob):
            out += encode_message(effect.reply)
        elif isinstance(effect, ForwardVerified) and effect.sealed is not None:
            out += effect.text.encode() + effect.sealed.ciphertext
    return out


def test_sealed_chunks_are_audited_as_they_stream_and_forwarded_sealed_once_passed() -> None:
    grid, peers = _grid(3)
    job, run, opening = _submit(grid, peers)
    job_id = job.request.job_id
    assert run.run.stream and (run.run.chunk_first, run.run.chunk_max) == (2, 4), "the prover cuts the chunks"
    assert run.run.prompt == "" and run.run.sealed_prompt
    effects: list[Effect] = [opening]  # its sealed prompt is on the wire too
    received: list[Message] = [job.request]

    first = _chunk(grid, run, 0, 2)
    received.append(first)
    opened = grid.coordinator.handle(SealedChunkReported(job_id, run.peer, first), 0.5)
    effects += opened
    assert opening.peer != run.peer and not audits(opened), "the auditor was drawn at dispatch"
    audit = opening.audit
    assert audit.chunked and audit.prover_key == grid.key(run.peer)
    assert audit.sealed_prompt == {s.peer_id: s.ciphertext for s in job.request.sealed}[opening.peer]
    sent = of_type(opened, SendAuditChunk)
    assert [(s.chunk.offset, s.chunk.end, s.chunk.tokens, s.chunk.commitment) for s in sent] == [
        (0, 2, [], first.commitment)
    ]
    assert not of_type(opened, ForwardVerified), "nothing is verified before its audit"

    verdict = _report_chunk(grid, opening, sent[0])
    received.append(verdict)
    passed = grid.coordinator.handle(ChunkAudited(job_id, opening.peer, verdict), 0.6)
    effects += passed
    assert _opened(job, passed, 0) == ([101, 202], " the quick"), "the client opens its verified chunk"

    second = _chunk(grid, run, 2, 5)
    received.append(second)
    relayed = grid.coordinator.handle(SealedChunkReported(job_id, run.peer, second), 0.7)
    effects += relayed
    [next_chunk] = of_type(relayed, SendAuditChunk)
    verdict = _report_chunk(grid, opening, next_chunk)
    received.append(verdict)
    passed = grid.coordinator.handle(ChunkAudited(job_id, opening.peer, verdict), 0.8)
    effects += passed
    assert _opened(job, passed, 2) == ([303, 404, 505], " brown fox")

    worker = grid.workers[run.peer]
    result = worker.attest(run.run, HONEST, salt=worker.open_sealed(run.run).salt)
    received.append(result)
    claimed = grid.coordinator.handle(ReplicaReturned(job_id, run.peer, result), 1.0)
    effects += claimed
    [final] = of_type(claimed, SendAuditChunk)
    assert (
        final.chunk.final and final.chunk.sealed_claim and final.chunk.claim_attestation == result.attestation
    )
    report = _final_report(grid, opening, final, list(HONEST.tokens))
    assert report.verdict == "pass"
    received.append(report)
    done = grid.coordinator.handle(AuditReturned(job_id, opening.peer, report), 1.1)
    effects += done
    reply = finished(done)
    assert isinstance(reply, JobAccepted), reply
    signed = SignedReceipt(entry=reply.receipt, network="testnet", salt=job.salt)
    output = open_answer(job, reply, signed.receipt.output_commitment)
    assert output.text == HONEST.text and output.text.startswith(" the quick brown fox")

    # The coordinator held ciphertexts, commitments and verdicts only: no prompt, token text or answer.
    seen = _wire(effects, received)
    for plaintext in (SECRET, HONEST.text, " quick", " brown"):
        assert plaintext.encode() not in seen
    assert not grid.coordinator.active_jobs


def test_a_failing_sealed_chunk_stops_the_prover_and_the_rerun_repeats_the_verified_prefix() -> None:
    grid, peers = _grid(4)
    job, run, opening = _submit(grid, peers)
    job_id = job.request.job_id
    opened = grid.coordinator.handle(SealedChunkReported(job_id, run.peer, _chunk(grid, run, 0, 2)), 0.5)
    [sent] = of_type(opened, SendAuditChunk)
    forwarded = grid.coordinator.handle(
        ChunkAudited(job_id, opening.peer, _report_chunk(grid, opening, sent)), 0.6
    )
    streamed, _ = _opened(job, forwarded, 0)

    lie = _chunk(grid, run, 2, 5, output=LIE, pieces=LIE_PIECES)
    [bad] = of_type(grid.coordinator.handle(SealedChunkReported(job_id, run.peer, lie), 0.7), SendAuditChunk)
    verdict = _report_chunk(grid, opening, bad)
    assert verdict.verdict == "fail" and verdict.first_failure == 2
    rejected = grid.coordinator.handle(ChunkAudited(job_id, opening.peer, verdict), 0.8)
    assert not of_type(rejected, ForwardVerified), "the lie never reaches the client"
    assert CancelReplica(peer=run.peer, job_id=job_id) in rejected, "the prover is stopped at once"
    assert [p.peer for p in of_type(rejected, Penalize)] == [run.peer]
    [rerun] = dispatches(rejected)
    assert rerun.peer != run.peer and rerun.run.chunk_first == 2
    [opening2] = audits(rejected)  # the re-run's auditor, drawn with it
    assert opening2.peer not in (run.peer, rerun.peer)

    # The re-run's first chunk is the verified one again (same cut, same salted commitment): not re-sent.
    again = grid.coordinator.handle(SealedChunkReported(job_id, rerun.peer, _chunk(grid, rerun, 0, 2)), 1.0)
    assert not audits(again)
    [sent] = of_type(again, SendAuditChunk)
    repeat = grid.coordinator.handle(
        ChunkAudited(job_id, opening2.peer, _report_chunk(grid, opening2, sent)), 1.1
    )
    assert not of_type(repeat, ForwardVerified), "the client has these tokens already"
    [rest] = of_type(
        grid.coordinator.handle(SealedChunkReported(job_id, rerun.peer, _chunk(grid, rerun, 2, 5)), 1.2),
        SendAuditChunk,
    )
    more = grid.coordinator.handle(
        ChunkAudited(job_id, opening2.peer, _report_chunk(grid, opening2, rest)), 1.3
    )
    tail, text = _opened(job, more, 2)
    assert streamed + tail == list(HONEST.tokens) and text == " brown fox"

    worker = grid.workers[rerun.peer]
    result = worker.attest(rerun.run, HONEST, salt=worker.open_sealed(rerun.run).salt)
    [final] = of_type(
        grid.coordinator.handle(ReplicaReturned(job_id, rerun.peer, result), 1.4), SendAuditChunk
    )
    report = _final_report(grid, opening2, final, list(HONEST.tokens))
    reply = finished(grid.coordinator.handle(AuditReturned(job_id, opening2.peer, report), 1.5))
    assert isinstance(reply, JobAccepted) and reply.failed == [run.peer]
    signed = SignedReceipt(entry=reply.receipt, network="testnet", salt=job.salt)
    assert grid.key(run.peer) not in {c.account for c in signed.receipt.credits}, "the cheater earns nothing"


def test_a_rerun_that_departs_from_the_verified_sealed_prefix_fails_the_job() -> None:
    grid, peers = _grid(4)
    job, run, opening = _submit(grid, peers)
    job_id = job.request.job_id
    opened = grid.coordinator.handle(SealedChunkReported(job_id, run.peer, _chunk(grid, run, 0, 2)), 0.5)
    [sent] = of_type(opened, SendAuditChunk)
    grid.coordinator.handle(ChunkAudited(job_id, opening.peer, _report_chunk(grid, opening, sent)), 0.6)
    lie = _chunk(grid, run, 2, 5, output=LIE, pieces=LIE_PIECES)
    [bad] = of_type(grid.coordinator.handle(SealedChunkReported(job_id, run.peer, lie), 0.7), SendAuditChunk)
    rejected = grid.coordinator.handle(
        ChunkAudited(job_id, opening.peer, _report_chunk(grid, opening, bad)), 0.8
    )
    [rerun] = dispatches(rejected)
    other = Output(tokens=(7, 8), text="xy", finish_reason="length")
    departs = _chunk(grid, rerun, 0, 2, output=other, pieces=("x", "y"))
    reply = finished(grid.coordinator.handle(SealedChunkReported(job_id, rerun.peer, departs), 1.0))
    assert isinstance(reply, ErrorReply) and reply.code == "verification_failed"
    assert "did not reproduce the 2 tokens" in reply.message


def test_a_verdict_naming_another_commitment_is_the_auditors_fault() -> None:
    grid, peers = _grid(4)
    job, run, opening = _submit(grid, peers)
    job_id = job.request.job_id
    opened = grid.coordinator.handle(SealedChunkReported(job_id, run.peer, _chunk(grid, run, 0, 2)), 0.5)
    [sent] = of_type(opened, SendAuditChunk)
    verdict = msgspec.structs.replace(_report_chunk(grid, opening, sent), commitment=bytes(32))
    effects = grid.coordinator.handle(ChunkAudited(job_id, opening.peer, verdict), 0.6)
    assert [p.peer for p in of_type(effects, Penalize)] == [opening.peer]
    assert not of_type(effects, ForwardVerified)
    [replacement] = audits(effects)
    assert replacement.peer not in (opening.peer, run.peer)
    assert [s.chunk.commitment for s in of_type(effects, SendAuditChunk)] == [sent.chunk.commitment]


def test_a_sealed_chunk_not_sealed_to_every_reader_fails_the_prover() -> None:
    grid, peers = _grid(3)
    job, run, opening = _submit(grid, peers)
    chunk = _chunk(grid, run, 0, 2)
    short = msgspec.structs.replace(chunk, to_readers=chunk.to_readers[:1])
    effects = grid.coordinator.handle(SealedChunkReported(job.request.job_id, run.peer, short), 0.5)
    assert [p.peer for p in of_type(effects, Penalize)] == [run.peer]
    assert CancelReplica(peer=run.peer, job_id=job.request.job_id) in effects
    assert CancelReplica(peer=opening.peer, job_id=job.request.job_id) in effects, "its auditor too"


def test_only_the_last_sealed_chunk_may_be_short() -> None:
    grid, peers = _grid(3)
    job, run, opening = _submit(grid, peers)
    job_id = job.request.job_id
    short = _chunk(grid, run, 0, 1)  # the policy's first chunk has 2 tokens: this one must be the last
    relayed = grid.coordinator.handle(SealedChunkReported(job_id, run.peer, short), 0.5)
    assert [s.peer for s in of_type(relayed, SendAuditChunk)] == [opening.peer]
    effects = grid.coordinator.handle(SealedChunkReported(job_id, run.peer, _chunk(grid, run, 1, 3)), 0.6)
    assert [p.peer for p in of_type(effects, Penalize)] == [run.peer]
    assert "follows a short chunk" in of_type(effects, Penalize)[0].why
    assert CancelReplica(peer=run.peer, job_id=job_id) in effects


def test_a_prover_cannot_make_the_coordinator_hold_unbounded_ciphertext(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(streaming, "MAX_SEALED_STREAM_BYTES", 1000)
    grid, peers = _grid(3)
    job, run, opening = _submit(grid, peers)
    chunk = _chunk(grid, run, 0, 2)
    bloated = msgspec.structs.replace(chunk, to_client=chunk.to_client + bytes(1000))
    effects = grid.coordinator.handle(SealedChunkReported(job.request.job_id, run.peer, bloated), 0.5)
    assert [p.peer for p in of_type(effects, Penalize)] == [run.peer]
    assert "pass 1000 bytes" in of_type(effects, Penalize)[0].why
    assert CancelReplica(peer=opening.peer, job_id=job.request.job_id) in effects, "its auditor too"


def test_a_sealed_provers_auditor_opens_at_dispatch_and_stops_with_it() -> None:
    """The auditor is drawn with the prover, among its readers; a prover that fails before any chunk
    takes it down, and one whose result attests tokens it never streamed is rejected as a liar."""
    grid, peers = _grid(4)
    job, run, opening = _submit(grid, peers)
    job_id = job.request.job_id
    assert grid.key(opening.peer) in run.run.readers and opening.audit.chunked
    failed = grid.coordinator.handle(ReplicaFailed(job_id, run.peer, "engine crashed"), 0.5)
    assert CancelReplica(peer=opening.peer, job_id=job_id) in failed
    [rerun] = dispatches(failed)
    [again] = audits(failed)
    assert again.peer not in (run.peer, rerun.peer) and grid.key(again.peer) in rerun.run.readers
    worker = grid.workers[rerun.peer]
    result = worker.attest(rerun.run, HONEST, salt=worker.open_sealed(rerun.run).salt)
    silent = grid.coordinator.handle(ReplicaReturned(job_id, rerun.peer, result), 1.0)
    assert [p.peer for p in of_type(silent, Penalize)] == [rerun.peer]
    assert "its sealed chunks held 0" in of_type(silent, Penalize)[0].why
    assert CancelReplica(peer=again.peer, job_id=job_id) in silent

"""Sealed audits (spec/sealed-mode.md §11, spec/verification.md §13.1): a sealed job in audit mode is
generated once by a worker it was sealed to and re-scored by another of them; the coordinator routes
ciphertexts, commitments and verdicts only.

Real keys, real WorkerLogic sealing, opening, attesting and reporting; the client side uses the SDK's
sealing helpers. The auditor's evidence is made as an engine would give it (``evidence_for``)."""

from __future__ import annotations

import msgspec
import pytest
from grid_harness import (
    CHEAT_GAP,
    HONEST,
    Grid,
    audits,
    cheat,
    dispatches,
    evidence_for,
    finished,
    of_type,
    open_receipt,
)
from opengrid_sdk.receipts import SignedReceipt
from opengrid_sdk.sealed import SealedJob, open_answer, seal_job

from opengrid.core.coordinator import CoordinatorConfig
from opengrid.core.effects import DispatchAudit, DispatchReplica, Effect, FinishJob, Penalize
from opengrid.core.events import AuditReturned, JobSubmitted, ReplicaReturned
from opengrid.core.worker import Output
from opengrid.errors import RemoteProtocolError
from opengrid.net.keys import peer_id_of
from opengrid.wire.codec import encode_message
from opengrid.wire.messages import AuditReport, ErrorReply, JobAccepted, ReplicaResult
from opengrid.wire.sealed import seal_claim, seal_output

AUDIT = CoordinatorConfig(verify="audit", canary_rate=0.0, adaptive=False)
SECRET = "the launch code is 0000"


def _grid(n: int) -> tuple[Grid, list[str]]:
    """A grid in audit mode whose worker names are their real peer ids (sealing derives keys from them)."""
    grid = Grid(n=n, config=AUDIT)
    names = {peer: peer_id_of(grid.key(peer)) for peer in grid.workers}
    grid.workers = {names[p]: w for p, w in grid.workers.items()}
    grid.register()
    return grid, sorted(names.values())


def _submit(grid: Grid, peers: list[str]) -> tuple[SealedJob, list[Effect]]:
    job = seal_job(SECRET, peers=peers, model="tiny", max_tokens=16, replicas=2)
    return job, grid.coordinator.handle(JobSubmitted(client="client", request=job.request), 0.0)


def _claim(grid: Grid, dispatch: DispatchReplica, output: Output) -> ReplicaResult:
    worker = grid.workers[dispatch.peer]
    return worker.attest(dispatch.run, output, salt=worker.open_sealed(dispatch.run).salt)


def _report(grid: Grid, dispatch: DispatchAudit) -> AuditReport:
    """What an honest auditor answers: it opens the prompt and the claim itself and scores the claim."""
    auditor = grid.workers[dispatch.peer]
    assert auditor.accept_audit(dispatch.audit) is None
    opened = auditor.open_sealed_audit(dispatch.audit)
    if isinstance(opened, str):
        return auditor.report(dispatch.audit, (), problem=opened)
    prompt, claim = opened
    assert prompt.prompt == SECRET
    as_open = msgspec.structs.replace(
        dispatch.audit, tokens=claim.tokens, text=claim.text, finish_reason=claim.finish_reason
    )
    return auditor.report(dispatch.audit, evidence_for(as_open, CHEAT_GAP), claim=claim, salt=prompt.salt)


def _seen(effects: list[Effect], *received: object) -> bytes:
    """Every message the coordinator sent or received, as wire bytes."""
    out = b""
    for message in received:
        out += encode_message(message)  # type: ignore[arg-type]
    for effect in effects:
        if isinstance(effect, DispatchReplica):
            out += encode_message(effect.run)
        elif isinstance(effect, DispatchAudit):
            out += encode_message(effect.audit)
        elif isinstance(effect, FinishJob):
            out += encode_message(effect.reply)
    return out


def test_a_sealed_job_is_generated_once_audited_by_another_sealed_to_worker_and_accepted() -> None:
    grid, peers = _grid(3)
    job, effects = _submit(grid, peers)
    runs = dispatches(effects)
    assert len(runs) == 1 and not audits(effects), "audit mode generates once"
    prover = runs[0].peer
    others = [p for p in peers if p != prover]
    assert sorted(runs[0].run.readers) == sorted(grid.key(p) for p in others)

    result = _claim(grid, runs[0], HONEST)
    assert result.tokens == [] and result.text == "" and result.sealed_output
    assert sorted(c.reader for c in result.sealed_claims) == sorted(grid.key(p) for p in others)
    after_claim = grid.coordinator.handle(ReplicaReturned(job.request.job_id, prover, result), 1.0)
    sent = audits(after_claim)
    assert len(sent) == 1 and sent[0].peer in others
    audit = sent[0].audit
    assert (audit.prompt, audit.tokens, audit.text, audit.finish_reason) == ("", [], "", "")
    assert audit.sealed_prompt == {s.peer_id: s.ciphertext for s in job.request.sealed}[sent[0].peer]
    assert audit.claim_attestation == result.attestation and audit.sealed_claim

    report = _report(grid, sent[0])
    assert report.verdict == "pass"
    done = grid.coordinator.handle(AuditReturned(job.request.job_id, sent[0].peer, report), 2.0)
    reply = finished(done)
    assert isinstance(reply, JobAccepted), reply
    assert reply.workers == [prover, sent[0].peer] and reply.text == "" and reply.tokens == []
    assert [s.peer_id for s in reply.sealed_outputs] == [prover, sent[0].peer]

    # The client opens the answer and checks the receipt, which credits prover and auditor.
    signed = SignedReceipt(entry=reply.receipt, network="testnet", salt=job.salt)
    output = open_answer(job, reply, signed.receipt.output_commitment)
    assert (tuple(output.tokens), output.text) == (HONEST.tokens, HONEST.text)
    signed.verify(tokens=list(output.tokens), text=output.text, job_id=job.request.job_id)
    _, receipt = open_receipt(reply.receipt)
    assert {c.account for c in receipt.credits} == {grid.key(prover), grid.key(sent[0].peer)}

    # Nothing the coordinator sent or received holds the prompt or the answer in plaintext.
    seen = _seen(effects + after_claim + done, job.request, result, report)
    assert SECRET.encode() not in seen and HONEST.text.encode() not in seen
    assert not grid.coordinator.active_jobs


def test_a_cheating_sealed_prover_is_caught_and_another_sealed_to_worker_answers() -> None:
    grid, peers = _grid(4)
    job, effects = _submit(grid, peers)
    cheater = dispatches(effects)[0]
    claim = _claim(grid, cheater, cheat(1))
    sent = audits(grid.coordinator.handle(ReplicaReturned(job.request.job_id, cheater.peer, claim), 1.0))
    report = _report(grid, sent[0])
    assert report.verdict == "fail"
    rejected = grid.coordinator.handle(AuditReturned(job.request.job_id, sent[0].peer, report), 2.0)
    assert [p.peer for p in of_type(rejected, Penalize)] == [cheater.peer]
    assert finished(rejected) is None
    rerun = dispatches(rejected)
    assert len(rerun) == 1 and rerun[0].peer in peers and rerun[0].peer != cheater.peer
    honest = _claim(grid, rerun[0], HONEST)
    second = audits(grid.coordinator.handle(ReplicaReturned(job.request.job_id, rerun[0].peer, honest), 3.0))
    assert second and second[0].peer not in (cheater.peer, rerun[0].peer)
    done = grid.coordinator.handle(
        AuditReturned(job.request.job_id, second[0].peer, _report(grid, second[0])), 4.0
    )
    reply = finished(done)
    assert isinstance(reply, JobAccepted) and reply.failed == [cheater.peer]
    signed = SignedReceipt(entry=reply.receipt, network="testnet", salt=job.salt)
    output = open_answer(job, reply, signed.receipt.output_commitment)
    assert output.text == HONEST.text, "the client gets the honest answer"
    assert grid.key(cheater.peer) not in {c.account for c in signed.receipt.credits}


def test_a_claim_sealed_to_the_auditor_unlike_the_attested_output_fails_the_prover() -> None:
    grid, peers = _grid(3)
    job, effects = _submit(grid, peers)
    run = dispatches(effects)[0]
    result = _claim(grid, run, HONEST)
    prover = grid.workers[run.peer]
    forged = [
        msgspec.structs.replace(
            c,
            ciphertext=seal_claim(
                [1, 2],
                "forged",
                "length",
                job_id=job.request.job_id,
                reader_key=c.reader,
                signing_key=prover._key,
            ),
        )
        for c in result.sealed_claims
    ]
    lying = msgspec.structs.replace(result, sealed_claims=forged)
    sent = audits(grid.coordinator.handle(ReplicaReturned(job.request.job_id, run.peer, lying), 1.0))
    report = _report(grid, sent[0])
    assert report.verdict == "fail" and "not the output it attested" in report.reason
    rejected = grid.coordinator.handle(AuditReturned(job.request.job_id, sent[0].peer, report), 2.0)
    assert [p.peer for p in of_type(rejected, Penalize)] == [run.peer]


def test_a_prover_that_seals_the_client_something_else_is_outvoted_by_its_auditors_copy() -> None:
    grid, peers = _grid(3)
    job, effects = _submit(grid, peers)
    run = dispatches(effects)[0]
    result = _claim(grid, run, HONEST)
    forged = seal_output(
        [9],
        "forged",
        "length",
        job_id=job.request.job_id,
        client_box_key=job.request.client_box_key,
        signing_key=grid.workers[run.peer]._key,
    )
    lying = msgspec.structs.replace(result, sealed_output=forged)
    sent = audits(grid.coordinator.handle(ReplicaReturned(job.request.job_id, run.peer, lying), 1.0))
    report = _report(grid, sent[0])
    reply = finished(grid.coordinator.handle(AuditReturned(job.request.job_id, sent[0].peer, report), 2.0))
    assert isinstance(reply, JobAccepted)
    signed = SignedReceipt(entry=reply.receipt, network="testnet", salt=job.salt)
    assert open_answer(job, reply, signed.receipt.output_commitment).text == HONEST.text


def test_a_sealed_result_without_a_claim_for_every_possible_auditor_is_invalid() -> None:
    grid, peers = _grid(3)
    job, effects = _submit(grid, peers)
    run = dispatches(effects)[0]
    result = _claim(grid, run, HONEST)
    short = msgspec.structs.replace(result, sealed_claims=result.sealed_claims[:1])
    after = grid.coordinator.handle(ReplicaReturned(job.request.job_id, run.peer, short), 1.0)
    assert [p.peer for p in of_type(after, Penalize)] == [run.peer]
    assert "sealed to each of the 2 other" in of_type(after, Penalize)[0].why
    assert not audits(after) and dispatches(after)[0].peer != run.peer


def test_a_prover_refuses_to_seal_its_output_to_a_worker_the_client_did_not_seal_to() -> None:
    grid, peers = _grid(4)
    _job, effects = _submit(grid, peers[:3])  # the fourth worker cannot read the prompt
    run = dispatches(effects)[0]
    stranger = grid.key(peers[3])
    tampered = msgspec.structs.replace(run.run, readers=[*run.run.readers, stranger])
    with pytest.raises(RemoteProtocolError, match="did not seal its prompt to"):
        grid.workers[run.peer].open_sealed(tampered)
    assert stranger not in run.run.readers, "the coordinator names only sealed-to workers"


def test_a_sealed_job_needs_room_for_a_prover_and_its_auditors() -> None:
    grid, peers = _grid(3)
    job = seal_job(SECRET, peers=peers[:1], model="tiny", max_tokens=16, replicas=1)
    reply = finished(grid.coordinator.handle(JobSubmitted(client="c", request=job.request), 0.0))
    assert isinstance(reply, ErrorReply) and reply.code == "malformed"
    assert "at least 2" in reply.message and "exposure=2" in reply.message


def test_a_sealed_job_on_a_grid_of_one_worker_is_told_to_add_a_worker_or_replicate() -> None:
    grid, peers = _grid(1)
    job = seal_job(SECRET, peers=peers, model="tiny", max_tokens=16, replicas=1)
    reply = finished(grid.coordinator.handle(JobSubmitted(client="c", request=job.request), 0.0))
    assert isinstance(reply, ErrorReply) and reply.code == "no_capacity"
    assert "add a worker" in reply.message and "--verify replicate" in reply.message


def test_when_the_sealed_to_workers_are_used_up_the_client_is_told_to_seal_afresh() -> None:
    grid, peers = _grid(3)
    job, effects = _submit(grid, peers[:2])
    cheater = dispatches(effects)[0]
    sent = audits(
        grid.coordinator.handle(
            ReplicaReturned(job.request.job_id, cheater.peer, _claim(grid, cheater, cheat(1))), 1.0
        )
    )
    rejected = grid.coordinator.handle(
        AuditReturned(job.request.job_id, sent[0].peer, _report(grid, sent[0])), 2.0
    )
    rerun = dispatches(rejected)
    assert [d.peer for d in rerun] == [sent[0].peer], "the auditor that caught it may prove next"
    after = grid.coordinator.handle(
        ReplicaReturned(job.request.job_id, rerun[0].peer, _claim(grid, rerun[0], HONEST)), 3.0
    )
    reply = finished(after)
    assert isinstance(reply, ErrorReply) and reply.code == "no_capacity", reply
    assert "quote again" in reply.message

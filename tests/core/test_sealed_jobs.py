"""Sealed jobs in the coordinator machine: ciphertext per worker, salted commitments, client faults.

Real keys, real WorkerLogic sealing and opening; the 'client' side uses the SDK's sealing helpers.
"""

from __future__ import annotations

from grid_harness import Grid, dispatches, finished, open_receipt
from opengrid_sdk.sealed import seal_job

from opengrid.core.coordinator import CoordinatorConfig
from opengrid.core.events import JobSubmitted, ReplicaFailed
from opengrid.core.worker import Output
from opengrid.net.keys import peer_id_of
from opengrid.wire.commitment import commit_output
from opengrid.wire.messages import ErrorReply, JobAccepted, Sealed
from opengrid.wire.sealed import open_output

OUTPUT = Output(tokens=(7, 8, 9), text="xyz", finish_reason="length")


def _sealed_grid() -> tuple[Grid, dict[str, str]]:
    """A grid whose worker names are their real peer ids (sealing derives keys from peer ids)."""
    grid = Grid(n=3, config=CoordinatorConfig.plain())
    names = {peer: peer_id_of(grid.key(peer)) for peer in grid.workers}
    grid.workers = {names[p]: w for p, w in grid.workers.items()}
    grid.register()
    return grid, names


def test_each_worker_gets_its_own_ciphertext_and_the_coordinator_sees_only_commitments() -> None:
    grid, names = _sealed_grid()
    allowed = [names["w0"], names["w1"]]
    job = seal_job("top secret", peers=allowed, model="tiny", max_tokens=8, replicas=2)
    effects = grid.coordinator.handle(JobSubmitted(client="client", request=job.request), 0.0)
    sent = dispatches(effects)
    assert sorted(d.peer for d in sent) == sorted(allowed)  # only workers the client sealed to
    for dispatch in sent:
        assert dispatch.run.prompt == "" and dispatch.run.sealed_prompt
        opened = grid.workers[dispatch.peer].open_sealed(dispatch.run)
        assert opened.prompt == "top secret" and opened.salt == job.salt

    effects = []
    for dispatch in sent:
        worker = grid.workers[dispatch.peer]
        result = worker.attest(dispatch.run, OUTPUT, salt=worker.open_sealed(dispatch.run).salt)
        assert result.tokens == [] and result.text == "" and result.sealed_output
        effects += grid.deliver(dispatch, result)
    reply = finished(effects)
    assert isinstance(reply, JobAccepted) and reply.tokens == [] and reply.text == ""
    _, receipt = open_receipt(reply.receipt)
    assert receipt.output_commitment == commit_output(OUTPUT.tokens, OUTPUT.text, job.salt)
    assert receipt.n_tokens == 3 and {c.points for c in receipt.credits} == {3}
    first: Sealed = reply.sealed_outputs[0]
    opened_output = open_output(
        first.ciphertext,
        job_id=job.request.job_id,
        worker_key=grid.workers[first.peer_id].public_key,
        ephemeral=job.ephemeral,
    )
    assert (opened_output.tokens, opened_output.text) == (list(OUTPUT.tokens), OUTPUT.text)


def test_a_sealed_job_with_a_plaintext_prompt_or_too_few_ciphertexts_is_refused() -> None:
    grid, names = _sealed_grid()
    job = seal_job("x", peers=[names["w0"]], model="tiny", max_tokens=8, replicas=2)
    reply = finished(grid.coordinator.handle(JobSubmitted(client="c", request=job.request), 0.0))
    assert isinstance(reply, ErrorReply) and "fewer than 2 replicas" in reply.message


def test_a_prompt_that_does_not_open_fails_the_job_without_blaming_the_worker() -> None:
    grid, names = _sealed_grid()
    job = seal_job("x", peers=[names["w0"], names["w1"]], model="tiny", max_tokens=8, replicas=2)
    sent = dispatches(grid.coordinator.handle(JobSubmitted(client="c", request=job.request), 0.0))
    first, second = (
        ReplicaFailed(job.request.job_id, d.peer, "malformed: does not open", client_fault=True) for d in sent
    )
    assert grid.coordinator.handle(first, 1.0) == []  # the other sealed-to worker is still running
    reply = finished(grid.coordinator.handle(second, 1.0))
    assert isinstance(reply, ErrorReply) and reply.code == "malformed"
    for dispatch in sent:
        assert grid.coordinator.workers[dispatch.peer].online  # not taken offline
        record = grid.coordinator.reputation.get(grid.workers[dispatch.peer].public_key)
        assert record is None or (record.timeouts, record.invalid) == (0, 0)

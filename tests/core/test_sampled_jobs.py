"""Sampled jobs in the core (spec/verification.md §2, §11, §13): the coordinator writes the client's
sampling settings into the job's contract, workers are matched on the class and refuse what they cannot
run, replicas and failovers stay in the class, the receipt signs the settings, auditors get the contract's
sampler, and a sampled answer never becomes a canary."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from grid_harness import (
    CONTRACT,
    HONEST,
    Grid,
    audits,
    dispatches,
    finished,
    job_id,
    open_receipt,
    signing_key,
)

from opengrid.core.coordinator import CoordinatorConfig
from opengrid.core.effects import Effect
from opengrid.core.events import JobSubmitted, ReplicaFailed, WorkerRegistered
from opengrid.wire.contract import DecodingContract
from opengrid.wire.messages import ErrorReply, JobAccepted, ModelOffer, RunJob, SubmitJob

SETTINGS: dict[str, Any] = {"temperature": 0.8, "top_k": 40, "top_p": 0.9, "seed": 12345}
SAMPLED = CONTRACT.sampled(**SETTINGS)
PLAIN = CoordinatorConfig.plain()


def _submit(grid: Grid, job: int, *, replicas: int = 2, **sampling: Any) -> list[Effect]:
    request = SubmitJob(
        job_id=job_id(job), model="tiny", prompt=f"prompt {job}", max_tokens=16, replicas=replicas, **sampling
    )
    return list(grid.coordinator.handle(JobSubmitted(client="client", request=request), 0.0))


def test_a_sampled_job_runs_in_its_class_under_the_clients_settings_and_the_receipt_signs_them() -> None:
    grid = Grid(n=3, config=PLAIN)
    grid.register()
    runs = dispatches(_submit(grid, 1, **SETTINGS))
    assert len(runs) == 2
    assert all(r.run.contract == SAMPLED for r in runs)
    assert (SAMPLED.temperature, SAMPLED.top_k, SAMPLED.top_p_value, SAMPLED.seed) == (0.8, 40, 0.9, 12345)
    assert SAMPLED.numerical_class() == CONTRACT
    reply = finished(grid.play(runs, [HONEST, HONEST]))  # every worker accepts it (Grid.result checks)
    assert isinstance(reply, JobAccepted)
    _, receipt = open_receipt(reply.receipt)
    assert receipt.contract_hash == SAMPLED.digest() != CONTRACT.digest()


def test_a_greedy_job_keeps_the_class_contract_whatever_seed_and_masks_say() -> None:
    grid = Grid(n=3, config=PLAIN)
    grid.register()
    runs = dispatches(_submit(grid, 1, temperature=0.0, top_k=7, top_p=0.5, seed=9))
    assert runs and all(r.run.contract == CONTRACT for r in runs)


def test_a_failed_replica_of_a_sampled_job_is_replaced_within_the_class() -> None:
    grid = Grid(n=3, config=PLAIN)
    grid.register()
    runs = dispatches(_submit(grid, 1, **SETTINGS))
    again = dispatches(grid.fail(runs[0]))
    assert len(again) == 1 and again[0].peer not in {r.peer for r in runs}
    assert again[0].run.contract == SAMPLED
    # A client-fault refusal (here: one worker says the job's sampler cannot run on its engine) sends the
    # job to another worker of the class too, until client_fault_quorum workers agree.
    grid2 = Grid(n=3, config=PLAIN)
    grid2.register()
    first = dispatches(_submit(grid2, 2, replicas=1, **SETTINGS))
    refused = ReplicaFailed(job_id(2), first[0].peer, "cannot sample", client_fault=True)
    retried = dispatches(grid2.coordinator.handle(refused, 1.0))
    assert len(retried) == 1 and retried[0].run.contract == SAMPLED and retried[0].peer != first[0].peer


def test_workers_refuse_another_class_and_settings_out_of_range() -> None:
    grid = Grid(n=1, config=PLAIN)
    worker = grid.workers["w0"]

    def run(contract: DecodingContract) -> RunJob:
        return RunJob(job_id=job_id(1), contract=contract, prompt="p", max_tokens=4)

    assert worker.accept(run(SAMPLED)) is None
    other = msgspec.structs.replace(SAMPLED, flash_attn=True)
    refusal = worker.accept(run(other))
    assert isinstance(refusal, ErrorReply) and refusal.code == "unknown_model"
    # Built without the wire's checks (a peer skipping them): the worker's sampler check answers.
    hot = msgspec.structs.replace(SAMPLED, temperature=50.0)
    refusal = worker.accept(run(hot))
    assert isinstance(refusal, ErrorReply) and refusal.code == "malformed"
    assert "temperature must be in [0, 10]" in refusal.message and "50" in refusal.message


def test_an_audit_of_a_sampled_job_carries_the_contracts_sampler_and_the_auditor_checks_it() -> None:
    grid = Grid(n=3, config=CoordinatorConfig(verify="audit", canary_rate=0.0, adaptive=False))
    grid.register()
    runs = dispatches(_submit(grid, 1, **SETTINGS))
    sent = audits(grid.answer(runs[0], HONEST))
    assert len(sent) == 1
    audit = sent[0].audit
    assert audit.contract == SAMPLED
    assert (audit.temperature, audit.top_k, audit.top_p, audit.seed) == (0.8, 40, 0.9, 12345)
    auditor = grid.workers[sent[0].peer]
    assert auditor.accept_audit(audit) is None
    for field, value in (("top_p", 0.5), ("seed", 1), ("temperature", 0.0)):
        tampered = msgspec.structs.replace(audit, **{field: value})
        refusal = auditor.accept_audit(tampered)
        assert isinstance(refusal, ErrorReply) and refusal.code == "malformed", field
        assert "not its contract's" in refusal.message
    assert isinstance(finished(grid.audit(sent[0])), JobAccepted)


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_only_greedy_answers_become_canaries(temperature: float) -> None:
    # A canary re-sends a verified prompt as a new job: a sampled answer would be another sample there,
    # and an honest worker would look like a cheat. So sampled answers are never kept for canaries.
    grid = Grid(
        n=3, config=CoordinatorConfig(verify="replicate", adaptive=False, weighted=False, canary_rate=1.0)
    )
    grid.register()
    first = _submit(grid, 1, **{**SETTINGS, "temperature": temperature})
    reply = finished(grid.play(dispatches(first), [HONEST, HONEST]))
    assert isinstance(reply, JobAccepted)
    later = dispatches(_submit(grid, 2, replicas=1))
    canaries = [d for d in later if d.run.job_id != job_id(2)]
    assert len(canaries) == (1 if temperature == 0.0 else 0)


HTTP_OFFERS = (
    ModelOffer(name="tiny", contract=msgspec.structs.replace(CONTRACT, backend="llama.cpp-server")),
)


def _register_http_workers(grid: Grid, n: int, *, slots: int = 4) -> set[str]:
    """Workers whose engine is a llama_cpp.server (greedy only), on the same weights as the grid's."""
    peers = {f"http{i}" for i in range(n)}
    for i, peer in enumerate(sorted(peers)):
        key = signing_key(f"http{i}").verify_key.encode()
        grid.coordinator.handle(WorkerRegistered(peer, key, HTTP_OFFERS, "", slots=slots), 0.0)
    return peers


def test_a_sampled_job_is_refused_where_only_http_engines_serve_the_model_and_a_greedy_one_runs() -> None:
    grid = Grid(n=0, config=PLAIN)
    _register_http_workers(grid, 2)
    reply = finished(_submit(grid, 1, **SETTINGS))
    assert isinstance(reply, ErrorReply) and reply.code == "no_capacity"
    assert "decodes greedily only" in reply.message and "send temperature 0" in reply.message
    assert len(dispatches(_submit(grid, 2))) == 2  # greedy: the HTTP workers take it


def test_a_sampled_job_runs_only_on_workers_that_run_its_sampler_in_a_mixed_grid() -> None:
    for job in range(1, 9):
        grid = Grid(n=3, config=PLAIN, seed=job)
        grid.register()
        http = _register_http_workers(grid, 4)  # the larger class: greedy jobs would go there
        runs = dispatches(_submit(grid, job, **SETTINGS))
        assert len(runs) == 2 and not {r.peer for r in runs} & http
        assert all(r.run.contract == SAMPLED for r in runs)


def test_a_sampled_claim_is_audited_only_by_workers_that_run_its_sampler() -> None:
    for job in range(1, 9):
        grid = Grid(n=2, config=CoordinatorConfig(verify="audit", canary_rate=0.0, adaptive=False), seed=job)
        grid.register()
        http = _register_http_workers(grid, 3)
        runs = dispatches(_submit(grid, job, **SETTINGS))
        sent = audits(grid.answer(runs[0], HONEST))
        assert len(sent) == 1 and sent[0].peer not in http and sent[0].peer != runs[0].peer

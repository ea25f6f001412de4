"""Adaptive replication (BOINC), trusted single results and canaries, driven by events only."""

from __future__ import annotations

import math

import pytest
from grid_harness import (
    CHEAT_GAP,
    HONEST,
    SWAPPED,
    Behaviour,
    Grid,
    audits,
    cheat,
    dispatches,
    finished,
    honest,
    job_id,
    lazy,
    of_type,
    open_receipt,
)

from opengrid.core.coordinator import CoordinatorConfig
from opengrid.core.effects import CancelReplica, Effect, FinishJob, Penalize
from opengrid.core.reputation import PROBATION_JOBS, Reputation, replication_probability
from opengrid.wire.messages import JobAccepted, RunJob

NO_CANARIES = CoordinatorConfig(verify="replicate", canary_rate=0.0)
PURE_BOINC = CoordinatorConfig(
    verify="replicate", canary_rate=0.0, min_replication_rate=0.0, min_trust_streak=10
)


def client_dispatches(effects: list[Effect], job: int) -> list[str]:
    return [d.peer for d in dispatches(effects) if d.run.job_id == job_id(job)]


def trust(grid: Grid, peer: str, streak: int) -> None:
    grid.coordinator.reputation[grid.key(peer)] = Reputation(streak=streak, valid=streak)


# ── the replication rate ────────────────────────────────────────────────────────────────────────────


def test_replicas_per_job_fall_toward_one_plus_one_over_n() -> None:
    """2000 honest jobs over 5 workers: replicas/job matches 1 + p(lead) job by job, where p is 1 until
    the lead worker has 10 verified valid results in a row and 1/streak after."""
    grid = Grid(n=5, seed=11, config=PURE_BOINC)
    grid.register()
    measured, expected, variance, per_job = 0, 0.0, 0.0, []
    for job in range(1, 2001):
        before = dict(grid.coordinator.reputation)
        effects = grid.run_job(job, honest, now=float(job))
        if job % 20 == 0:
            grid.register(now=float(job))
        peers = client_dispatches(effects, job)
        p = replication_probability(
            before.get(grid.key(peers[0]), Reputation()), min_trust_streak=10, min_rate=0.0
        )
        measured += len(peers)
        per_job.append(len(peers))
        expected += 1 + p
        variance += p * (1 - p)
        assert isinstance(finished(effects), JobAccepted)

    assert abs(measured - expected) <= 4 * math.sqrt(variance)
    assert per_job[:10] == [2] * 10  # nobody is trusted yet: full replication
    assert sum(per_job[-500:]) / 500 < 1.05  # streaks are ~40 by then: 1 + 1/40
    assert min(grid.streak(p) for p in grid.workers) >= 30


def test_defaults_settle_under_the_cost_goal_canaries_included() -> None:
    grid = Grid(n=5, seed=3)
    grid.register()
    per_job = []
    for job in range(1, 2001):
        per_job.append(len(dispatches(grid.run_job(job, honest, now=float(job)))))
        if job % 20 == 0:
            grid.register(now=float(job))
    steady = sum(per_job[-1000:]) / 1000
    assert 1.05 <= steady <= 1.15  # the floor (5 %) plus canaries (5 %) keep it above 1


def test_a_new_identity_always_gets_full_replication() -> None:
    grid = Grid(n=3, seed=5, config=NO_CANARIES)
    grid.register()
    trust(grid, "w0", 500)
    trust(grid, "w1", 500)
    led_by_newcomer = 0
    for job in range(1, 301):
        newcomer = grid.streak("w2")
        effects = grid.run_job(job, honest, now=float(job))
        peers = client_dispatches(effects, job)
        if peers[0] == "w2" and newcomer < 10:
            led_by_newcomer += 1
            assert len(peers) == 2
        if job % 20 == 0:
            grid.register(now=float(job))
    assert led_by_newcomer >= 3


def test_a_trusted_single_result_is_accepted_with_one_credit_and_proves_nothing() -> None:
    grid = Grid(n=3, seed=1, config=NO_CANARIES)
    grid.register()
    for peer in grid.workers:
        trust(grid, peer, 1000)  # p = max(5 %, 1/1000): most jobs run alone
    for job in range(1, 50):
        effects = grid.submit(job, now=float(job))
        if len(dispatches(effects)) == 1:
            break
    (alone,) = dispatches(effects)
    before = grid.coordinator.reputation[grid.key(alone.peer)]
    effects = grid.answer(alone, HONEST, now=job + 1.0)

    reply = finished(effects)
    assert isinstance(reply, JobAccepted)
    assert (reply.workers, reply.dissenters) == ([alone.peer], [])  # how a client sees a trusted single
    _, receipt = open_receipt(reply.receipt)
    assert [c.account for c in receipt.credits] == [grid.key(alone.peer)]
    assert grid.coordinator.reputation[grid.key(alone.peer)] == before  # unverified: no streak earned


def test_a_trusted_worker_that_fails_its_single_job_falls_back_to_full_replication() -> None:
    grid = Grid(n=4, seed=1, config=NO_CANARIES)
    grid.register()
    for peer in grid.workers:
        trust(grid, peer, 1000)
    for job in range(1, 50):
        effects = grid.submit(job, now=float(job))
        if len(dispatches(effects)) == 1:
            break
    (alone,) = dispatches(effects)
    effects = grid.fail(alone, now=job + 1.0)

    assert len(dispatches(effects)) == 2  # the client's replicas, on two other workers
    assert alone.peer not in {d.peer for d in dispatches(effects)}
    effects += grid.drive(effects, honest, now=job + 2.0)
    reply = finished(effects)
    assert isinstance(reply, JobAccepted)
    assert len(reply.workers) == 2 and reply.failed == [alone.peer]
    assert grid.coordinator.reputation[grid.key(alone.peer)].timeouts == 1


def test_one_bad_result_resets_trust_and_brings_back_full_replication() -> None:
    grid = Grid(n=4, seed=2, config=NO_CANARIES)
    grid.register()
    trust(grid, "w0", 200)
    caught_at = 0
    for job in range(1, 400):
        effects = grid.run_job(job, lambda p, r: cheat(1) if p == "w0" else HONEST, now=float(job))
        if Penalize(peer="w0", why="output disagreed with the majority") in effects:
            caught_at = job
            break
    assert caught_at, "a cheat by a trusted worker was never replicated"
    assert grid.coordinator.reputation[grid.key("w0")].streak == 0
    assert grid.coordinator.reputation[grid.key("w0")].probation == PROBATION_JOBS

    led = 0
    for job in range(caught_at + 1, caught_at + 300):
        effects = grid.run_job(job, honest, now=float(job))
        peers = client_dispatches(effects, job)
        if peers[0] == "w0" and grid.streak("w0") < 20:  # doubled after an offence: 20 verified needed
            led += 1
            assert len(peers) >= 2
        if job % 20 == 0:
            grid.register(now=float(job))
    assert led >= 3
    assert grid.streak("w0") >= 20


def test_adaptive_off_always_replicates() -> None:
    grid = Grid(n=3, config=CoordinatorConfig(verify="replicate", adaptive=False, canary_rate=0.0))
    grid.register()
    for peer in grid.workers:
        trust(grid, peer, 1000)
    for job in range(1, 60):
        assert len(client_dispatches(grid.run_job(job, honest, now=float(job)), job)) == 2


def test_lazy_and_swapped_workers_never_earn_trust_points_or_accepted_answers() -> None:
    grid = Grid(n=5, seed=9)
    grid.register()
    bad: dict[str, Behaviour] = {"w3": lambda p, r: lazy(r), "w4": lambda p, r: SWAPPED}
    failed = 0
    for job in range(1, 601):
        effects = grid.run_job(job, lambda p, r: bad[p](p, r) if p in bad else HONEST, now=float(job))
        reply = finished(effects)
        if isinstance(reply, JobAccepted):
            assert reply.tokens == list(HONEST.tokens)
            assert not {"w3", "w4"} & set(reply.workers)
        else:  # both bad workers drawn first: no strict majority within max_extra_replicas
            failed += 1
        if job % 20 == 0:
            grid.register(now=float(job))
    assert failed <= 12  # reputation weighting soon keeps them apart (below 2 %)
    for peer in bad:
        reputation = grid.coordinator.reputation[grid.key(peer)]
        assert (reputation.streak, reputation.valid) == (0, 0)
        assert reputation.invalid > 0 and reputation.score == -1.0
        assert grid.coordinator.ledger.balance(grid.key(peer)) == 0
    # Canaries only go to workers with a free slot (here: the ones the job left idle, often the bad ones),
    # so the honest workers' streaks come mostly from replicated jobs.
    assert min(grid.streak(p) for p in ("w0", "w1", "w2")) > 40


# ── canaries ────────────────────────────────────────────────────────────────────────────────────────


def canary_grid(rate: float = 1.0) -> Grid:
    """w0 and w1 verify three jobs (the canary pool); w2 and w3 register afterwards, never having
    seen them."""
    grid = Grid(n=4, seed=4, config=CoordinatorConfig(verify="replicate", canary_rate=rate, adaptive=False))
    grid.register("w0", "w1")
    for job in (1, 2, 3):
        assert isinstance(finished(grid.run_job(job, honest)), JobAccepted)
    grid.register("w2", "w3", now=1.0)
    return grid


def canaries_of(grid: Grid, effects: list[Effect]) -> list[RunJob]:
    return [d.run for d in dispatches(effects) if grid.coordinator.is_canary(d.run.job_id)]


@pytest.mark.parametrize(
    "behaviour", [lambda run: lazy(run), lambda run: SWAPPED], ids=["lazy", "model-swapped"]
)
def test_a_canary_catches_a_bad_worker_without_any_client_or_ledger_seeing_it(behaviour: object) -> None:
    grid = canary_grid()
    assert callable(behaviour)
    effects = grid.submit(4, now=2.0, prompt="prompt 4")
    (canary,) = [d for d in dispatches(effects) if grid.coordinator.is_canary(d.run.job_id)]
    assert canary.peer in ("w2", "w3")  # only workers that never saw the prompt
    assert canary.run.prompt.startswith("prompt ") and canary.run.prompt != "prompt 4"
    entries = len(grid.coordinator.ledger)

    after = grid.answer(canary, behaviour(canary.run), now=3.0)

    assert after == [
        Penalize(peer=canary.peer, why="canary: output differs from a verified answer to the same job")
    ]
    reputation = grid.coordinator.reputation[grid.key(canary.peer)]
    assert (reputation.invalid, reputation.streak, reputation.score) == (1, 0, -1.0)
    assert len(grid.coordinator.ledger) == entries
    assert not grid.coordinator.is_canary(canary.run.job_id)
    assert grid.answer(canary, HONEST, now=4.0) == []  # settled: a second answer changes nothing


def test_an_honest_worker_passes_a_canary_and_earns_a_verified_result_but_no_points() -> None:
    grid = canary_grid()
    effects = grid.submit(4, now=2.0, prompt="prompt 4")
    (canary,) = [d for d in dispatches(effects) if grid.coordinator.is_canary(d.run.job_id)]
    after = grid.answer(canary, HONEST, now=3.0)
    assert after == []  # no FinishJob, no receipt, no penalty
    assert grid.streak(canary.peer) == 1
    assert grid.coordinator.ledger.balance(grid.key(canary.peer)) == 0


def test_canaries_look_like_any_other_job() -> None:
    grid = canary_grid()
    seen: list[RunJob] = []
    client_ids = {job_id(n) for n in range(1, 40)}
    for job in range(4, 40):
        effects = grid.run_job(job, honest, now=float(job))
        seen += [d.run for d in dispatches(effects) if d.run.job_id not in client_ids]
        assert len(of_type(effects, FinishJob)) == 1  # only the client job finishes
        grid.register(now=float(job))
    assert len(seen) >= 2
    for run in seen:
        assert len(run.job_id) == 16
        assert run.prompt in {f"prompt {n}" for n in range(1, 40)}
        assert run.max_tokens == 16
    assert len({run.job_id for run in seen}) == len(seen)


def test_each_worker_sees_a_known_prompt_at_most_once() -> None:
    grid = canary_grid()
    sent: list[tuple[str, str]] = []
    for job in range(4, 80):
        effects = grid.run_job(job, honest, now=float(job))
        sent += [(d.peer, d.run.prompt) for d in dispatches(effects)]
        grid.register(now=float(job))
    assert len(sent) == len(set(sent))


def test_a_canary_that_times_out_counts_as_a_timeout() -> None:
    grid = canary_grid()
    effects = grid.submit(4, now=2.0, prompt="prompt 4")
    (canary,) = [d for d in dispatches(effects) if grid.coordinator.is_canary(d.run.job_id)]
    deadline = 2.0 + grid.coordinator.config.replica_timeout_s
    assert grid.coordinator.next_deadline() is not None
    grid.register(now=deadline - 1)
    expired = grid.coordinator.on_timer(deadline)
    assert CancelReplica(peer=canary.peer, job_id=canary.run.job_id) in expired
    assert not of_type(expired, Penalize)
    assert [e for e in expired if isinstance(e, FinishJob) and e.job_id == canary.run.job_id] == []
    assert grid.coordinator.reputation[grid.key(canary.peer)].timeouts == 1
    assert grid.coordinator.active_canaries == 0


def test_a_canary_with_a_forged_attestation_is_invalid() -> None:
    grid = canary_grid()
    effects = grid.submit(4, now=2.0, prompt="prompt 4")
    (canary,) = [d for d in dispatches(effects) if grid.coordinator.is_canary(d.run.job_id)]
    result = grid.result(canary, HONEST)
    forged = type(result)(
        job_id=result.job_id,
        tokens=[1, 2],
        text=result.text,
        finish_reason="stop",
        attestation=result.attestation,
    )
    after = grid.deliver(canary, forged, now=3.0)
    assert [p.peer for p in of_type(after, Penalize)] == [canary.peer]
    assert grid.coordinator.reputation[grid.key(canary.peer)].invalid == 1


def test_canary_rate_zero_sends_none_and_unverified_answers_never_become_canaries() -> None:
    grid = canary_grid(rate=0.0)
    for job in range(4, 60):
        assert canaries_of(grid, grid.run_job(job, honest, now=float(job))) == []
    single = Grid(n=3, config=CoordinatorConfig(verify="replicate", canary_rate=1.0))
    single.register()
    for job in range(1, 40):  # replicas=1: answers nobody checked
        assert canaries_of(single, single.run_job(job, honest, replicas=1)) == []


def test_audit_mode_sends_no_canary_generations_whatever_the_rate() -> None:
    """Every claim is audited, and a canary is judged by exact match within a contract that does not name
    the CPU's instruction set: an honest worker of another build would fail it (spec/verification.md
    §13.7). Verified answers are kept all the same (the pool is full), so canaries are left out by rule."""
    config = CoordinatorConfig(verify="audit", canary_rate=1.0, adaptive=False)
    audited = Grid(n=4, seed=4, config=config)
    audited.register()
    for job in range(1, 12):
        first = audited.submit(job, now=float(job), prompt=f"prompt {job}")
        assert canaries_of(audited, first) == []
        (run,) = dispatches(first)
        (audit,) = audits(audited.answer(run, HONEST, now=float(job)))
        assert isinstance(finished(audited.audit(audit, gap=CHEAT_GAP, now=float(job))), JobAccepted)
    assert len(audited.coordinator._known) == 11  # the answers are kept (canary audits use them)

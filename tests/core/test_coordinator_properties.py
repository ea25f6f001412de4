"""Property: whatever the interleaving of results, failures, timeouts, heartbeats and cancels across
several jobs and workers, the coordinator answers each client job at most once, never runs more replicas
on a worker than its slots, never accepts an answer without quorum (except a trusted single result it
decided on, accounted for explicitly), never credits a worker whose output disagreed, never lets a canary
reach a client, and ignores anything late."""

from __future__ import annotations

from grid_harness import HONEST, Grid, cheat, job_id, open_receipt
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from opengrid.core.coordinator import CoordinatorConfig
from opengrid.core.effects import CancelReplica, DispatchReplica, Effect, FinishJob, Penalize
from opengrid.core.events import JobCancelled
from opengrid.core.reputation import Reputation, replication_probability
from opengrid.core.verifier import quorum
from opengrid.wire.commitment import commit_output
from opengrid.wire.messages import JobAccepted

CONFIG = CoordinatorConfig(
    verify="replicate",
    heartbeat_s=5.0,
    replica_timeout_s=10.0,
    job_timeout_s=40.0,
    max_failovers=3,
    min_trust_streak=2,  # trust comes fast here, so trusted single results happen within a run
    min_replication_rate=0.3,
    canary_rate=0.3,
)
OUTPUTS = [HONEST, HONEST, cheat(1), cheat(2)]


class CoordinatorMachine(RuleBasedStateMachine):
    grid: Grid

    @initialize(
        seed=st.integers(0, 2**16),
        workers=st.integers(3, 6),
        trusted=st.integers(0, 63),
        slots=st.integers(1, 2),
    )
    def start(self, seed: int, workers: int, trusted: int, slots: int) -> None:
        self.grid = Grid(n=workers, seed=seed, config=CONFIG, slots=slots)
        self.now = 0.0
        self.grid.register(now=self.now)
        for n in range(workers):  # some workers start with a verified record (bit n of ``trusted``)
            if trusted >> n & 1:
                self.grid.coordinator.reputation[self.grid.key(f"w{n}")] = Reputation(streak=5, valid=5)
        self.jobs = 0
        self.replicas: dict[bytes, int] = {}
        self.lead: dict[bytes, tuple[str, bool]] = {}
        """job -> its first-dispatched worker and whether that worker had earned trust then (a job may
        wait for free slots, so its first dispatch can come with any later event)"""
        self.finished: set[bytes] = set()
        self.outstanding: list[DispatchReplica] = []
        self.late: list[DispatchReplica] = []
        self.answers: dict[tuple[bytes, str], bytes] = {}

    # ── the driver's part ────────────────────────────────────────────────────────────────────────────
    def trusted(self, peer: str) -> bool:
        reputation = self.grid.coordinator.reputation.get(self.grid.key(peer), Reputation())
        probability = replication_probability(
            reputation, min_trust_streak=CONFIG.min_trust_streak, min_rate=CONFIG.min_replication_rate
        )
        return probability < 1

    def process(self, effects: list[Effect]) -> None:
        for effect in effects:
            if isinstance(effect, DispatchReplica):
                job = effect.run.job_id
                if job in self.replicas and job not in self.lead:
                    self.lead[job] = (effect.peer, self.trusted(effect.peer))
                self.outstanding.append(effect)
            elif isinstance(effect, CancelReplica):
                gone = [d for d in self.outstanding if (d.run.job_id, d.peer) == (effect.job_id, effect.peer)]
                for dispatch in gone:
                    self.outstanding.remove(dispatch)
                    self.late.append(dispatch)
            elif isinstance(effect, FinishJob):
                self.check_finish(effect)
            elif isinstance(effect, Penalize):
                assert effect.peer in self.grid.workers
                if effect.why.startswith("canary"):
                    event("canary caught a wrong answer")

    def check_finish(self, finish: FinishJob) -> None:
        job = finish.job_id
        assert job in self.replicas, "a FinishJob for no client job (a canary leaked?)"
        assert job not in self.finished, "two FinishJob for one job"
        self.finished.add(job)
        self.late += [d for d in self.outstanding if d.run.job_id == job]
        self.outstanding = [d for d in self.outstanding if d.run.job_id != job]
        reply = finish.reply
        if not isinstance(reply, JobAccepted):
            return
        _, receipt = open_receipt(reply.receipt)
        keys = {self.grid.key(p): p for p in self.grid.workers}
        credited = [keys[c.account] for c in receipt.credits]
        assert sorted(credited) == sorted(reply.workers)
        for peer in credited:  # never credit a worker whose output disagreed
            assert self.answers[(job, peer)] == receipt.output_commitment
        for key in receipt.dissenters:
            assert self.answers[(job, keys[key])] != receipt.output_commitment
        assert commit_output(tuple(reply.tokens), reply.text) == receipt.output_commitment
        answered = [c for (j, _), c in self.answers.items() if j == job]
        assert len(credited) == answered.count(receipt.output_commitment)  # every agreeing worker is paid
        if len(credited) < quorum(self.replicas[job]):
            assert self.lead[job] == (credited[0], True), "accepted without quorum and not a trusted single"
            assert len(answered) == 1
            event("trusted single result accepted")
        else:
            assert 2 * len(credited) > len(answered)  # a strict majority of the results received
            event(f"accepted with {len(credited)} of {len(answered)}")

    # ── rules ────────────────────────────────────────────────────────────────────────────────────────
    @rule(replicas=st.integers(1, 3), prompt=st.integers(0, 3))
    def submit(self, replicas: int, prompt: int) -> None:
        self.jobs += 1
        self.replicas[job_id(self.jobs)] = replicas
        self.process(self.grid.submit(self.jobs, replicas=replicas, now=self.now, prompt=f"prompt {prompt}"))

    @precondition(lambda self: self.outstanding)
    @rule(pick=st.integers(0, 63), output=st.sampled_from(OUTPUTS))
    def answer(self, pick: int, output: object) -> None:
        dispatch = self.outstanding.pop(pick % len(self.outstanding))
        assert output in OUTPUTS
        self.answers[(dispatch.run.job_id, dispatch.peer)] = commit_output(output.tokens, output.text)  # type: ignore[attr-defined]
        self.process(self.grid.answer(dispatch, output, now=self.now))  # type: ignore[arg-type]

    @precondition(lambda self: self.outstanding)
    @rule(bad=st.sets(st.integers(0, 5), max_size=2))
    def settle(self, bad: set[int]) -> None:
        """Everyone answers everything outstanding, workers in ``bad`` wrongly: quick progress."""
        while self.outstanding:
            dispatch = self.outstanding.pop(0)
            output = cheat(1) if int(dispatch.peer[1:]) in bad else HONEST
            self.answers[(dispatch.run.job_id, dispatch.peer)] = commit_output(output.tokens, output.text)
            self.process(self.grid.answer(dispatch, output, now=self.now))

    @precondition(lambda self: self.outstanding)
    @rule(pick=st.integers(0, 63))
    def fail(self, pick: int) -> None:
        dispatch = self.outstanding.pop(pick % len(self.outstanding))
        self.process(self.grid.fail(dispatch, now=self.now))

    @precondition(lambda self: self.late)
    @rule(pick=st.integers(0, 63), output=st.sampled_from(OUTPUTS))
    def answer_late(self, pick: int, output: object) -> None:
        dispatch = self.late[pick % len(self.late)]
        assert self.grid.answer(dispatch, output, now=self.now) == []  # type: ignore[arg-type]

    @rule(dt=st.floats(0.1, 15.0))
    def tick(self, dt: float) -> None:
        self.now += dt
        self.process(self.grid.coordinator.on_timer(self.now))

    @rule()
    def heartbeat(self) -> None:
        self.process(self.grid.register(now=self.now))

    @precondition(lambda self: self.jobs)
    @rule(pick=st.integers(1, 64))
    def cancel(self, pick: int) -> None:
        job = job_id(1 + pick % self.jobs)
        self.process(self.grid.coordinator.handle(JobCancelled(job, client="client"), self.now))

    @invariant()
    def no_worker_runs_more_than_its_slots(self) -> None:
        if not hasattr(self, "grid"):
            return
        for peer in self.grid.workers:  # replicas and canaries the driver still waits for, per worker
            assert sum(1 for d in self.outstanding if d.peer == peer) <= self.grid.slots

    @invariant()
    def every_unfinished_job_is_tracked(self) -> None:
        if not hasattr(self, "grid"):
            return
        in_flight = {e.request.job_id for e in self.grid.coordinator.snapshot()}
        assert in_flight == set(self.replicas) - self.finished
        assert self.grid.coordinator.active_jobs == len(in_flight)


CoordinatorMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
test_coordinator_under_any_interleaving = CoordinatorMachine.TestCase

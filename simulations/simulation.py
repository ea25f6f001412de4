"""One simulated network: builds the nodes from a scenario and turns engine events into core calls.

This module plays the driver's part for every node, as opengrid/node does over libp2p: it feeds core
events (``JobSubmitted``, ``ReplicaReturned``, ``ReplicaFailed``) to the real Coordinators and executes
the effects they return by scheduling message deliveries on the engine. A worker's registration arrives
as the wire's ``RegisterWorker`` and is decided by the node's own code (``Coordinator.registration``,
through ``SimCoordinator.register``) before its ``WorkerRegistered`` is fed.

In audit mode (a scenario's ``[coordinator] verify = "audit"``, spec/verification.md §13) it also
carries ``DispatchAudit`` to workers, which score the claim (``Scenario.audit_cost`` of a generation's
time) and answer ``AuditReturned``: an honest audit re-scores the claim, so it passes exactly when its
tokens are the honest ones (each position scores ``HONEST_GAP``, or ``CHEAT_GAP`` where it departs). A
lying auditor passes everything and an audit cartel passes its partners' output (simulations/behaviours.py).

Compute units (``metrics.compute_units``) come from the job records (replicas and audits dispatched per
job) and the ``canary_dispatches`` counter.

Event kinds (the canonical log line names them): ``arrive`` (a client submits a job), ``coord`` (a
message reaches a coordinator), ``tick`` (coordinator timers), ``worker`` (a message reaches a worker),
``done`` (an inference finishes), ``beat`` (heartbeat), ``churn`` (on/off), ``reply`` (the client gets
its answer), ``sybil`` (a wave of identities joins), ``partition`` (a partition starts or heals).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
from opengrid_ledger import (
    ED25519,
    Entry,
    LedgerState,
    Receipt,
    SignatureScheme,
    decode_body,
    decode_entry,
    encode_entry,
    sign_attestation,
    sign_entry,
)

from opengrid.core.audit import PositionEvidence, judge
from opengrid.core.audit_policy import scored_positions
from opengrid.core.effects import (
    AppendEntry,
    CancelReplica,
    DispatchAudit,
    DispatchReplica,
    Effect,
    FinishJob,
    Penalize,
    SendReceipt,
)
from opengrid.core.events import (
    AuditFailed,
    AuditReturned,
    Event,
    JobSubmitted,
    ReplicaFailed,
    ReplicaReturned,
)
from opengrid.core.refusal import Refusal
from opengrid.core.reputation import Reputation
from opengrid.core.worker import Output, WorkerLogic
from opengrid.errors import InvalidEntryError
from opengrid.wire.codec import decode_message, encode_message
from opengrid.wire.commitment import commit_output
from opengrid.wire.contract import DecodingContract
from opengrid.wire.messages import (
    AuditJob,
    AuditReport,
    ErrorReply,
    ModelOffer,
    ReceiptNotice,
    RegisterWorker,
    ReplicaResult,
    RunJob,
    SubmitJob,
)
from simulations.behaviours import (
    AuditCartel,
    Behaviour,
    Honest,
    Intermittent,
    LyingAuditor,
    audit_passes_anyway,
    make_behaviour,
)
from simulations.churn import sample_duration
from simulations.engine import NS_PER_S, Engine, seconds_to_ns
from simulations.network import Network
from simulations.nodes import NETWORK_ID, Beat, SimCoordinator, SimWorker, derive_key, make_coordinator
from simulations.outputs import honest_tokens
from simulations.records import JobRecord
from simulations.rng import stream
from simulations.scenario import BEHAVIOURS, AdversarySpec, Scenario
from simulations.signatures import SampledScheme
from simulations.traces import Arrival, Session, load_churn, load_workload
from simulations.workload import max_tokens, next_arrival

HONEST_GAP = 0.05
"""Logits: what an honest claim's positions score on an auditor (honest rounding, §12.3)."""
CHEAT_GAP = 12.0
"""Logits: what a position that departs from the model scores (coarse cheats measured 2-26, §12.3)."""

_CLIENT_PLACES = 32
_STAGGER_NS = NS_PER_S  # initial registrations spread over the first second, as real nodes start apart


def contract_for(model: str) -> DecodingContract:
    """The one numerical class every simulated worker announces for ``model``."""
    return DecodingContract(model_sha256=hashlib.sha256(model.encode()).hexdigest(), backend_version="sim")


def _positions(audit: AuditJob) -> int:
    """Positions the audited claim has: its tokens, plus one when it stopped (spec §12.1)."""
    return len(audit.tokens) + (1 if audit.finish_reason == "stop" else 0)


def _window(audit: AuditJob) -> int:
    """Positions the audit scores: the plan's window (``score_end``), or all of them."""
    return scored_positions(_positions(audit), audit.score_end)


@dataclass(frozen=True)
class RunOutput:
    """What a finished run hands to metrics and reports."""

    scenario: Scenario
    seed: int
    digest: str
    events: int
    wall_s: float
    jobs: Sequence[JobRecord]
    workers: Sequence[SimWorker]
    points: dict[str, int]
    """peer -> points credited by receipts in the coordinators' ledgers."""
    counters: dict[str, int]


class Simulation:
    """A network of real Coordinators and simulated workers on one discrete-event engine."""

    def __init__(self, scenario: Scenario, seed: int, *, trace: bool = False) -> None:
        self.scenario = scenario
        self.seed = seed
        self.engine = Engine()
        self.end_ns = seconds_to_ns(scenario.duration_s)
        self.config = scenario.coordinator_config()
        self._heartbeat_ns = seconds_to_ns(self.config.heartbeat_s)
        self._tick_ns = seconds_to_ns(scenario.tick_s)
        build = stream(seed, "build")
        self._build_rng = build
        self._churn_rng = stream(seed, "churn")
        self._work_rng = stream(seed, "workload")
        self._answer_rng = stream(seed, "answers")
        self._failure_rng = stream(seed, "failures")
        self.network = Network(scenario.network, stream(seed, "network"))
        self.scheme: SignatureScheme = ED25519
        """Every signature of the run: real Ed25519, or stubs with a sampled real check."""
        if scenario.real_signatures < 1.0:
            self.scheme = SampledScheme(ED25519, scenario.real_signatures, stream(seed, "signatures"))
        self._arrivals: list[Arrival] | None = None
        """Workload trace replay: the jobs, by time (None: Poisson arrivals)."""
        if scenario.workload.trace:
            self._arrivals = load_workload(Path(scenario.workload.trace))
        self._sessions: dict[int, list[Session]] | None = None
        """Churn trace replay: worker index -> online sessions (None: the renewal process, if enabled)."""
        if scenario.churn.trace:
            self._sessions = load_churn(Path(scenario.churn.trace), scenario.workers)
        models = [scenario.workload.model]
        models += sorted({a.model for a in self._arrivals or ()} - {scenario.workload.model})
        self._contracts = {model: contract_for(model) for model in models}
        """Every model of the workload; every worker serves them all (one offer, one class, each)."""
        self.contract = self._contracts[scenario.workload.model]
        self._offers = tuple(ModelOffer(name=m, contract=c) for m, c in self._contracts.items())
        e = self.engine
        self._k_arrive = e.kind("arrive", self._on_arrive)
        self._k_coord = e.kind("coord", self._on_coord)
        self._k_tick = e.kind("tick", self._on_tick)
        self._k_worker = e.kind("worker", self._on_worker)
        self._k_done = e.kind("done", self._on_done)
        self._k_beat = e.kind("beat", self._on_beat)
        self._k_churn = e.kind("churn", self._on_churn)
        self._k_reply = e.kind("reply", self._on_reply)
        self._k_sybil = e.kind("sybil", self._on_sybil)
        self._k_partition = e.kind("partition", self._on_partition)
        self._k_sync = e.kind("sync", self._on_sync)
        self.coordinators = [
            SimCoordinator(
                i,
                make_coordinator(seed, i, self.config, self.scheme),
                self.network.place(build, server=True),
                trace=trace,
            )
            for i in range(scenario.coordinators)
        ]
        self._client_places = [self.network.place(build) for _ in range(_CLIENT_PLACES)]
        self._sync_ns = seconds_to_ns(scenario.ledger_sync_s)
        if self._sync_ns:  # every coordinator's ledger accepts every coordinator's receipts (a genesis)
            for c in self.coordinators:
                for other in self.coordinators:
                    c.core.ledger.add_minter(other.core.public_key)
        self._equivocator: AdversarySpec | None = next(
            (a for a in scenario.adversaries if a.kind == "equivocating_coordinator"), None
        )
        self._twins: dict[bytes, bytes] = {}
        """Equivocation: encoded honest entry -> encoded entry of the second branch (same author, seq)."""
        self._shadow_prev: bytes | None = None
        """Id of the last entry of the equivocator's second branch (None: not forked yet)."""
        self.frauds: list[tuple[int, int, bytes]] = []
        """(time ns, coordinator, forked author): when each honest coordinator froze a forker."""
        self.workers: list[SimWorker] = []
        self._by_peer: dict[str, SimWorker] = {}
        self.jobs: list[JobRecord] = []
        self._job_of_entry_id: dict[bytes, int] = {}
        self._job_of_entry_bytes: dict[bytes, int] = {}
        self._partitions: dict[int, set[int]] = {}
        self.counters: Counter[str] = Counter()
        for behaviour in self._initial_behaviours():
            self._add_worker(behaviour, None if self._sessions is not None else self._initial_start_ns())
        self._schedule_world()

    # ── building ─────────────────────────────────────────────────────────────────────────────────────
    def _initial_behaviours(self) -> list[Behaviour]:
        """One behaviour per initial worker: each adversary population's share, the rest honest."""
        s = self.scenario
        chosen: list[Behaviour] = []
        for spec in s.adversaries:
            if spec.kind in BEHAVIOURS:
                behaviour = make_behaviour(
                    spec.kind,
                    spec.group,
                    cheat_rate=spec.cheat_rate,
                    trusted_after=spec.trusted_after,
                    cheat_tail=spec.cheat_tail,
                )
                chosen += [behaviour] * round(spec.fraction * s.workers)
        chosen = chosen[: s.workers]
        chosen += [Honest()] * (s.workers - len(chosen))
        self._build_rng.shuffle(chosen)
        return chosen

    def _initial_start_ns(self) -> int:
        churn = self.scenario.churn
        if churn.enabled and self._churn_rng.random() >= churn.start_online:
            return seconds_to_ns(sample_duration(churn.off, self._churn_rng))
        return self._build_rng.randrange(_STAGGER_NS)

    def _add_worker(self, behaviour: Behaviour, start_ns: int | None) -> SimWorker:
        """Build worker number ``len(self.workers)``; it comes online at ``start_ns`` (None: the churn
        trace says when)."""
        s = self.scenario
        index = len(self.workers)
        peer = f"w{index}"
        key = derive_key(self.seed, peer)
        coordinator = index % len(self.coordinators)
        full = s.fidelity == "full" or self._build_rng.random() < s.real_fraction
        logic = None
        if full:
            logic = WorkerLogic(
                network=NETWORK_ID,
                signing_key=key,
                offers=self._offers,
                ledger=LedgerState(NETWORK_ID, scheme=self.scheme),
                scheme=self.scheme,
            )
            logic.trust_coordinator(self.coordinators[coordinator].core.public_key)
        hardware = self._build_rng.choices(s.hardware, weights=[h.share for h in s.hardware])[0]
        worker = SimWorker(
            index=index,
            peer=peer,
            key=key,
            public_key=bytes(key.verify_key),
            coordinator=coordinator,
            place=self.network.place(self._build_rng),
            hardware=hardware,
            behaviour=behaviour,
            logic=logic,
            joined_ns=start_ns or 0,
        )
        self.workers.append(worker)
        self._by_peer[peer] = worker
        if start_ns is not None:
            self.engine.at(start_ns, self._k_churn, index, 1)
        return worker

    def _schedule_world(self) -> None:
        e, s = self.engine, self.scenario
        if self._arrivals is None:
            e.at(seconds_to_ns(next_arrival(s.workload, 0.0, self._work_rng)), self._k_arrive, 0)
        elif self._arrivals:
            e.at(seconds_to_ns(self._arrivals[0].t_s), self._k_arrive, 0)
        for index, sessions in (self._sessions or {}).items():
            self.workers[index].joined_ns = seconds_to_ns(sessions[0].on_s)
            for session in sessions:  # in time order: an off and the next on at one instant run in order
                e.at(seconds_to_ns(session.on_s), self._k_churn, index, 1)
                if session.off_s != math.inf:
                    e.at(seconds_to_ns(session.off_s), self._k_churn, index, 0)
        for c in self.coordinators:
            e.at(self._tick_ns, self._k_tick, c.index)
        for i, spec in enumerate(s.adversaries):
            if spec.kind == "sybil_wave":
                e.at(seconds_to_ns(spec.at_s), self._k_sybil, i, spec.count, spec)
        for i, partition in enumerate(s.network.partitions):
            e.at(seconds_to_ns(partition.start_s), self._k_partition, i, 1, partition.fraction)
            e.at(seconds_to_ns(partition.end_s), self._k_partition, i, 0)

    # ── running ──────────────────────────────────────────────────────────────────────────────────────
    def run(self, progress: Callable[[int], None] | None = None) -> RunOutput:
        """Run to the scenario's end and collect what happened."""
        started = time.perf_counter()
        events = self.engine.run(self.end_ns, progress=progress)
        wall = time.perf_counter() - started
        points: Counter[str] = Counter()
        by_key = {w.public_key: w.peer for w in self.workers}
        views = [
            c
            for c in self.coordinators
            if self._equivocator is None or c.index != self._equivocator.coordinator
        ]
        if self._sync_ns:  # every ledger holds every coordinator's receipts: one honest node's view
            views = views[:1]
        for c in views:
            for account, amount in c.core.ledger.balances().items():
                points[by_key.get(account, account.hex())] += amount
        counters = Counter(self.counters)
        counters["messages_dropped"] = self.network.dropped
        liars = [w for w in self.workers if isinstance(w.behaviour, LyingAuditor | AuditCartel)]
        for w in liars:  # lying auditors and cartel members, and those a coordinator caught as auditors
            counters[f"{w.behaviour.name}s"] += 1
            caught = (c.core.audit_reputation.get(w.public_key) or Reputation() for c in self.coordinators)
            counters[f"{w.behaviour.name}s_caught"] += any(r.invalid for r in caught)
        for c in self.coordinators:
            for name, count in c.unknown_effects.items():
                counters[f"unknown_effect:{name}"] += count
        if isinstance(self.scheme, SampledScheme):
            counters.update(self.scheme.counters())
        return RunOutput(
            scenario=self.scenario,
            seed=self.seed,
            digest=self.engine.digest(),
            events=events,
            wall_s=wall,
            jobs=self.jobs,
            workers=self.workers,
            points=dict(sorted(points.items())),
            counters=dict(sorted(counters.items())),
        )

    # ── clients ──────────────────────────────────────────────────────────────────────────────────────
    def _on_arrive(self, node: int, tag: int | str, data: Any) -> None:
        """A client submits a job: the next of the Poisson process, or trace row ``node``."""
        s, now = self.scenario, self.engine.now_ns
        n = len(self.jobs)
        coordinator = self.coordinators[n % len(self.coordinators)]
        if self._arrivals is None:
            model, tokens = s.workload.model, max_tokens(s.workload, self._work_rng)
        else:
            model, tokens = self._arrivals[node].model, self._arrivals[node].max_tokens
        self.jobs.append(JobRecord(n, coordinator.index, now, tokens, s.workload.replicas, model=model))
        request = SubmitJob(
            job_id=n.to_bytes(16, "big"),
            model=model,
            prompt=f"simulated prompt {self.seed}/{n}",
            max_tokens=tokens,
            replicas=s.workload.replicas,
        )
        client = n % _CLIENT_PLACES
        event = JobSubmitted(client=f"client{client}", request=request, wall_ms=now // 1_000_000)
        delay = self.network.delay_ns(
            self._client_places[client], coordinator.place, 200 + len(request.prompt)
        )
        self.engine.after(delay, self._k_coord, coordinator.index, f"submit/{n}", (event, None))
        if self._arrivals is not None:
            if node + 1 < len(self._arrivals) and self._arrivals[node + 1].t_s < s.duration_s:
                self.engine.at(seconds_to_ns(self._arrivals[node + 1].t_s), self._k_arrive, node + 1)
            return
        next_s = next_arrival(s.workload, now / NS_PER_S, self._work_rng)
        if next_s < s.duration_s:
            self.engine.at(seconds_to_ns(next_s), self._k_arrive, 0)

    def _on_reply(self, node: int, tag: int | str, data: Any) -> None:
        self.jobs[node].finish_ns = self.engine.now_ns

    # ── coordinators ─────────────────────────────────────────────────────────────────────────────────
    def _on_coord(self, node: int, tag: int | str, data: tuple[Event | Beat, bool | None]) -> None:
        event, wrong = data
        coordinator = self.coordinators[node]
        if isinstance(event, Beat):
            decided = coordinator.register(event, self.engine.now_ns)
            if isinstance(decided, Refusal):
                self.counters["registrations_refused"] += 1
                return
            self._execute(coordinator, decided)
            return
        if wrong is not None and isinstance(event, ReplicaReturned):
            job = self._job(event.job_id)
            if job is not None:
                job.returned[event.peer] = wrong
            else:
                self.counters["canary_results_wrong" if wrong else "canary_results_honest"] += 1
        self._execute(coordinator, coordinator.handle(event, self.engine.now_ns))

    def _on_tick(self, node: int, tag: int | str, data: Any) -> None:
        coordinator = self.coordinators[node]
        self._execute(coordinator, coordinator.on_timer(self.engine.now_ns))
        if self.engine.now_ns + self._tick_ns < self.end_ns:
            self.engine.after(self._tick_ns, self._k_tick, node)

    def _execute(self, coordinator: SimCoordinator, effects: list[Effect]) -> None:
        """Carry out a coordinator's effects, in order, as the node's driver would."""
        for effect in effects:  # settle job records first: receipts below refer to them
            if isinstance(effect, FinishJob):
                self._settle(effect)
        for effect in effects:
            if isinstance(effect, DispatchReplica):
                job = self._job(effect.run.job_id)
                if job is not None:
                    job.dispatched += 1
                else:  # the coordinator's own job: a canary (adaptive replication, issue 4)
                    self.counters["canary_dispatches"] += 1
                self._to_worker(coordinator, effect.peer, effect.run, 200 + len(effect.run.prompt))
            elif isinstance(effect, DispatchAudit):
                self.counters["audit_dispatches"] += 1
                audit = effect.audit
                audited = self._job(audit.job_id)
                if audited is not None:
                    audited.audits += 1
                    audited.audit_units += _window(audit) / max(1, _positions(audit))
                else:  # the coordinator's own claim: a canary audit (spec/verification.md §13.6)
                    self.counters["canary_audits"] += 1
                    share = _window(audit) / max(1, _positions(audit))
                    self.counters["canary_audit_milliunits"] += round(1000 * share)
                self._to_worker(
                    coordinator, effect.peer, audit, 200 + len(audit.prompt) + 4 * len(audit.tokens)
                )
            elif isinstance(effect, CancelReplica):
                self._to_worker(coordinator, effect.peer, effect, 64)
            elif isinstance(effect, SendReceipt):
                size = sum(len(e) for e in effect.notice.entries)
                notice = effect.notice
                if self._twins and self._on_second_branch(effect.peer):
                    notice = ReceiptNotice(entries=[self._twins.get(e, e) for e in notice.entries])
                self._to_worker(coordinator, effect.peer, notice, size)
            elif isinstance(effect, FinishJob):
                job = self._job(effect.job_id)
                if job is None:
                    continue
                size = 1200 + 4 * job.max_tokens
                delay = self.network.delay_ns(
                    coordinator.place, self._client_places[job.n % _CLIENT_PLACES], size
                )
                self.engine.after(delay, self._k_reply, job.n)
            elif isinstance(effect, AppendEntry):
                self.counters["ledger_entries"] += 1
                if self._equivocates(coordinator):
                    self._sign_twin(coordinator, effect.entry)
            elif isinstance(effect, Penalize):
                self.counters["penalties"] += 1
            else:  # a new core effect this simulator does not model yet: count it, do not crash
                coordinator.unknown_effects[type(effect).__name__] += 1

    def _job(self, job_id: bytes) -> JobRecord | None:
        """The record of a client job, or None for a job the coordinator made up (a canary)."""
        n = int.from_bytes(job_id, "big")
        if n < len(self.jobs) and len(job_id) == 16:
            return self.jobs[n]
        return None

    def _settle(self, effect: FinishJob) -> None:
        job = self._job(effect.job_id)
        if job is None:
            return
        job.accept_ns = self.engine.now_ns
        reply = effect.reply
        if isinstance(reply, ErrorReply):
            job.outcome = reply.code
            return
        job.outcome = "accepted"
        job.correct = tuple(reply.tokens) == honest_tokens(
            f"simulated prompt {self.seed}/{job.n}", self._contracts[job.model].digest(), job.max_tokens
        )
        job.credited = tuple(reply.workers)
        job.dissenters = tuple(reply.dissenters)
        job.awaiting = set(reply.workers)
        self._job_of_entry_bytes[reply.receipt] = job.n
        self._job_of_entry_id[decode_entry(reply.receipt).id] = job.n

    def _to_worker(self, coordinator: SimCoordinator, peer: str, message: object, size: int) -> None:
        worker = self._by_peer.get(peer)
        if worker is None or not self.network.delivers(worker.index):
            return
        delay = self.network.delay_ns(coordinator.place, worker.place, size)
        self.engine.after(delay, self._k_worker, worker.index, type(message).__name__, message)

    def _to_coordinator(
        self, worker: SimWorker, event: Event | Beat, size: int, wrong: bool | None = None
    ) -> None:
        if not self.network.delivers(worker.index):
            return
        self._transport_report(worker, event, size, wrong)

    def _transport_report(
        self, worker: SimWorker, event: Event | Beat, size: int, wrong: bool | None = None
    ) -> None:
        """Deliver without loss: what the coordinator's own transport observes (a reset stream)."""
        coordinator = self.coordinators[worker.coordinator]
        delay = self.network.delay_ns(worker.place, coordinator.place, size)
        sent = event.message if isinstance(event, Beat) else event  # a registration: the wire message
        tag = f"{type(sent).__name__}/{worker.peer}"
        self.engine.after(delay, self._k_coord, coordinator.index, tag, (event, wrong))

    # ── workers ──────────────────────────────────────────────────────────────────────────────────────
    def _register(self, worker: SimWorker) -> None:
        # The registration is decided at the coordinator by the node's own decision code (SimCoordinator.
        # register); the connection authenticates the worker's key, as libp2p's peer id does.
        message = RegisterWorker(
            network=NETWORK_ID, public_key=worker.public_key, listen_addrs=[], models=list(self._offers)
        )
        self._to_coordinator(worker, Beat(worker.peer, worker.public_key, message), 400)

    def _on_churn(self, node: int, tag: int | str, data: Any) -> None:
        worker, churn = self.workers[node], self.scenario.churn
        now = self.engine.now_ns
        if tag == 1 and not worker.online:
            worker.online = True
            worker.session += 1
            self._register(worker)
            self.engine.after(self._heartbeat_ns, self._k_beat, node, worker.session)
            if churn.enabled and self._sessions is None:
                self.engine.after(
                    seconds_to_ns(sample_duration(churn.on, self._churn_rng)), self._k_churn, node, 0
                )
        elif tag == 0 and worker.online:
            worker.online = False
            worker.session += 1
            lost = ([worker.running] if worker.running is not None else []) + list(worker.queue)
            if worker.running is not None:
                worker.compute_s += (now - worker.run_started_ns) / NS_PER_S
            worker.running = None
            worker.queue.clear()
            worker.run_epoch += 1
            for run in lost:
                if isinstance(run, AuditJob):
                    self.counters["audits_lost_to_churn"] += 1
                    if churn.detect_disconnect:
                        self._transport_report(
                            worker, AuditFailed(run.job_id, worker.peer, "worker went offline"), 64
                        )
                    continue
                job = self._job(run.job_id)
                if job is not None:
                    job.churn_lost += 1
                self.counters["replicas_lost_to_churn"] += 1
                if churn.detect_disconnect:
                    self._transport_report(
                        worker, ReplicaFailed(run.job_id, worker.peer, "worker went offline"), 64
                    )
            if self._sessions is None:
                self.engine.after(
                    seconds_to_ns(sample_duration(churn.off, self._churn_rng)), self._k_churn, node, 1
                )

    def _on_beat(self, node: int, tag: int | str, data: Any) -> None:
        worker = self.workers[node]
        if tag != worker.session or not worker.online:
            return  # a heartbeat timer of a session that has ended
        self._register(worker)
        self.engine.after(self._heartbeat_ns, self._k_beat, node, worker.session)

    def _on_worker(self, node: int, tag: int | str, message: Any) -> None:
        worker = self.workers[node]
        if not worker.online:
            if isinstance(message, RunJob) and self.scenario.churn.detect_disconnect:
                self._transport_report(
                    worker, ReplicaFailed(message.job_id, worker.peer, "worker unreachable"), 64
                )
            if isinstance(message, AuditJob) and self.scenario.churn.detect_disconnect:
                self._transport_report(
                    worker, AuditFailed(message.job_id, worker.peer, "worker unreachable"), 64
                )
            return
        if isinstance(message, RunJob):
            refusal = worker.logic.accept(message) if worker.logic is not None else None
            if refusal is not None:
                self._to_coordinator(worker, ReplicaFailed(message.job_id, worker.peer, refusal.message), 200)
                return
            worker.queue.append(message)
            if worker.running is None:
                self._start_next(worker)
        elif isinstance(message, AuditJob):
            refusal = worker.logic.accept_audit(message) if worker.logic is not None else None
            if refusal is not None:
                self._to_coordinator(worker, AuditFailed(message.job_id, worker.peer, refusal.message), 200)
                return
            worker.queue.append(message)
            if worker.running is None:
                self._start_next(worker)
        elif isinstance(message, CancelReplica):
            self._cancel(worker, message.job_id)
        elif isinstance(message, ReceiptNotice):
            self._apply_receipts(worker, message)

    def _cancel(self, worker: SimWorker, job_id: bytes) -> None:
        if worker.running is not None and worker.running.job_id == job_id:
            worker.compute_s += (self.engine.now_ns - worker.run_started_ns) / NS_PER_S
            worker.run_epoch += 1
            worker.running = None
            self._start_next(worker)
            return
        for run in list(worker.queue):
            if run.job_id == job_id:
                worker.queue.remove(run)

    def _start_next(self, worker: SimWorker) -> None:
        """Start the next queued job (one slot per worker); its duration is tokens / tokens-per-second."""
        if not worker.queue:
            worker.running = None
            return
        run = worker.queue.popleft()
        hardware = worker.hardware
        if isinstance(run, AuditJob):  # one forward pass up to the window's end: a fraction of generating it
            seconds = max(1, _window(run)) * self.scenario.audit_cost / hardware.tokens_per_s
        else:
            seconds = run.max_tokens / hardware.tokens_per_s * worker.behaviour.work_fraction
        fails = hardware.failure_rate > 0 and self._failure_rng.random() < hardware.failure_rate
        if fails:
            seconds *= self._failure_rng.random()  # the engine crashes part-way through
        worker.running = run
        worker.run_started_ns = self.engine.now_ns
        worker.run_epoch += 1
        self.engine.after(seconds_to_ns(seconds), self._k_done, worker.index, worker.run_epoch, (run, fails))

    def _on_done(self, node: int, tag: int | str, data: tuple[RunJob | AuditJob, bool]) -> None:
        worker = self.workers[node]
        run, fails = data
        if tag != worker.run_epoch or worker.running is not run:
            return  # aborted (cancelled or offline) before it finished
        worker.compute_s += (self.engine.now_ns - worker.run_started_ns) / NS_PER_S
        worker.running = None
        if isinstance(run, AuditJob):
            if fails:
                self._to_coordinator(worker, AuditFailed(run.job_id, worker.peer, "engine error"), 200)
            else:
                self._audit(worker, run)
        elif fails:
            self._to_coordinator(worker, ReplicaFailed(run.job_id, worker.peer, "engine error"), 200)
        else:
            self._answer(worker, run)
        self._start_next(worker)

    def _answer(self, worker: SimWorker, run: RunJob) -> None:
        """Produce this worker's output for ``run`` and send its signed result to the coordinator."""
        digest = run.contract.digest()
        honest = honest_tokens(run.prompt, digest, run.max_tokens)
        if isinstance(worker.behaviour, Honest):
            tokens: tuple[int, ...] | None = honest
        elif isinstance(worker.behaviour, Intermittent | AuditCartel):
            tokens = worker.behaviour.answer_nth(
                worker.answered, run.prompt, digest, run.max_tokens, self._answer_rng
            )
        else:
            tokens = worker.behaviour.answer(run.prompt, digest, run.max_tokens, self._answer_rng)
        if tokens is None:
            self.counters["results_withheld"] += 1
            return
        worker.answered += 1
        output = Output(tokens=tokens, text="", finish_reason="length")
        if worker.logic is not None:
            # Full fidelity: the real machine signs, and the result crosses the real wire codec.
            decoded = decode_message(encode_message(worker.logic.attest(run, output)))
            assert isinstance(decoded, ReplicaResult)  # our own encoding of a ReplicaResult
            result = decoded
        else:
            attestation = sign_attestation(
                worker.key,
                NETWORK_ID,
                run.job_id,
                digest,
                commit_output(tokens, ""),
                len(tokens),
                scheme=self.scheme,
            )
            result = ReplicaResult(
                job_id=run.job_id,
                tokens=list(tokens),
                text="",
                finish_reason="length",
                attestation=msgspec.msgpack.encode(attestation),
            )
        event = ReplicaReturned(run.job_id, worker.peer, result)
        self._to_coordinator(worker, event, 300 + 4 * len(tokens), wrong=tokens != honest)

    def _audit(self, worker: SimWorker, audit: AuditJob) -> None:
        """Score a claim as an honest auditor would: ``HONEST_GAP`` where it is the honest output,
        ``CHEAT_GAP`` where it departs, over the plan's window only (``score_end``: a cheat past it goes
        unseen); judged, committed and (on a pass) co-signed, and sent back. A lying auditor, or a cartel
        member on its partners' claim, reports ``HONEST_GAP`` everywhere instead."""
        honest = honest_tokens(audit.prompt, audit.contract.digest(), len(audit.tokens))
        claim = tuple(audit.tokens)
        if isinstance(worker.behaviour, LyingAuditor | AuditCartel):
            self.counters["audits_by_liars"] += 1
            # An auditor the coordinator caught is never drawn again (§13.6): this counts what it still got.
            record = self.coordinators[worker.coordinator].core.audit_reputation.get(worker.public_key)
            if record is not None and record.invalid:
                self.counters["audits_by_caught_liars"] += 1
        if audit_passes_anyway(worker.behaviour, audit.prompt, claim):
            if claim != honest:
                self.counters["audits_lied"] += 1
            honest = claim
        evidence = [
            PositionEvidence(
                token=t,
                logprob=-(gap := HONEST_GAP if t == h else CHEAT_GAP),
                gap=gap,
                rank=0 if t == h else 3,
                mask_margin=0.0,
            )
            for t, h in zip(audit.tokens, honest, strict=True)
        ][: _window(audit)]
        if worker.logic is not None:
            decoded = decode_message(encode_message(worker.logic.report(audit, evidence)))
            assert isinstance(decoded, AuditReport)  # our own encoding of an AuditReport
            report = decoded
        else:  # a light agent: the same verdict, without a WorkerLogic (the evidence is not committed)
            verdict = judge(evidence)
            attestation = b""
            if verdict.accepted:
                attestation = msgspec.msgpack.encode(
                    sign_attestation(
                        worker.key,
                        NETWORK_ID,
                        audit.job_id,
                        audit.contract.digest(),
                        commit_output(audit.tokens, audit.text),
                        len(audit.tokens),
                        scheme=self.scheme,
                    )
                )
            report = AuditReport(
                job_id=audit.job_id,
                verdict="pass" if verdict.accepted else "fail",
                n_scored=verdict.positions,
                max_gap=verdict.max_gap,
                evidence_commitment=bytes(32),
                first_failure=-1 if verdict.first_failure is None else verdict.first_failure,
                failure_gap=verdict.failure.gap if verdict.failure is not None else 0.0,
                reason=verdict.reason,
                attestation=attestation,
            )
        self.counters["audits_passed" if report.verdict == "pass" else "audits_failed"] += 1
        self._to_coordinator(worker, AuditReturned(audit.job_id, worker.peer, report), 200)

    def _apply_receipts(self, worker: SimWorker, notice: ReceiptNotice) -> None:
        """Store pushed receipts: the real ledger for full workers, bookkeeping only for light agents."""
        if self._sync_ns and self.network.delivers(worker.index):
            self._relay(worker, notice.entries)
        jobs: list[int] = []
        if worker.logic is not None:
            applied: list[Entry] = []
            for data in notice.entries:  # one at a time, as the node does: a bad one costs only itself
                try:
                    applied += worker.logic.receive_entries([data])
                except InvalidEntryError:
                    self.counters["ledger_entries_refused"] += 1
                    if worker.logic.ledger.is_frozen(decode_body(decode_entry(data).body).author):
                        self.counters["ledger_entries_refused_frozen_author"] += 1
            jobs = [n for e in applied if (n := self._job_of_entry_id.get(e.id)) is not None]
        else:
            jobs = [n for data in notice.entries if (n := self._job_of_entry_bytes.get(data)) is not None]
        now = self.engine.now_ns
        for n in jobs:
            job = self.jobs[n]
            if worker.peer in job.awaiting:
                job.awaiting.discard(worker.peer)
                if not job.awaiting:
                    job.converged_ns = now

    # ── ledger sync and equivocation ─────────────────────────────────────────────────────────────────
    def _relay(self, worker: SimWorker, entries: list[bytes]) -> None:
        """Ledger sync, modelled: what a worker was pushed reaches every other coordinator later."""
        for c in self.coordinators:
            if c.index != worker.coordinator:
                delay = self._sync_ns + self.network.delay_ns(worker.place, c.place, sum(map(len, entries)))
                self.engine.after(delay, self._k_sync, c.index, f"relay/{worker.peer}", entries)

    def _on_sync(self, node: int, tag: int | str, entries: list[bytes]) -> None:
        """Entries reach coordinator ``node``'s real ledger; a fork it sees for the first time is
        published at once as a FRAUD entry (spec/ledger.md §6)."""
        if self._equivocator is not None and node == self._equivocator.coordinator:
            return  # the equivocator's software ignores what others say about it
        coordinator = self.coordinators[node]
        ledger = coordinator.core.ledger
        frozen = set(ledger.frozen())
        for data in entries:
            try:
                ledger.apply(decode_entry(data))
            except InvalidEntryError:
                self.counters["sync_entries_refused"] += 1
        for author in sorted(set(ledger.frozen()) - frozen):
            self._publish_fraud(coordinator, author)

    def _publish_fraud(self, coordinator: SimCoordinator, author: bytes) -> None:
        """Write a FRAUD entry on the coordinator's own chain — through its one chain writer, the one its
        receipts go through, as the node does (opengrid/node/service.py) — and push it to every worker and
        coordinator."""
        ledger = coordinator.core.ledger
        fraud = ledger.fraud_payload(author)
        assert fraud is not None  # the author was just frozen: the ledger holds the evidence
        entry, _ = coordinator.core.chain.write(fraud)
        self.frauds.append((self.engine.now_ns, coordinator.index, author))
        self.counters["frauds_published"] += 1
        data = encode_entry(entry)
        notice = ReceiptNotice(entries=[data])
        for worker in self.workers:
            if worker.logic is not None:
                self._to_worker(coordinator, worker.peer, notice, len(data))
        for other in self.coordinators:
            if other is not coordinator:
                delay = self.network.delay_ns(coordinator.place, other.place, len(data))
                self.engine.after(delay, self._k_sync, other.index, f"fraud/{coordinator.index}", [data])

    def _equivocates(self, coordinator: SimCoordinator) -> bool:
        spec = self._equivocator
        return (
            spec is not None
            and coordinator.index == spec.coordinator
            and self.engine.now_ns >= seconds_to_ns(spec.at_s)
        )

    def _sign_twin(self, coordinator: SimCoordinator, entry: Entry) -> None:
        """The equivocator's second branch: the same receipt, stamped 1 ms later, with the same seq,
        chained on the branch's own previous entry (each branch is consistent; only both together fork)."""
        body = decode_body(entry.body)
        payload = body.payload
        assert isinstance(payload, Receipt)  # coordinators only append receipts
        twin = msgspec.structs.replace(
            body,
            prev=body.prev if self._shadow_prev is None else self._shadow_prev,
            payload=msgspec.structs.replace(payload, issued_at_ms=payload.issued_at_ms + 1),
        )
        key = derive_key(self.seed, f"coordinator/{coordinator.index}")
        signed = sign_entry(key, twin, scheme=self.scheme)
        self._shadow_prev = signed.id
        self._twins[encode_entry(entry)] = encode_entry(signed)

    def _on_second_branch(self, peer: str) -> bool:
        """Which credited workers the equivocator shows its second branch: every other one."""
        return self._by_peer[peer].index % 2 == 1

    # ── network events ───────────────────────────────────────────────────────────────────────────────
    def _on_sybil(self, node: int, tag: int | str, spec: AdversarySpec) -> None:
        now = self.engine.now_ns
        behaviour = make_behaviour(
            spec.behaviour, spec.group, cheat_rate=spec.cheat_rate, trusted_after=spec.trusted_after
        )
        for _ in range(spec.count):
            self._add_worker(behaviour, now + self._build_rng.randrange(_STAGGER_NS)).joined_ns = now
        self.counters["sybils_joined"] += spec.count

    def _on_partition(self, node: int, tag: int | str, fraction: Any) -> None:
        if tag == 1:
            k = round(fraction * len(self.workers))
            self._partitions[node] = set(self._build_rng.sample(range(len(self.workers)), k))
        else:
            self._partitions.pop(node, None)
        self.network.isolated = set().union(*self._partitions.values()) if self._partitions else set()


def simulate(
    scenario: Scenario, seed: int, *, progress: Callable[[int], None] | None = None, trace: bool = False
) -> RunOutput:
    """Build and run one simulation."""
    return Simulation(scenario, seed, trace=trace).run(progress)

"""A coordinator and real WorkerLogic instances wired back to back, with explicit time and fixed keys.

The harness plays the driver's part: it hands DispatchReplica effects to the chosen worker, lets the
worker attest an output, and feeds the ReplicaResult back (through the real wire codec) as an event.
In audit mode it also plays auditors: a DispatchAudit is answered by the auditor's real WorkerLogic
(``report``: judged, committed, co-signed) from evidence with a chosen gap at every position, as an
engine's ``score`` would give it.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import msgspec
from nacl.signing import SigningKey
from opengrid_ledger import Genesis, LedgerState, Receipt, decode_entry, open_entry

from opengrid.core.audit import PositionEvidence
from opengrid.core.coordinator import Coordinator, CoordinatorConfig
from opengrid.core.effects import DispatchAudit, DispatchReplica, Effect, FinishJob
from opengrid.core.events import (
    AuditFailed,
    AuditReturned,
    JobSubmitted,
    ReplicaFailed,
    ReplicaReturned,
    WorkerRegistered,
)
from opengrid.core.reputation import Reputation
from opengrid.core.worker import Output, WorkerLogic
from opengrid.wire.codec import decode_message, encode_message
from opengrid.wire.contract import DecodingContract
from opengrid.wire.messages import (
    AuditJob,
    AuditReport,
    ErrorReply,
    JobAccepted,
    JobId,
    ModelOffer,
    Priority,
    ReplicaResult,
    RunJob,
    SubmitJob,
)

T = TypeVar("T")

NETWORK = "testnet"
CONTRACT = DecodingContract(model_sha256="ab" * 32)
OFFERS = (ModelOffer(name="tiny", contract=CONTRACT),)
HONEST = Output(tokens=(101, 202, 303, 404, 505), text=" the quick brown fox", finish_reason="length")


def cheat(n: int = 1) -> Output:
    """A wrong answer; different n give different wrong answers."""
    return Output(tokens=(9000 + n, 202, 303), text=f" wrong answer {n}", finish_reason="length")


def lazy(run: RunJob) -> Output:
    """A lazy worker: tokens that look random and differ from job to job (derived from the job id)."""
    digest = hashlib.sha256(b"lazy" + run.job_id).digest()
    return Output(tokens=tuple(digest[:5]), text=f" lazy {digest[:4].hex()}", finish_reason="length")


SWAPPED = Output(tokens=(11, 22, 33, 44, 55), text=" another model altogether", finish_reason="length")
"""A model-swapped worker: consistent, plausible, wrong."""

Behaviour = Callable[[str, RunJob], Output | None]
"""What a worker does with a job: an output, or None to fail it."""


def honest(peer: str, run: RunJob) -> Output | None:
    return HONEST


AuditBehaviour = Callable[[str, AuditJob], float | None]
"""What an auditor does with an audit: the gap (logits) its engine finds at every claimed position that
differs from the honest output (0.05 elsewhere, as honest rounding gives), or None to fail the audit."""

CHEAT_GAP = 12.0
"""The gap a cheating output shows where it departs from the model (measured: 2-26 logits; §12.3)."""


def scores(gap: float = CHEAT_GAP) -> AuditBehaviour:
    """An honest auditor: positions that match ``HONEST`` score 0.05, the others ``gap``."""

    def behaviour(peer: str, audit: AuditJob) -> float | None:
        return gap

    return behaviour


def evidence_for(audit: AuditJob, gap: float) -> list[PositionEvidence]:
    """Evidence as a scoring engine reports it: 0.05 logits where the claim is the honest output, ``gap``
    where it is not; one more position when the claim stopped."""
    stopped = audit.finish_reason == "stop"
    tokens = [*audit.tokens, *([2] if stopped else [])]
    honest_tokens = (*HONEST.tokens, *([2] if stopped else []))
    evidence = []
    for i, token in enumerate(tokens):
        right = i < len(honest_tokens) and honest_tokens[i] == token and audit.text == HONEST.text
        value = 0.05 if right else gap
        evidence.append(
            PositionEvidence(token=token, logprob=-value, gap=value, rank=0 if right else 3, mask_margin=0.0)
        )
    return evidence


def signing_key(label: str) -> SigningKey:
    return SigningKey(hashlib.sha256(b"opengrid core test key " + label.encode()).digest())


def job_id(n: int) -> JobId:
    return JobId(n.to_bytes(16, "big"))


def dispatches(effects: Iterable[Effect]) -> list[DispatchReplica]:
    return [e for e in effects if isinstance(e, DispatchReplica)]


def audits(effects: Iterable[Effect]) -> list[DispatchAudit]:
    return [e for e in effects if isinstance(e, DispatchAudit)]


def of_type(effects: Iterable[Effect], kind: type[T]) -> list[T]:
    return [e for e in effects if isinstance(e, kind)]


def finished(effects: Iterable[Effect]) -> JobAccepted | ErrorReply | None:
    replies = [e.reply for e in effects if isinstance(e, FinishJob)]
    assert len(replies) <= 1, replies
    return replies[0] if replies else None


def open_receipt(encoded: bytes) -> tuple[bytes, Receipt]:
    """(author, receipt) of an encoded ledger entry, verified as any node would."""
    body = open_entry(decode_entry(encoded), NETWORK)
    assert isinstance(body.payload, Receipt)
    return body.author, body.payload


@dataclass
class Grid:
    """One coordinator, ``n`` workers named w0, w1, ..., every key derived from a fixed label."""

    n: int = 3
    seed: int = 7
    config: CoordinatorConfig = field(default_factory=lambda: CoordinatorConfig(verify="replicate"))
    """Exact replication unless a test asks for audits (most of these tests are about replication)."""
    operators: dict[str, str] = field(default_factory=dict)
    """peer -> operator announced in its registrations (default: none)."""
    slots: int = 1
    """Replicas each worker announces it can run at once."""
    grant_points: int = 0
    """The starting grant of the network's genesis (0: no genesis, no grant)."""

    def __post_init__(self) -> None:
        genesis = Genesis(NETWORK, (), grant_points=self.grant_points) if self.grant_points else None
        self.coordinator = Coordinator(
            network=NETWORK,
            signing_key=signing_key("coordinator"),
            ledger=LedgerState(NETWORK, genesis=genesis),
            rng=random.Random(self.seed),
            config=self.config,
        )
        self.workers = {
            f"w{i}": WorkerLogic(
                network=NETWORK,
                signing_key=signing_key(f"w{i}"),
                offers=OFFERS,
                ledger=LedgerState(NETWORK, genesis=genesis),
            )
            for i in range(self.n)
        }
        for worker in self.workers.values():
            worker.trust_coordinator(self.coordinator.public_key)

    def key(self, peer: str) -> bytes:
        return self.workers[peer].public_key

    def register(self, *peers: str, now: float = 0.0, slots: int | None = None) -> list[Effect]:
        """(Re-)register workers; returns the effects (queued jobs dispatched to freed capacity)."""
        effects: list[Effect] = []
        for peer in peers or sorted(self.workers):
            worker = self.workers[peer]
            event = WorkerRegistered(
                peer,
                worker.public_key,
                worker.offers,
                self.operators.get(peer, ""),
                slots=self.slots if slots is None else slots,
            )
            effects += self.coordinator.handle(event, now)
        return effects

    def submit(
        self,
        job: int = 1,
        *,
        replicas: int = 2,
        model: str = "tiny",
        max_tokens: int = 16,
        now: float = 0.0,
        prompt: str = "Once upon a time",
        client: str = "client",
        priority: Priority = "interactive",
        stream: bool = False,
    ) -> list[Effect]:
        request = SubmitJob(
            job_id=job_id(job),
            model=model,
            prompt=prompt,
            max_tokens=max_tokens,
            replicas=replicas,
            priority=priority,
            stream=stream,
        )
        return self.coordinator.handle(JobSubmitted(client=client, request=request), now)

    def result(self, dispatch: DispatchReplica, output: Output) -> ReplicaResult:
        """The worker's signed answer, as it would arrive over the wire."""
        worker = self.workers[dispatch.peer]
        assert worker.accept(dispatch.run) is None
        decoded = decode_message(encode_message(worker.attest(dispatch.run, output)))
        assert isinstance(decoded, ReplicaResult)
        return decoded

    def answer(self, dispatch: DispatchReplica, output: Output, *, now: float = 1.0) -> list[Effect]:
        return self.deliver(dispatch, self.result(dispatch, output), now=now)

    def deliver(self, dispatch: DispatchReplica, result: ReplicaResult, *, now: float = 1.0) -> list[Effect]:
        return self.coordinator.handle(ReplicaReturned(dispatch.run.job_id, dispatch.peer, result), now)

    def fail(self, dispatch: DispatchReplica, *, now: float = 1.0) -> list[Effect]:
        return self.coordinator.handle(
            ReplicaFailed(dispatch.run.job_id, dispatch.peer, "engine crashed"), now
        )

    def play(self, first: Sequence[Effect], outputs: Sequence[Output], *, now: float = 1.0) -> list[Effect]:
        """Answer dispatches in the order they were issued, the i-th with ``outputs[i]``.

        Returns every effect produced after ``first``; stops when the job finishes or nothing is pending.
        """
        queue = dispatches(first)
        produced: list[Effect] = []
        answered = 0
        while queue and finished([*first, *produced]) is None:
            effects = self.answer(queue.pop(0), outputs[answered], now=now)
            answered += 1
            produced += effects
            queue += dispatches(effects)
        return produced

    def drive(self, first: Sequence[Effect], behaviour: Behaviour, *, now: float = 1.0) -> list[Effect]:
        """Answer every dispatch in ``first`` and after it — canaries included, which the workers cannot
        tell apart — with ``behaviour(peer, run)`` (None: the replica fails), until none is left.

        Returns every effect produced after ``first``.
        """
        queue = dispatches(first)
        produced: list[Effect] = []
        while queue:
            dispatch = queue.pop(0)
            output = behaviour(dispatch.peer, dispatch.run)
            effects = (
                self.fail(dispatch, now=now) if output is None else self.answer(dispatch, output, now=now)
            )
            produced += effects
            queue += dispatches(effects)
        return produced

    def run_job(
        self, job: int, behaviour: Behaviour, *, replicas: int = 2, now: float = 0.0, prompt: str = ""
    ) -> list[Effect]:
        """Submit ``job`` and drive it (and any canary sent with it) to the end; every effect."""
        first = self.submit(job, replicas=replicas, now=now, prompt=prompt or f"prompt {job}")
        return [*first, *self.drive(first, behaviour, now=now + 1.0)]

    def audit_report(self, dispatch: DispatchAudit, gap: float) -> AuditReport:
        """The auditor's report over evidence with ``gap`` where the claim departs from ``HONEST``, as it
        would arrive over the wire."""
        worker = self.workers[dispatch.peer]
        assert worker.accept_audit(dispatch.audit) is None
        report = worker.report(dispatch.audit, evidence_for(dispatch.audit, gap))
        decoded = decode_message(encode_message(report))
        assert isinstance(decoded, AuditReport)
        return decoded

    def audit(self, dispatch: DispatchAudit, gap: float = CHEAT_GAP, *, now: float = 2.0) -> list[Effect]:
        """Answer an audit with the report of an auditor whose engine finds ``gap`` at wrong positions."""
        report = self.audit_report(dispatch, gap)
        return self.coordinator.handle(AuditReturned(dispatch.audit.job_id, dispatch.peer, report), now)

    def deliver_report(
        self, dispatch: DispatchAudit, report: AuditReport, *, now: float = 2.0
    ) -> list[Effect]:
        return self.coordinator.handle(AuditReturned(dispatch.audit.job_id, dispatch.peer, report), now)

    def fail_audit(self, dispatch: DispatchAudit, *, now: float = 2.0) -> list[Effect]:
        return self.coordinator.handle(
            AuditFailed(dispatch.audit.job_id, dispatch.peer, "engine_error: cannot score"), now
        )

    def drive_audited(
        self, first: Sequence[Effect], behaviour: Behaviour, auditor: AuditBehaviour, *, now: float = 1.0
    ) -> list[Effect]:
        """Like ``drive``, answering audits too: ``auditor(peer, audit)`` gives the gap its engine finds at
        wrong positions (None: the audit fails). Bounded: at most 64 dispatches."""
        queue: list[DispatchReplica | DispatchAudit] = [
            e for e in first if isinstance(e, DispatchReplica | DispatchAudit)
        ]
        produced: list[Effect] = []
        for _ in range(64):
            if not queue:
                break
            item = queue.pop(0)
            if isinstance(item, DispatchReplica):
                output = behaviour(item.peer, item.run)
                effects = self.fail(item, now=now) if output is None else self.answer(item, output, now=now)
            else:
                gap = auditor(item.peer, item.audit)
                effects = self.fail_audit(item, now=now) if gap is None else self.audit(item, gap, now=now)
            produced += effects
            queue += [e for e in effects if isinstance(e, DispatchReplica | DispatchAudit)]
        assert not queue, "more than 64 dispatches: the job does not settle"
        return produced

    def streak(self, peer: str) -> int:
        return self.coordinator.reputation.get(self.key(peer), Reputation()).streak


def scripted_run(seed: int, config: CoordinatorConfig | None = None) -> list[Effect]:
    """Five jobs over five workers, each with a failure, a re-registration and a cheater; every effect."""
    grid = Grid(
        n=5, seed=seed, config=config or CoordinatorConfig(verify="replicate", replica_timeout_s=10.0)
    )
    grid.register(now=0.0)
    log: list[Effect] = []
    for job in range(1, 6):
        effects = grid.submit(job, replicas=2 + job % 2, now=float(job))
        log += effects
        first = dispatches(effects)[0]
        log += grid.fail(first, now=job + 0.5)
        grid.register(first.peer, now=job + 0.6)
        pending = [d for d in dispatches(log) if d.run.job_id == job_id(job) and d != first]
        log += grid.play(pending, [cheat(job), HONEST, HONEST, HONEST, HONEST], now=job + 0.7)
    grid.register(now=6.0)
    log += grid.coordinator.on_timer(40.0)
    return log


def replace_result(result: ReplicaResult, **changes: object) -> ReplicaResult:
    return msgspec.structs.replace(result, **changes)

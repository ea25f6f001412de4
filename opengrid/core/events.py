"""Events the drivers feed into the core machines (past tense: something happened)."""

from __future__ import annotations

from dataclasses import dataclass

from opengrid.wire.messages import (
    AuditReport,
    ChunkVerdict,
    FirstPositionVerdict,
    ModelOffer,
    ReplicaResult,
    SealedProgress,
    SubmitJob,
)


@dataclass(frozen=True)
class WorkerRegistered:
    """A worker (re-)registered; ``key`` was checked against its connection's peer id by the driver."""

    peer: str
    key: bytes
    offers: tuple[ModelOffer, ...]
    operator: str = ""
    """Who runs the worker as far as the driver can tell (e.g. the IP address of the connection); two
    workers with the same non-empty operator never run replicas of one job together. Empty: unknown."""
    rtt_s: float = 0.0
    """Round-trip time the driver measured to the worker (e.g. a libp2p ping); 0 when unknown."""
    slots: int = 1
    """Replicas the worker runs at once (``RegisterWorker.slots``); the coordinator never has more than
    this many of its replicas and canaries in flight on the worker."""
    probed_tokens_per_s: float = 0.0
    """The speed the worker measured on itself at start (``RegisterWorker.tokens_per_s``): an unchecked
    claim, used only as a bounded prior until the coordinator has measured verified results."""
    max_job_tokens: int = 0
    """The longest job (``max_tokens``) the worker takes (``RegisterWorker.max_job_tokens``; edge nodes
    set one); 0: no limit."""
    members: tuple[bytes, ...] = ()
    """A split group's members' accounts (from ``RegisterWorker.split_members``, keys derived by the
    driver); empty for an ordinary worker."""


@dataclass(frozen=True)
class JobSubmitted:
    """A client submitted a job."""

    client: str
    request: SubmitJob
    wall_ms: int = 0
    """Wall-clock Unix ms at submission, from the driver; stamped into the receipt for history views."""


@dataclass(frozen=True)
class ReplicaReturned:
    """A worker answered a dispatched replica."""

    job_id: bytes
    peer: str
    result: ReplicaResult


@dataclass(frozen=True)
class ReplicaProgressed:
    """A running replica of a streaming job reported progress (``ReplicaProgress``): the tokens it
    generated since its last frame and one text piece per token (spec/verification.md §14)."""

    job_id: bytes
    peer: str
    tokens: tuple[int, ...]
    pieces: tuple[str, ...]


@dataclass(frozen=True)
class SealedChunkReported:
    """The prover of a sealed, audited streaming job sent the next chunk of its output, sealed to the
    client and to the auditors (``SealedProgress``, spec/verification.md §14.3)."""

    job_id: bytes
    peer: str
    chunk: SealedProgress


@dataclass(frozen=True)
class ReplicaFailed:
    """A dispatched replica failed: the worker errored, vanished, or the stream broke."""

    job_id: bytes
    peer: str
    reason: str
    client_fault: bool = False
    """The worker refused the client's input (a sealed prompt that does not open for it): the job
    fails, and the worker is not blamed."""


@dataclass(frozen=True)
class JobCancelled:
    """The client of ``job_id`` gave up on it (cancel request, or its connection closed)."""

    job_id: bytes
    client: str = ""
    """Who asked; a non-empty value must match the submitter or the cancel is ignored. Empty: the driver
    has already checked that the canceller may cancel."""


@dataclass(frozen=True)
class AuditReturned:
    """An auditor answered a dispatched audit (``DispatchAudit``) with its report (audit mode)."""

    job_id: bytes
    peer: str
    report: AuditReport


@dataclass(frozen=True)
class AuditFailed:
    """A dispatched audit failed: the auditor errored (its engine cannot score, say), vanished, or the
    stream broke. The auditor is replaced, like a failed replica."""

    job_id: bytes
    peer: str
    reason: str


@dataclass(frozen=True)
class ChunkAudited:
    """An auditor of a chunked audit (a streaming job's, spec/verification.md §14.2) answered one chunk
    with its verdict; its final report comes as ``AuditReturned``."""

    job_id: bytes
    peer: str
    verdict: ChunkVerdict


@dataclass(frozen=True)
class FirstPositionJudged:
    """An auditor of a chunked audit (open, not sealed) listed, before any chunk, every token it would pass
    at claim position 0 (spec/verification.md §14.2, the first position judged in advance)."""

    job_id: bytes
    peer: str
    verdict: FirstPositionVerdict


Event = (
    WorkerRegistered
    | JobSubmitted
    | ReplicaReturned
    | ReplicaProgressed
    | SealedChunkReported
    | ReplicaFailed
    | JobCancelled
    | AuditReturned
    | AuditFailed
    | ChunkAudited
    | FirstPositionJudged
)

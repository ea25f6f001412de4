"""Effects the core machines ask their driver to carry out (imperative: do this)."""

from __future__ import annotations

from dataclasses import dataclass

from opengrid_ledger import Entry

from opengrid.wire.messages import (
    AuditChunk,
    AuditJob,
    ErrorReply,
    JobAccepted,
    ReceiptNotice,
    RunJob,
    Sealed,
)


@dataclass(frozen=True)
class DispatchReplica:
    """Send ``run`` to ``peer`` and feed back ``ReplicaReturned`` or ``ReplicaFailed``."""

    peer: str
    run: RunJob


@dataclass(frozen=True)
class DispatchAudit:
    """Send ``audit`` to ``peer`` (an auditor) and feed back ``AuditReturned`` or ``AuditFailed``.

    ``CancelReplica(peer, job_id)`` stops it, as it stops a replica: one peer never runs a job's replica
    and its audit at once."""

    peer: str
    audit: AuditJob


@dataclass(frozen=True)
class CancelReplica:
    """Stop waiting for ``peer``'s answer to ``job_id`` (the job is settled or the replica or audit timed
    out)."""

    peer: str
    job_id: bytes


@dataclass(frozen=True)
class FinishJob:
    """Answer the client of ``job_id``: the verified result or a typed error."""

    job_id: bytes
    reply: JobAccepted | ErrorReply


@dataclass(frozen=True)
class AppendEntry:
    """Persist a ledger entry the machine has already applied to its in-memory state."""

    entry: Entry


@dataclass(frozen=True)
class SendReceipt:
    """Give a credited worker its receipt (best effort: ledger sync will carry it otherwise)."""

    peer: str
    notice: ReceiptNotice


@dataclass(frozen=True)
class Penalize:
    """``peer`` misbehaved (outvoted, failed a canary, or sent a result that failed its checks); log it.

    The coordinator has already lowered the worker's reputation (``Coordinator.reputation``)."""

    peer: str
    why: str


@dataclass(frozen=True)
class ForwardVerified:
    """Send the client of ``job_id`` more of its answer: ``text`` extends the verified prefix (a quorum of
    replicas agreed on it token by token), and the final answer starts with all of it
    (spec/verification.md §14)."""

    job_id: bytes
    text: str
    sealed: Sealed | None = None
    """A sealed job's verified chunk (spec/verification.md §14.3): the prover's ciphertext for the client
    (``text`` is then empty), every auditor having passed the chunk it committed to."""
    commitment: bytes = b""
    """With ``sealed``: the chunk's commitment the auditors' verdicts named (the client checks it)."""


@dataclass(frozen=True)
class SendAuditChunk:
    """Send ``chunk`` to ``peer`` on its chunked audit's stream (opened by a ``DispatchAudit`` whose
    ``audit.chunked`` is set), after the chunks sent before it; feed back ``ChunkAudited`` for its
    verdict (spec/verification.md §14.2)."""

    peer: str
    chunk: AuditChunk


Effect = (
    DispatchReplica
    | DispatchAudit
    | CancelReplica
    | FinishJob
    | AppendEntry
    | SendReceipt
    | Penalize
    | ForwardVerified
    | SendAuditChunk
)

"""Events the drivers feed into the core machines (past tense: something happened)."""

from __future__ import annotations

from dataclasses import dataclass

from opengrid.wire.messages import ModelOffer, ReplicaResult, SubmitJob


@dataclass(frozen=True)
class WorkerRegistered:
    """A worker (re-)registered; ``key`` was checked against its connection's peer id by the driver."""

    peer: str
    key: bytes
    offers: tuple[ModelOffer, ...]


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
class ReplicaFailed:
    """A dispatched replica failed: the worker errored, vanished, or the stream broke."""

    job_id: bytes
    peer: str
    reason: str


Event = WorkerRegistered | JobSubmitted | ReplicaReturned | ReplicaFailed

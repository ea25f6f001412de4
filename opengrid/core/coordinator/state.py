"""A client job's lifecycle on the coordinator, as one explicit table (spec/job-protocol.md §Lifecycle).

Every change of a job's state goes through ``move``, which looks the change up in ``TRANSITIONS`` and
raises ``JobStateError`` (our bug, never a peer's) for one the table does not allow. The state says what
the job waits for; the record's other fields (``records.JobRecord``) say for whom and how many::

                 ┌───────────── DISPATCHED ─────────────┐  DISPATCHED (more replicas)
                 │                                      ▼  ◀──┐
    submit ──▶ QUEUED ◀──────────── DRAINED ─────────── RUNNING ─┘
                 ▲                                      │
                 │ CLAIM_REJECTED                       │ CLAIMED (audit mode: the prover answered)
                 └─────────────────── AUDITING ◀────────┘

    RUNNING, AUDITING ── ACCEPTED ──▶ ACCEPTED    (receipt signed, the client answered)
    QUEUED, RUNNING, AUDITING ── FAILED ──▶ FAILED        (typed error to the client)
    QUEUED, RUNNING, AUDITING ── CANCELLED ──▶ CANCELLED  (by its client; nothing credited)

- QUEUED: nothing of the job is running; it waits in the fair queue for free worker slots (at
  submission, after its running replicas all failed or disagreed, after its claim failed an audit).
- RUNNING: at least one replica is dispatched and not back yet (the job may also wait in the queue for
  the rest of its replicas).
- AUDITING: audit mode: the prover's answer (the claim) is with auditors, or waits for a free one.
- ACCEPTED, FAILED, CANCELLED: the end; the record is dropped in the same step.

A job taken back after a restart (``Coordinator.resume``) has no record until it is submitted again, so
it has no state here until then.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Protocol

from opengrid.errors import JobStateError


class JobState(enum.Enum):
    """Where a client job is in its lifecycle (see the module docstring)."""

    QUEUED = "queued"
    RUNNING = "running"
    AUDITING = "auditing"
    ACCEPTED = "accepted"
    FAILED = "failed"
    CANCELLED = "cancelled"


class JobEvent(enum.Enum):
    """What happened to a job, as the state table sees it (not a wire message nor a core ``Event``)."""

    DISPATCHED = "dispatched"
    """One or more replicas were sent to workers."""
    DRAINED = "drained"
    """Its last running replica came back (answer, failure, refusal) and the job goes on."""
    CLAIMED = "claimed"
    """Audit mode: the prover's checked answer arrived and goes to auditors."""
    CLAIM_REJECTED = "claim_rejected"
    """Audit mode: an auditor failed the claim; the job needs another prover."""
    ACCEPTED = "accepted"
    """A quorum agreed, or every auditor passed the claim: a receipt was signed."""
    FAILED = "failed"
    """It ended with a typed error (no quorum, no workers, deadline, the client's own input)."""
    CANCELLED = "cancelled"
    """Its client cancelled it."""


TERMINAL: frozenset[JobState] = frozenset({JobState.ACCEPTED, JobState.FAILED, JobState.CANCELLED})
"""States a job never leaves (its record is dropped when it enters one)."""

_END: Mapping[JobEvent, JobState] = {
    JobEvent.FAILED: JobState.FAILED,
    JobEvent.CANCELLED: JobState.CANCELLED,
}

TRANSITIONS: Mapping[JobState, Mapping[JobEvent, JobState]] = {
    JobState.QUEUED: {
        JobEvent.DISPATCHED: JobState.RUNNING,
        **_END,
    },
    JobState.RUNNING: {
        JobEvent.DISPATCHED: JobState.RUNNING,
        JobEvent.DRAINED: JobState.QUEUED,
        JobEvent.CLAIMED: JobState.AUDITING,
        JobEvent.ACCEPTED: JobState.ACCEPTED,
        **_END,
    },
    JobState.AUDITING: {
        JobEvent.CLAIM_REJECTED: JobState.QUEUED,
        JobEvent.ACCEPTED: JobState.ACCEPTED,
        **_END,
    },
    JobState.ACCEPTED: {},
    JobState.FAILED: {},
    JobState.CANCELLED: {},
}
"""state -> {event -> next state}: every change a job may make; anything else is a bug."""


class HasJobState(Protocol):
    """Anything with a job state and a job id (``records.JobRecord``; tests use their own)."""

    state: JobState

    @property
    def job_id(self) -> bytes: ...


def next_state(state: JobState, event: JobEvent) -> JobState:
    """The state ``event`` moves a job in ``state`` to; ``JobStateError`` if the table forbids it."""
    allowed = TRANSITIONS[state]
    if event not in allowed:
        raise JobStateError(
            f"a {state.value} job cannot take the event {event.value}; allowed from {state.value}: "
            f"{', '.join(e.value for e in allowed) or 'nothing (it has ended)'}. This is a coordinator "
            "bug: report it with the log around it"
        )
    return allowed[event]


def move(job: HasJobState, event: JobEvent) -> JobState:
    """Move ``job`` by ``event`` (``TRANSITIONS``) and return its new state; ``JobStateError`` (naming the
    job) if the table forbids the change, and then the job keeps its state."""
    try:
        job.state = next_state(job.state, event)
    except JobStateError as exc:
        raise JobStateError(f"job {job.job_id.hex()}: {exc}") from None
    return job.state

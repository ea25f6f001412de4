"""How a job ends without a receipt: failed with a typed error or cancelled by its client, its pending
replicas and audits stopped, its slots freed, its hold refunded and what went wrong recorded as EVIDENCE."""

from __future__ import annotations

from opengrid_ledger import Refund

from opengrid.core.coordinator.records import JobRecord
from opengrid.core.coordinator.shared import CoordinatorParts
from opengrid.core.coordinator.state import JobEvent, move
from opengrid.core.effects import CancelReplica, Effect, FinishJob
from opengrid.core.events import JobCancelled
from opengrid.wire.messages import ErrorCode, ErrorReply


class SettlePart(CoordinatorParts):
    """Ending a job without a receipt: failure, cancellation, what it held released.

    A mixin of ``Coordinator`` over ``CoordinatorParts``.
    """

    def _on_cancelled(self, event: JobCancelled) -> list[Effect]:
        job = self._jobs.get(event.job_id)
        resumed = self._resumed.get(event.job_id)
        client = job.client if job is not None else resumed[1].client if resumed is not None else None
        if client is None or (event.client and event.client != client):
            return []  # unknown, settled, a canary, or not the submitter's to cancel
        self._resumed.pop(event.job_id, None)
        # No code says "cancelled" yet (a wire change); "malformed" is the nearest that clients do not
        # retry. The work done so far is not credited: no receipt, no points.
        return self._fail(
            event.job_id,
            "malformed",
            "job cancelled by its client; nothing was credited",
            end=JobEvent.CANCELLED,
        )

    def _cancel_pending(self, job: JobRecord) -> list[Effect]:
        """The job is settled: free its workers' slots, stop its pending replicas and audits, leave the
        queues."""
        self._queue.remove(job.request.job_id)
        self._audit_wait.pop(job.request.job_id, None)
        for peer in job.pending:
            self._release(peer)
        effects: list[Effect] = [
            CancelReplica(peer=peer, job_id=job.request.job_id) for peer in sorted(job.pending)
        ]
        effects += self._cancel_audits(job)
        return effects

    def _fail(
        self, job_id: bytes, code: ErrorCode, message: str, *, end: JobEvent = JobEvent.FAILED
    ) -> list[Effect]:
        """End the job with a typed error (``end``: FAILED, or CANCELLED by its client): record what went
        wrong, stop what still runs, refund its hold. A job resumed but not submitted yet has no record:
        it only gets the error."""
        job = self._jobs.pop(job_id, None)
        effects: list[Effect] = []
        if job is not None:
            move(job, end)
            effects += self._evidence(job)
            effects += self._cancel_pending(job)
            if job.hold:  # a paid job that failed costs its client nothing
                effects += self._author(Refund(hold=job.hold))
        effects.append(FinishJob(job_id, ErrorReply(code, message, job_id)))
        return effects

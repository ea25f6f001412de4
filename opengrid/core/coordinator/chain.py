"""This coordinator's own hash chain: the only part that signs (receipts, EVIDENCE, SETTLE/REFUND,
the operator's GRANT and HOLD, grant vouchers). Entries go through the node's one ``ChainWriter``
(opengrid_ledger.writer), shared with the node's FRAUD and ADMIT paths, so our chain has one head and
``_own_entries`` (the writer's log, which ``_notice_for`` pushes to the workers a receipt names) has no
gaps."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from nacl.signing import SigningKey
from opengrid_ledger import (
    ChainWriter,
    Cosignature,
    Entry,
    Evidence,
    Payload,
    sign_grant_voucher,
)

from opengrid.core.coordinator.config import MAX_PUSH
from opengrid.core.coordinator.records import JobRecord
from opengrid.core.coordinator.shared import CoordinatorParts
from opengrid.core.effects import AppendEntry, Effect
from opengrid.wire.messages import ReceiptNotice


class ChainPart(CoordinatorParts):
    """Our own hash chain: the only part that holds the signing key.

    A mixin of ``Coordinator`` over ``CoordinatorParts``.
    """

    _key: SigningKey
    """This coordinator's signing key; nothing outside this module uses it."""
    chain: ChainWriter
    """The one writer of our chain (the node shares it with its FRAUD and ADMIT paths)."""

    def _sign_ahead(self, payloads: Sequence[Payload]) -> list[Entry]:
        """Sign ``payloads`` as our next entries without applying them (the operator's GRANT and HOLD,
        applied when the job they pay is submitted, at once: ``_take_hold``)."""
        return self.chain.sign_ahead(payloads)

    def _voucher(self, account: bytes, points: int) -> Cosignature:
        """Sign a voucher for ``account``'s starting grant of ``points`` (spec/ledger.md §7)."""
        return sign_grant_voucher(self._key, self.network, account, points, scheme=self._scheme)

    def _adopt(self, applied: Iterable[Entry]) -> None:
        """Count our own entries among ``applied`` (the GRANT and HOLD of a job we pay ourselves) as ours,
        so that they are pushed with the rest of our chain (``_notice_for``)."""
        self.chain.adopt(applied)

    def _evidence(self, job: JobRecord) -> list[Effect]:
        """An EVIDENCE entry for what the job's receipt cannot show — replicas that failed their checks
        (invalid), with the members of a split group whose claim failed its audit, or failed / timed out
        (timeout) — so a restarted coordinator's reputations still count
        them (``reputation_from_ledger``). Nothing when every replica answered properly."""
        invalid = {self.workers[p].key for p in job.invalid if p in self.workers}
        invalid |= set(job.invalid_members)  # members of a split group whose claim failed its audit
        timeout = {self.workers[p].key for p in job.failed if p in self.workers} - invalid
        if not invalid and not timeout:
            return []
        job_id = job.request.job_id
        return self._author(
            Evidence(job_id=job_id, invalid=tuple(sorted(invalid)), timeout=tuple(sorted(timeout)))
        )

    def _author(self, payload: Payload) -> list[Effect]:
        """Sign ``payload`` as our next ledger entry, apply it, and have it stored and pushed."""
        return [AppendEntry(self._sign_own(payload))]

    def _sign_own(self, payload: Payload) -> Entry:
        """Sign ``payload`` as our next ledger entry, apply it and queue it for pushing (its encoding is
        ``_own_entries[-1]``); the caller has it stored (``AppendEntry``)."""
        entry, _ = self.chain.write(payload)
        return entry

    def _notice_for(self, peer: str) -> ReceiptNotice:
        """Our entries ``peer`` has not been sent yet, newest last, capped at the message limit."""
        self.chain.entries()  # catch up with entries of ours applied by other paths (sync, the node)
        start = self._pushed.get(peer, 0)
        if len(self._own_entries) - start > MAX_PUSH:
            start = len(self._own_entries) - MAX_PUSH  # the rest waits for ledger sync
        self._pushed[peer] = len(self._own_entries)
        return ReceiptNotice(entries=self._own_entries[start:])

"""What any node answers from its ledger and its job store: an account's history, a job's receipt."""

from __future__ import annotations

from opengrid_ledger import Receipt, Transfer, decode_body, encode_entry

from opengrid.node.context import NodeContext
from opengrid.node.coordinator_driver import CoordinatorDriver
from opengrid.wire.messages import ErrorReply, History, JobReceipt, Message


class Lookups:
    """History and receipt requests (``HistoryRequest``, ``ReceiptRequest``; spec/job-protocol.md)."""

    def __init__(self, ctx: NodeContext, coordinator: CoordinatorDriver) -> None:
        self._ctx = ctx
        self._coordinator = coordinator

    def history(self, account: bytes, limit: int) -> History:
        """The newest ``limit`` entries that concern ``account`` — receipts that credit or outvote it,
        transfers it received, and entries it authored (its HOLDs: a paying client learns its chain head
        from them; its transfers) — oldest first;
        the account's latest own entry (its chain head) always among them."""
        ledger = self._ctx.ledger
        assert ledger is not None
        found = []
        for entry in reversed(ledger.entries()):
            body = decode_body(entry.body)  # verified when applied; the client verifies again anyway
            payload = body.payload
            if (
                body.author == account
                or (isinstance(payload, Transfer) and payload.to == account)
                or (
                    isinstance(payload, Receipt)
                    and (account in payload.dissenters or any(c.account == account for c in payload.credits))
                )
            ):
                found.append(encode_entry(entry))
                if len(found) == limit:
                    break
        head = ledger.head(account)
        if head is not None:
            # The account's chain head is always in: a paying client chains its next HOLD after it, and a
            # volunteer's receipts (1024 and more) must not push it out, or the client would sign a second
            # entry at a seq it used, a fork that freezes its account (spec/ledger.md §4).
            (last,) = ledger.entries_by_author(account, from_seq=head[0], to_seq=head[0])
            encoded = encode_entry(last)
            if encoded not in found:  # the limit cut the scan short: the head is older than all found
                found[-1] = encoded  # in place of the oldest, so the order stays newest first
        return History(entries=found[::-1])

    def receipt(self, peer: str, job_id: bytes) -> Message:
        """Job ``job_id``'s receipt from this node's ledger (receipts are public ledger entries), with the
        job's output when ``peer`` submitted it here and the job store still keeps its open answer (24 h);
        ``unknown_job`` when the ledger has no receipt for it (spec/job-protocol.md §6.9)."""
        ledger = self._ctx.ledger
        assert ledger is not None
        store = self._coordinator.job_store
        kept = store.answer(job_id, peer) if store is not None else None
        if kept is not None and not kept.sealed_outputs:
            return JobReceipt(
                job_id=job_id,
                receipt=kept.receipt,
                answered=True,
                text=kept.text,
                tokens=kept.tokens,
                finish_reason=kept.finish_reason,
            )
        entry = ledger.receipt_for(job_id)  # an index: asking costs no scan of the ledger
        if entry is not None:  # verified when applied; the client verifies it again
            return JobReceipt(job_id=job_id, receipt=encode_entry(entry))
        running = job_id in self._coordinator.jobs
        return ErrorReply(
            "unknown_job",
            f"no receipt for job {job_id.hex()} on this {self._ctx.config.role}: "
            + (
                "it is still running; ask again once it is answered"
                if running
                else "it never ran here, or it failed (a failed job has no receipt); ask the coordinator "
                "that ran it (its peer id is in the answer), or check the job id"
            ),
            job_id,
        )

"""A worker node's API jobs paid from the node's own account at the coordinator it forwards them to
(spec/ledger.md §7: "Spending"), as an SDK client with the node's key would pay them.

A coordinator's own API pays through its core (``Coordinator.pay_own_job``). A worker (or edge) node
with ``--api`` forwards its users' jobs to its coordinator instead; when that coordinator runs only paid
jobs (it answered ``payment_required`` once), each job carries a HOLD of its price signed by the node's
key, after the account's starting GRANT when the account is new and short. Per job:

1. ``QuoteRequest``: the model's points per token there (``Quote.weight``); the price is
   ``job_cost(max_tokens, replicas, weight)``.
2. ``HistoryRequest`` for our account: the head of our chain as the coordinator holds it (our HOLDs of
   earlier jobs), taken with our own ledger's head — the later of the two — so the HOLD is the next
   link and never a second entry at a seq we used (a fork freezes the account, spec/ledger.md §4).
3. ``StatusRequest``: our spendable points in the coordinator's ledger (``NodeStatus.balances``). Too
   few: ``PaymentError`` with the price and the balance, before anything is signed (the API answers 402).
   A HOLD above the balance would wait in the coordinator's ledger and hold up our chain behind it.
4. A new account short of points asks for its starting grant (``GrantRequest``) and sends the GRANT with
   the job, as its first entry.

One paid job at a time (``paying``): each HOLD must be the next link of the chain, and the coordinator
applies it only when the job is submitted, so the next job is paid once this one has its answer. The
node does not apply the HOLD to its own ledger: ledger sync brings it back from the coordinator, with its
SETTLE or REFUND.

The HOLD is signed outside the node's ``ChainWriter``: the writer must not take a seq the coordinator
may never apply (a job refused before its HOLD was taken frees the seq again). So from signing until the
node knows whether the coordinator applied it, the chain is *reserved* (``NodeContext.chain_reserved``):
the node's other writers of its chain wait — an owner's transfer is answered ``busy``, a FRAUD proof is
made on a later round — or they would sign a second entry at the HOLD's seq, a fork that freezes the
account. After the job the node asks the coordinator's History: a HOLD (and GRANT) it applied is applied
to the node's own ledger too (the writer then chains after it), one it did not is forgotten (its seq is
free). If the coordinator cannot say, the reservation stays and is settled before the next paid job.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import msgspec
import trio
from opengrid_ledger import (
    Cosignature,
    Entry,
    EntryBody,
    Grant,
    Hold,
    Payload,
    decode_entry,
    encode_entry,
    latest_of,
    sign_entry,
)

from opengrid.errors import InvalidEntryError, OpenGridError, PaymentError
from opengrid.net.keys import public_key_of
from opengrid.net.transport import StreamHost
from opengrid.node.context import NodeContext
from opengrid.wire.grant import grant_request_signing_bytes
from opengrid.wire.messages import (
    MAX_EXPOSURE,
    MAX_HISTORY,
    ErrorReply,
    GrantRequest,
    GrantVoucher,
    History,
    HistoryRequest,
    NodeStatus,
    Quote,
    QuoteRequest,
    StatusRequest,
    SubmitJob,
    job_cost,
    listed_balance,
)

log = logging.getLogger("opengrid.node.api")

SETTLE_TIMEOUT_S = 10.0
"""How long the node waits for the coordinator's History after a paid job (then it retries later)."""
MAX_PAYING_COORDINATORS = 64
"""Coordinators remembered as requiring payment (a node registers with one at a time; bounded anyway)."""


class AccountPayer:
    """Pays the node's API jobs at a coordinator that requires payment, from the node's own account."""

    def __init__(self, ctx: NodeContext) -> None:
        self._ctx = ctx
        self._lock = trio.Lock()
        self._unconfirmed: tuple[str, list[Entry]] | None = None
        """(coordinator, our GRANT and HOLD sent with the last paid job) until we know whether it took
        them; meanwhile ``NodeContext.chain_reserved`` is set."""
        self._paying_coordinators: set[str] = set()
        """Coordinators (peer ids) that answered an unpaid job ``payment_required``: jobs to them are paid
        from the start (a coordinator that does not require payment runs the node's jobs for free)."""

    def requires_payment(self, coordinator: str) -> bool:
        """Whether jobs to ``coordinator`` are paid (it refused an unpaid one)."""
        return coordinator in self._paying_coordinators

    def refused_unpaid(self, coordinator: str) -> None:
        """``coordinator`` answered an unpaid job ``payment_required``: pay every job sent to it."""
        if len(self._paying_coordinators) >= MAX_PAYING_COORDINATORS:
            self._paying_coordinators.clear()  # each learns it again from one refused job
        self._paying_coordinators.add(coordinator)

    @asynccontextmanager
    async def paying(
        self, host: StreamHost, coordinator: str, job: SubmitJob
    ) -> AsyncIterator[SubmitJob | ErrorReply]:
        """Hold the account (one paid job at a time) while the caller sends the job this yields: ``job``
        with its HOLD (and GRANT), or the coordinator's refusal of the quote or grant. Raises
        ``PaymentError`` (with the price and the balance) when the account cannot pay."""
        async with self._lock:
            await self._settle(host)  # an earlier job's HOLD the coordinator could not confirm
            forwarded = await self._pay(host, coordinator, job)
            if isinstance(forwarded, SubmitJob):
                self._unconfirmed = (
                    coordinator,
                    [decode_entry(e) for e in (forwarded.grant, forwarded.hold) if e],
                )
                self._ctx.chain_reserved = True
            try:
                yield forwarded
            finally:
                with trio.CancelScope(shield=True):
                    await self._settle(host)

    async def _settle(self, host: StreamHost) -> None:
        """Learn whether the coordinator applied our last signed-ahead GRANT and HOLD (its History of our
        account): apply them to our own ledger if it did, forget them if it did not; keep the chain
        reserved if it cannot say now (unreachable: retried before the next paid job)."""
        if self._unconfirmed is None:
            return
        coordinator, entries = self._unconfirmed
        ctx = self._ctx
        assert ctx.ledger is not None and ctx.store is not None
        try:
            with trio.fail_after(SETTLE_TIMEOUT_S):
                reply = await host.request(
                    coordinator, HistoryRequest(account=ctx.public_key, limit=MAX_HISTORY)
                )
        except (OpenGridError, trio.TooSlowError) as exc:
            log.warning(
                "could not learn whether %s took this node's HOLD (%s); the chain stays reserved",
                coordinator,
                exc,
            )
            return
        if not isinstance(reply, History):
            return
        held: set[bytes] = set()
        for data in reply.entries:
            try:
                held.add(bytes(decode_entry(data).id))
            except InvalidEntryError:
                continue  # says nothing about our HOLD
        if bytes(entries[-1].id) in held:
            applied: list[Entry] = []
            for entry in entries:
                try:
                    applied += ctx.ledger.apply(entry)
                except InvalidEntryError as exc:  # already applied through sync, or refused: nothing to add
                    log.debug("own paid-job entry not applied locally: %s", exc)
            ctx.store.append_many(applied)
        self._unconfirmed = None
        ctx.chain_reserved = False

    async def _pay(self, host: StreamHost, coordinator: str, job: SubmitJob) -> SubmitJob | ErrorReply:
        network = self._ctx.config.network
        me = self._ctx.public_key
        quote = await host.request(
            coordinator,
            QuoteRequest(
                model=job.model,
                replicas=job.replicas,
                exposure=min(job.replicas, MAX_EXPOSURE),
                max_tokens=job.max_tokens,
            ),
        )
        if isinstance(quote, ErrorReply):
            return msgspec.structs.replace(quote, job_id=job.job_id)
        if not isinstance(quote, Quote):
            return ErrorReply("internal", f"the coordinator answered a quote with {type(quote).__name__}")
        cost = job_cost(job.max_tokens, job.replicas, quote.weight)
        head = await self._head(host, coordinator)
        balance = await self._balance(host, coordinator)
        payloads: list[Payload] = []
        if head is None and (balance or 0) < cost:
            granted = await self._grant(host, coordinator)
            if isinstance(granted, Grant):
                payloads.append(granted)
                balance = (balance or 0) + granted.points
            elif balance is not None and balance < cost:
                raise self._cannot_pay(job, quote.weight, balance, f"; and no starting grant: {granted}")
        if balance is not None and balance < cost:
            raise self._cannot_pay(job, quote.weight, balance, "")
        payloads.append(Hold(job_id=job.job_id, amount=cost, coordinator=public_key_of(coordinator)))
        entries: list[Entry] = []
        for payload in payloads:
            body = EntryBody(
                network=network,
                author=me,
                seq=head[0] + 1 if head is not None else 1,
                prev=head[1] if head is not None else b"",
                payload=payload,
            )
            entry = sign_entry(self._ctx.key, body)
            entries.append(entry)
            head = (body.seq, bytes(entry.id))
        *grant, hold = entries
        return msgspec.structs.replace(
            job, hold=encode_entry(hold), grant=encode_entry(grant[0]) if grant else b""
        )

    async def _head(self, host: StreamHost, coordinator: str) -> tuple[int, bytes] | None:
        """Our chain's head: the later of the coordinator's view (our entries in its History) and our own
        ledger's (entries our node wrote that the coordinator may not have yet)."""
        me = self._ctx.public_key
        network = self._ctx.config.network
        head: tuple[int, bytes] | None = None
        if self._ctx.chain is not None:
            local = self._ctx.chain.head()
            head = (local[0], bytes(local[1])) if local is not None else None
        reply = await host.request(coordinator, HistoryRequest(account=me, limit=MAX_HISTORY))
        if isinstance(reply, History):
            head = latest_of(me, reply.entries, network, since=head)
        return head

    async def _balance(self, host: StreamHost, coordinator: str) -> int | None:
        """Our spendable points in the coordinator's ledger; None if its NodeStatus cannot say (it lists
        only the largest balances: an account missing from a full list may still have points)."""
        reply = await host.request(coordinator, StatusRequest())
        if not isinstance(reply, NodeStatus):
            return None
        return listed_balance(reply, self._ctx.public_key)

    async def _grant(self, host: StreamHost, coordinator: str) -> Grant | str:
        """Our starting grant, vouched for by the coordinator, or why not."""
        key = self._ctx.key
        account = self._ctx.public_key
        issued_at_ms = time.time_ns() // 1_000_000
        signed = grant_request_signing_bytes(
            self._ctx.config.network, public_key_of(coordinator), account, issued_at_ms
        )
        request = GrantRequest(
            account=account, issued_at_ms=issued_at_ms, signature=key.sign(signed).signature
        )
        reply = await host.request(coordinator, request)
        if isinstance(reply, ErrorReply):
            return reply.message
        if not isinstance(reply, GrantVoucher) or reply.account != account:
            return f"the coordinator answered a grant request with {type(reply).__name__}"
        return Grant(points=reply.points, voucher=Cosignature(signer=reply.signer, signature=reply.signature))

    def _cannot_pay(self, job: SubmitJob, weight: int, balance: int, more: str) -> PaymentError:
        cost = job_cost(job.max_tokens, job.replicas, weight)
        return PaymentError(
            f"this node pays its API's jobs from its own account ({self._ctx.public_key.hex()[:16]}..., "
            f"the node's identity key), which has {balance} points at its coordinator; this job costs up "
            f"to {cost} (max_tokens {job.max_tokens} x replicas {job.replicas} x {weight} points per token "
            f"of {job.model!r}){more}. Lower max_tokens, earn points by running this worker, or have "
            "another account send points to it",
            price=cost,
            balance=balance,
        )

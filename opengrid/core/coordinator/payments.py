"""Paying for jobs (spec/ledger.md §7, spec/job-protocol.md §5.4): a client's HOLD (and its starting
GRANT) applied before dispatch, the operator's own jobs paid from the node's account, starting-grant
vouchers under rate limits, and how a hold is paid out to the credited workers."""

from __future__ import annotations

import msgspec
from opengrid_ledger import (
    Credit,
    Entry,
    Grant,
    Hold,
    Payload,
    decode_body,
    decode_entry,
    encode_entry,
    open_entry,
)

from opengrid.core.coordinator.shared import CoordinatorParts
from opengrid.core.effects import AppendEntry, Effect
from opengrid.core.refusal import Refusal
from opengrid.errors import InvalidEntryError
from opengrid.wire.control import MAX_CLOCK_SKEW_MS
from opengrid.wire.grant import grant_request_signing_bytes
from opengrid.wire.messages import GrantRequest, GrantVoucher, SubmitJob, job_cost


class PaymentShortfall(Refusal, frozen=True):
    """``payment_required`` because an account has too few points: with the job's ``price`` (what its HOLD
    must reserve) and the account's spendable ``balance`` (counting a starting grant it can still claim),
    so that an API can answer them as data (HTTP 402) and the SDK raise them (``PaymentError``)."""

    price: int
    balance: int


class PaymentsPart(CoordinatorParts):
    """Holds and grants for clients' jobs, the operator's own jobs, starting-grant vouchers.

    A mixin of ``Coordinator`` over ``CoordinatorParts``.
    """

    def _take_hold(self, request: SubmitJob, weight: int) -> tuple[bytes | Refusal, list[Effect]]:
        """Apply the client's GRANT (if any) and HOLD for a paid job of ``weight`` points per token. Return
        the hold's id, or why it was not taken, with the effects that store what was applied (a GRANT
        stays applied, and so must be stored, even when the HOLD after it is refused)."""
        try:
            entry = decode_entry(request.hold)
            body = open_entry(entry, self.network, scheme=self._scheme)
        except InvalidEntryError as exc:
            return _bad_payment(f"the job's hold is not a valid ledger entry: {exc}"), []
        hold = body.payload
        cost = job_cost(request.max_tokens, request.replicas, weight)
        if not isinstance(hold, Hold) or hold.job_id != request.job_id or hold.coordinator != self.public_key:
            return _bad_payment("the job's hold must be a HOLD for this job, naming this coordinator"), []
        if hold.amount < cost:
            return (
                _bad_payment(
                    f"the job's hold reserves {hold.amount} points; it costs up to {cost} "
                    f"(max_tokens x replicas x {weight} points per token of {request.model!r}); "
                    "ask for a Quote, which says the price"
                ),
                [],
            )
        applied: list[Entry] = []
        if request.grant:
            granted = self._take_grant(request.grant, body.author)
            if isinstance(granted, Refusal):
                return granted, []
            applied += granted
        effects: list[Effect] = [AppendEntry(e) for e in applied]
        self._adopt(applied)
        try:
            applied = self.ledger.apply(entry)
        except InvalidEntryError as exc:
            return _bad_payment(f"the ledger refused the job's hold: {exc}"), effects
        effects += [AppendEntry(e) for e in applied]
        self._adopt(applied)
        if self.ledger.hold(entry.id) is None:
            # The account cannot pay (or its chain has a gap here): ``payment_required``, the SDK's
            # PaymentError, not a malformed request.
            balance = self.ledger.balance(body.author)
            return (
                PaymentShortfall(
                    "payment_required",
                    f"the hold waits: its author's balance ({balance} points) is below {hold.amount}, "
                    "or its earlier entries have not reached this coordinator; earn or receive points, "
                    "or lower max_tokens or replicas",
                    price=hold.amount,
                    balance=balance,
                ),
                effects,
            )
        return bytes(entry.id), effects

    def pay_own_job(self, request: SubmitJob) -> SubmitJob | Refusal:
        """``request`` paid from this coordinator's own account (its operator's: the node key), for the
        jobs its node submits itself (the OpenAI-compatible API): with a HOLD of the job's price as the next
        entry of our chain, after our starting GRANT when the account is new and short (the network has a
        grant and we are a minter). Returns the request to feed to ``handle`` at once (the HOLD is the next
        link of our chain), or why it cannot be paid (``payment_required``, a ``PaymentShortfall`` with the
        price and the balance). A model no worker serves is returned unpaid: the submission refuses it
        (``unknown_model``)."""
        weight = self.weight(request.model, max_tokens=request.max_tokens)
        if weight is None:
            return request
        cost = job_cost(request.max_tokens, request.replicas, weight)
        me = self.public_key
        balance = self.ledger.balance(me)
        head = self.chain.head()  # our chain's head as its one writer knows it (waiting entries count)
        genesis = self.ledger.genesis
        grant_points = genesis.grant_points if genesis is not None else 0
        payloads: list[Payload] = []
        if balance < cost and head is None and grant_points > 0 and me in self.ledger.minters():
            # We vouch for ourselves, outside the rate limits (they guard against strangers' fresh keys):
            # a GRANT is an account's first entry, so this happens once per coordinator key.
            payloads.append(Grant(grant_points, self._voucher(me, grant_points)))
            balance += grant_points
        if balance < cost:
            why = (
                f"; network {self.network!r} has no starting grant"
                if grant_points <= 0
                else "; a starting grant can only be an account's first ledger entry, and this one has some"
                if head is not None
                else ""
            )
            return PaymentShortfall(
                "payment_required",
                f"this node pays its API's jobs from its own account ({me.hex()[:16]}..., the node's "
                f"identity key), which has {balance} points; this job costs up to {cost} (max_tokens "
                f"{request.max_tokens} x replicas {request.replicas} x {weight} points per token of "
                f"{request.model!r})"
                f"{why}. Lower max_tokens, earn points by running a worker with this identity, or have "
                f"another account send points to it (`opengrid wallet send {me.hex()} POINTS`)",
                price=cost,
                balance=balance,
            )
        payloads.append(Hold(job_id=request.job_id, amount=cost, coordinator=me))
        *granted, hold = self._sign_ahead(payloads)  # the next links of our chain, applied on submission
        grant = encode_entry(granted[0]) if granted else b""
        signed = encode_entry(hold)
        return msgspec.structs.replace(request, hold=signed, grant=grant)

    def _take_grant(self, data: bytes, payer: bytes) -> list[Entry] | Refusal:
        """Apply a paying client's GRANT entry (its starting grant, sent with its first paid job); return
        what was applied, or why not."""
        try:
            entry = decode_entry(data)
            body = open_entry(entry, self.network, scheme=self._scheme)
        except InvalidEntryError as exc:
            return _bad_payment(f"the job's grant is not a valid ledger entry: {exc}")
        if not isinstance(body.payload, Grant) or body.author != payer:
            return _bad_payment(
                "the job's grant must be a GRANT entry authored by the account that pays the job"
            )
        try:
            return self.ledger.apply(entry)
        except InvalidEntryError as exc:
            return _bad_payment(f"the ledger refused the job's grant: {exc}")

    def vouch(
        self, request: GrantRequest, *, operator: str, now: float, wall_ms: int
    ) -> GrantVoucher | Refusal:
        """Sign a voucher for ``request.account``'s starting grant, or say why not (spec/ledger.md §7).

        ``operator``: the requesting peer's public IP ("" if private or unknown: one shared bucket);
        ``wall_ms``: the driver's wall clock (Unix ms), to refuse stale requests. The voucher is issued
        only if the request is signed by the account's key, the network has a starting grant, the
        account has no ledger entry yet (a GRANT must be its first), and the rate limits of
        ``opengrid.core.grants`` allow one more.
        """
        account = request.account
        signed = grant_request_signing_bytes(self.network, self.public_key, account, request.issued_at_ms)
        try:
            self._scheme.verify(account, signed, request.signature)
        except InvalidEntryError:
            return Refusal(
                "malformed",
                "grant request not signed by the account's key (over the network, this coordinator's key, "
                "the account and issued_at_ms); sign it with the account's own key",
            )
        if abs(wall_ms - request.issued_at_ms) > MAX_CLOCK_SKEW_MS:
            return Refusal(
                "malformed",
                f"grant request issued at {request.issued_at_ms} ms, more than {MAX_CLOCK_SKEW_MS} ms from "
                f"this coordinator's clock ({wall_ms} ms); check your clock and sign a fresh one",
            )
        genesis = self.ledger.genesis
        points = genesis.grant_points if genesis is not None else 0
        if points <= 0:
            return Refusal(
                "grant_refused",
                f"network {self.network!r} has no starting grant (its genesis sets no grant_points); "
                "earn points by running a worker, or have an account that has some send you points "
                f"(`opengrid wallet send {account.hex()} POINTS --new-recipient`)",
            )
        first = self.ledger.entries_by_author(account, to_seq=1)
        if first:
            claimed = isinstance(decode_body(first[0].body).payload, Grant)
            return Refusal(
                "grant_refused",
                f"account {account.hex()} already claimed its starting grant"
                if claimed
                else f"account {account.hex()} already has ledger entries; a grant can only be an "
                "account's first entry",
            )
        limited = self.grants.refusal(account, operator, now)
        if limited is not None:
            return limited
        self.grants.record(account, operator, now)
        voucher = self._voucher(account, points)
        return GrantVoucher(
            account=account, points=points, signer=voucher.signer, signature=voucher.signature
        )


def _bad_payment(why: str) -> Refusal:
    """A job's HOLD or GRANT that cannot pay for it: the client's fault (``malformed``)."""
    return Refusal("malformed", why)


def payouts(credits: tuple[Credit, ...], amount: int) -> tuple[Credit, ...]:
    """What a paid job's client pays each agreeing worker: what the receipt credits them when the credits
    fit the hold together (a split group's members included: they share one worker's credit, spec/split.md
    §8), else each capped at an even share of it (extra replicas after a disagreement can credit more
    workers than were paid for)."""
    if sum(c.points for c in credits) <= amount:
        return tuple(c for c in credits if c.points > 0)
    share = amount // max(1, len(credits))
    return tuple(
        Credit(account=c.account, points=min(c.points, share)) for c in credits if min(c.points, share) > 0
    )


def payouts_in_order(credits: tuple[Credit, ...], amount: int) -> tuple[Credit, ...]:
    """Audit mode: pay the credits in order (the prover first) until ``amount`` runs out, so a hold sized
    for one replica still pays the whole generation before any audit."""
    payouts: list[Credit] = []
    left = amount
    for credit in credits:
        paid = min(credit.points, left)
        if paid > 0:
            payouts.append(Credit(account=credit.account, points=paid))
            left -= paid
    return tuple(payouts)

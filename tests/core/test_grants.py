"""Starting grants: who gets a voucher (signed request, genesis grant, no ledger entry yet, rate limits per
operator and in total), how a new account's GRANT pays its first job, and mandatory payment."""

from __future__ import annotations

import msgspec
import pytest
from grid_harness import HONEST, Grid, finished, honest, job_id, signing_key
from nacl.signing import SigningKey
from opengrid_ledger import (
    Cosignature,
    Entry,
    EntryBody,
    Grant,
    Hold,
    Transfer,
    encode_entry,
    sign_entry,
)

from opengrid.core.coordinator import CoordinatorConfig
from opengrid.core.effects import AppendEntry
from opengrid.core.events import JobSubmitted
from opengrid.core.grants import LOCAL_BUCKET, GrantLimits, operator_bucket
from opengrid.core.refusal import Refusal
from opengrid.wire.control import MAX_CLOCK_SKEW_MS
from opengrid.wire.grant import grant_request_signing_bytes
from opengrid.wire.messages import ErrorReply, GrantRequest, GrantVoucher, JobAccepted, SubmitJob, job_cost

WALL_MS = 1_700_000_000_000
GRANT = 100


def _request(
    grid: Grid, user: SigningKey, *, signer: SigningKey | None = None, **changes: int
) -> GrantRequest:
    account = bytes(user.verify_key)
    issued = changes.get("issued_at_ms", WALL_MS)
    coordinator = grid.coordinator.public_key
    signed = grant_request_signing_bytes(grid.coordinator.network, coordinator, account, issued)
    return GrantRequest(
        account=account, issued_at_ms=issued, signature=(signer or user).sign(signed).signature
    )


def _vouch(grid: Grid, user: SigningKey, *, operator: str = "", now: float = 0.0) -> GrantVoucher | Refusal:
    return grid.coordinator.vouch(_request(grid, user), operator=operator, now=now, wall_ms=WALL_MS)


def _entry(user: SigningKey, seq: int, prev: bytes, payload: Grant | Hold | Transfer) -> Entry:
    body = EntryBody(network="testnet", author=bytes(user.verify_key), seq=seq, prev=prev, payload=payload)
    return sign_entry(user, body)


def _first_paid_job(
    grid: Grid, user: SigningKey, voucher: GrantVoucher, n: int, *, amount: int = 0
) -> SubmitJob:
    """The new account's first job: its GRANT (seq 1), then a HOLD of the job's cost (seq 2)."""
    grant = _entry(user, 1, b"", Grant(voucher.points, Cosignature(voucher.signer, voucher.signature)))
    hold = _entry(user, 2, grant.id, Hold(job_id(n), amount or job_cost(8, 2), grid.coordinator.public_key))
    return SubmitJob(
        job_id=job_id(n),
        model="tiny",
        prompt="paid",
        max_tokens=8,
        replicas=2,
        hold=encode_entry(hold),
        grant=encode_entry(grant),
    )


def test_a_new_account_claims_the_grant_once_and_pays_its_first_job_with_it() -> None:
    grid = Grid(n=3, config=CoordinatorConfig.plain(), grant_points=GRANT)
    grid.register()
    user, ledger = signing_key("new user"), grid.coordinator.ledger
    account = bytes(user.verify_key)
    voucher = _vouch(grid, user)
    assert isinstance(voucher, GrantVoucher) and voucher.points == GRANT
    assert voucher.signer == grid.coordinator.public_key

    first = grid.coordinator.handle(
        JobSubmitted(client="c", request=_first_paid_job(grid, user, voucher, 1)), 0.0
    )
    stored = [e.entry for e in first if isinstance(e, AppendEntry)]
    assert len(stored) == 2  # the GRANT and the HOLD, stored and published like the coordinator's own
    assert (ledger.balance(account), ledger.held(account)) == (GRANT - job_cost(8, 2), job_cost(8, 2))
    reply = finished([*first, *grid.drive(first, honest)])
    assert isinstance(reply, JobAccepted)
    paid = min(len(HONEST.tokens), job_cost(8, 2) // 2) * len(reply.workers)
    assert (ledger.balance(account), ledger.held(account)) == (GRANT - paid, 0)
    assert ledger.minted() == GRANT + len(HONEST.tokens) * len(reply.workers)

    again = _vouch(grid, user)
    assert isinstance(again, Refusal) and again.code == "grant_refused"
    assert "already claimed" in again.message


def test_no_voucher_on_a_network_without_a_starting_grant() -> None:
    grid = Grid(n=1)
    reply = _vouch(grid, signing_key("new user"))
    assert isinstance(reply, Refusal) and reply.code == "grant_refused"
    assert "no starting grant" in reply.message


def test_no_voucher_for_an_account_that_already_has_entries() -> None:
    grid = Grid(n=3, config=CoordinatorConfig.plain(), grant_points=GRANT)
    grid.register()
    assert isinstance(finished(grid.run_job(1, honest, replicas=3)), JobAccepted)  # w0 earns points
    earner = signing_key("w0")  # ... and spends some: its chain has started
    assert grid.coordinator.ledger.apply(_entry(earner, 1, b"", Transfer(to=b"\x01" * 32, amount=1)))
    reply = _vouch(grid, earner)
    assert isinstance(reply, Refusal) and reply.code == "grant_refused"
    assert "already has ledger entries" in reply.message


def test_a_request_must_be_signed_by_the_account_for_this_coordinator_and_fresh() -> None:
    grid = Grid(n=1, grant_points=GRANT)
    user, thief = signing_key("new user"), signing_key("thief")
    forged = _request(grid, user, signer=thief)
    reply = grid.coordinator.vouch(forged, operator="", now=0.0, wall_ms=WALL_MS)
    assert isinstance(reply, Refusal) and reply.code == "malformed" and "not signed" in reply.message

    foreign_signed = grant_request_signing_bytes("testnet", b"\x07" * 32, bytes(user.verify_key), WALL_MS)
    foreign = GrantRequest(
        account=bytes(user.verify_key), issued_at_ms=WALL_MS, signature=user.sign(foreign_signed).signature
    )
    reply = grid.coordinator.vouch(foreign, operator="", now=0.0, wall_ms=WALL_MS)
    assert isinstance(reply, Refusal) and "not signed" in reply.message  # made for another coordinator

    stale = _request(grid, user, issued_at_ms=WALL_MS - MAX_CLOCK_SKEW_MS - 1)
    reply = grid.coordinator.vouch(stale, operator="", now=0.0, wall_ms=WALL_MS)
    assert isinstance(reply, Refusal) and reply.code == "malformed" and "clock" in reply.message
    assert isinstance(_vouch(grid, user), GrantVoucher)  # the refusals spent no budget


def test_vouchers_are_rate_limited_per_operator_and_window() -> None:
    limits = GrantLimits(per_operator=2, total=100, window_s=3600.0)
    grid = Grid(n=1, config=CoordinatorConfig(verify="replicate", grant_limits=limits), grant_points=GRANT)
    users = [signing_key(f"user {i}") for i in range(6)]
    assert isinstance(_vouch(grid, users[0], operator=""), GrantVoucher)
    assert isinstance(_vouch(grid, users[1], operator="10.1.2.3"), GrantVoucher)  # private: the same bucket
    refused = _vouch(grid, users[2], operator="127.0.0.1", now=10.0)
    assert isinstance(refused, Refusal) and refused.code == "busy"
    assert "private and loopback" in refused.message and "retry in 3590 s" in refused.message
    assert isinstance(_vouch(grid, users[0], operator=""), GrantVoucher)  # a repeat is free, and the same
    assert isinstance(_vouch(grid, users[2], operator="8.8.8.8"), GrantVoucher)  # another operator
    assert isinstance(_vouch(grid, users[3], operator="8.8.8.8"), GrantVoucher)
    assert isinstance(_vouch(grid, users[4], operator="8.8.8.8"), Refusal)
    assert isinstance(_vouch(grid, users[4], operator="", now=3600.0), GrantVoucher)  # the window moved on


def test_vouchers_are_rate_limited_in_total() -> None:
    limits = GrantLimits(per_operator=5, total=2, window_s=3600.0)
    grid = Grid(n=1, config=CoordinatorConfig(verify="replicate", grant_limits=limits), grant_points=GRANT)
    assert isinstance(_vouch(grid, signing_key("a"), operator="8.8.8.8"), GrantVoucher)
    assert isinstance(_vouch(grid, signing_key("b"), operator="1.1.1.1"), GrantVoucher)
    refused = _vouch(grid, signing_key("c"), operator="9.9.9.9")
    assert isinstance(refused, Refusal) and refused.code == "busy" and "ask another" in refused.message


@pytest.mark.parametrize(
    ("operator", "bucket"),
    [
        ("", LOCAL_BUCKET),
        ("127.0.0.1", LOCAL_BUCKET),
        ("192.168.1.7", LOCAL_BUCKET),
        ("8.8.8.8", "8.8.8.8"),
        ("2001:4860:4860::8888", "2001:4860:4860::/64"),
        ("2001:4860:4860::1", "2001:4860:4860::/64"),  # one subscriber's /64 is one bucket
    ],
)
def test_operator_buckets(operator: str, bucket: str) -> None:
    assert operator_bucket(operator) == bucket


def test_a_grant_stays_stored_when_the_hold_after_it_is_refused() -> None:
    grid = Grid(n=3, config=CoordinatorConfig.plain(), grant_points=GRANT)
    grid.register()
    user, ledger = signing_key("new user"), grid.coordinator.ledger
    voucher = _vouch(grid, user)
    assert isinstance(voucher, GrantVoucher)
    request = _first_paid_job(grid, user, voucher, 1, amount=GRANT + 1)  # more than the grant
    effects = grid.coordinator.handle(JobSubmitted(client="c", request=request), 0.0)
    reply = finished(effects)
    assert isinstance(reply, ErrorReply) and "balance" in reply.message
    assert len([e for e in effects if isinstance(e, AppendEntry)]) == 1  # the GRANT, applied: store it
    assert ledger.balance(bytes(user.verify_key)) == GRANT


def test_a_grant_authored_by_another_account_is_refused() -> None:
    grid = Grid(n=3, config=CoordinatorConfig.plain(), grant_points=GRANT)
    grid.register()
    user, other = signing_key("new user"), signing_key("other")
    voucher, others = _vouch(grid, user), _vouch(grid, other)
    assert isinstance(voucher, GrantVoucher) and isinstance(others, GrantVoucher)
    grant = _entry(other, 1, b"", Grant(others.points, Cosignature(others.signer, others.signature)))
    request = _first_paid_job(grid, user, voucher, 1)
    request = msgspec.structs.replace(request, grant=encode_entry(grant))
    reply = finished(grid.coordinator.handle(JobSubmitted(client="c", request=request), 0.0))
    assert isinstance(reply, ErrorReply) and "authored by the account that pays" in reply.message


def test_a_coordinator_that_requires_payment_refuses_unpaid_jobs_and_runs_paid_ones() -> None:
    grid = Grid(n=3, config=CoordinatorConfig.plain(require_payment=True), grant_points=GRANT)
    grid.register()
    entries = len(grid.coordinator.ledger)
    reply = finished(grid.submit(1))
    assert isinstance(reply, ErrorReply) and reply.code == "payment_required"
    assert "identity" in reply.message and "grant" in reply.message
    assert len(grid.coordinator.ledger) == entries  # nothing touched

    user = signing_key("new user")
    voucher = _vouch(grid, user)
    assert isinstance(voucher, GrantVoucher)
    first = grid.coordinator.handle(
        JobSubmitted(client="c", request=_first_paid_job(grid, user, voucher, 2)), 0.0
    )
    assert isinstance(finished([*first, *grid.drive(first, honest)]), JobAccepted)

"""Points proportional to compute (spec/ledger.md §7): a model weighs one point per generated token per
started billion parameters; a job costs ``max_tokens x replicas x weight`` and each agreeing worker earns
``max(1, n_tokens) x weight`` — minted by the receipt, and paid out of the client's hold."""

from __future__ import annotations

import msgspec
import pytest
from grid_harness import (
    CONTRACT,
    HONEST,
    OFFERS,
    Grid,
    dispatches,
    finished,
    honest,
    job_id,
    open_receipt,
    signing_key,
)
from opengrid_ledger import Grant, Hold, Receipt, Settle, decode_body, decode_entry, encode_entry, sign_entry

from opengrid.core.coordinator import CoordinatorConfig
from opengrid.core.effects import SendReceipt
from opengrid.core.events import JobSubmitted, WorkerRegistered
from opengrid.core.refusal import Refusal
from opengrid.engines.catalog import catalog_entry, pinned_params
from opengrid.wire.messages import (
    MAX_WEIGHT,
    ErrorReply,
    JobAccepted,
    ModelOffer,
    SubmitJob,
    job_cost,
    model_weight,
)

SEVEN_B = 7_241_732_096
"""Mistral 7B's parameter count: weighs 8."""


@pytest.mark.parametrize(
    ("n_params", "weight"),
    [
        (0, 1),  # unknown size: the floor
        (129_600, 1),  # the tiny test model
        (134_515_008, 1),  # SmolLM2-135M
        (1_000_000_000, 1),
        (1_000_000_001, 2),
        (SEVEN_B, 8),
        (70_553_706_496, 71),  # Llama 3 70B
        (10**15, MAX_WEIGHT),
    ],
)
def test_a_model_weighs_one_point_per_token_per_started_billion_parameters(
    n_params: int, weight: int
) -> None:
    assert model_weight(n_params) == weight


def test_a_job_costs_max_tokens_times_replicas_times_the_weight() -> None:
    assert job_cost(64, 2) == 128  # weight 1 by default: SmolLM2-135M
    assert job_cost(64, 2, model_weight(SEVEN_B)) == 1024


def test_the_catalog_pins_the_parameters_of_its_models() -> None:
    params = pinned_params()
    for name in ("tiny", "smollm2"):
        entry = catalog_entry(name)
        assert entry is not None and entry.sha256 is not None
        assert params[entry.sha256] == entry.n_params > 0
        assert model_weight(entry.n_params) == 1


def _announce(grid: Grid, n_params: dict[str, int]) -> None:
    """Workers re-register announcing a parameter count for the model (same contract, same class)."""
    for peer, count in n_params.items():
        offers = tuple(msgspec.structs.replace(o, n_params=count) for o in OFFERS)
        grid.coordinator.handle(WorkerRegistered(peer, grid.key(peer), offers), 0.0)


def test_a_7b_job_credits_tokens_times_eight_and_the_receipt_says_so() -> None:
    grid = Grid(n=3, config=CoordinatorConfig.plain())
    grid.register()
    _announce(grid, {peer: SEVEN_B for peer in grid.workers})
    assert grid.coordinator.weight("tiny") == 8
    reply = finished(grid.run_job(1, honest, replicas=2))
    assert isinstance(reply, JobAccepted)
    _, receipt = open_receipt(reply.receipt)
    assert receipt.weight == 8
    assert {c.points for c in receipt.credits} == {len(HONEST.tokens) * 8}


def test_a_receipt_of_weight_one_keeps_its_old_bytes() -> None:
    grid = Grid(n=3, config=CoordinatorConfig.plain())
    grid.register()
    reply = finished(grid.run_job(1, honest, replicas=2))
    assert isinstance(reply, JobAccepted)
    assert b"weight" not in decode_entry(reply.receipt).body  # omitted when 1 (omit_defaults)


def test_one_worker_cannot_raise_the_price_but_the_catalog_can_fix_it() -> None:
    grid = Grid(n=3, config=CoordinatorConfig.plain())
    grid.register()
    _announce(grid, {"w0": 10**15, "w1": SEVEN_B, "w2": SEVEN_B})
    assert grid.coordinator.weight("tiny") == 8  # the smallest announcement of the class counts
    config = CoordinatorConfig(
        verify="replicate", adaptive=False, canary_rate=0.0, model_params={CONTRACT.model_sha256: 129_600}
    )
    pinned = Grid(n=3, config=config)
    pinned.register()
    _announce(pinned, {peer: SEVEN_B for peer in pinned.workers})
    assert pinned.coordinator.weight("tiny") == 1  # the catalog's count wins over the workers'
    assert pinned.coordinator.weight("no-such-model") is None


def _earn(grid: Grid) -> None:
    for n in (1, 2, 3, 4):
        assert isinstance(finished(grid.run_job(n, honest, replicas=3)), JobAccepted)


def _paid(grid: Grid, n: int, amount: int) -> SubmitJob:
    """A job paid by w0 (which earned its points running jobs) with a HOLD of ``amount``."""
    payer = signing_key("w0")
    body = grid.coordinator.ledger.next_body(
        bytes(payer.verify_key),
        Hold(job_id=job_id(n), amount=amount, coordinator=grid.coordinator.public_key),
    )
    entry = encode_entry(sign_entry(payer, body))
    return SubmitJob(job_id=job_id(n), model="tiny", prompt="paid", max_tokens=8, replicas=2, hold=entry)


def test_a_paid_7b_job_holds_the_weighted_price_and_pays_each_worker_its_whole_credit() -> None:
    grid = Grid(n=3, config=CoordinatorConfig.plain())
    grid.register()
    _announce(grid, {peer: SEVEN_B for peer in grid.workers})
    _earn(grid)  # every worker earns 4 jobs x 5 tokens x 8 points
    ledger, payer = grid.coordinator.ledger, grid.key("w0")
    assert ledger.balance(payer) == 4 * len(HONEST.tokens) * 8
    # A client that holds the unweighted price is refused before any work, and told the real one.
    short = finished(grid.coordinator.handle(JobSubmitted("c", _paid(grid, 9, job_cost(8, 2))), 0.0))
    assert isinstance(short, ErrorReply) and "costs up to 128" in short.message
    assert "8 points per token" in short.message

    before = ledger.balance(payer)
    first = grid.coordinator.handle(JobSubmitted("c", _paid(grid, 10, job_cost(8, 2, 8))), 0.0)
    assert ledger.held(payer) == 128
    reply = finished([*first, *grid.drive(first, honest)])
    assert isinstance(reply, JobAccepted)
    _, receipt = open_receipt(reply.receipt)
    credit = len(HONEST.tokens) * 8  # 40 points per agreeing worker: within its share of the hold (64)
    assert {c.points for c in receipt.credits} == {credit}
    settle = next(p for e in ledger.entries() if isinstance(p := decode_body(e.body).payload, Settle))
    assert {c.points for c in settle.payouts} == {credit}
    paid_self = credit if payer in {c.account for c in receipt.credits} else 0
    assert ledger.balance(payer) == before - credit * len(receipt.credits) + 2 * paid_self
    assert ledger.held(payer) == 0


def test_the_coordinator_pays_its_own_job_with_its_starting_grant() -> None:
    grid = Grid(n=3, config=CoordinatorConfig.plain(require_payment=True), grant_points=500)
    grid.coordinator.ledger.add_minter(grid.coordinator.public_key)
    grid.register()
    _announce(grid, {peer: SEVEN_B for peer in grid.workers})
    me, ledger = grid.coordinator.public_key, grid.coordinator.ledger
    request = SubmitJob(job_id=job_id(1), model="tiny", prompt="mine", max_tokens=8, replicas=2)
    paid = grid.coordinator.pay_own_job(request)
    assert isinstance(paid, SubmitJob) and paid.hold and paid.grant
    grant = decode_body(decode_entry(paid.grant).body)
    assert (grant.author, grant.seq, grant.payload) == (me, 1, grant.payload)
    assert isinstance(grant.payload, Grant) and grant.payload.points == 500
    hold = decode_body(decode_entry(paid.hold).body)
    assert isinstance(hold.payload, Hold) and (hold.seq, hold.payload.amount) == (2, 128)

    first = grid.coordinator.handle(JobSubmitted("api", paid), 0.0)
    effects = [*first, *grid.drive(first, honest)]
    reply = finished(effects)
    assert isinstance(reply, JobAccepted)
    _, receipt = open_receipt(reply.receipt)
    spent = sum(c.points for c in receipt.credits)
    assert (ledger.balance(me), ledger.held(me)) == (500 - spent, 0)
    # Our GRANT and HOLD reach the workers with the rest of our chain (so their SETTLE applies there).
    notice = next(e.notice for e in effects if isinstance(e, SendReceipt))
    kinds = [type(decode_body(decode_entry(e).body).payload) for e in notice.entries]
    assert kinds == [Grant, Hold, Receipt, Settle]

    # The next job needs more than is left: no second grant (a GRANT is an account's first entry).
    big = SubmitJob(job_id=job_id(2), model="tiny", prompt="mine", max_tokens=64, replicas=2)
    refusal = grid.coordinator.pay_own_job(big)
    assert isinstance(refusal, Refusal) and refusal.code == "payment_required"
    assert f"has {500 - spent} points" in refusal.message and "costs up to 1024" in refusal.message
    assert "first ledger entry" in refusal.message


def test_a_coordinator_on_a_network_without_grant_cannot_pay_its_own_job() -> None:
    grid = Grid(n=3, config=CoordinatorConfig.plain())
    grid.register()
    request = SubmitJob(job_id=job_id(1), model="tiny", prompt="mine", max_tokens=8, replicas=2)
    refusal = grid.coordinator.pay_own_job(request)
    assert isinstance(refusal, Refusal) and "has 0 points" in refusal.message
    assert "no starting grant" in refusal.message
    # it names the command that sends points, with this node's account (issue 19: no more "TRANSFER")
    me = grid.coordinator.public_key.hex()
    assert f"`opengrid wallet send {me} POINTS`" in refusal.message and "TRANSFER" not in refusal.message
    unserved = msgspec.structs.replace(request, model="nobody-serves-this")
    assert grid.coordinator.pay_own_job(unserved) == unserved  # refused later, as unknown_model


def test_the_sdk_checks_a_receipt_mints_no_more_than_tokens_times_the_weight_it_paid_for() -> None:
    from opengrid_sdk.receipts import SignedReceipt

    from opengrid.errors import VerificationError

    grid = Grid(n=3, config=CoordinatorConfig.plain())
    grid.register()
    _announce(grid, {peer: SEVEN_B for peer in grid.workers})
    reply = finished(grid.run_job(1, honest, replicas=2))
    assert isinstance(reply, JobAccepted)
    signed = SignedReceipt(entry=reply.receipt, network=grid.coordinator.network)
    output = {"tokens": reply.tokens, "text": reply.text, "job_id": job_id(1)}
    signed.verify(**output, weight=8)  # what the client's hold paid for
    signed.verify(**output)  # unpaid: the receipt's own weight bounds the credits
    with pytest.raises(VerificationError, match="quoted 1"):
        signed.verify(**output, weight=1)

    # A coordinator that mints more than tokens x weight is caught, even with valid signatures.
    body = decode_body(decode_entry(reply.receipt).body)
    receipt = body.payload
    assert isinstance(receipt, Receipt)
    inflated = msgspec.structs.replace(
        receipt, credits=tuple(msgspec.structs.replace(c, points=c.points + 1) for c in receipt.credits)
    )
    forged = encode_entry(
        sign_entry(signing_key("coordinator"), msgspec.structs.replace(body, payload=inflated))
    )
    with pytest.raises(VerificationError, match="mints points no job earned"):
        SignedReceipt(entry=forged, network=grid.coordinator.network).verify(**output)


def test_a_long_job_is_priced_and_quoted_on_the_class_that_can_run_it() -> None:
    """Edge workers (short jobs only) of another numerical class outnumber the full workers: a short job
    runs on the edge class and a long one on the full class, so the price and the quote of each must be
    those of its own class — else a client holds for one weight and the job runs at another."""
    grid = Grid(n=5, config=CoordinatorConfig.plain())
    edge_class = msgspec.structs.replace(CONTRACT, model_sha256="cd" * 32)
    for peer in ("w0", "w1"):  # full workers of the catalog's class, a 7B model
        offers = tuple(msgspec.structs.replace(o, n_params=SEVEN_B) for o in OFFERS)
        grid.coordinator.handle(WorkerRegistered(peer, grid.key(peer), offers), 0.0)
    for peer in ("w2", "w3", "w4"):  # edge nodes of a smaller quantization: weight 1, 128 tokens at most
        offers = (ModelOffer(name="tiny", contract=edge_class, n_params=1_000_000),)
        grid.coordinator.handle(WorkerRegistered(peer, grid.key(peer), offers, max_job_tokens=128), 0.0)

    assert grid.coordinator.weight("tiny") == 1  # the most workers: the edge class
    assert grid.coordinator.weight("tiny", max_tokens=128) == 1
    assert grid.coordinator.weight("tiny", max_tokens=129) == 8  # only the full workers take it
    quoted = grid.coordinator.quote("tiny", exposure=4, max_tokens=512)
    assert {c.peer for c in quoted} == {"w0", "w1"}
    assert {c.peer for c in grid.coordinator.quote("tiny", exposure=4)} == {"w2", "w3", "w4"}

    first = grid.submit(1, replicas=2, max_tokens=512)
    assert {d.peer for d in dispatches(first)} == {"w0", "w1"}
    reply = finished(grid.play(first, [HONEST, HONEST]))
    assert isinstance(reply, JobAccepted)
    assert open_receipt(reply.receipt)[1].weight == 8  # what a quote for 512 tokens said it would cost

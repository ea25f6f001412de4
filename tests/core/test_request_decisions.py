"""The coordinator's answers to registrations and quotes, decided in the core with no network: the same
decision code the trio node (opengrid/node/coordinator_requests.py) and the simulator run. Each refusal
is a typed ``Refusal`` (a wire error code and a message), mapped to the wire's ``ErrorReply`` once."""

from __future__ import annotations

import msgspec
from grid_harness import NETWORK, OFFERS, Grid, finished

from opengrid.core.coordinator import CoordinatorConfig
from opengrid.core.coordinator.registry import AWAITING_APPROVAL
from opengrid.core.events import WorkerRegistered
from opengrid.core.refusal import Refusal
from opengrid.wire.codec import decode_message, encode_message
from opengrid.wire.messages import ErrorReply, Quote, QuoteRequest, RegisterWorker
from opengrid.wire.sealed import box_public_key


def _beat(grid: Grid, peer: str, **fields: object) -> RegisterWorker:
    message = RegisterWorker(network=NETWORK, public_key=grid.key(peer), listen_addrs=[], models=list(OFFERS))
    return msgspec.structs.replace(message, **fields)


def test_a_registration_becomes_the_event_the_machine_is_fed() -> None:
    grid = Grid(n=2, config=CoordinatorConfig.plain())
    message = _beat(grid, "w1", slots=3, tokens_per_s=12.5, max_job_tokens=64)
    decision = grid.coordinator.registration(
        "w1", message, peer_key=grid.key("w1"), operator="8.8.8.8", rtt_s=0.02
    )
    assert decision == WorkerRegistered(
        peer="w1",
        key=grid.key("w1"),
        offers=OFFERS,
        operator="8.8.8.8",
        rtt_s=0.02,
        slots=3,
        probed_tokens_per_s=12.5,
        max_job_tokens=64,
    )
    assert "w1" not in grid.coordinator.workers  # deciding changes nothing; feeding the event does
    grid.coordinator.handle(decision, 0.0)
    assert grid.coordinator.workers["w1"].slots == 3


def test_a_registration_for_another_network_is_refused_naming_both() -> None:
    grid = Grid(n=2, config=CoordinatorConfig.plain())
    decision = grid.coordinator.registration(
        "w1", _beat(grid, "w1", network="other"), peer_key=grid.key("w1")
    )
    assert isinstance(decision, Refusal) and decision.code == "malformed"
    assert repr(NETWORK) in decision.message and "'other'" in decision.message


def test_a_registration_under_another_workers_key_is_refused() -> None:
    grid = Grid(n=3, config=CoordinatorConfig.plain())
    # w2 claims w1's key (to be credited as w1): the key behind w2's connection says otherwise.
    decision = grid.coordinator.registration("w2", _beat(grid, "w1"), peer_key=grid.key("w2"))
    assert decision == Refusal("malformed", "public_key does not match the connection's peer id")
    assert not grid.coordinator.workers


def test_an_unapproved_worker_waits_for_its_operator_and_only_after_the_other_checks() -> None:
    grid = Grid(n=2, config=CoordinatorConfig.plain())
    coordinator = grid.coordinator
    assert coordinator.registration("w1", _beat(grid, "w1"), peer_key=grid.key("w1"), approved=False) == (
        AWAITING_APPROVAL
    )
    assert AWAITING_APPROVAL.code == "busy"
    # A registration that fails a check is refused for that, not noted as pending approval.
    wrong = coordinator.registration(
        "w1", _beat(grid, "w1", network="x"), peer_key=grid.key("w1"), approved=False
    )
    assert wrong != AWAITING_APPROVAL and isinstance(wrong, Refusal) and wrong.code == "malformed"


def test_a_quote_names_workers_with_their_box_keys_and_the_price() -> None:
    grid = Grid(n=4, config=CoordinatorConfig.plain())
    grid.register()
    quote = grid.coordinator.answer_quote(QuoteRequest(model="tiny", replicas=2, exposure=3), now=0.0)
    assert isinstance(quote, Quote) and quote.model == "tiny" and len(quote.workers) == 3
    assert len({w.peer_id for w in quote.workers}) == 3
    for worker in quote.workers:
        assert worker.public_key == grid.key(worker.peer_id)
        assert worker.box_key == box_public_key(worker.public_key)
    assert quote.weight == grid.coordinator.weight("tiny")
    assert decode_message(encode_message(quote)) == quote  # a wire message as it is


def test_a_quote_for_an_unserved_model_is_refused_unknown_model_naming_the_served_ones() -> None:
    grid = Grid(n=2, config=CoordinatorConfig.plain())
    grid.register()
    refusal = grid.coordinator.answer_quote(QuoteRequest(model="huge"))
    assert isinstance(refusal, Refusal) and refusal.code == "unknown_model"
    assert "'huge'" in refusal.message and "served: tiny" in refusal.message


def test_a_quote_for_more_replicas_than_workers_is_refused_no_capacity() -> None:
    grid = Grid(n=2, config=CoordinatorConfig.plain())
    grid.register()
    refusal = grid.coordinator.answer_quote(QuoteRequest(model="tiny", replicas=3, exposure=4))
    assert isinstance(refusal, Refusal) and refusal.code == "no_capacity"
    assert "3 replicas" in refusal.message and "only 2 worker(s)" in refusal.message


def test_a_quote_too_long_for_edge_workers_is_refused_in_the_submissions_words() -> None:
    grid = Grid(n=2, config=CoordinatorConfig.plain())
    for peer in sorted(grid.workers):
        grid.coordinator.handle(WorkerRegistered(peer, grid.key(peer), OFFERS, max_job_tokens=32), 0.0)
    refusal = grid.coordinator.answer_quote(QuoteRequest(model="tiny", replicas=2, max_tokens=64))
    assert isinstance(refusal, Refusal) and refusal.code == "no_capacity"
    assert "at most 32 tokens" in refusal.message
    reply = finished(grid.submit(1, max_tokens=64, replicas=2))
    assert isinstance(reply, ErrorReply) and reply == refusal.reply(
        reply.job_id
    )  # the same refusal, word for word


def test_a_refusal_maps_to_the_wires_error_reply() -> None:
    refusal = Refusal("grant_refused", "account already claimed its starting grant")
    assert refusal.reply() == ErrorReply("grant_refused", "account already claimed its starting grant")
    assert refusal.reply(b"j" * 16).job_id == b"j" * 16

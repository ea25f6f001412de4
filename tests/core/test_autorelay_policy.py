"""The automatic-relay policy (spec/discovery.md §9.3): which relay to take, when to let it go."""

from __future__ import annotations

from opengrid.core.autorelay import (
    RETRY_FAILED_S,
    SWITCH_AFTER_S,
    DropRelay,
    HeldRelay,
    RelayCandidate,
    TakeRelay,
    choose_relay,
    next_step,
)

ME = "12D3KooWMe"


def cand(peer: str, source: str = "coordinator", reachability: str = "", port: int = 4001) -> RelayCandidate:
    return RelayCandidate(peer, f"/ip4/203.0.113.7/tcp/{port}/p2p/{peer}", source, reachability)  # type: ignore[arg-type]


def test_dht_relays_come_first_then_coordinators_then_bootstrap_nodes_each_by_peer_id() -> None:
    pool = [cand("B", "bootstrap"), cand("Z", "coordinator"), cand("Y", "coordinator"), cand("X", "dht")]
    assert choose_relay(pool, me=ME, failed={}, now=0.0) == cand("X", "dht")
    assert choose_relay(pool[:3], me=ME, failed={}, now=0.0) == cand("Y")
    assert choose_relay(pool[:1], me=ME, failed={}, now=0.0) == cand("B", "bootstrap")
    # one peer known several ways counts at its best rank
    assert choose_relay(
        [cand("B", "bootstrap"), cand("B", "dht"), cand("A")], me=ME, failed={}, now=0
    ) == cand("B", "dht")


def test_unusable_candidates_are_skipped() -> None:
    relayed = RelayCandidate("R", "/ip4/1.2.3.4/tcp/1/p2p/Q/p2p-circuit/p2p/R", "dht")
    dns = RelayCandidate("D", "/dns4/relay.example/tcp/1/p2p/D", "dht")
    wrong_id = RelayCandidate("W", "/ip4/1.2.3.4/tcp/1/p2p/V", "dht")
    pool = [
        cand(ME),
        relayed,
        dns,
        wrong_id,
        cand("P", reachability="private"),
        cand("Q", reachability="relayed"),
    ]
    assert choose_relay(pool, me=ME, failed={}, now=0.0) is None
    assert choose_relay([*pool, cand("OK", reachability="public")], me=ME, failed={}, now=0.0) == cand(
        "OK", reachability="public"
    )


def test_a_relay_that_failed_is_tried_again_only_after_a_while() -> None:
    pool = [cand("A"), cand("B")]
    assert choose_relay(pool, me=ME, failed={"A": 100.0}, now=101.0) == cand("B")
    assert choose_relay(pool, me=ME, failed={"A": 100.0, "B": 100.0}, now=101.0) is None
    assert choose_relay(pool, me=ME, failed={"A": 100.0}, now=100.0 + RETRY_FAILED_S) == cand("A")


def test_a_private_node_without_relays_takes_one_and_nothing_else_does() -> None:
    pool = [cand("A")]
    kw = dict(held=None, candidates=pool, me=ME, failed={}, now=0.0)
    assert next_step("private", configured=False, **kw) == TakeRelay(cand("A"))  # type: ignore[arg-type]
    for verdict in ("public", "unknown", "relayed"):
        assert next_step(verdict, configured=False, **kw) is None  # type: ignore[arg-type]
    assert next_step("private", configured=True, **kw) is None  # type: ignore[arg-type]
    assert next_step("private", configured=False, held=None, candidates=[], me=ME, failed={}, now=0) is None


def test_the_relay_is_dropped_when_peers_can_dial_the_node_again_and_kept_otherwise() -> None:
    held = HeldRelay("A", lost_since=None)
    kw = dict(held=held, candidates=[cand("A"), cand("B")], me=ME, failed={}, now=10.0)
    assert next_step("public", configured=False, **kw) == DropRelay(  # type: ignore[arg-type]
        "A", "peers can dial this node directly now", failed=False
    )
    assert next_step("private", configured=False, **kw) is None  # type: ignore[arg-type]
    assert next_step("unknown", configured=False, **kw) is None  # type: ignore[arg-type]


def test_a_relay_that_went_away_is_replaced_only_when_another_exists() -> None:
    lost = HeldRelay("A", lost_since=0.0)
    step = next_step(
        "private",
        configured=False,
        held=lost,
        candidates=[cand("A"), cand("B")],
        me=ME,
        failed={},
        now=SWITCH_AFTER_S,
    )
    assert isinstance(step, DropRelay) and step.failed and step.peer_id == "A"
    # too soon, or nobody else: keep waiting for it (its keeper keeps retrying)
    early = SWITCH_AFTER_S - 1
    assert (
        next_step("private", configured=False, held=lost, candidates=[cand("B")], me=ME, failed={}, now=early)
        is None
    )
    assert (
        next_step("private", configured=False, held=lost, candidates=[cand("A")], me=ME, failed={}, now=999)
        is None
    )

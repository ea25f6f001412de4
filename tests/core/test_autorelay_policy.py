"""The automatic-relay policy (spec/discovery.md §9.3): which relay to take, when to let it go."""

from __future__ import annotations

from opengrid.core.autorelay import (
    RETRY_FAILED_S,
    RTT_STEP_S,
    SWITCH_AFTER_S,
    DropRelay,
    HeldRelay,
    RelayCandidate,
    TakeRelay,
    choose_relay,
    given_relays_up,
    next_step,
    usable_relays,
)

ME = "12D3KooWMe"


def cand(
    peer: str, source: str = "coordinator", reachability: str = "", port: int = 4001, rtt: float | None = None
) -> RelayCandidate:
    address = f"/ip4/203.0.113.7/tcp/{port}/p2p/{peer}"
    return RelayCandidate(peer, address, source, reachability, rtt)  # type: ignore[arg-type]


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
    assert next_step("private", given_relays_up=False, **kw) == TakeRelay(cand("A"))  # type: ignore[arg-type]
    for verdict in ("public", "unknown"):
        assert next_step(verdict, given_relays_up=False, **kw) is None  # type: ignore[arg-type]
    assert next_step("private", given_relays_up=True, **kw) is None  # type: ignore[arg-type]
    assert (
        next_step("private", given_relays_up=False, held=None, candidates=[], me=ME, failed={}, now=0) is None
    )


def test_the_relay_is_dropped_when_peers_can_dial_the_node_again_and_kept_otherwise() -> None:
    held = HeldRelay("A", lost_since=None)
    kw = dict(held=held, candidates=[cand("A"), cand("B")], me=ME, failed={}, now=10.0)
    assert next_step("public", given_relays_up=False, **kw) == DropRelay(  # type: ignore[arg-type]
        "A", "peers can dial this node directly now", failed=False
    )
    assert next_step("private", given_relays_up=False, **kw) is None  # type: ignore[arg-type]
    assert next_step("unknown", given_relays_up=False, **kw) is None  # type: ignore[arg-type]


def test_a_relay_that_went_away_is_replaced_only_when_another_exists() -> None:
    lost = HeldRelay("A", lost_since=0.0)
    step = next_step(
        "private",
        given_relays_up=False,
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
        next_step(
            "private", given_relays_up=False, held=lost, candidates=[cand("B")], me=ME, failed={}, now=early
        )
        is None
    )
    assert (
        next_step(
            "private", given_relays_up=False, held=lost, candidates=[cand("A")], me=ME, failed={}, now=999
        )
        is None
    )


def test_a_nearer_relay_wins_over_a_better_rank_and_within_one_step_the_rank_decides() -> None:
    far_dht, near_coordinator = cand("A", "dht", rtt=0.180), cand("B", rtt=0.004)
    assert choose_relay([far_dht, near_coordinator], me=ME, failed={}, now=0) == near_coordinator
    # 4 ms and 20 ms fall in the same 25 ms step: equally near, the DHT relay (it said it relays) wins
    same_step_dht = cand("A", "dht", rtt=0.020)
    assert 0.004 // RTT_STEP_S == 0.020 // RTT_STEP_S
    assert choose_relay([same_step_dht, near_coordinator], me=ME, failed={}, now=0) == same_step_dht


def test_a_measured_relay_comes_before_one_that_could_not_be_measured() -> None:
    unmeasured_dht, slow_bootstrap = cand("A", "dht"), cand("B", "bootstrap", rtt=0.900)
    assert choose_relay([unmeasured_dht, slow_bootstrap], me=ME, failed={}, now=0) == slow_bootstrap
    # without any measurement the order is the rank's, as before
    assert [c.peer_id for c in usable_relays([cand("C"), cand("B", "bootstrap"), cand("A", "dht")], me=ME,
                                             failed={}, now=0)] == ["A", "C", "B"]  # fmt: skip


def test_one_peer_known_several_ways_keeps_its_best_rank_and_its_measured_rtt() -> None:
    seen = [cand("A", "bootstrap", rtt=0.010), cand("A", "dht"), cand("Z", "coordinator", rtt=0.012)]
    (first, second) = usable_relays(seen, me=ME, failed={}, now=0)
    assert first == cand("A", "dht", rtt=0.010) and second.peer_id == "Z"
    assert usable_relays([cand("A", "dht", rtt=0.5), cand("A", "bootstrap", rtt=0.01)], me=ME, failed={},
                         now=0) == [cand("A", "dht", rtt=0.5)]  # fmt: skip


def test_given_relays_count_while_one_holds_and_for_a_while_after_the_last_lost_its_reservation() -> None:
    assert not given_relays_up(0, None, now=5.0)  # given none
    assert given_relays_up(2, None, now=5.0)  # one holds
    assert given_relays_up(1, 100.0, now=100.0 + SWITCH_AFTER_S - 1)  # lost (or never held) lately
    assert not given_relays_up(1, 100.0, now=100.0 + SWITCH_AFTER_S)


def test_a_node_whose_given_relays_are_gone_takes_another_and_lets_it_go_when_one_is_back() -> None:
    pool = [cand("A")]
    for verdict in ("private", "relayed"):  # listening but undialable, or listening on nothing
        kw = dict(held=None, candidates=pool, me=ME, failed={}, now=0.0)
        assert next_step(verdict, given_relays_up=True, **kw) is None  # type: ignore[arg-type]
        assert next_step(verdict, given_relays_up=False, **kw) == TakeRelay(cand("A"))  # type: ignore[arg-type]
    held = HeldRelay("A", lost_since=None)
    step = next_step("relayed", given_relays_up=True, held=held, candidates=pool, me=ME, failed={}, now=9.0)
    assert step == DropRelay("A", "a relay this node was given holds a reservation again", failed=False)
    assert (
        next_step("relayed", given_relays_up=False, held=held, candidates=pool, me=ME, failed={}, now=9)
        is None
    )

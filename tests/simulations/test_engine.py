"""The discrete-event engine: time order, insertion-order ties, causality, the event-log hash."""

from __future__ import annotations

from typing import Any

import pytest

from simulations.engine import Engine, seconds_to_ns


def make() -> tuple[Engine, list[tuple[int, int | str]], int]:
    engine = Engine()
    seen: list[tuple[int, int | str]] = []

    def handler(node: int, tag: int | str, data: Any) -> None:
        seen.append((engine.now_ns, tag))

    return engine, seen, engine.kind("x", handler)


def test_events_run_in_time_order_and_ties_in_insertion_order() -> None:
    engine, seen, x = make()
    engine.at(20, x, 0, "late")
    engine.at(10, x, 0, "first")
    engine.at(10, x, 0, "second")
    engine.at(10, x, 0, "third")
    assert engine.run(100) == 4
    assert seen == [(10, "first"), (10, "second"), (10, "third"), (20, "late")]
    assert engine.now_ns == 100


def test_run_stops_at_the_horizon_and_keeps_later_events() -> None:
    engine, seen, x = make()
    engine.at(5, x, 0, 1)
    engine.at(50, x, 0, 2)
    engine.run(50)
    assert seen == [(5, 1)] and engine.pending == 1
    engine.run(51)
    assert seen[-1] == (50, 2)


def test_scheduling_in_the_past_is_refused() -> None:
    engine, _, x = make()
    engine.at(10, x, 0)
    engine.run(20)
    with pytest.raises(ValueError, match="before now"):
        engine.at(5, x, 0)


def test_same_events_same_hash_and_any_difference_changes_it() -> None:
    def digest(tags: list[int]) -> str:
        engine, _, x = make()
        for i, tag in enumerate(tags):
            engine.at(i, x, 0, tag)
        engine.run(10_000)
        return engine.digest()

    assert digest([1, 2, 3]) == digest([1, 2, 3])
    assert digest([1, 2, 3]) != digest([1, 3, 2])


def test_seconds_round_to_whole_nanoseconds() -> None:
    assert seconds_to_ns(1.5) == 1_500_000_000
    assert seconds_to_ns(1e-10) == 0

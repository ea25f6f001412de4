"""The wallet's pure view functions: chart buckets, reputation counts, coordinators seen, addresses."""

from __future__ import annotations

from opengrid_sdk import HistoryItem

from opengrid.tui.model import (
    coordinators_seen,
    earnings_series,
    format_duration_ms,
    pick_address,
    short_id,
    summarize_reputation,
)


def item(n: int, at_ms: int, *, outcome: str = "paid", points: int = 10, coordinator: bytes = b"c" * 32):
    return HistoryItem(
        entry_id=bytes([n]) * 32,
        job_id=bytes([n]) * 16,
        coordinator_key=coordinator,
        outcome=outcome,
        points=points if outcome == "paid" else 0,
        n_tokens=points,
        issued_at_ms=at_ms,
    )


def test_earnings_are_bucketed_from_the_oldest_receipt_to_now_and_undated_ones_left_out() -> None:
    items = [item(1, 1_000, points=5), item(2, 1_500, points=7), item(3, 9_999, points=11), item(4, 0)]
    series = earnings_series(items, now_ms=10_000, buckets=3)
    assert series.start_ms == 1_000
    assert series.bucket_ms == 3_001  # ceil((10_000 + 1 - 1_000) / 3): the newest item fits the last bucket
    assert series.points == [12, 0, 11]
    assert series.total == 23


def test_earnings_of_an_empty_history_are_flat() -> None:
    series = earnings_series([], now_ms=5, buckets=4)
    assert series.points == [0, 0, 0, 0] and series.bucket_ms == 0


def test_reputation_counts_verified_outcomes_and_the_streak_since_the_last_outvote() -> None:
    items = [item(1, 1), item(2, 2, outcome="outvoted"), item(3, 3), item(4, 4), item(5, 5)]
    summary = summarize_reputation(list(reversed(items)))  # order given does not matter
    assert (summary.paid, summary.outvoted, summary.streak, summary.points) == (4, 1, 3, 40)
    assert summary.agreement_rate == 0.8
    assert summarize_reputation([]).agreement_rate is None


def test_coordinators_seen_are_grouped_by_key_most_recent_first() -> None:
    a, b = b"a" * 32, b"b" * 32
    seen = coordinators_seen(
        [item(1, 10, coordinator=a), item(2, 30, coordinator=b), item(3, 20, coordinator=a)]
    )
    assert [(c.key, c.jobs, c.points, c.last_ms) for c in seen] == [(b, 1, 10, 30), (a, 2, 20, 20)]


def test_addresses_prefer_loopback_and_dial_a_wildcard_as_loopback() -> None:
    assert (
        pick_address(["/ip4/10.0.0.2/tcp/1/p2p/X", "/ip4/127.0.0.1/tcp/1/p2p/X"])
        == "/ip4/127.0.0.1/tcp/1/p2p/X"
    )
    assert pick_address(["/ip4/0.0.0.0/tcp/7/p2p/X"]) == "/ip4/127.0.0.1/tcp/7/p2p/X"
    assert pick_address([]) is None


def test_formatting_fits_narrow_columns() -> None:
    assert short_id("12D3KooWAHsffLiFrSECn97XYhcg4Xy6ap6Q7MHZGcNcVLmRTdxc") == "12D3KooWAHsf…mRTdxc"
    assert short_id("short") == "short"
    assert format_duration_ms(90_000) == "1.5 min"
    assert format_duration_ms(3_600_000) == "1 h"
    assert format_duration_ms(20) == "20 ms"

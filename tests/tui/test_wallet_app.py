"""The wallet driven headless with Textual's Pilot on the in-memory source: navigation, live update,
pause/resume, and failures that show in the status line instead of crashing."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable

import msgspec
from textual.pilot import Pilot
from textual.widgets import Button, DataTable, Digits, Label, Static, TabbedContent

from opengrid.errors import TransportError
from opengrid.net.keys import peer_id_of
from opengrid.testing.wallet import FakeWalletSource, demo_coordinator_source, demo_key, demo_worker_source
from opengrid.tui.app import WalletApp
from opengrid.tui.model import short_id

NOW_MS = 1_748_790_000_000
Scenario = Callable[[Pilot[None], WalletApp], Awaitable[None]]


def run_wallet(source: FakeWalletSource, scenario: Scenario) -> None:
    """Run ``scenario`` against a wallet at 80x24; refreshes happen only when the test asks."""

    async def main() -> None:
        app = WalletApp(source, refresh_s=3600, wall_clock=lambda: NOW_MS / 1000, tz=dt.UTC)
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(pilot)
            await scenario(pilot, app)

    asyncio.run(main())


async def settle(pilot: Pilot[None]) -> None:
    """Wait for the refresh/control workers to finish and their results to be drawn."""
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()


def text_of(app: WalletApp, selector: str) -> str:
    return str(app.query_one(selector, Static).content)


def test_overview_shows_balance_role_state_and_peer_id() -> None:
    source = demo_worker_source(NOW_MS)

    async def scenario(pilot: Pilot[None], app: WalletApp) -> None:
        assert app.query_one("#balance", Digits).value == "3,386"
        facts = text_of(app, "#overview-facts")
        assert "worker" in facts and "● running" in facts and "Jobs done 61" in facts
        assert source.node_status.peer_id in text_of(app, "#overview-peer")
        assert "points per" in str(app.query_one("#chart-title", Static).content)
        assert "● ok" in text_of(app, "#status-line")

    run_wallet(source, scenario)


def test_number_keys_and_tab_switch_screens() -> None:
    async def scenario(pilot: Pilot[None], app: WalletApp) -> None:
        tabs = app.query_one(TabbedContent)
        assert tabs.active == "overview"
        for key, pane in [("2", "history"), ("3", "reputation"), ("4", "network"), ("5", "node")]:
            await pilot.press(key)
            assert tabs.active == pane
        await pilot.press("tab")
        assert tabs.active == "overview"
        await pilot.press("shift+tab")
        assert tabs.active == "node"
        await pilot.press("2")
        await pilot.pause()
        assert isinstance(app.focused, DataTable)  # the history table takes the keys at once

    run_wallet(demo_worker_source(NOW_MS), scenario)


def test_history_lists_receipts_and_transfers_newest_first_with_their_outcome() -> None:
    source = demo_worker_source(NOW_MS)

    async def scenario(pilot: Pilot[None], app: WalletApp) -> None:
        await pilot.press("2")
        table = app.query_one("#history-table", DataTable)
        assert table.row_count == len(source.items) == 64 + 2  # 64 receipts, one transfer in, one out
        newest = source.items[-1]
        first = [str(cell) for cell in table.get_row_at(0)]
        assert first[1] == newest.job_id.hex()[:8] and first[2] == newest.outcome
        rows = [[str(cell) for cell in table.get_row_at(i)] for i in range(table.row_count)]
        assert {row[2] for row in rows} == {"paid", "outvoted", "sent", "received"}
        (received,) = [row for row in rows if row[2] == "received"]
        (sent,) = [row for row in rows if row[2] == "sent"]
        assert received[1:5] == ["thanks!", "received", "+250", ""] and sent[3] == "-120"
        assert received[5] == short_id(peer_id_of(demo_key("friend")))
        assert "64 receipts and 2 transfers" in text_of(app, "#history-caption")

    run_wallet(source, scenario)


def test_reputation_is_derived_from_verified_outcomes_and_explained() -> None:
    async def scenario(pilot: Pilot[None], app: WalletApp) -> None:
        await pilot.press("3")
        facts = text_of(app, "#reputation-facts")
        assert "Paid            61" in facts and "Outvoted        3" in facts and "95.3 %" in facts
        explained = text_of(app, "#reputation-explained")
        assert "agreed with the majority" in explained and "opengrid ledger balance" in explained
        assert "issue" not in explained and "being added" not in explained

    run_wallet(demo_worker_source(NOW_MS), scenario)


def test_network_shows_a_coordinators_workers_and_connection_health() -> None:
    source = demo_coordinator_source(NOW_MS)

    async def scenario(pilot: Pilot[None], app: WalletApp) -> None:
        await pilot.press("4")
        table = app.query_one("#network-table", DataTable)
        assert table.row_count == 4
        states = [str(table.get_row_at(i)[2]) for i in range(4)]
        assert states == ["● online"] * 3 + ["○ offline"]
        assert "3,412" in [str(cell) for cell in table.get_row_at(0)]
        assert "4 workers, 3 online" in text_of(app, "#network-caption")
        assert "● ok" in text_of(app, "#network-health") and "ms" in text_of(app, "#network-health")

    run_wallet(source, scenario)


def test_network_of_a_worker_lists_the_coordinators_that_paid_it() -> None:
    async def scenario(pilot: Pilot[None], app: WalletApp) -> None:
        await pilot.press("4")
        assert app.query_one("#network-table", DataTable).row_count == 2
        assert "coordinators that signed its receipts (2)" in text_of(app, "#network-caption")

    run_wallet(demo_worker_source(NOW_MS), scenario)


def test_live_update_shows_the_new_balance_after_a_refresh() -> None:
    source = demo_worker_source(NOW_MS)

    async def scenario(pilot: Pilot[None], app: WalletApp) -> None:
        assert app.query_one("#balance", Digits).value == "3,386"
        source.node_status = msgspec.structs.replace(source.node_status, points=4_000, jobs_done=63)
        await pilot.press("r")
        await settle(pilot)
        assert app.query_one("#balance", Digits).value == "4,000"
        assert "Jobs done 63" in text_of(app, "#overview-facts")

    run_wallet(source, scenario)


def test_the_interval_refreshes_without_a_key_press() -> None:
    source = demo_worker_source(NOW_MS)

    async def main() -> None:
        app = WalletApp(source, refresh_s=0.05)
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(pilot)
            source.node_status = msgspec.structs.replace(source.node_status, points=5_000)
            calls = source.calls.count("status")
            while source.calls.count("status") < calls + 2:  # the interval fired, and its refresh ran
                await pilot.pause(0.02)
            await settle(pilot)
            assert app.query_one("#balance", Digits).value == "5,000"

    asyncio.run(main())


def test_p_pauses_and_resumes_the_node() -> None:
    source = demo_worker_source(NOW_MS)

    async def scenario(pilot: Pilot[None], app: WalletApp) -> None:
        await pilot.press("p")
        await settle(pilot)
        assert source.node_status.paused and "pause" in source.calls
        assert "‖ paused" in text_of(app, "#overview-facts")
        assert "paused: the node takes no new work" in text_of(app, "#status-line")
        await pilot.press("5")
        assert str(app.query_one("#toggle-pause", Button).label) == "Resume (p)"
        await pilot.click("#toggle-pause")  # the button does the same as the key
        await settle(pilot)
        assert not source.node_status.paused and source.calls.count("resume") == 1
        assert "● running" in text_of(app, "#node-facts")

    run_wallet(source, scenario)


def test_pause_is_disabled_and_explained_when_read_only() -> None:
    source = demo_coordinator_source(NOW_MS)

    async def scenario(pilot: Pilot[None], app: WalletApp) -> None:
        await pilot.press("5")
        assert app.query_one("#toggle-pause", Button).disabled
        assert "--data-dir" in text_of(app, "#control-note")
        await pilot.press("p")
        await settle(pilot)
        assert "pause" not in source.calls
        assert "pause/resume disabled: read-only" in text_of(app, "#status-line")

    run_wallet(source, scenario)


def test_a_failing_node_shows_in_the_status_line_and_the_wallet_recovers() -> None:
    source = demo_worker_source(NOW_MS)

    async def scenario(pilot: Pilot[None], app: WalletApp) -> None:
        source.failure = TransportError("cannot reach /ip4/127.0.0.1/tcp/4001: connection refused")
        await pilot.press("r")
        await settle(pilot)
        line = text_of(app, "#status-line")
        assert "node offline" in line and "connection refused" in line and "1 failed refresh(es)" in line
        assert "showing the last values, from" in line
        assert app.query_one("#balance", Digits).value == "3,386"  # the last good data stays
        assert str(app.query_one("#balance-label", Label).content) == "LAST BALANCE (offline)"
        assert "○ offline: last values shown" in text_of(app, "#overview-facts")
        source.failure = RuntimeError("anything at all")
        await pilot.press("r")
        await settle(pilot)
        assert "RuntimeError: anything at all" in text_of(app, "#status-line")
        await pilot.press("p")  # control fails the same way: a message, not a crash
        await settle(pilot)
        assert "pause failed: RuntimeError" in text_of(app, "#status-line")
        source.failure = None
        await pilot.press("r")
        await settle(pilot)
        assert text_of(app, "#status-line").startswith("● ok")
        assert str(app.query_one("#balance-label", Label).content) == "BALANCE (points)"
        assert app.is_running

    run_wallet(source, scenario)


def test_a_node_that_never_answered_is_explained_not_a_crash() -> None:
    source = demo_worker_source(NOW_MS)
    source.failure = TransportError("no node.json yet")

    async def scenario(pilot: Pilot[None], app: WalletApp) -> None:
        assert app.node_status is None
        assert "node offline (1 failed refresh(es) in a row; no answer yet)" in text_of(app, "#status-line")
        await pilot.press("p")
        assert "no status yet" in text_of(app, "#status-line")
        for key in "12345":
            await pilot.press(key)  # every screen draws with no data
        assert app.is_running

    run_wallet(source, scenario)

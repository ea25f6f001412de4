"""The wallet's send action, driven headless with Pilot on the in-memory source: the form checks its input
before anything is sent, the confirmation says what will happen and sends only on "Send", a refusal from
the node shows in the status line, and a read-only wallet explains why it cannot send."""

from __future__ import annotations

from textual import events
from textual.pilot import Pilot
from textual.widgets import Digits, Input, Static

from opengrid.testing.wallet import FakeWalletSource, demo_key, demo_worker_source
from opengrid.tui.app import WalletApp
from opengrid.tui.send import ConfirmSendScreen, SendScreen
from tests.tui.test_wallet_app import NOW_MS, run_wallet, settle, text_of

FUND = demo_key("docs-fund")


async def paste(pilot: Pilot[None], text: str) -> None:
    """Paste ``text`` into the focused field as a terminal delivers a paste (one event). A 64-character key
    typed key by key costs Pilot ~5 s (it waits for the app to go idle after every key)."""
    if text:
        pilot.app.post_message(events.Paste(text))
        await pilot.pause()


async def fill(pilot: Pilot[None], to: str, points: str, memo: str = "", *, new: bool = False) -> None:
    """Open the form and fill it the way a user does: the account key and the memo pasted, the points
    typed (tab moves between fields, not between tabs)."""
    await pilot.press("s")
    await pilot.pause()
    assert isinstance(pilot.app.screen, SendScreen)
    await paste(pilot, to)
    await pilot.press("tab", *points, "tab")
    await paste(pilot, memo)
    if new:
        await pilot.click("#send-new")
    await pilot.click("#send-review")
    await pilot.pause()


async def review(pilot: Pilot[None], form: SendScreen) -> None:
    """Press enter in the memo field: the form reviews itself (as its Review button does)."""
    await pilot.pause()
    form.query_one("#send-memo", Input).focus()
    await pilot.pause()
    await pilot.press("enter")
    await pilot.pause()


def test_send_points_after_a_confirmation() -> None:
    source = demo_worker_source(NOW_MS)

    async def scenario(pilot: Pilot[None], app: WalletApp) -> None:
        await fill(pilot, FUND.hex(), "250", "for the docs")
        confirm = app.screen
        assert isinstance(confirm, ConfirmSendScreen)
        assert "Send 250 points?" in str(confirm.query_one("#confirm-title").render())
        facts = str(confirm.query_one("#confirm-facts", Static).content)
        assert FUND.hex() in facts and '"for the docs"' in facts and "3,136 points" in facts
        assert source.sent == []  # nothing sent before "Send"
        await pilot.click("#confirm-send")
        await settle(pilot)
        assert source.sent == [(FUND, 250, "for the docs")]
        assert "sent 250 points" in text_of(app, "#status-line")
        assert app.query_one("#balance", Digits).value == "3,136"  # refreshed after sending

    run_wallet(source, scenario)


def test_cancel_sends_nothing_and_bad_input_is_refused_in_the_form() -> None:
    source = demo_worker_source(NOW_MS)

    async def scenario(pilot: Pilot[None], app: WalletApp) -> None:
        await fill(pilot, "not-a-key", "5")
        form = app.screen
        assert isinstance(form, SendScreen)  # still the form: the recipient was refused
        assert "neither an account key" in str(form.query_one("#send-error", Static).content)
        form.query_one("#send-to", Input).value = FUND.hex()
        form.query_one("#send-points", Input).value = "999999"
        await review(pilot, form)
        assert "can spend 3,386 points" in str(form.query_one("#send-error", Static).content)
        form.query_one("#send-points", Input).value = "5"
        form.query_one("#send-memo", Input).value = "bell\x07"
        await review(pilot, form)
        assert "control character" in str(form.query_one("#send-error", Static).content)
        form.query_one("#send-memo", Input).value = ""
        await review(pilot, form)
        assert isinstance(app.screen, ConfirmSendScreen), form.query_one("#send-error", Static).content
        await pilot.press("enter")  # the focus is on Cancel: enter is the safe choice
        await settle(pilot)
        assert source.sent == [] and "nothing sent" in text_of(app, "#status-line")

    run_wallet(source, scenario)


def test_a_refusal_from_the_node_shows_in_the_status_line() -> None:
    source = demo_worker_source(NOW_MS)
    stranger = demo_key("nobody")

    async def scenario(pilot: Pilot[None], app: WalletApp) -> None:
        await fill(pilot, stranger.hex(), "5")
        await pilot.click("#confirm-send")
        await settle(pilot)
        assert source.sent == [] and "send failed" in text_of(app, "#status-line")
        assert "never appeared" in text_of(app, "#status-line")
        await fill(pilot, stranger.hex(), "5", new=True)  # confirmed as a new account: it goes
        await pilot.click("#confirm-send")
        await settle(pilot)
        assert source.sent == [(stranger, 5, "")]

    run_wallet(source, scenario)


def test_a_read_only_wallet_says_why_it_cannot_send() -> None:
    base = demo_worker_source(NOW_MS)
    source = FakeWalletSource(
        base.node_status, base.items, control_unavailable="read-only: connected with --node"
    )

    async def scenario(pilot: Pilot[None], app: WalletApp) -> None:
        await pilot.press("s")
        await pilot.pause()
        assert not isinstance(app.screen, SendScreen)
        assert "sending points disabled: read-only" in text_of(app, "#status-line")
        assert "send" not in source.calls

    run_wallet(source, scenario)

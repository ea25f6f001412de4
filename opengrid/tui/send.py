"""The wallet's send dialog: a form (recipient, points, memo), then a confirmation that says exactly what
will happen. Both are Textual modal screens; the app sends only after the confirmation returns True.

Checks that need no network run here, before anything is asked of the node (the SDK's own checks: a
recipient key or peer id, a whole number of points within the balance shown, a memo the ledger accepts).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from opengrid_sdk.transfers import check_transfer, recipient_key
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Checkbox, Input, Label, Static

from opengrid.errors import OpenGridError
from opengrid.tui.model import format_points

DIALOG_CSS = """
SendScreen, ConfirmSendScreen { align: center middle; }
#send-box, #confirm-box {
    width: 76; height: auto; border: thick $primary; background: $surface; padding: 0 1;
}
#send-title, #confirm-title { text-style: bold; margin-bottom: 1; }
.send-row { height: 1; margin-bottom: 1; }
.send-label { width: 8; color: $text-muted; }
.send-row Input { width: 1fr; height: 1; border: none; padding: 0 1; }
#send-new { border: none; height: 1; padding: 0; margin-bottom: 1; }
#send-error { color: $error; height: auto; }
#confirm-facts { height: auto; margin-bottom: 1; }
#confirm-warning { color: $text-muted; height: auto; margin-bottom: 1; }
.send-buttons { height: 3; align: right middle; }
.send-buttons Button { margin-left: 1; }
"""


@dataclass(frozen=True)
class SendRequest:
    """What the form asks for, checked."""

    to: bytes
    points: int
    memo: str
    new_recipient: bool


class SendScreen(ModalScreen[SendRequest | None]):
    """The form. Dismissed with the checked request, or None (cancel, escape)."""

    DEFAULT_CSS = DIALOG_CSS
    BINDINGS: ClassVar[list[BindingType]] = [("escape", "cancel", "Cancel")]

    def __init__(self, balance: int) -> None:
        super().__init__()
        self.balance = balance
        """The spendable points last shown, to refuse an obvious overdraft before asking the node."""

    def compose(self) -> ComposeResult:
        with Vertical(id="send-box"):
            yield Label(
                f"Send points from this node's account ({format_points(self.balance)} spendable)",
                id="send-title",
            )
            with Horizontal(classes="send-row"):
                yield Label("To", classes="send-label")
                yield Input(placeholder="account key (64 hex digits) or peer id", id="send-to")
            with Horizontal(classes="send-row"):
                yield Label("Points", classes="send-label")
                yield Input(placeholder="a whole number", type="integer", id="send-points")
            with Horizontal(classes="send-row"):
                yield Label("Memo", classes="send-label")
                yield Input(placeholder="optional note for the recipient", max_length=256, id="send-memo")
            yield Checkbox("the recipient is a new account (the ledger has never seen it)", id="send-new")
            yield Static("", id="send-error")
            with Horizontal(classes="send-buttons"):
                yield Button("Review", id="send-review", variant="primary")
                yield Button("Cancel", id="send-cancel")

    def on_mount(self) -> None:
        self.query_one("#send-to", Input).focus()

    def action_cancel(self) -> None:
        self.dismiss(None)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self._review()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "send-cancel":
            self.dismiss(None)
        elif event.button.id == "send-review":
            self._review()

    def _review(self) -> None:
        """Check the form; dismiss with the request, or say what is wrong and stay."""
        error = self.query_one("#send-error", Static)
        try:
            to = recipient_key(self.query_one("#send-to", Input).value)
            text = self.query_one("#send-points", Input).value.strip()
            if not text.isdigit():
                error.update("Points: give a whole number of points, 1 or more")
                return
            points = int(text)
            memo = self.query_one("#send-memo", Input).value
            check_transfer(points, memo)
        except OpenGridError as exc:
            error.update(str(exc))
            return
        if points > self.balance:
            error.update(
                f"the node's account can spend {format_points(self.balance)} points; lower the amount"
            )
            return
        new = self.query_one("#send-new", Checkbox).value
        self.dismiss(SendRequest(to=to, points=points, memo=memo, new_recipient=new))


class ConfirmSendScreen(ModalScreen[bool]):
    """The confirmation: what will be sent, to whom, from what balance. Dismissed with True to send."""

    DEFAULT_CSS = DIALOG_CSS
    BINDINGS: ClassVar[list[BindingType]] = [("escape", "cancel", "Cancel")]

    def __init__(self, request: SendRequest, balance: int) -> None:
        super().__init__()
        self.request = request
        self.balance = balance

    def compose(self) -> ComposeResult:
        request = self.request
        facts = Text()
        rows = [
            ("to", request.to.hex()),
            ("memo", f'"{request.memo}"' if request.memo else "—"),
            ("from", f"this node's account, {format_points(self.balance)} points spendable"),
            ("after", f"{format_points(self.balance - request.points)} points"),
        ]
        for index, (name, value) in enumerate(rows):
            if index:
                facts.append("\n")
            facts.append(f"{name:<6}", style="dim")
            facts.append(value)
        warning = (
            "The node signs this transfer on its own chain with its identity key and publishes it; it "
            "cannot be undone."
        )
        if request.new_recipient:
            warning += (
                " The recipient is marked as a new account: check its key, points sent to a typo are lost."
            )
        with Vertical(id="confirm-box"):
            yield Label(f"Send {format_points(request.points)} points?", id="confirm-title")
            yield Static(facts, id="confirm-facts")
            yield Static(warning, id="confirm-warning")
            with Horizontal(classes="send-buttons"):
                yield Button("Send", id="confirm-send", variant="success")
                yield Button("Cancel", id="confirm-cancel")

    def on_mount(self) -> None:
        self.query_one("#confirm-cancel", Button).focus()  # the safe choice has the focus

    def action_cancel(self) -> None:
        self.dismiss(False)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "confirm-send")

"""``WalletApp``: a volunteer's wallet in the terminal (Textual), fed by a ``WalletSource``.

Five tabs (Overview, History, Reputation, Network, Node) fit an 80x24 terminal. A background thread worker
asks the source for status and history every ``refresh_s`` seconds; a failed refresh shows in the status
line and is retried on the next tick, so a node that goes away never crashes the wallet.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import ClassVar

from opengrid_sdk import HistoryItem, TransferReceipt
from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.css.query import NoMatches
from textual.screen import ModalScreen
from textual.widgets import (
    Button,
    DataTable,
    Digits,
    Footer,
    Header,
    Label,
    Sparkline,
    Static,
    TabbedContent,
    TabPane,
)
from textual.worker import Worker, WorkerState

from opengrid.errors import OpenGridError
from opengrid.tui.model import (
    coordinators_seen,
    earnings_series,
    format_duration_ms,
    format_points,
    format_time,
    short_id,
    summarize_reputation,
)
from opengrid.tui.send import ConfirmSendScreen, SendRequest, SendScreen
from opengrid.tui.source import Action, WalletSource, last_known
from opengrid.wire.messages import NodeStatus

TABS = ("overview", "history", "reputation", "network", "node")
CHART_BUCKETS = 48

REPUTATION_EXPLAINED = (
    "How this is computed\n"
    "Every job runs on several workers and the coordinator compares their outputs. Each line of your "
    "history is a receipt signed by the coordinator, and the SDK checks its signature before it is "
    "shown, so these counts come from verified outcomes only:\n"
    "  paid      your output agreed with the majority; you were credited points\n"
    "  outvoted  your output disagreed with the majority; no points\n"
    "Agreement rate = paid ÷ (paid + outvoted) over the receipts shown (the latest 100). The streak "
    "counts paid jobs since the last outvote. `opengrid ledger balance` counts the same receipts, by the "
    "same rule, over the node's whole ledger, and the coordinators' evidence entries (valid, invalid, "
    "timeout) besides."
)


@dataclass(frozen=True)
class Fetched:
    """One successful refresh."""

    status: NodeStatus
    history: list[HistoryItem]
    latency_s: float
    """How long the status call took."""


@dataclass
class Health:
    """How the last refreshes went."""

    ok: bool | None = None
    """None before the first refresh finished."""
    last_attempt: float = 0.0
    last_ok: float = 0.0
    latency_s: float = 0.0
    failures: int = 0
    """Failed refreshes in a row."""
    error: str = ""


def describe_error(exc: BaseException) -> str:
    """One line for the status bar: our own errors already say what to do; others get their type."""
    text = str(exc) if isinstance(exc, OpenGridError) else f"{type(exc).__name__}: {exc}"
    return " ".join(text.split()) or type(exc).__name__


class WalletApp(App[None]):
    """The OpenGrid wallet. The caller owns ``source`` and closes it after the app exits."""

    TITLE = "OpenGrid wallet"
    CSS = """
    TabbedContent, TabbedContent > ContentSwitcher, TabPane { height: 1fr; }
    TabPane { padding: 0 1; }
    #status-line { height: 1; padding: 0 1; background: $panel; text-wrap: nowrap; text-overflow: ellipsis; }
    #status-line.-failed { background: $error 40%; }
    #overview-top { height: 5; }
    #balance-box { width: 30; height: 5; }
    #balance-label { color: $text-muted; }
    #balance { width: auto; color: $success; }
    #overview-facts { width: 1fr; height: 5; padding-left: 2; }
    #overview-peer { height: 1; text-wrap: nowrap; text-overflow: ellipsis; }
    #chart-title { margin-top: 1; color: $text-muted; }
    #earnings { height: 5; margin: 0; }
    #chart-caption { color: $text-muted; }
    .caption { color: $text-muted; height: 1; }
    #history-table, #network-table { height: 1fr; }
    #reputation-facts { height: auto; margin-bottom: 1; }
    #reputation-explained { color: $text-muted; }
    #network-health { height: auto; margin-bottom: 1; }
    #node-facts { height: auto; }
    #node-controls { height: 3; margin-top: 1; }
    #toggle-pause { min-width: 16; }
    #control-note { width: 1fr; padding: 0 1; color: $text-muted; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "quit", "Quit"),
        Binding("r", "refresh", "Refresh"),
        Binding("p", "toggle_pause", "Pause/Resume"),
        Binding("s", "send", "Send points"),
        Binding("tab", "next_tab", "Next tab", priority=True),
        Binding("shift+tab", "next_tab(-1)", "Previous tab", show=False, priority=True),
        *(
            Binding(str(n), f"show_tab('{name}')", name.title(), show=False)
            for n, name in enumerate(TABS, start=1)
        ),
    ]

    def __init__(
        self,
        source: WalletSource,
        *,
        refresh_s: float = 2.0,
        clock: Callable[[], float] = time.perf_counter,
        wall_clock: Callable[[], float] = time.time,
        tz: dt.tzinfo | None = None,
    ) -> None:
        super().__init__()
        self.source = source
        """Where status and history come from (called from worker threads only)."""
        self.refresh_s = refresh_s
        """Seconds between live refreshes."""
        self._clock = clock
        self._wall_clock = wall_clock
        self._tz = tz
        self.node_status: NodeStatus | None = None
        """The latest status fetched, None before the first success."""
        self.history: list[HistoryItem] = []
        """The latest verified history, oldest first."""
        self.health = Health()
        """How the refreshes are going."""
        self._note = ""
        self._note_is_error = False
        self._control_reason: str | None = None
        self._refresh_worker: Worker[Fetched] | None = None
        self._history_key: tuple[bytes, ...] | None = None
        self._network_kind = ""
        self._from_disk = False
        """``node_status`` and ``history`` come from the node's ledger on disk (it never answered)."""

    # ── layout ───────────────────────────────────────────────────────────────────────────────────────
    def compose(self) -> ComposeResult:
        yield Header()
        with TabbedContent(initial="overview"):
            with TabPane("1 Overview", id="overview"):
                with Horizontal(id="overview-top"):
                    with Vertical(id="balance-box"):
                        yield Label("BALANCE (points)", id="balance-label")
                        yield Digits("-", id="balance")
                    yield Static("waiting for the first refresh…", id="overview-facts")
                yield Static("", id="overview-peer")
                yield Label("Earnings over time", id="chart-title")
                yield Sparkline([], summary_function=max, id="earnings")
                yield Static("", id="chart-caption")
            with TabPane("2 History", id="history"):
                yield Static("", id="history-caption", classes="caption")
                yield DataTable(id="history-table", cursor_type="row", zebra_stripes=True)
            with TabPane("3 Reputation", id="reputation"):
                yield Static("", id="reputation-facts")
                yield Static(REPUTATION_EXPLAINED, id="reputation-explained")
            with TabPane("4 Network", id="network"):
                yield Static("", id="network-health")
                yield Static("", id="network-caption", classes="caption")
                yield DataTable(id="network-table", cursor_type="row", zebra_stripes=True)
            with TabPane("5 Node", id="node"):
                yield Static("", id="node-facts")
                with Horizontal(id="node-controls"):
                    yield Button("Pause (p)", id="toggle-pause", variant="warning")
                    yield Static("", id="control-note")
        yield Static("connecting…", id="status-line")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = self.source.address
        history = self.query_one("#history-table", DataTable)
        history.add_columns("Time", "Job", "Outcome", "Points", "Tokens", "Signed by / with")
        self._control_reason = self.source.control_unavailable
        self._render_all()
        self.set_interval(self.refresh_s, self.refresh_data)
        self.refresh_data()

    # ── actions and handlers ─────────────────────────────────────────────────────────────────────────
    def action_refresh(self) -> None:
        """Refresh now (key ``r``)."""
        self.refresh_data()

    def action_show_tab(self, tab: str) -> None:
        """Show one tab (keys ``1`` to ``5``)."""
        self.query_one(TabbedContent).active = tab

    def action_next_tab(self, step: int = 1) -> None:
        """Cycle through the tabs (``tab`` / ``shift+tab``); in a dialog, through its fields."""
        if isinstance(self.screen, ModalScreen):
            if step < 0:
                self.screen.focus_previous()
            else:
                self.screen.focus_next()
            return
        tabs = self.query_one(TabbedContent)
        index = TABS.index(tabs.active) if tabs.active in TABS else 0
        tabs.active = TABS[(index + step) % len(TABS)]

    def action_toggle_pause(self) -> None:
        """Pause a running node or resume a paused one (key ``p``); explains itself when it cannot."""
        self._control_reason = self.source.control_unavailable
        if self._control_reason is not None:
            self._set_note(f"pause/resume disabled: {self._control_reason}", error=True)
            self.notify(self._control_reason, title="Pause/resume disabled", severity="warning")
        elif self.node_status is None:
            self._set_note("no status yet: pause/resume works once the node has answered", error=True)
        else:
            action: Action = "resume" if self.node_status.paused else "pause"
            self._set_note(f"asking the node to {action}…")
            self.run_worker(
                partial(self.source.control, action),
                name=action,
                group="control",
                thread=True,
                exit_on_error=False,
            )
        self._render_all()

    def action_send(self) -> None:
        """Send points from the node's account (key ``s``): a form, a confirmation, then the node signs
        the transfer on its own chain. Only the node's owner can (like pause/resume)."""
        self._control_reason = self.source.control_unavailable
        status = self.node_status
        if self._control_reason is not None:
            reason = self._control_reason.replace("pause/resume", "sending points")
            self._set_note(f"sending points disabled: {reason}", error=True)
            self.notify(reason, title="Sending points disabled", severity="warning")
        elif status is None or self._from_disk:
            self._set_note("no live status yet: sending works once the node has answered", error=True)
        else:
            balance = status.points

            def reviewed(request: SendRequest | None) -> None:
                if request is not None:
                    self.push_screen(ConfirmSendScreen(request, balance), partial(confirmed, request))

            def confirmed(request: SendRequest, ok: bool | None) -> None:
                if not ok:
                    self._set_note("nothing sent")
                    self._render_all()
                    return
                self._set_note(f"sending {format_points(request.points)} points…")
                self._render_all()
                send = partial(
                    self.source.send,
                    request.to,
                    request.points,
                    request.memo,
                    new_recipient=request.new_recipient,
                )
                self.run_worker(send, name="send", group="send", thread=True, exit_on_error=False)

            self.push_screen(SendScreen(balance), reviewed)
        self._render_all()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "toggle-pause":
            self.action_toggle_pause()

    def on_tabbed_content_tab_activated(self, event: TabbedContent.TabActivated) -> None:
        # Give the tab's table the focus, so arrow keys scroll it at once.
        table_id = {"history": "#history-table", "network": "#network-table"}.get(event.pane.id or "")
        if table_id:
            self.query_one(table_id, DataTable).focus()

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        worker = event.worker
        if worker.group == "refresh":
            self._on_refresh_done(worker)
        elif worker.group == "control":
            self._on_control_done(worker)
        elif worker.group == "send":
            self._on_send_done(worker)

    # ── refresh ──────────────────────────────────────────────────────────────────────────────────────
    def refresh_data(self) -> None:
        """Start a background refresh, unless one is still running."""
        if self._refresh_worker is not None and not self._refresh_worker.is_finished:
            return
        self._refresh_worker = self.run_worker(
            self._fetch, name="refresh", group="refresh", thread=True, exit_on_error=False
        )

    def _fetch(self) -> Fetched:
        """Runs in a worker thread: everything here may block."""
        started = self._clock()
        try:
            status = self.source.status()
        except Exception as exc:
            if self.node_status is None:  # never answered in this session: show its ledger on disk
                saved = last_known(self.source)
                if saved is not None:
                    raise _Offline(exc, *saved) from exc
            raise
        latency = self._clock() - started
        return Fetched(status=status, history=self.source.history(), latency_s=latency)

    def _on_refresh_done(self, worker: Worker[object]) -> None:
        if worker.state not in (WorkerState.SUCCESS, WorkerState.ERROR):
            return
        self.health.last_attempt = self._wall_clock()
        if worker.state == WorkerState.SUCCESS and isinstance(worker.result, Fetched):
            fetched = worker.result
            self.node_status = fetched.status
            self.history = fetched.history
            self.health.ok = True
            self._from_disk = False
            self.health.last_ok = self.health.last_attempt
            self.health.latency_s = fetched.latency_s
            self.health.failures = 0
            self.health.error = ""
        else:
            self.health.ok = False
            self.health.failures += 1
            error = worker.error
            if isinstance(error, _Offline):
                self.node_status, self.history, self._from_disk = error.status, error.history, True
                error = error.cause
            self.health.error = describe_error(error) if error else "refresh failed"
        self.sub_title = self.source.address
        self._render_all()

    def _on_control_done(self, worker: Worker[object]) -> None:
        if worker.state == WorkerState.SUCCESS and isinstance(worker.result, NodeStatus):
            self.node_status = worker.result
            if worker.result.paused:
                self._set_note("paused: the node takes no new work (a job already running finishes)")
            else:
                self._set_note("resumed: the node takes work again")
            self._render_all()
            self.refresh_data()
        elif worker.state == WorkerState.ERROR:
            error = describe_error(worker.error) if worker.error else "no answer"
            self._set_note(f"{worker.name} failed: {error}", error=True)
            self._render_all()

    def _on_send_done(self, worker: Worker[object]) -> None:
        if worker.state == WorkerState.SUCCESS and isinstance(worker.result, TransferReceipt):
            sent = worker.result
            self._set_note(
                f"sent {format_points(sent.points)} points to {sent.to.hex()[:16]}…; balance now "
                f"{format_points(sent.balance)}"
            )
            self.notify(self._note, title="Points sent")
            self._render_all()
            self.refresh_data()
        elif worker.state == WorkerState.ERROR:
            error = describe_error(worker.error) if worker.error else "no answer"
            self._set_note(f"send failed: {error}", error=True)
            self.notify(error, title="Points not sent", severity="error")
            self._render_all()

    def _set_note(self, text: str, *, error: bool = False) -> None:
        self._note = text
        self._note_is_error = error

    # ── rendering ────────────────────────────────────────────────────────────────────────────────────
    def _render_all(self) -> None:
        try:
            self._render_status_line()
            self._render_overview()
            self._render_history()
            self._render_reputation()
            self._render_network()
            self._render_node()
        except NoMatches:
            # A refresh that finishes while the app shuts down finds its widgets gone: nothing to draw.
            return

    def _health_text(self) -> Text:
        health = self.health
        if health.ok is None:
            return Text(f"… connecting to {self.source.address}")
        if health.ok:
            return Text.assemble(
                ("● ok", "bold green"),
                f" · refreshed {format_time(int(health.last_ok * 1000), self._tz, with_date=False)}"
                f" · status call {health.latency_s * 1000:.0f} ms",
            )
        last = format_time(int(health.last_ok * 1000), self._tz, with_date=False) if health.last_ok else ""
        if self._from_disk:
            shown = "showing the balance in its ledger on disk"
        else:
            shown = f"showing the last values, from {last}" if last else "no answer yet"
        return Text.assemble(
            ("✖ node offline", "bold red"),
            f" ({health.failures} failed refresh(es) in a row; {shown}): {health.error} · "
            f"retrying every {self.refresh_s:g} s",
        )

    def _render_status_line(self) -> None:
        line = self.query_one("#status-line", Static)
        text = self._health_text()
        if self._note:
            text.append("  │  ")
            text.append(self._note, style="bold red" if self._note_is_error else "bold")
        line.update(text)
        line.set_class(self.health.ok is False or self._note_is_error, "-failed")

    def _state_text(self, status: NodeStatus) -> Text:
        if self.health.ok is False:
            return Text("○ offline: last values shown", style="bold red")
        return Text("‖ paused", style="bold yellow") if status.paused else Text("● running", style="green")

    def _render_overview(self) -> None:
        status = self.node_status
        if status is None:
            return
        self.query_one("#balance", Digits).update(format_points(status.points))
        offline = self.health.ok is False
        self.query_one("#balance-label", Label).update(
            "LAST BALANCE (offline)" if offline else "BALANCE (points)"
        )
        facts = Text()
        rows: list[tuple[str, Text | str]] = [
            ("Role", status.role),
            ("State", self._state_text(status)),
            ("Jobs done", format_points(status.jobs_done)),
            ("Models", ", ".join(status.models) or "—"),
            ("Ledger", f"{format_points(status.ledger_entries)} entries"),
        ]
        for index, (name, value) in enumerate(rows):
            if index:
                facts.append("\n")
            facts.append(f"{name:<10}", style="dim")
            facts.append(value)
        self.query_one("#overview-facts", Static).update(facts)
        self.query_one("#overview-peer", Static).update(Text.assemble(("Peer id   ", "dim"), status.peer_id))
        now_ms = int(self._wall_clock() * 1000)
        series = earnings_series(self.history, now_ms, CHART_BUCKETS)
        self.query_one("#earnings", Sparkline).data = series.points
        if series.bucket_ms:
            title = (
                f"Earnings over time: points per {format_duration_ms(series.bucket_ms)}, "
                f"since {format_time(series.start_ms, self._tz)}"
            )
            caption = (
                f"{format_points(series.total)} points in the last "
                f"{sum(1 for item in self.history if not item.is_transfer)} receipts · "
                f"peak {format_points(max(series.points))} · latest bar {format_points(series.points[-1])}"
            )
        else:
            title = "Earnings over time"
            caption = "no receipts yet: points appear here once the node's work is verified"
        self.query_one("#chart-title", Label).update(title)
        self.query_one("#chart-caption", Static).update(caption)

    def _render_history(self) -> None:
        table = self.query_one("#history-table", DataTable)
        key = tuple(item.entry_id for item in self.history)
        if key != self._history_key:
            self._history_key = key
            table.clear()
            for item in reversed(self.history):
                table.add_row(*_history_row(item, self._tz))
        receipts = sum(1 for item in self.history if not item.is_transfer)
        transfers = len(self.history) - receipts
        caption = (
            f"{receipts} receipts{f' and {transfers} transfers' if transfers else ''}, newest first; "
            "every signature checked by the SDK"
            if self.history
            else "no receipts yet: jobs this node ran appear here once verified"
        )
        self.query_one("#history-caption", Static).update(caption)

    def _render_reputation(self) -> None:
        summary = summarize_reputation(self.history)
        rate = summary.agreement_rate
        bar_width = 30
        filled = round((rate or 0.0) * bar_width)
        text = Text()
        text.append(f"{'Verified jobs':<16}", style="dim")
        text.append(f"{summary.verified}\n")
        text.append(f"{'Paid':<16}", style="dim")
        text.append(f"{summary.paid}", style="green")
        text.append(f"   ({format_points(summary.points)} points)\n")
        text.append(f"{'Outvoted':<16}", style="dim")
        text.append(f"{summary.outvoted}\n", style="red" if summary.outvoted else "")
        text.append(f"{'Agreement rate':<16}", style="dim")
        if rate is None:
            text.append("— (no verified jobs yet)\n")
        else:
            text.append(f"{rate * 100:.1f} %  ")
            text.append("█" * filled, style="green")
            text.append("░" * (bar_width - filled) + "\n", style="red" if summary.outvoted else "dim")
        text.append(f"{'Current streak':<16}", style="dim")
        text.append(f"{summary.streak} paid in a row")
        self.query_one("#reputation-facts", Static).update(text)

    def _render_network(self) -> None:
        health = Text.assemble(("Connection  ", "dim"), self._health_text())
        health.append("\n")
        health.append("Node        ", style="dim")
        where, _, peer = self.source.address.partition("/p2p/")
        health.append(f"{where} · {short_id(peer)}" if peer else where)
        self.query_one("#network-health", Static).update(health)
        status = self.node_status
        if status is None:
            return
        table = self.query_one("#network-table", DataTable)
        caption = self.query_one("#network-caption", Static)
        if status.role == "coordinator":
            if self._network_kind != "coordinator":
                table.clear(columns=True)
                table.add_columns("Worker", "Models", "State", "Balance")
                self._network_kind = "coordinator"
            table.clear()
            online = sum(1 for w in status.workers if w.online)
            for worker in status.workers:
                table.add_row(
                    short_id(worker.peer_id),
                    ", ".join(worker.models) or "—",
                    Text("● online", style="green") if worker.online else Text("○ offline", style="dim"),
                    Text(format_points(status.balances.get(worker.public_key.hex(), 0)), justify="right"),
                )
            caption.update(
                f"Coordinator · {len(status.workers)} workers, {online} online · "
                f"{len(status.balances)} accounts in its ledger"
            )
        else:
            if self._network_kind != "worker":
                table.clear(columns=True)
                table.add_columns("Coordinator", "Jobs", "Points", "Last receipt")
                self._network_kind = "worker"
            table.clear()
            seen = coordinators_seen(self.history)
            for coordinator in seen:
                table.add_row(
                    short_id(_peer_id(coordinator.key)),
                    Text(str(coordinator.jobs), justify="right"),
                    Text(format_points(coordinator.points), justify="right"),
                    format_time(coordinator.last_ms, self._tz),
                )
            caption.update(
                f"{status.role.title()}: coordinators that signed its receipts ({len(seen)})"
                if seen
                else f"{status.role.title()}: no receipts yet, so no coordinator has paid it"
            )

    def _render_node(self) -> None:
        status = self.node_status
        button = self.query_one("#toggle-pause", Button)
        note = self.query_one("#control-note", Static)
        if status is not None:
            text = Text()
            rows: list[tuple[str, Text | str]] = [
                ("Peer id", status.peer_id),
                ("Role", status.role),
                ("State", self._state_text(status)),
                ("Jobs done", format_points(status.jobs_done)),
                ("Points", format_points(status.points)),
                ("Models", ", ".join(status.models) or "—"),
                ("Ledger", f"{format_points(status.ledger_entries)} entries"),
            ]
            suffix = f"/p2p/{status.peer_id}"
            rows += [
                ("Listening" if i == 0 else "", addr.removesuffix(suffix))
                for i, addr in enumerate(status.addrs)
            ]
            for index, (name, value) in enumerate(rows):
                if index:
                    text.append("\n")
                text.append(f"{name:<10}", style="dim")
                text.append(value)
            self.query_one("#node-facts", Static).update(text)
            button.label = "Resume (p)" if status.paused else "Pause (p)"
            button.variant = "success" if status.paused else "warning"
        button.disabled = self._control_reason is not None or status is None
        if self._control_reason is not None:
            note.update(f"Pause/resume disabled. {self._control_reason}")
        else:
            note.update(
                "Pausing stops new work (a running job finishes). The request is signed with the "
                "node's identity.key, so only its owner can do this."
            )


class _Offline(Exception):
    """A refresh that failed, carrying what the node's data dir showed instead."""

    def __init__(self, cause: BaseException, status: NodeStatus, history: list[HistoryItem]) -> None:
        super().__init__(str(cause))
        self.cause, self.status, self.history = cause, status, history


def _peer_id(key: bytes) -> str:
    """A coordinator's peer id from its ledger key (the same Ed25519 key); hex if it is not one."""
    from opengrid.net.keys import peer_id_of  # imported late: it loads libp2p

    try:
        return peer_id_of(key)
    except Exception:
        return key.hex()


_OUTCOME_STYLES = {"paid": "green", "outvoted": "red", "sent": "yellow", "received": "cyan"}


def _history_row(item: HistoryItem, tz: dt.tzinfo | None) -> tuple[str | Text, ...]:
    """One History row: a receipt (its job, tokens and signing coordinator) or a transfer (its memo in
    the job column, the other account in the last)."""
    outcome = Text(item.outcome, style=_OUTCOME_STYLES.get(item.outcome, ""))
    if item.is_transfer:
        points = f"{item.points:+,}"
        memo = item.memo if len(item.memo) <= 8 else item.memo[:7] + "…"
        return (
            format_time(item.issued_at_ms, tz),
            memo,
            outcome,
            Text(points, justify="right"),
            Text("", justify="right"),
            short_id(_peer_id(item.counterparty)),
        )
    return (
        format_time(item.issued_at_ms, tz),
        item.job_id.hex()[:8],
        outcome,
        Text(format_points(item.points), justify="right"),
        Text(format_points(item.n_tokens), justify="right"),
        short_id(_peer_id(item.coordinator_key)),
    )

"""The wallet end to end: a real coordinator in its own process, the wallet opened on its data dir through
the SDK, and a pause that the node itself then reports."""

from __future__ import annotations

import asyncio
import json
import pathlib
import signal
import subprocess
import sys

import pytest
from opengrid_sdk import Client
from textual.widgets import Static

from opengrid.tui.app import WalletApp
from opengrid.tui.source import SdkWalletSource
from tests.e2e.test_node_cli import wait_for_line

pytestmark = pytest.mark.slow


def test_wallet_on_a_real_node_shows_its_peer_id_and_pauses_it(tmp_path: pathlib.Path) -> None:
    node = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "opengrid",
            "node",
            "start",
            "--role",
            "coordinator",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--data-dir",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        address = wait_for_line(node, "listening on /ip4/127.0.0.1/tcp/").split("listening on ")[1].strip()
        info = json.loads((tmp_path / "node.json").read_text())
        peer_id = info["peer_id"]
        assert address.endswith(f"/p2p/{peer_id}")

        source = SdkWalletSource.for_data_dir(tmp_path)
        assert source.control_unavailable is None

        async def scenario() -> None:
            app = WalletApp(source, refresh_s=3600)
            async with app.run_test(size=(80, 24)) as pilot:
                await app.workers.wait_for_complete()
                await pilot.pause()
                status_line = str(app.query_one("#status-line", Static).content)
                assert status_line.startswith("● ok"), status_line
                assert peer_id in str(app.query_one("#overview-peer", Static).content)
                await pilot.press("p")
                await app.workers.wait_for_complete()
                await pilot.pause()
                assert app.node_status is not None and app.node_status.paused
                assert "‖ paused" in str(app.query_one("#overview-facts", Static).content)

        try:
            asyncio.run(scenario())
        finally:
            source.close()
        with Client([address], timeout=30) as client:
            assert client.status(address).paused  # the node says so itself, to a different client

        node.send_signal(signal.SIGTERM)
        out, _ = node.communicate(timeout=30)
        assert node.returncode == 0, out
        assert "Traceback" not in out
    finally:
        node.kill()
        node.wait(timeout=30)

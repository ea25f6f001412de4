"""Snapshot tests: each main screen renders at 80x24 and says what it should. The SVG is read back as text;
its bytes are not compared (fonts and Textual versions vary)."""

from __future__ import annotations

import asyncio
import pathlib

import pytest
from svgtext import svg_lines, svg_text

from opengrid.testing.screenshots import capture, source_for
from opengrid.tui.app import TABS

DOCS = pathlib.Path(__file__).resolve().parents[2] / "docs"
EXPECTED = {
    "overview": ["BALANCE (points)", "Jobs done 61", "Earnings over time", "12D3KooW"],
    "history": ["Outcome", "Coordinator", "outvoted", "64 receipts"],
    "reputation": ["Agreement rate", "95.3 %", "agreed with the majority", "evidence entries"],
    "network": ["4 workers, 3 online", "○ offline", "3,412", "● ok"],
    "node": ["Pause (p)", "Listening", "identity.key"],
}
FOOTER = ["q Quit", "r Refresh", "p Pause/Resume"]


def check_screen(tab: str, svg: str) -> None:
    lines = svg_lines(svg)
    assert len(lines) == 24 and all(len(line) <= 80 for line in lines), "the screen must fit 80x24"
    text = svg_text(svg)
    for needle in [*EXPECTED[tab], *FOOTER]:
        assert needle in text, f"{needle!r} missing from the {tab} screen:\n{text}"
    assert "Traceback" not in text


def test_a_regenerated_screenshot_shows_the_screens_key_facts(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "wallet-overview.svg"
    svg = asyncio.run(capture("overview", source_for("overview"), path))
    assert path.read_text(encoding="utf-8") == svg
    check_screen("overview", svg)


@pytest.mark.parametrize("tab", TABS)
def test_the_committed_screenshot_of_each_screen_is_current(tab: str) -> None:
    """Regenerate them with ``python -m opengrid.testing.screenshots`` after changing the wallet."""
    check_screen(tab, (DOCS / f"wallet-{tab}.svg").read_text(encoding="utf-8"))

"""Snapshot tests: each wallet screen, rendered now, is the committed screenshot in docs/.

Each tab is rendered headless at 80x24 from the demo data with a fixed clock, by the same function that
writes the screenshots (``opengrid.testing.screenshots.generate``), and compared with
``docs/wallet-<tab>.svg``: first the characters of every row (a changed label or number shows as the rows
that differ), then the whole SVG with Textual's render id normalised (colours, styles, layout). The render
is deterministic (same bytes on every run with the pinned Textual), so any difference is a change to the
wallet. When the change is intended, regenerate and commit the screenshots:
``python -m opengrid.testing.screenshots``.
"""

from __future__ import annotations

import asyncio
import difflib
import pathlib
import re

import pytest
from svgtext import svg_lines

from opengrid.testing.screenshots import SCREENS, generate

DOCS = pathlib.Path(__file__).resolve().parents[2] / "docs"
REGENERATE = (
    "If the wallet changed on purpose, regenerate the screenshots with "
    "`python -m opengrid.testing.screenshots` and commit docs/wallet-*.svg."
)
_RENDER_ID = re.compile(r"terminal-\d+")


def normalised(svg: str) -> str:
    """The SVG without Textual's render id (a hash that every class name and clip path carries)."""
    return _RENDER_ID.sub("terminal", svg)


def render(tab: str, out: pathlib.Path) -> str:
    """The screenshot of ``tab`` as the regeneration command writes it."""
    [path] = asyncio.run(generate(out, [tab]))
    assert path == out / f"wallet-{tab}.svg"
    return path.read_text(encoding="utf-8")


def differences(tab: str, committed: str, rendered: str) -> str:
    """Why the committed screenshot of ``tab`` is not the rendered one: the rows that differ, else the
    first differing line of the SVG (a colour or style), plus how to regenerate."""
    rows = list(
        difflib.unified_diff(
            svg_lines(committed), svg_lines(rendered), "committed", "rendered now", lineterm="", n=1
        )
    )
    if rows:
        return f"the {tab} screen's text changed:\n" + "\n".join(rows) + "\n" + REGENERATE
    old, new = normalised(committed).splitlines(), normalised(rendered).splitlines()
    at = next((i for i, (a, b) in enumerate(zip(old, new, strict=False)) if a != b), min(len(old), len(new)))
    return (
        f"the {tab} screen's text is the same but its SVG differs at line {at + 1} (a colour, style or "
        f"layout):\n  committed:    {old[at] if at < len(old) else '<end>'}\n"
        f"  rendered now: {new[at] if at < len(new) else '<end>'}\n{REGENERATE}"
    )


@pytest.mark.parametrize("tab", SCREENS)
def test_each_screen_renders_as_its_committed_screenshot(tab: str, tmp_path: pathlib.Path) -> None:
    committed = (DOCS / f"wallet-{tab}.svg").read_text(encoding="utf-8")
    rendered = render(tab, tmp_path)
    if normalised(rendered) != normalised(committed):
        pytest.fail(differences(tab, committed, rendered), pytrace=False)


def test_a_changed_label_is_reported_with_its_row_and_how_to_regenerate() -> None:
    committed = (DOCS / "wallet-node.svg").read_text(encoding="utf-8")
    changed = committed.replace("Pause", "Pawse", 1)
    assert changed != committed
    report = differences("node", committed, changed)
    assert re.search(r"^-.*Pause", report, re.M) and re.search(r"^\+.*Pawse", report, re.M), report
    assert "python -m opengrid.testing.screenshots" in report


def test_a_changed_colour_is_reported_as_a_style_change() -> None:
    committed = (DOCS / "wallet-overview.svg").read_text(encoding="utf-8")
    changed = committed.replace("fill: #e0e0e0", "fill: #e0e0e1", 1)
    assert changed != committed and normalised(changed) != normalised(committed)
    report = differences("overview", committed, changed)
    assert "text is the same" in report and "#e0e0e1" in report, report

"""Regenerate the wallet screenshots in docs/: ``python -m opengrid.testing.screenshots [--out DIR]``.

Each screen is rendered headless at 80x24 from ``FakeWalletSource`` data with a fixed clock and UTC times,
so the files change only when the wallet does.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import itertools
import pathlib
import sys
from collections.abc import Callable, Sequence

from textual import events

from opengrid.testing.wallet import FakeWalletSource, demo_coordinator_source, demo_key, demo_worker_source
from opengrid.tui.app import TABS, WalletApp

SCREENS = (*TABS, "send")
"""Every screenshot: one per tab, and the send dialog's confirmation."""

NOW_MS = 1_748_790_000_000  # 2025-06-01 15:00 UTC
SIZE = (80, 24)


def _fixed_clock(step: float) -> Callable[[], float]:
    """A clock that advances ``step`` seconds each time it is read."""
    ticks = itertools.count()
    return lambda: next(ticks) * step


async def capture(tab: str, source: FakeWalletSource, path: pathlib.Path, *, now_ms: int = NOW_MS) -> str:
    """Render ``tab`` of a wallet on ``source`` (or, for "send", the send dialog's confirmation) and write it
    to ``path`` as SVG; returns the SVG."""
    app = WalletApp(
        source,
        refresh_s=3600,
        clock=_fixed_clock(0.012),  # every status call "takes" 12 ms
        wall_clock=lambda: now_ms / 1000,
        tz=dt.UTC,
    )
    async with app.run_test(size=SIZE) as pilot:
        await app.workers.wait_for_complete()
        await pilot.pause()
        if tab == "send":  # the confirmation of a donation, over the overview
            await pilot.press("s")
            await pilot.pause()
            # The key and the memo pasted (one event each, as a terminal delivers a paste), the points
            # typed: Pilot waits for the app to go idle after every key (~5 s for a typed 64-hex key).
            app.post_message(events.Paste(demo_key("docs-fund").hex()))
            await pilot.press("tab", "2", "5", "0", "tab")
            app.post_message(events.Paste("for the docs"))
            await pilot.pause()
            await pilot.click("#send-review")
            await pilot.pause()
        else:
            await pilot.press(str(TABS.index(tab) + 1))
            await pilot.pause()
        svg = app.export_screenshot(title=f"OpenGrid wallet: {tab}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(svg, encoding="utf-8")
    return svg


def source_for(tab: str, now_ms: int = NOW_MS) -> FakeWalletSource:
    """The demo data each screenshot shows: a coordinator for Network, a busy worker for the rest."""
    return demo_coordinator_source(now_ms) if tab == "network" else demo_worker_source(now_ms)


async def generate(out_dir: pathlib.Path, tabs: Sequence[str] = SCREENS) -> list[pathlib.Path]:
    """Write ``wallet-<tab>.svg`` for each screen into ``out_dir``."""
    paths = []
    for tab in tabs:
        path = out_dir / f"wallet-{tab}.svg"
        await capture(tab, source_for(tab), path)
        paths.append(path)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m opengrid.testing.screenshots", description=__doc__)
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("docs"), help="default: docs")
    args = parser.parse_args(argv)
    for path in asyncio.run(generate(args.out)):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

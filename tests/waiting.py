"""Waiting in tests on real nodes: poll a condition, bounded in time, and say what was seen on timeout."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import trio


async def until(condition: Callable[[], bool], timeout: float, state: Callable[[], str] = str) -> None:
    """Wait until ``condition()`` holds, checking every 50 ms; after ``timeout`` seconds fail the test
    with what ``state()`` says (the why, on a slow CI run)."""
    with trio.move_on_after(timeout):
        while not condition():
            await trio.sleep(0.05)
        return
    pytest.fail(f"not within {timeout} s; {state()}")

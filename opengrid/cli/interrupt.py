"""Ctrl-C while the command line starts up: exit at once instead of raising ``KeyboardInterrupt``.

Python's import machinery is not safe to interrupt. A ``KeyboardInterrupt`` that lands in one of its
weakref callbacks is printed as "Exception ignored" and swallowed, so the command goes on as if no Ctrl-C
had come, and the module lock it interrupted stays taken: the next thread that imports that module (the
node's model loader imports numpy and gguf on use) waits for ever, and so does the next Ctrl-C. Until a
command has its own handling (the node's trio signal receiver, or the default ``KeyboardInterrupt`` that
the other commands catch), a Ctrl-C ends the process with status 130; nothing has been started that
needs stopping, and what is written by then (the identity file) is written so a kill cannot tear it.
"""

from __future__ import annotations

import os
import signal
from types import FrameType

INTERRUPTED_STATUS = 130  # 128 + SIGINT, what a shell reports for a Ctrl-C


def _exit_at_once(signum: int, frame: FrameType | None) -> None:
    os._exit(INTERRUPTED_STATUS)


def exit_at_once_on_ctrl_c() -> None:
    """From now on a Ctrl-C ends the process at once (the start-up phase)."""
    signal.signal(signal.SIGINT, _exit_at_once)


def ctrl_c_raises_again() -> None:
    """Give Ctrl-C back to ``KeyboardInterrupt`` if the start-up handler is still in place."""
    if signal.getsignal(signal.SIGINT) is _exit_at_once:
        signal.signal(signal.SIGINT, signal.default_int_handler)

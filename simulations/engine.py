"""A single-threaded, seeded discrete-event loop with integer-nanosecond time.

The heap holds ``(time_ns, seq, kind, node, tag, data)`` tuples. ``seq`` grows with every insertion, so
two events at the same instant run in the order they were scheduled, and comparison never reaches the
payload (which need not be orderable). Every processed event adds one canonical line,
``"<time_ns> <kind name> <node> <tag>"``, to a sha256: same seed + same code gives the same hash, and the
first diverging run shows up as a different hash.
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Callable
from typing import Any, Final

Handler = Callable[[int, int | str, Any], None]
"""``handler(node, tag, data)``; the engine's clock (``now_ns``) is the event's time."""

NS_PER_S: Final = 1_000_000_000
_HASH_BATCH: Final = 4096  # lines joined per sha256 update: hashing line by line costs ~2x more


def seconds_to_ns(seconds: float) -> int:
    """Round a duration in seconds to whole nanoseconds (the engine's only time unit)."""
    return round(seconds * NS_PER_S)


class Engine:
    """Runs scheduled events in (time, insertion) order and hashes what it ran."""

    def __init__(self) -> None:
        self.now_ns = 0
        self.processed = 0
        self._heap: list[tuple[int, int, int, int, int | str, Any]] = []
        self._seq = 0
        self._handlers: list[Handler] = []
        self._names: list[str] = []
        self._hash = hashlib.sha256()
        self._lines: list[str] = []

    def kind(self, name: str, handler: Handler) -> int:
        """Register an event kind; returns the id to pass to :meth:`at` and :meth:`after`."""
        if name in self._names:
            raise ValueError(f"event kind {name!r} registered twice")
        self._names.append(name)
        self._handlers.append(handler)
        return len(self._handlers) - 1

    def at(self, time_ns: int, kind: int, node: int, tag: int | str = 0, data: Any = None) -> None:
        """Schedule an event at absolute ``time_ns`` (never in the past: causality)."""
        if time_ns < self.now_ns:
            raise ValueError(f"event at {time_ns} ns is before now ({self.now_ns} ns)")
        self._seq += 1
        heapq.heappush(self._heap, (time_ns, self._seq, kind, node, tag, data))

    def after(self, delay_ns: int, kind: int, node: int, tag: int | str = 0, data: Any = None) -> None:
        """Schedule an event ``delay_ns`` from now."""
        self.at(self.now_ns + delay_ns, kind, node, tag, data)

    @property
    def pending(self) -> int:
        """Events scheduled and not yet run."""
        return len(self._heap)

    def run(
        self,
        until_ns: int,
        *,
        progress: Callable[[int], None] | None = None,
    ) -> int:
        """Run every event scheduled before ``until_ns``; return how many ran.

        Bounded: each iteration pops one event, and handlers only schedule events at or after now, so the
        loop ends once the clock passes ``until_ns`` (a handler that schedules endlessly at the same
        instant is a bug in that handler). ``progress(now_ns)`` is called every few thousand events.
        """
        heap, handlers, names, lines = self._heap, self._handlers, self._names, self._lines
        pop = heapq.heappop
        ran = 0
        while heap and heap[0][0] < until_ns:
            time_ns, _, kind, node, tag, data = pop(heap)
            self.now_ns = time_ns
            lines.append(f"{time_ns} {names[kind]} {node} {tag}\n")
            handlers[kind](node, tag, data)
            ran += 1
            if len(lines) >= _HASH_BATCH:
                self._flush()
                if progress is not None:
                    progress(time_ns)
        self.now_ns = max(self.now_ns, until_ns)
        self.processed += ran
        self._flush()
        return ran

    def digest(self) -> str:
        """Hex sha256 over the canonical lines of every event processed so far."""
        self._flush()
        return self._hash.copy().hexdigest()

    def _flush(self) -> None:
        if self._lines:
            self._hash.update("".join(self._lines).encode())
            self._lines.clear()

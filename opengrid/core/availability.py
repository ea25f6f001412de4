"""When a volunteer's node takes work: a pure policy over plain data (spec: OpenGrid.md §Volunteers).

A volunteer lends a PC, not owns a server: the node works only inside the owner's hours, only while the
machine is otherwise idle, and never while the owner has paused it. The driver samples the wall clock and
the system load and asks ``decide``; the answer carries the reason, so the node can log what it decided
and why ("outside working hours 22:00-07:00"), and the wallet can show it.
"""

from __future__ import annotations

from dataclasses import dataclass

from opengrid.errors import ConfigError

MINUTES_PER_DAY = 24 * 60


@dataclass(frozen=True)
class Window:
    """Daily working hours, ``start``..``end`` in minutes after midnight; may wrap past midnight."""

    start: int
    end: int

    def contains(self, minute: int) -> bool:
        if self.start == self.end:
            return True  # "00:00-00:00": all day
        if self.start < self.end:
            return self.start <= minute < self.end
        return minute >= self.start or minute < self.end  # wraps midnight, e.g. 22:00-07:00

    def __str__(self) -> str:
        return f"{self.start // 60:02d}:{self.start % 60:02d}-{self.end // 60:02d}:{self.end % 60:02d}"


def parse_windows(text: str) -> tuple[Window, ...]:
    """Parse ``"22:00-07:00,12:00-13:30"``; empty means always. ConfigError names the bad part."""
    windows = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        try:
            start_text, end_text = part.split("-")
            windows.append(Window(_minute(start_text), _minute(end_text)))
        except ValueError as exc:
            raise ConfigError(
                f"working hours {part!r} must look like HH:MM-HH:MM (24 h clock, may wrap midnight), "
                "several separated by commas"
            ) from exc
    return tuple(windows)


def _minute(text: str) -> int:
    hours, minutes = (int(x) for x in text.strip().split(":"))
    if not (0 <= hours < 24 and 0 <= minutes < 60):
        raise ValueError(text)
    return hours * 60 + minutes


@dataclass(frozen=True)
class Policy:
    """The owner's rules. Defaults: any time, whatever the load."""

    windows: tuple[Window, ...] = ()
    """Working hours; empty: always."""
    max_load: float | None = None
    """Take work only while the system load from other programs, per core, is at most this (e.g. 0.5);
    None: ignore the load."""


@dataclass(frozen=True)
class Decision:
    """Whether to take work now, and why (for logs and the wallet)."""

    work: bool
    reason: str


def decide(
    policy: Policy, *, minute_of_day: int, other_load_per_core: float, paused_by_owner: bool
) -> Decision:
    """Take work now? ``other_load_per_core`` must exclude the node's own work (the driver subtracts it),
    otherwise a busy worker would pause itself for being busy."""
    if paused_by_owner:
        return Decision(False, "paused by its owner")
    if policy.windows and not any(w.contains(minute_of_day % MINUTES_PER_DAY) for w in policy.windows):
        hours = ", ".join(str(w) for w in policy.windows)
        return Decision(False, f"outside working hours {hours}")
    if policy.max_load is not None and other_load_per_core > policy.max_load:
        return Decision(
            False, f"the machine is busy (load {other_load_per_core:.2f} per core > {policy.max_load:.2f})"
        )
    return Decision(True, "available")

"""The volunteer's availability policy: working hours (wrapping midnight), machine load, owner pause."""

from __future__ import annotations

import pytest

from opengrid.core.availability import Policy, Window, decide, parse_windows
from opengrid.errors import ConfigError


def _at(hh: int, mm: int = 0) -> int:
    return hh * 60 + mm


def test_windows_parse_and_wrap_past_midnight() -> None:
    night, lunch = parse_windows("22:00-07:00, 12:00-13:30")
    assert (night, lunch) == (Window(_at(22), _at(7)), Window(_at(12), _at(13, 30)))
    assert night.contains(_at(23)) and night.contains(_at(6, 59)) and not night.contains(_at(7))
    assert lunch.contains(_at(12)) and not lunch.contains(_at(13, 30)) and not lunch.contains(_at(11, 59))
    assert parse_windows("") == () and Window(0, 0).contains(_at(15))


@pytest.mark.parametrize("bad", ["22-07", "25:00-07:00", "22:00", "aa:bb-cc:dd", "10:60-11:00"])
def test_bad_windows_are_config_errors_naming_the_part(bad: str) -> None:
    with pytest.raises(ConfigError, match="HH:MM-HH:MM"):
        parse_windows(bad)


def test_decisions_say_why() -> None:
    policy = Policy(windows=parse_windows("22:00-07:00"), max_load=0.5)
    assert decide(policy, minute_of_day=_at(23), other_load_per_core=0.1, paused_by_owner=False).work
    outside = decide(policy, minute_of_day=_at(12), other_load_per_core=0.1, paused_by_owner=False)
    assert not outside.work and "outside working hours 22:00-07:00" in outside.reason
    busy = decide(policy, minute_of_day=_at(23), other_load_per_core=0.9, paused_by_owner=False)
    assert not busy.work and "busy" in busy.reason
    paused = decide(policy, minute_of_day=_at(23), other_load_per_core=0.1, paused_by_owner=True)
    assert not paused.work and paused.reason == "paused by its owner"


def test_the_default_policy_always_works() -> None:
    for minute in range(0, 24 * 60, 37):
        assert decide(Policy(), minute_of_day=minute, other_load_per_core=99.0, paused_by_owner=False).work

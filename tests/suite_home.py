"""The test session's temporary home directory (made by tests/conftest.py's ``pytest_configure``)."""

from __future__ import annotations

import pathlib
from dataclasses import dataclass


@dataclass(frozen=True)
class SuiteHome:
    """Where this test session's ``HOME`` and XDG directories are: all of them lie under ``root``."""

    root: pathlib.Path
    real_home: pathlib.Path
    """The home directory the suite was started with, before it was replaced."""

"""Fixtures shared by every test layer, and the suite's own home directory.

Tests never touch the user's home: before anything is collected, :func:`pytest_configure` points
``HOME`` and the XDG base directories (where platformdirs puts OpenGrid's cache, config and data
directories, and where huggingface_hub and matplotlib keep theirs) at a fresh temporary directory, for
this process and for every node process a test spawns (they inherit the environment). It also drops the
user's ``OPENGRID_*`` node settings, so a developer's own config never steers a test, and keeps the nodes
it spawns on 127.0.0.1 with LAN discovery (mDNS) off unless a test asks for it. The directory starts
empty, as on a fresh machine, and is deleted at the end of the session.
"""

from __future__ import annotations

import logging
import os
import pathlib
import shutil
import tempfile
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest
from trio.testing import MockClock

from opengrid.engines.tiny_model import write_tiny_gguf
from tests.suite_home import SuiteHome

if TYPE_CHECKING:
    from opengrid.testing.memnet import MemoryNetwork

REAL_HOME = pathlib.Path.home()
"""The home directory the suite was started with (before :func:`pytest_configure` replaced it)."""

_XDG_DIRS = {"XDG_CACHE_HOME": "cache", "XDG_CONFIG_HOME": "config", "XDG_DATA_HOME": "data"}

_suite_home: SuiteHome | None = None
_undo: pytest.MonkeyPatch | None = None


def pytest_configure(config: pytest.Config) -> None:
    """Give the session an empty home of its own (module docstring), before any test module is imported."""
    global _suite_home, _undo
    from opengrid.settings import CONFIG_ENV, KEYS, env_var

    root = pathlib.Path(tempfile.mkdtemp(prefix="opengrid-tests-home-")).resolve()
    patch = pytest.MonkeyPatch()
    patch.setenv("HOME", str(root))
    for variable, name in _XDG_DIRS.items():
        patch.setenv(variable, str(root / name))
    for variable in [CONFIG_ENV, *(env_var(key) for key in KEYS)]:
        patch.delenv(variable, raising=False)
    # Node processes the suite starts listen on 127.0.0.1 only and keep off mDNS (`node start` listens on
    # every interface and uses mDNS by default): tests use loopback alone, and grids of one test must not
    # find another test's nodes. The LAN tests turn mDNS on with --lan.
    patch.setenv(env_var("lan"), "false")
    patch.setenv(env_var("listen"), "/ip4/127.0.0.1/tcp/0")
    _suite_home, _undo = SuiteHome(root=root, real_home=REAL_HOME), patch


def pytest_unconfigure(config: pytest.Config) -> None:
    global _suite_home, _undo
    if _undo is not None:
        _undo.undo()
    if _suite_home is not None:
        shutil.rmtree(_suite_home.root, ignore_errors=True)
    _suite_home = _undo = None


@pytest.fixture(scope="session")
def suite_home() -> SuiteHome:
    """This session's temporary home (``HOME`` and the XDG directories all lie under ``root``)."""
    assert _suite_home is not None and os.environ["HOME"] == str(_suite_home.root)
    return _suite_home


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """The seed-0 tiny GGUF model (2 layers, 64 wide, ~0.5 MB), written once per test session."""
    return write_tiny_gguf(tmp_path_factory.mktemp("models") / "tiny.gguf", seed=0)


@pytest.fixture(autouse=True)
def _restore_root_logging() -> Iterator[None]:
    """Undo what a test's CLI run did to the root logger: ``opengrid`` installs a handler on the stderr
    pytest captured for that test, and later tests' log lines would go to that closed stream ("Logging
    error ... I/O operation on closed file" in the CI output)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def memnet_clock() -> Iterator[MockClock]:
    """Run the test in virtual time: a ``MockClock(autojump_threshold=0)`` (pytest-trio uses a clock a test
    requests) that stands still while a worker thread computes (``clock_stops_for_threads``). For tests on
    the in-memory network (``opengrid.testing.memnet``): real sockets and real time do not mix with it."""
    from opengrid.testing.memnet import clock_stops_for_threads  # imports libp2p: only where used

    with clock_stops_for_threads(MockClock(autojump_threshold=0)) as clock:
        yield clock


@pytest.fixture
def memnet() -> MemoryNetwork:
    """A fresh in-memory network (``Node(config, transport=memnet)``, ``memnet.open_host(seed)``)."""
    from opengrid.testing.memnet import MemoryNetwork

    return MemoryNetwork()

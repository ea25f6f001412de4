"""The command line in this process: ``opengrid.cli.main.main(argv)`` as ``python -m opengrid`` would run
it, for tests about a message or an exit status (a fresh interpreter costs ~1 s a call on this machine).
What needs a real process (signals, Ctrl-C, pipes, a node that runs) keeps a subprocess and ``slow``."""

from __future__ import annotations

import pathlib
import subprocess
from collections.abc import Callable

import pytest

Cli = Callable[..., "subprocess.CompletedProcess[str]"]
"""``cli(*argv, env={...})``: run the command line in this process; its exit status and output."""


@pytest.fixture
def cli(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Cli:
    """Run ``opengrid ARGV`` in this process with ``HOME`` (and the cache) in the test's own directory and
    ``env`` added to the environment, as the tests' subprocesses had them; argparse's exits (``--help``,
    a bad flag) are exit statuses here too."""

    def run(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        from opengrid.cli.main import main

        with monkeypatch.context() as patch:
            patch.setenv("HOME", str(tmp_path))
            patch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
            for name, value in (env or {}).items():
                patch.setenv(name, value)
            capsys.readouterr()  # what came before is not this command's
            said = ""  # sys.exit("text") prints the text to stderr and exits 1
            try:
                status = main(list(argv))
            except SystemExit as exit_:
                status = exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
                said = "" if exit_.code is None or isinstance(exit_.code, int) else f"{exit_.code}\n"
            out, err = capsys.readouterr()
        return subprocess.CompletedProcess(["opengrid", *argv], status, out, err + said)

    return run

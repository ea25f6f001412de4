"""The plain install (``pip install opengrid``, no extra) runs the client commands, and a command that needs
the node extra says so in one line instead of a traceback. The node extra's modules are hidden from a fresh
interpreter (``sys.modules[name] = None`` makes their import fail as if they were not installed): this
process has imported them already."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

from opengrid.cli.extras import NODE_EXTRA_MODULES, missing_extra
from tests.e2e.conftest import Cli

ROOT = pathlib.Path(__file__).resolve().parents[2]

_WITHOUT_NODE_EXTRA = (
    "import contextlib, io, json, sys\n"
    f"for name in {sorted(NODE_EXTRA_MODULES)!r}:\n"
    "    sys.modules[name] = None\n"
    "from opengrid.cli.main import main\n"
    "done = []\n"
    "for argv in json.loads(sys.argv[1]):\n"
    "    out, err = io.StringIO(), io.StringIO()\n"
    "    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):\n"
    "        try:\n"
    "            status = main(argv)\n"
    "        except SystemExit as exit_:\n"
    "            status = exit_.code\n"
    "    done.append([status, out.getvalue(), err.getvalue()])\n"
    "print(json.dumps(done))\n"
)
"""One fresh interpreter without the node extra runs every command of a JSON list of argvs in turn and
prints their [status, stdout, stderr]. One interpreter, not one per command (~1 s each): a hidden module
stays hidden for every command (a failed import is not cached), and the client commands run first, before
a node command has imported anything."""

CLIENT_COMMANDS = [["--help"], ["submit", "--help"], ["config", "show"], ["models", "list", "--json"]]
NODE_COMMANDS = {
    "node start": (["node", "start", "--role", "coordinator", "--model", "tiny"], "starlette"),
    "wallet": (["wallet"], "textual"),
    "demo": (["demo"], "starlette"),
}


@pytest.fixture(scope="module")
def without_node_extra(
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, subprocess.CompletedProcess[str]]:
    """Each command of ``CLIENT_COMMANDS`` and ``NODE_COMMANDS`` run in the plain install, by its words."""
    data_dir = tmp_path_factory.mktemp("plain") / "node"
    argvs = [*CLIENT_COMMANDS]
    for args, _ in NODE_COMMANDS.values():
        argvs.append([*args, "--data-dir", str(data_dir)] if args[0] == "node" else args)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "sdk"), str(ROOT / "ledger")])}
    done = subprocess.run(
        [sys.executable, "-c", _WITHOUT_NODE_EXTRA, json.dumps(argvs)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    names = [" ".join(argv) for argv in CLIENT_COMMANDS] + list(NODE_COMMANDS)
    return {
        name: subprocess.CompletedProcess(argv, status, out, err)
        for name, argv, (status, out, err) in zip(names, argvs, json.loads(done.stdout), strict=True)
    }


@pytest.mark.parametrize("command", list(NODE_COMMANDS))
def test_node_commands_name_the_missing_extra_in_one_line(
    without_node_extra: dict[str, subprocess.CompletedProcess[str]], command: str
) -> None:
    module = NODE_COMMANDS[command][1]
    done = without_node_extra[command]
    assert done.returncode == 1, done.stderr
    errors = [line for line in done.stderr.splitlines() if "error" in line.lower()]
    assert errors == [
        f"opengrid: error: `opengrid {command}` needs the node extra, which is not installed (no module "
        f"'{module}'): pip install 'opengrid[node]' (or `make setup` in a checkout)"
    ]
    assert "Traceback" not in done.stderr


def test_client_commands_run_without_the_node_extra(
    without_node_extra: dict[str, subprocess.CompletedProcess[str]],
) -> None:
    for args in CLIENT_COMMANDS:
        done = without_node_extra[" ".join(args)]
        assert done.returncode == 0, (args, done.stderr)


def test_other_missing_modules_keep_their_traceback() -> None:
    """Only the node extra's modules get the one-line hint: anything else missing is a bug to see in full."""
    assert missing_extra(ModuleNotFoundError("x", name="llama_cpp"), "node start") is not None
    assert missing_extra(ModuleNotFoundError("x", name="textual.app"), "wallet") is not None
    assert missing_extra(ModuleNotFoundError("x", name="libp2p"), "status") is None


def test_the_cli_and_the_api_agree_on_the_default_api_address() -> None:
    from opengrid.node import api, config

    assert config.DEFAULT_API_ADDRESS == api.DEFAULT_API_ADDRESS


def test_the_simulator_outside_a_checkout_says_where_it_runs(
    tmp_path: pathlib.Path, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An installed wheel has no ``simulations`` package (it ships with the source tree): hidden here as
    a missing module is (None in sys.modules fails every import of it and of its submodules)."""
    monkeypatch.setitem(sys.modules, "simulations", None)
    scenario = ROOT / "simulations" / "scenarios" / "baseline.toml"
    done = cli("sim", "run", str(scenario), "--out", str(tmp_path / "out"))
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        "opengrid: error: `opengrid sim` runs the simulator, which ships with OpenGrid's source tree, "
        "not with the installed package: run it from a checkout "
        "(`make setup`, then `.venv/bin/opengrid sim ...`)"
    )

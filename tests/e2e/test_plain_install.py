"""The plain install (``pip install opengrid``, no extra) runs the client commands, and a command that needs
the node extra says so in one line instead of a traceback. The node extra's modules are hidden from a fresh
interpreter (``sys.modules[name] = None`` makes their import fail as if they were not installed)."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

from opengrid.cli.extras import NODE_EXTRA_MODULES, missing_extra

ROOT = pathlib.Path(__file__).resolve().parents[2]

_WITHOUT_NODE_EXTRA = (
    "import sys\n"
    f"for name in {sorted(NODE_EXTRA_MODULES)!r}:\n"
    "    sys.modules[name] = None\n"
    "from opengrid.cli.main import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def _opengrid_without_node_extra(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "sdk"), str(ROOT / "ledger")])}
    return subprocess.run(
        [sys.executable, "-c", _WITHOUT_NODE_EXTRA, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


@pytest.mark.parametrize(
    ("args", "command", "module"),
    [
        (["node", "start", "--role", "coordinator", "--model", "tiny"], "node start", "starlette"),
        (["wallet"], "wallet", "textual"),
        (["demo"], "demo", "starlette"),
    ],
)
def test_node_commands_name_the_missing_extra_in_one_line(
    tmp_path: pathlib.Path, args: list[str], command: str, module: str
) -> None:
    if args[0] == "node":
        args = [*args, "--data-dir", str(tmp_path / "node")]
    done = _opengrid_without_node_extra(*args)
    assert done.returncode == 1, done.stderr
    errors = [line for line in done.stderr.splitlines() if "error" in line.lower()]
    assert errors == [
        f"opengrid: error: `opengrid {command}` needs the node extra, which is not installed (no module "
        f"'{module}'): pip install 'opengrid[node]' (or `make setup` in a checkout)"
    ]
    assert "Traceback" not in done.stderr


def test_client_commands_run_without_the_node_extra() -> None:
    for args in (["--help"], ["submit", "--help"], ["config", "show"], ["models", "list", "--json"]):
        done = _opengrid_without_node_extra(*args)
        assert done.returncode == 0, (args, done.stderr)


def test_other_missing_modules_keep_their_traceback() -> None:
    """Only the node extra's modules get the one-line hint: anything else missing is a bug to see in full."""
    assert missing_extra(ModuleNotFoundError("x", name="llama_cpp"), "node start") is not None
    assert missing_extra(ModuleNotFoundError("x", name="textual.app"), "wallet") is not None
    assert missing_extra(ModuleNotFoundError("x", name="libp2p"), "status") is None


def test_the_cli_and_the_api_agree_on_the_default_api_address() -> None:
    from opengrid.node import api, config

    assert config.DEFAULT_API_ADDRESS == api.DEFAULT_API_ADDRESS


def test_the_simulator_outside_a_checkout_says_where_it_runs(tmp_path: pathlib.Path) -> None:
    """An installed wheel has no ``simulations`` package (it ships with the source tree)."""
    script = "import sys\nsys.modules['simulations'] = None\n" + _WITHOUT_NODE_EXTRA.split("\n", 1)[
        1
    ].replace(f"for name in {sorted(NODE_EXTRA_MODULES)!r}:\n    sys.modules[name] = None\n", "")
    scenario = ROOT / "simulations" / "scenarios" / "baseline.toml"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "sdk"), str(ROOT / "ledger")])}
    done = subprocess.run(
        [sys.executable, "-c", script, "sim", "run", str(scenario), "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        "opengrid: error: `opengrid sim` runs the simulator, which ships with OpenGrid's source tree, "
        "not with the installed package: run it from a checkout "
        "(`make setup`, then `.venv/bin/opengrid sim ...`)"
    )

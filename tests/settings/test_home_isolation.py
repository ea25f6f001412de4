"""The suite never touches the user's home: OpenGrid's cache, config and data directories, in this process
and in the processes tests spawn, lie in the session's temporary home (tests/conftest.py)."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

from opengrid.engines.models import default_cache_dir
from opengrid.settings import default_config_path, default_data_dir
from tests.suite_home import SuiteHome

_PRINT_DIRS = (
    "import json, pathlib\n"
    "from opengrid.engines.models import default_cache_dir\n"
    "from opengrid.settings import default_config_path, default_data_dir\n"
    "print(json.dumps([str(default_cache_dir()), str(default_config_path()), str(default_data_dir()),"
    " str(pathlib.Path.home())]))\n"
)


def _assert_isolated(paths: list[pathlib.Path], home: SuiteHome) -> None:
    for path in paths:
        assert path.is_relative_to(home.root), f"{path} is outside the suite's home {home.root}"
        if not home.root.is_relative_to(home.real_home):
            assert not path.is_relative_to(home.real_home), f"{path} is under the real home {home.real_home}"


def test_opengrid_directories_are_in_the_suite_home(suite_home: SuiteHome) -> None:
    paths = [default_cache_dir(), default_config_path(), default_data_dir(), pathlib.Path.home()]
    _assert_isolated(paths, suite_home)
    assert pathlib.Path(os.environ["XDG_CACHE_HOME"]).is_relative_to(suite_home.root)


def test_spawned_processes_inherit_the_suite_home(suite_home: SuiteHome) -> None:
    """Node processes are started with the test's environment: they must see the same directories."""
    root = pathlib.Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), str(root / "sdk"), str(root / "ledger")])}
    out = subprocess.run(
        [sys.executable, "-c", _PRINT_DIRS], capture_output=True, text=True, timeout=60, env=env, check=True
    )
    _assert_isolated([pathlib.Path(p) for p in json.loads(out.stdout)], suite_home)


def test_no_opengrid_setting_leaks_in_from_the_user() -> None:
    """A developer's own OPENGRID_* settings (a config file, a data dir) must not steer the tests."""
    from opengrid.settings import CONFIG_ENV, KEYS, env_var

    leaked = [v for v in [CONFIG_ENV, *(env_var(k) for k in KEYS)] if v in os.environ]
    # the suite's own: node processes keep to loopback, off mDNS (tests/conftest.py)
    assert sorted(leaked) == [env_var("lan"), env_var("listen")]
    assert os.environ[env_var("lan")] == "false" and os.environ[env_var("listen")] == "/ip4/127.0.0.1/tcp/0"

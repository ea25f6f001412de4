"""The sans-IO rings (core, wire, ledger) import no I/O, clocks, randomness or concurrency (STYLE.md).

The static check is the primary one: it reads every source file and sees imports hidden in functions or
behind conditions. The dynamic check catches what the source cannot show: a module pulled in by a
dependency as a side effect of importing ours.
"""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
PACKAGES = {  # source folder -> import name of the package
    ROOT / "opengrid" / "core": "opengrid.core",
    ROOT / "opengrid" / "wire": "opengrid.wire",
    ROOT / "ledger" / "opengrid_ledger": "opengrid_ledger",
}
FORBIDDEN = {"trio", "libp2p", "socket", "random", "time", "os", "sqlite3", "asyncio", "threading"}
ALSO_FORBIDDEN_IN_SOURCE = {"subprocess", "importlib", "__import__"}
OUTER_RINGS = ("opengrid.net", "opengrid.node", "opengrid.store", "opengrid.engines", "opengrid.cli")

SOURCES = sorted(path for folder in PACKAGES for path in folder.rglob("*.py"))


def module_name(path: pathlib.Path) -> str:
    for folder, package in PACKAGES.items():
        if path.is_relative_to(folder):
            parts = path.relative_to(folder).with_suffix("").parts
            return ".".join((package, *parts)).removesuffix(".__init__")
    raise AssertionError(path)


def imports_of(path: pathlib.Path) -> set[str]:
    """Absolute module names a source file imports (anywhere in it), plus ``__import__`` if it calls it."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "__import__":
            names.add("__import__")
    return names


def test_every_sans_io_package_has_sources() -> None:
    for folder in PACKAGES:
        assert len(list(folder.glob("*.py"))) >= 4, folder


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_source_imports_nothing_forbidden(path: pathlib.Path) -> None:
    tops = {name.split(".")[0] for name in imports_of(path)}
    bad = tops & (FORBIDDEN | ALSO_FORBIDDEN_IN_SOURCE)
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}: core, wire and ledger are sans-IO"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_source_does_not_reach_into_outer_rings(path: pathlib.Path) -> None:
    outward = sorted(n for n in imports_of(path) if n.startswith(OUTER_RINGS) or n.startswith("opengrid_sdk"))
    if module_name(path).startswith("opengrid.wire"):
        outward += sorted(n for n in imports_of(path) if n.startswith("opengrid.core"))
    assert not outward, f"{path.relative_to(ROOT)} imports {outward}: imports point inward only"


def test_the_static_check_sees_imports_hidden_in_functions(tmp_path: pathlib.Path) -> None:
    source = tmp_path / "sneaky.py"
    source.write_text(
        "def f():\n    if True:\n        from time import monotonic\n    return __import__('os')\n"
    )
    assert {"time", "time.monotonic", "__import__"} <= imports_of(source)


def _run_python(code: str, *, path: tuple[pathlib.Path, ...] = ()) -> object:
    script = f"import sys; sys.path[:0] = {[str(p) for p in path]!r}\n" + code if path else code
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True, timeout=60
    )
    return ast.literal_eval(result.stdout)


def forbidden_loaded(names: list[str], *, path: tuple[pathlib.Path, ...] = ()) -> dict[str, list[str]]:
    """Per module (imported in order, in one fresh interpreter): the forbidden modules it newly loaded.

    The interpreter preloads some of those names (os, time, ...) before any of our code runs, so only
    what appears beyond a bare interpreter's module set counts.
    """
    baseline = _run_python("import sys; print(repr(sorted(sys.modules)))")
    report = _run_python(
        "import sys\n"
        "before = set(sys.modules)\n"
        "report = {}\n"
        f"for name in {names!r}:\n"
        "    __import__(name)\n"
        "    report[name] = sorted(set(sys.modules) - before)\n"
        "    before = set(sys.modules)\n"
        "print(repr(report))\n",
        path=path,
    )
    assert isinstance(baseline, list) and isinstance(report, dict)
    assert list(report) == names
    offenders = {
        name: sorted(m for m in loaded if m.split(".")[0] in FORBIDDEN and m not in baseline)
        for name, loaded in report.items()
    }
    return {name: bad for name, bad in offenders.items() if bad}


def test_importing_the_sans_io_modules_loads_nothing_forbidden() -> None:
    assert forbidden_loaded([module_name(path) for path in SOURCES]) == {}


def test_the_dynamic_check_catches_a_module_that_loads_randomness_and_threads(tmp_path: pathlib.Path) -> None:
    (tmp_path / "impure_helper.py").write_text("import random\n")
    (tmp_path / "impure.py").write_text("import impure_helper, threading\n")
    (tmp_path / "pure.py").write_text("import hashlib\n")
    found = forbidden_loaded(["pure", "impure"], path=(tmp_path,))
    assert found == {"impure": ["random", "threading"]}

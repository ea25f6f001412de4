"""The ledger is sans-IO: its modules must not import I/O, clocks or randomness (STYLE.md, rings)."""

from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[2] / "ledger" / "opengrid_ledger"
FORBIDDEN = {
    "trio",
    "libp2p",
    "socket",
    "time",
    "random",
    "os",
    "asyncio",
    "sqlite3",
    "subprocess",
    "threading",
}


def imported_modules(path: pathlib.Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "__import__":
            names.add("__import__")
    return names


@pytest.mark.parametrize("path", sorted(PACKAGE.glob("*.py")), ids=lambda path: path.name)
def test_ledger_module_imports_no_io(path: pathlib.Path) -> None:
    bad = imported_modules(path) & (FORBIDDEN | {"__import__", "importlib"})
    assert not bad, f"{path.name} imports {sorted(bad)}: the ledger is sans-IO (STYLE.md)"


def test_package_is_not_empty() -> None:
    assert len(list(PACKAGE.glob("*.py"))) >= 5

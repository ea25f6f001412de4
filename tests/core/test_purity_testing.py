"""The product never imports ``opengrid.testing`` (fakes and the screenshot tool live there, STYLE.md).

Every source file of the shipped packages (opengrid, opengrid_sdk, opengrid_ledger) and of the simulator is
read; an import of ``opengrid.testing`` anywhere in it (in a function, behind a condition, relative, or
named in a string for a lazy import) fails. Tests and benchmarks may import it.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
TESTING = ROOT / "opengrid" / "testing"
PACKAGES = {  # source folder -> import name
    ROOT / "opengrid": "opengrid",
    ROOT / "sdk" / "opengrid_sdk": "opengrid_sdk",
    ROOT / "ledger" / "opengrid_ledger": "opengrid_ledger",
    ROOT / "simulations": "simulations",
}
FORBIDDEN = "opengrid.testing"

SOURCES = sorted(
    path for folder in PACKAGES for path in folder.rglob("*.py") if not path.is_relative_to(TESTING)
)


def package_of(path: pathlib.Path) -> list[str]:
    """The dotted package a source file belongs to, as parts (for resolving relative imports)."""
    for folder, name in PACKAGES.items():
        if path.is_relative_to(folder):
            return [name, *path.relative_to(folder).parent.parts]
    raise AssertionError(path)


def imports_of(path: pathlib.Path, package: list[str]) -> set[str]:
    """Absolute names a source file imports anywhere, relative imports resolved, plus string constants
    that name a module of ours (``importlib.import_module("...")``, lazy-import tables)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and node.value.startswith("opengrid.")
        ):
            names.add(node.value)
    return names


def reaches_testing(names: set[str]) -> list[str]:
    return sorted(n for n in names if n == FORBIDDEN or n.startswith(FORBIDDEN + "."))


def test_there_are_sources_to_check() -> None:
    assert len(SOURCES) > 100 and all(not p.is_relative_to(TESTING) for p in SOURCES)
    assert (TESTING / "__init__.py").exists()


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_product_module_does_not_import_the_testing_package(path: pathlib.Path) -> None:
    found = reaches_testing(imports_of(path, package_of(path)))
    assert not found, (
        f"{path.relative_to(ROOT)} imports {found}: opengrid.testing holds test fakes and tools; the "
        "product must not depend on them (move what the product needs out of opengrid.testing)"
    )


@pytest.mark.parametrize(
    ("source", "where"),
    [
        ("import opengrid.testing.wallet\n", "opengrid/tui/x.py"),
        ("def f():\n    from opengrid.testing import wallet\n", "opengrid/tui/x.py"),
        ("from opengrid import testing\n", "opengrid/x.py"),
        ("from ..testing.wallet import FakeWalletSource\n", "opengrid/tui/x.py"),
        ("from .. import testing\n", "opengrid/tui/x.py"),
        ("import importlib\nimportlib.import_module('opengrid.testing.screenshots')\n", "opengrid/x.py"),
    ],
)
def test_the_check_sees_every_way_to_import_it(tmp_path: pathlib.Path, source: str, where: str) -> None:
    path = tmp_path / "x.py"
    path.write_text(source)
    assert reaches_testing(imports_of(path, package_of(ROOT / where)))


def test_the_check_lets_neighbours_through(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "x.py"
    path.write_text(
        "from opengrid.tui import source\nfrom .testing_helpers import x\nimport opengrid.testingx\n"
    )
    assert reaches_testing(imports_of(path, package_of(ROOT / "opengrid/tui/x.py"))) == []

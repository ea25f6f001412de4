"""The suite's own layout: tests/ has no __init__.py files (pytest's default "prepend" import mode puts each
test directory on sys.path and imports every test module by its bare name), so two test modules with one
file name in two directories cannot be collected in one run: the second is an import error. Each helper
that ran only its own directory never saw it; the whole suite did."""

from __future__ import annotations

import collections
import pathlib

TESTS = pathlib.Path(__file__).resolve().parent.parent


def test_no_two_test_modules_share_a_file_name() -> None:
    names = collections.Counter(path.name for path in TESTS.rglob("test_*.py"))
    assert [name for name, count in names.items() if count > 1] == []

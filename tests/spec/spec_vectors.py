"""Loading the golden vectors of spec/vectors/ and the generators in scripts/ (shared by tests/spec)."""

from __future__ import annotations

import importlib.util
import json
import pathlib
from types import ModuleType
from typing import Any

import msgspec

ROOT = pathlib.Path(__file__).resolve().parents[2]
VECTORS = ROOT / "spec" / "vectors"
SCHEMAS = ROOT / "spec" / "schemas"


def load(name: str) -> dict[str, Any]:
    """One vector file, parsed."""
    data: dict[str, Any] = json.loads((VECTORS / name).read_text(encoding="utf-8"))
    return data


def schema(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((SCHEMAS / name).read_text(encoding="utf-8"))
    return data


def hexify(value: Any) -> Any:
    """JSON-ready copy of ``value`` with bytes as lower-case hex (the vectors' convention)."""
    if isinstance(value, bytes | bytearray):
        return bytes(value).hex()
    if isinstance(value, dict):
        return {str(k): hexify(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [hexify(v) for v in value]
    return value


def structure(obj: Any) -> Any:
    """A Struct as the vectors show it: plain data, tags included, bytes as hex."""
    return hexify(msgspec.to_builtins(obj, builtin_types=(bytes,)))


def script(name: str) -> ModuleType:
    """Import scripts/<name>.py (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"_opengrid_{name}", ROOT / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

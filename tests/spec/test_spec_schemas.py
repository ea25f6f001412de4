"""The committed schemas and vectors are what the code generates (CI fails on drift), and the schemas
describe the bytes on the wire (field names, required fields, field order)."""

from __future__ import annotations

import json
import pathlib
import typing

import msgspec
import pytest
from spec_vectors import SCHEMAS, VECTORS, load, schema, script

from opengrid.wire.messages import Message

MESSAGE_TYPES: tuple[type, ...] = typing.get_args(Message)


def _drift(
    generated: dict[str, str],
    directory: pathlib.Path,
    command: str,
    meaning: typing.Callable[[typing.Any], typing.Any] = lambda doc: doc,
) -> None:
    """Fail when the committed files and the generator disagree in meaning: parsed JSON (so key order and
    layout do not count), passed through ``meaning`` (which drops what a library upgrade may change
    without changing what the file says)."""
    committed = {p.name for p in directory.glob("*.json")}
    assert committed == set(generated), (
        f"{directory} holds {sorted(committed)} but the generator makes {sorted(generated)}; run {command}"
    )
    stale = [
        name
        for name, text in generated.items()
        if meaning(json.loads((directory / name).read_text(encoding="utf-8"))) != meaning(json.loads(text))
    ]
    assert not stale, f"{', '.join(stale)} differ from what the code generates; run {command}"


def test_committed_schemas_match_the_code() -> None:
    gen = script("gen_schemas")
    _drift(gen.build_schemas(), SCHEMAS, "python scripts/gen_schemas.py", gen.normalise_descriptions)


def test_docstring_layout_is_not_drift() -> None:
    """msgspec 0.22 copied docstrings with their indentation, 0.23 dedents them: the same meaning, so the
    comparison above must not see a difference (a fresh machine got 0.23 and failed on this)."""
    gen = script("gen_schemas")
    indented = {"description": "First line.\n\n    Second paragraph,\n    indented.", "type": "object"}
    dedented = {"description": "First line.\n\nSecond paragraph,\nindented.", "type": "object"}
    assert gen.normalise_descriptions(indented) == gen.normalise_descriptions(dedented) == dedented
    assert gen.normalise_descriptions({"description": "a"}) != gen.normalise_descriptions(
        {"description": "b"}
    )


def test_committed_vectors_match_the_generator() -> None:
    _drift(script("gen_vectors").build_vectors(), VECTORS, "python scripts/gen_vectors.py")


def test_every_message_type_has_a_schema() -> None:
    doc = schema("job-protocol.json")
    mapping = doc["discriminator"]["mapping"]
    for kind in MESSAGE_TYPES:
        tag = kind.__struct_config__.tag
        assert mapping[tag] == f"#/$defs/{kind.__name__}", f"{kind.__name__} ({tag}) is not in the schema"
        assert kind.__name__ in doc["$defs"]
    assert len(mapping) == len(MESSAGE_TYPES)


@pytest.mark.parametrize("frame", load("job-protocol.json")["frames"], ids=lambda f: f["what"])
def test_message_bodies_follow_the_schema(frame: dict[str, typing.Any]) -> None:
    definition = schema("job-protocol.json")["$defs"][frame["name"]]
    raw = msgspec.msgpack.decode(bytes.fromhex(frame["body"]))
    # Job-protocol messages encode every field, in declaration order, tag first (spec/job-protocol.md §4),
    # but those that are absent when unset: neither required nor defaulted (ReplicaResult.group, §5.7).
    unset = {
        name
        for name, prop in definition["properties"].items()
        if name not in definition["required"] and "default" not in prop
    }
    assert list(raw) == [f for f in definition["x-opengrid-field-order"] if f in raw or f not in unset]
    assert set(definition["properties"]) - unset <= set(raw) <= set(definition["properties"])
    assert set(definition["required"]) <= set(raw)
    assert definition["x-opengrid-omit-defaults"] is False


@pytest.mark.parametrize("step", load("ledger-entries.json")["steps"], ids=lambda s: s["what"])
def test_entry_bodies_follow_the_schema(step: dict[str, typing.Any]) -> None:
    defs = schema("ledger-entry.json")["$defs"]
    entry = msgspec.msgpack.decode(bytes.fromhex(step["entry"]))
    assert list(entry) == defs["Entry"]["x-opengrid-field-order"]
    body = msgspec.msgpack.decode(entry["body"])
    order = defs["EntryBody"]["x-opengrid-field-order"]
    assert list(body) == [k for k in order if k in body] and set(defs["EntryBody"]["required"]) <= set(body)
    payload = body["payload"]
    kind = next(
        d for d in defs.values() if d.get("properties", {}).get("type") == {"enum": [payload["type"]]}
    )
    # Ledger payloads omit fields equal to their default (spec/ledger.md §2), but never reorder them.
    assert kind["x-opengrid-omit-defaults"] is True
    assert list(payload) == [k for k in kind["x-opengrid-field-order"] if k in payload]
    assert set(kind["required"]) <= set(payload)

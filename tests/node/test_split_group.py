"""Which workers head a split group (opengrid/node/split_group.py, spec/split.md §7): the model's footprint
at the node's context window against its --max-memory, read from the real tiny GGUF."""

from __future__ import annotations

import pathlib

import pytest

from opengrid.engines import ModelInfo, sha256_file
from opengrid.engines.footprint import model_footprint
from opengrid.errors import ConfigError
from opengrid.node.config import NodeConfig
from opengrid.node.split_group import footprint_if_too_big


def test_a_worker_heads_a_group_only_when_its_model_exceeds_its_cap(
    tmp_path: pathlib.Path, tiny_model_path: pathlib.Path
) -> None:
    info = ModelInfo("tiny", tiny_model_path, sha256_file(tiny_model_path))
    fp = model_footprint(tiny_model_path, n_ctx=256)
    config = NodeConfig(data_dir=tmp_path, max_context=256)
    assert footprint_if_too_big(config, info) is None  # no cap: it runs alone
    fits = NodeConfig(data_dir=tmp_path, max_context=256, max_memory=fp.total_bytes)
    assert footprint_if_too_big(fits, info) is None
    head = fp.input_bytes + fp.output_bytes + fp.overhead_bytes
    too_small = NodeConfig(data_dir=tmp_path, max_context=256, max_memory=head + 1)
    assert footprint_if_too_big(too_small, info) == fp  # a group it must head
    # Below what a head holds whatever the group: no group can help, and the node says so at start.
    hopeless = NodeConfig(data_dir=tmp_path, max_context=256, max_memory=head - 1)
    with pytest.raises(ConfigError, match=rf"at least --max-memory {-(-head // (1 << 20))}M"):
        footprint_if_too_big(hopeless, info)

"""The identity file: created whole, shared by nodes that race to create it, never torn."""

from __future__ import annotations

import pathlib
import threading

import pytest

from opengrid.errors import ConfigError
from opengrid.node.identity import IDENTITY_FILE, load_or_create_seed


def _create_at_once(data_dir: pathlib.Path, nodes: int) -> list[bytes]:
    seeds: list[bytes] = []
    start = threading.Barrier(nodes)

    def create() -> None:
        start.wait(timeout=10)
        seeds.append(load_or_create_seed(data_dir))

    threads = [threading.Thread(target=create) for _ in range(nodes)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    return seeds


def test_nodes_racing_on_a_fresh_data_dir_all_get_the_one_identity(tmp_path: pathlib.Path) -> None:
    for attempt in range(20):
        data_dir = tmp_path / str(attempt)
        seeds = _create_at_once(data_dir, nodes=4)
        assert len(seeds) == 4 and len(set(seeds)) == 1
        assert (data_dir / IDENTITY_FILE).read_bytes() == seeds[0]
        assert sorted(p.name for p in data_dir.iterdir()) == [IDENTITY_FILE]  # no partial files left


def test_a_write_cut_off_before_it_was_linked_leaves_no_identity_behind(tmp_path: pathlib.Path) -> None:
    # What a kill mid-write leaves: a short partial file under its own name, never identity.key itself.
    (tmp_path / f".{IDENTITY_FILE}.123.abcd").write_bytes(b"\x01" * 7)
    seed = load_or_create_seed(tmp_path)
    assert len(seed) == 32 and load_or_create_seed(tmp_path) == seed


def test_a_short_identity_file_is_refused_with_what_to_do(tmp_path: pathlib.Path) -> None:
    (tmp_path / IDENTITY_FILE).write_bytes(b"\x01" * 7)
    with pytest.raises(ConfigError, match="holds 7 bytes, not a 32-byte identity; move it away"):
        load_or_create_seed(tmp_path)

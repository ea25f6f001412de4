"""`opengrid node start` with no address joins a grid it finds on the LAN (mDNS), as a user runs it.

Both nodes listen on 127.0.0.1 (the default), so mDNS stays on the loopback interface: "the LAN" here is
this machine, the same code path as a home network with ``--listen /ip4/0.0.0.0/tcp/4001``.
"""

from __future__ import annotations

import pathlib
import secrets

import pytest

from tests.e2e.test_cli_mistakes import _Node

pytestmark = pytest.mark.slow


def test_a_node_without_bootstrap_finds_the_grid_on_the_lan_and_joins_it_as_a_worker(
    tmp_path: pathlib.Path,
) -> None:
    network = f"lan-e2e-{secrets.token_hex(4)}"
    # The suite keeps node processes off mDNS (tests/conftest.py): these two ask for it.
    common = ["--lan", "--network", network, "--skip-speed-test"]
    first = _Node(tmp_path, *common, "--data-dir", str(tmp_path / "first"))
    second: _Node | None = None
    try:
        first.wait_for("looking for a node of network")
        first.wait_for("starting a new grid")
        first.wait_for("announcing this node on the LAN (mDNS, 127.0.0.1)")
        second = _Node(tmp_path, *common, "--model", "tiny", "--data-dir", str(tmp_path / "second"))
        second.wait_for("found 1 node(s) of the network on the LAN: joining through /ip4/127.0.0.1/tcp/")
        second.wait_for("registered with coordinator")
        first.wait_for("joined with tiny")
        assert "OpenGrid coordinator" in "".join(first.seen) and "OpenGrid worker" in "".join(second.seen)
    finally:
        for node in (second, first):
            if node is not None and node.process.poll() is None:
                _, _, output = node.interrupt()
                assert "Traceback" not in output, output


def test_a_worker_that_finds_no_grid_says_what_to_do(tmp_path: pathlib.Path) -> None:
    network = f"lan-e2e-{secrets.token_hex(4)}"
    node = _Node(
        tmp_path, "--lan", "--role", "worker", "--network", network, "--data-dir", str(tmp_path / "w")
    )
    status = node.process.wait(timeout=60)
    output = "".join(node.seen) + "".join(iter(lambda: node.lines.get(timeout=10), ""))
    assert status == 1, output
    assert f"no node of network {network!r} answered on the LAN in 3 s" in output
    assert "--bootstrap" in output and "Traceback" not in output

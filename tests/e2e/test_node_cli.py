"""The command line as a user runs it: `opengrid node start` and `opengrid demo --json`."""

from __future__ import annotations

import json
import pathlib
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.slow


def wait_for_line(process: subprocess.Popen[str], needle: str, timeout: float = 60) -> str:
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        seen.append(line)
        if needle in line:
            return line
    raise AssertionError(f"{needle!r} not printed; output was:\n{''.join(seen)}")


def test_node_start_prints_its_multiaddr_reuses_its_identity_and_stops_cleanly(
    tmp_path: pathlib.Path,
) -> None:
    """Started twice on one data dir: Ctrl-C (SIGINT) stops the first run, SIGTERM the second (each
    signal once, in one test: two node starts rather than four)."""
    cmd = [
        sys.executable,
        "-m",
        "opengrid",
        "node",
        "start",
        "--role",
        "coordinator",
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--data-dir",
        str(tmp_path),
    ]
    addresses = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            line = wait_for_line(process, "listening on /ip4/127.0.0.1/tcp/")
            addresses.append(line.split("listening on ")[1].strip())
            process.send_signal(signum)
            out, _ = process.communicate(timeout=30)
        finally:
            process.kill()
        assert process.returncode == 0, (signum, out)
        assert "Traceback" not in out
        assert "stopped cleanly" in out
    peer_ids = [address.split("/p2p/")[1] for address in addresses]
    assert peer_ids[0] == peer_ids[1] and peer_ids[0].startswith("12D3KooW")


def test_bad_flags_give_a_clear_error_not_a_traceback(tmp_path: pathlib.Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "opengrid", "node", "start", "--role", "worker", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "--bootstrap" in result.stderr and "Traceback" not in result.stderr


def test_demo_json_reports_jobs_and_every_nodes_points() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "opengrid",
            "demo",
            "--json",
            "--model",
            "tiny",
            "--jobs",
            "3",
            "--max-tokens",
            "8",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["jobs_submitted"], report["jobs_verified"], report["jobs_failed"]) == (3, 3, 0)
    assert report["ledgers_agree"] is True
    roles = sorted(node["role"] for node in report["nodes"])
    assert roles == ["coordinator"] + ["worker"] * 4
    for node in report["nodes"]:
        assert node["peer_id"].startswith("12D3KooW")
        assert isinstance(node["points"], int) and isinstance(node["jobs_done"], int)
    cheater = next(node for node in report["nodes"] if node["cheater"])
    assert cheater["points"] == 0
    total = sum(node["points"] for node in report["nodes"])
    # Audited (the default): each job pays its generator 8 points and each auditor ceil(8 / 2) = 4; new
    # workers are untrusted, so every audit is full, and a random second audit (2 % of claims, spec
    # verification.md §13.5) adds a second auditor now and then.
    credits = [sorted(job["credits"].values()) for job in report["jobs"]]
    assert all(c in ([4, 8], [4, 4, 8]) for c in credits), credits
    assert total == sum(points for job in report["jobs"] for points in job["credits"].values())
    assert 3 * (8 + 4) <= total <= 3 * (8 + 4 + 4)


def test_node_pause_and_resume_from_the_shell(tmp_path: pathlib.Path) -> None:
    cmd = [
        sys.executable,
        "-m",
        "opengrid",
        "node",
        "start",
        "--role",
        "coordinator",
        "--data-dir",
        str(tmp_path),
    ]
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for_line(process, "listening on /ip4/127.0.0.1/tcp/")
        for action, state in (("pause", "paused"), ("resume", "running")):
            result = subprocess.run(
                [sys.executable, "-m", "opengrid", "node", action, "--data-dir", str(tmp_path)],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert result.returncode == 0, result.stderr
            assert result.stdout.strip().endswith(state)
        missing = subprocess.run(
            [sys.executable, "-m", "opengrid", "node", "pause", "--data-dir", str(tmp_path / "nothing")],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert missing.returncode == 1 and "no running node" in missing.stderr
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)

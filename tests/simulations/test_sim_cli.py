"""``opengrid sim run | sweep | plot`` through the command module, on a tiny scenario."""

from __future__ import annotations

import argparse
import json
import pathlib

import pytest

from opengrid.cli import sim

TINY = """
name = "tiny"
duration_s = 15
fidelity = "hybrid"
real_fraction = 0.5
workers = 8
[workload]
rate_per_s = 2.0
max_tokens = [8, 16]
"""


def cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="opengrid")
    sim.register(parser.add_subparsers(dest="command", required=True))
    return sim.run(parser.parse_args(list(argv)))


@pytest.fixture
def scenario(tmp_path: pathlib.Path) -> pathlib.Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    return path


def test_run_writes_manifest_metrics_csv_and_plot_draws_figures(
    scenario: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    out = tmp_path / "run"
    assert cli("sim", "run", str(scenario), "--seed", "4", "--out", str(out), "--quiet", "--no-plots") == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["seed"] == 4 and len(manifest["event_log_sha256"]) == 64
    assert manifest["config"]["workers"] == 8
    assert "detection" in json.loads((out / "metrics.json").read_text())
    assert (out / "jobs.csv").read_text().startswith("job,coordinator,")
    assert not list(out.glob("*.png"))
    assert cli("sim", "plot", str(out)) == 0
    for name in ("detection", "replicas", "fairness", "latency", "convergence", "timeline"):
        assert (out / f"{name}.png").stat().st_size > 1000
    again = tmp_path / "again"
    assert cli("sim", "run", str(scenario), "--seed", "4", "--out", str(again), "--quiet", "--no-plots") == 0
    assert (
        json.loads((again / "manifest.json").read_text())["event_log_sha256"] == manifest["event_log_sha256"]
    )


def test_sweep_runs_the_grid_in_processes(scenario: pathlib.Path, tmp_path: pathlib.Path) -> None:
    out = tmp_path / "sweep"
    code = cli(
        "sim", "sweep", str(scenario), "--param", "lazy_fraction=0,0.25", "--out", str(out), "--no-plots"
    )
    assert code == 0
    runs = json.loads((out / "summary.json").read_text())["runs"]
    assert [r["lazy_fraction"] for r in runs] == [0, 0.25]
    assert all((out / f"lazy_fraction-{v}_seed-1" / "metrics.json").exists() for v in (0, 0.25))
    assert (out / "sweep_precision.png").exists()


def test_bad_input_is_a_clear_error_not_a_traceback(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli("sim", "run", str(tmp_path / "missing.toml"), "--quiet") == 2
    assert "not found" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text("workers = 3\n[workload]\nrate = 1\n")
    assert cli("sim", "run", str(bad), "--quiet") == 2
    assert "unknown key" in capsys.readouterr().err

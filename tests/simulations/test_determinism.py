"""Same seed + same code → identical event-log hash, in this process and in another one."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

from conftest import small

from simulations.simulation import simulate

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHANGES = {
    "adversaries": [{"kind": "lazy", "fraction": 0.2}],
    "churn": {"enabled": True, "on": {"mean_s": 20}},
}
SCENARIO = small(**CHANGES)


def test_same_seed_gives_the_same_hash_and_results() -> None:
    first, second = simulate(SCENARIO, 7), simulate(SCENARIO, 7)
    assert first.digest == second.digest
    assert first.events == second.events > 1000
    assert first.points == second.points


def test_another_seed_gives_another_hash() -> None:
    assert simulate(SCENARIO, 7).digest != simulate(SCENARIO, 8).digest


def test_the_hash_does_not_depend_on_the_process_or_its_hash_seed() -> None:
    code = (
        "import sys; sys.path.insert(0, 'tests/simulations'); from conftest import small; "
        "from simulations.simulation import simulate; "
        f"s = small(**{CHANGES!r}); "
        "print(simulate(s, 7).digest)"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert out.stdout.strip() == simulate(SCENARIO, 7).digest

"""The hardware probe, the speed measurement, tiers and ``--role auto`` (opengrid/node/probe.py)."""

from __future__ import annotations

import logging
import pathlib
import subprocess
import time
from typing import Any

import pytest
import trio

from opengrid.engines import LlamaEngine, ModelInfo, sha256_file
from opengrid.engines.base import Generation, GenerationRequest
from opengrid.node import engine_setup, probe
from opengrid.node.config import NodeConfig
from opengrid.node.probe import (
    GIB,
    SPEED_MIN_RUNS,
    SPEED_RUNS,
    SPEED_TOKENS,
    Hardware,
    auto_role,
    measure_tokens_per_s,
    probe_hardware,
    tier_of,
)
from opengrid.node.service import Node
from tests.waiting import until

PEER = "12D3KooWN5TM5CbW1QRMfb4Rui58doGzeD2AvdHtagrxTSGtCyCo"

LAPTOP = Hardware(cores=4, memory_bytes=8 * GIB)
SMALL = Hardware(cores=1, memory_bytes=1 * GIB)
WORKSTATION = Hardware(cores=16, memory_bytes=64 * GIB)


@pytest.mark.parametrize(
    ("hardware", "tokens_per_s", "tier"),
    [
        (
            Hardware(cores=8, memory_bytes=32 * GIB, gpu_name="RTX 4090", gpu_memory_bytes=24 * GIB),
            0.0,
            "Platinum",
        ),
        (WORKSTATION, 120.0, "Platinum"),  # fast enough without a GPU
        (
            Hardware(cores=8, memory_bytes=16 * GIB, gpu_name="GTX 1650", gpu_memory_bytes=4 * GIB),
            5.0,
            "Gold",
        ),
        (WORKSTATION, 30.0, "Gold"),
        (WORKSTATION, 29.9, "Silver"),
        (LAPTOP, 10.0, "Silver"),
        (LAPTOP, 9.9, "Bronze"),
        (SMALL, 50.0, "Bronze"),  # fast on a tiny model, but too little memory for Silver
    ],
)
def test_tiers(hardware: Hardware, tokens_per_s: float, tier: str) -> None:
    assert tier_of(hardware, tokens_per_s) == tier


def test_role_auto_coordinates_without_a_bootstrap_and_sends_small_machines_to_the_edge() -> None:
    assert auto_role(False, SMALL) == auto_role(False, WORKSTATION) == "coordinator"
    assert auto_role(True, LAPTOP) == "worker"
    assert auto_role(True, SMALL) == "edge"


def test_a_gpu_reported_by_nvidia_smi_is_found(monkeypatch: pytest.MonkeyPatch) -> None:
    # No GPU on this machine: nvidia-smi's output is faked, the parsing and the rest are real.
    monkeypatch.setattr(probe.shutil, "which", lambda name: "/usr/bin/nvidia-smi")
    calls: list[list[str]] = []

    def fake_run(args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        calls.append(args)
        assert kwargs["timeout"] <= 5
        return subprocess.CompletedProcess(args, 0, stdout="NVIDIA H100 80GB HBM3, 81559\n", stderr="")

    hardware = probe_hardware(run=fake_run)
    assert (hardware.gpu_name, hardware.gpu_memory_bytes) == ("NVIDIA H100 80GB HBM3", 81559 * 2**20)
    assert calls and calls[0][0] == "nvidia-smi"
    assert "GPU NVIDIA H100" in hardware.describe()


def test_a_failing_nvidia_smi_means_no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(probe.shutil, "which", lambda name: "/usr/bin/nvidia-smi")

    def failing(args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        raise subprocess.CalledProcessError(9, args, "", "NVIDIA-SMI has failed: no devices")

    hardware = probe_hardware(run=failing)
    assert hardware.gpu_name == "" and hardware.cores >= 1 and hardware.memory_bytes > 0


def test_this_machine_has_no_gpu_tool_and_reports_its_cores_and_memory() -> None:
    hardware = probe_hardware()
    assert hardware.cores >= 1 and hardware.memory_bytes > 256 * 2**20
    assert "no GPU" in hardware.describe() or hardware.gpu_name


def test_the_speed_of_the_tiny_model_is_measured(tiny_model_path: pathlib.Path) -> None:
    info = ModelInfo(name="tiny", path=tiny_model_path, sha256=sha256_file(tiny_model_path))
    engine = LlamaEngine(info, n_threads=1)
    try:
        speed = measure_tokens_per_s(engine)
    finally:
        engine.close()
    assert speed > 1.0  # the tiny model generates thousands of tokens/s; a real measurement, not a constant


class _CountingEngine:
    """Produces ``max_tokens`` tokens per call, each call taking the next of ``durations`` on ``now``
    (the clock the speed test is given)."""

    def __init__(self, durations: tuple[float, ...] = ()) -> None:
        self.calls = 0
        self.now = 0.0
        self._durations = list(durations)

    def generate(self, request: GenerationRequest) -> Generation:
        self.calls += 1
        self.now += self._durations.pop(0) if self._durations else 0.01
        return Generation(tokens=tuple(range(request.max_tokens)), text="", finish_reason="length")


def test_the_speed_is_the_median_of_several_short_runs() -> None:
    # Run 2 was slowed by another program (10x): the median ignores it, a single run would not.
    engine = _CountingEngine(durations=(0.05, 0.1, 1.0, 0.11, 0.09, 0.1))
    seen: list[tuple[int, int, float]] = []
    speed = measure_tokens_per_s(
        engine,  # type: ignore[arg-type]
        lambda done, planned, tps: seen.append((done, planned, round(tps, 2))),
        clock=lambda: engine.now,
    )
    assert engine.calls == 1 + SPEED_RUNS  # a warm-up, then the timed runs
    assert [s[:2] for s in seen] == [(n, SPEED_RUNS) for n in range(1, SPEED_RUNS + 1)]
    assert seen[1][2] == round(SPEED_TOKENS / 1.0, 2)
    assert speed == pytest.approx(SPEED_TOKENS / 0.1)


def test_a_slow_model_stops_after_the_minimum_runs_once_the_budget_is_spent() -> None:
    engine = _CountingEngine(durations=(1.0, 4.0, 4.0, 4.0, 4.0, 4.0))
    speed = measure_tokens_per_s(engine, clock=lambda: engine.now)  # type: ignore[arg-type]
    assert engine.calls == 1 + SPEED_MIN_RUNS
    assert speed == pytest.approx(SPEED_TOKENS / 4.0)


def test_the_speed_test_stops_when_told_to() -> None:
    class Stop(Exception):
        pass

    def stop_after_two(done: int, planned: int, tps: float) -> None:
        if done == 2:
            raise Stop

    engine = _CountingEngine()
    with pytest.raises(Stop):
        measure_tokens_per_s(engine, stop_after_two)  # type: ignore[arg-type]
    assert engine.calls == 3


class _SlowEngine:
    """The tiny model behind a machine where one short run takes 0.4 s (a big model on a slow CPU: this
    machine has none, so the delay is added; the generation itself is real)."""

    def __init__(self, engine: LlamaEngine) -> None:
        self._engine = engine
        self.model = engine.model
        self.contract = engine.contract
        self.chat_template = getattr(engine, "chat_template", None)
        self.n_params = getattr(engine, "n_params", 0)

    def generate(self, request: GenerationRequest) -> Generation:
        time.sleep(0.4)
        return self._engine.generate(request)

    def close(self) -> None:
        self._engine.close()


async def test_a_node_stopped_during_its_speed_test_stops_at_the_next_run(
    tmp_path: pathlib.Path, tiny_model_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="opengrid")
    info = ModelInfo(name="tiny", path=tiny_model_path, sha256=sha256_file(tiny_model_path))
    engine = _SlowEngine(LlamaEngine(info, n_threads=1))
    config = NodeConfig(
        data_dir=tmp_path / "w", role="worker", bootstrap=(f"/ip4/127.0.0.1/tcp/9/p2p/{PEER}",)
    )
    node = Node(config, engine=engine)  # type: ignore[arg-type]

    def runs_logged() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.getMessage().startswith("speed test run")]

    async with trio.open_nursery() as nursery:
        nursery.start_soon(node.run)
        await until(lambda: len(runs_logged()) >= 1, timeout=30, state=lambda: caplog.text)
        stopped_at = trio.current_time()
        nursery.cancel_scope.cancel()
    # at most the run in progress finishes (0.4 s), not the 3+ runs left (1.2 s or more)
    assert trio.current_time() - stopped_at < 1.0
    assert len(runs_logged()) <= 2, runs_logged()
    assert "measuring tokens/s on tiny: 5 short runs" in caplog.text


async def test_skip_speed_test_measures_nothing(
    tmp_path: pathlib.Path, tiny_model_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="opengrid")
    info = ModelInfo(name="tiny", path=tiny_model_path, sha256=sha256_file(tiny_model_path))
    engine = _CountingEngine()
    engine.model = info  # type: ignore[attr-defined]
    tier, speed = await engine_setup.probe(engine, skip_speed_test=True)  # type: ignore[arg-type]
    assert (engine.calls, speed) == (0, 0.0) and tier in ("Platinum", "Gold", "Silver", "Bronze")
    assert "speed test skipped (--skip-speed-test)" in caplog.text

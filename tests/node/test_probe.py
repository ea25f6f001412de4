"""The hardware probe, the speed measurement, tiers and ``--role auto`` (opengrid/node/probe.py)."""

from __future__ import annotations

import pathlib
import subprocess
from typing import Any

import pytest

from opengrid.engines import LlamaEngine, ModelInfo, sha256_file
from opengrid.node import probe
from opengrid.node.probe import GIB, Hardware, auto_role, measure_tokens_per_s, probe_hardware, tier_of

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

"""What a volunteer's machine can do: a hardware probe, a start-up speed measurement, and the tier they give.

Tiers (announced on gossip, shown by ``opengrid peers``; the names follow Momagrid's) sort nodes by what
they can serve, so a scheduler or an operator can tell a laptop from a GPU box at a glance:

=========  ===========================================================================================
Platinum   a GPU with at least 16 GiB of memory, or at least 100 tokens/s on the node's model
Gold       any GPU, or at least 16 GiB of RAM and 30 tokens/s
Silver     at least 8 GiB of RAM and 10 tokens/s
Bronze     everything else (still useful: short jobs, small models)
=========  ===========================================================================================

Tokens/s is measured at start-up on the model the node serves (``measure_tokens_per_s``: one short
greedy generation after a warm-up), so it reflects this machine, this model and this engine. The GPU is
found through ``nvidia-smi`` when it is installed (a missing or failing tool means "no GPU", never an
error). ``auto_role`` turns the probe into ``--role auto``'s choice.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal

from opengrid.engines.base import Engine, GenerationRequest

log = logging.getLogger("opengrid.node.probe")

Tier = Literal["Platinum", "Gold", "Silver", "Bronze"]
GIB: Final = 2**30
SPEED_PROMPT: Final = "Volunteer computing lets anyone lend a machine to"
SPEED_TOKENS: Final = 16
EDGE_MAX_MEMORY: Final = 2 * GIB
"""``--role auto`` makes a node with less RAM than this an edge node (short jobs), not a worker."""


@dataclass(frozen=True)
class Hardware:
    cores: int
    memory_bytes: int
    gpu_name: str = ""
    gpu_memory_bytes: int = 0

    def describe(self) -> str:
        gpu = f"GPU {self.gpu_name} ({self.gpu_memory_bytes / GIB:.0f} GiB)" if self.gpu_name else "no GPU"
        return f"{self.cores} cores, {self.memory_bytes / GIB:.1f} GiB RAM, {gpu}"


Runner = Callable[..., "subprocess.CompletedProcess[str]"]


def probe_hardware(run: Runner = subprocess.run) -> Hardware:
    """Cores, RAM, and the first NVIDIA GPU if ``nvidia-smi`` reports one (within 5 s)."""
    cores = os.cpu_count() or 1
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    name, vram = _nvidia_gpu(run)
    return Hardware(cores=cores, memory_bytes=memory, gpu_name=name, gpu_memory_bytes=vram)


def _nvidia_gpu(run: Runner) -> tuple[str, int]:
    if shutil.which("nvidia-smi") is None:
        return "", 0
    try:
        done = run(
            ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
        first = done.stdout.strip().splitlines()[0]
        name, mib = (part.strip() for part in first.rsplit(",", 1))
        return name, int(float(mib)) * 2**20
    except (OSError, subprocess.SubprocessError, ValueError, IndexError) as exc:
        log.info("nvidia-smi is installed but reported no GPU (%s); treating this node as CPU-only", exc)
        return "", 0


def measure_tokens_per_s(engine: Engine, clock: Callable[[], float] = time.perf_counter) -> float:
    """Greedy generation speed of ``engine`` on this machine: one warm-up token, then ``SPEED_TOKENS``
    timed. Blocking (run it in a thread); 0.0 if the engine produced nothing."""
    engine.generate(GenerationRequest(prompt=SPEED_PROMPT, max_tokens=1))
    started = clock()
    generation = engine.generate(GenerationRequest(prompt=SPEED_PROMPT, max_tokens=SPEED_TOKENS))
    elapsed = clock() - started
    return len(generation.tokens) / elapsed if generation.tokens and elapsed > 0 else 0.0


def tier_of(hardware: Hardware, tokens_per_s: float) -> Tier:
    """The tier table of the module docstring."""
    if hardware.gpu_memory_bytes >= 16 * GIB or tokens_per_s >= 100:
        return "Platinum"
    if hardware.gpu_name or (hardware.memory_bytes >= 16 * GIB and tokens_per_s >= 30):
        return "Gold"
    if hardware.memory_bytes >= 8 * GIB and tokens_per_s >= 10:
        return "Silver"
    return "Bronze"


def auto_role(has_bootstrap: bool, hardware: Hardware) -> Literal["coordinator", "worker", "edge"]:
    """``--role auto``: without a bootstrap address the node starts a network and coordinates it; with
    one it lends its compute — as an edge node (short jobs) when it has less than ``EDGE_MAX_MEMORY`` of
    RAM, else as a worker."""
    if not has_bootstrap:
        return "coordinator"
    return "edge" if hardware.memory_bytes < EDGE_MAX_MEMORY else "worker"

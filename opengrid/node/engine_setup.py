"""Engine set-up at a node's start: which model to serve, loading it (llama.cpp in process, or an
OpenAI-compatible server attached or started), the demo adversaries, the offer a worker announces, and the
hardware probe that gives the node its tier."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from typing import Literal

import trio
from rich.console import Console

from opengrid.core.split_plan import ModelFootprint
from opengrid.engines import (
    DEFAULT_MODEL,
    Engine,
    LazyEngine,
    SwappedModelEngine,
    WrongTokensEngine,
    default_cache_dir,
    load_engine,
    resolve_model,
    sha256_file,
    write_tiny_gguf,
)
from opengrid.engines.adversarial import OneInNEngine, RubberStampEngine
from opengrid.engines.base import ModelInfo
from opengrid.engines.catalog import pick_model_for_memory
from opengrid.engines.http import HttpEngine, ManagedServer
from opengrid.errors import OpenGridError
from opengrid.node.config import NodeConfig
from opengrid.node.probe import SPEED_RUNS, measure_tokens_per_s, probe_hardware, tier_of
from opengrid.node.split_group import footprint_if_too_big
from opengrid.wire.messages import ModelOffer

log = logging.getLogger("opengrid.node")


async def open_engine(
    config: NodeConfig, public_key: bytes, *, own_server: Callable[[ManagedServer], None]
) -> Engine:
    """Resolve and load the model ``config`` names (or the one this machine suits), wrapped in the
    adversary ``config`` asks for. A model server this starts is handed to ``own_server`` before it
    starts, so the caller stops it even if starting fails."""
    name = config.model or _model_for_this_machine()
    with _progress(f"checking model {name} (sha256)"):
        info = await trio.to_thread.run_sync(resolve_model, name)
    log.info("loading model %s (%s, sha256 %s…)", info.name, info.path, info.sha256[:12])
    started = trio.current_time()
    with _progress(f"loading {info.name} into {config.engine}"):
        engine = await _load_engine(config, info, own_server)
    log.info("model %s ready in %.1f s", info.name, trio.current_time() - started)
    return await _maybe_adversary(config, public_key, engine)


async def split_needed(config: NodeConfig) -> tuple[ModelInfo, ModelFootprint] | None:
    """The model ``config`` names and its footprint when it does not fit the node's ``--max-memory`` (the
    node heads a split group, opengrid/node/split_group.py); None when it fits or no cap is set."""
    if config.max_memory is None or config.engine != "llama":
        return None
    name = config.model or _model_for_this_machine()
    info = await trio.to_thread.run_sync(resolve_model, name)
    footprint = await trio.to_thread.run_sync(footprint_if_too_big, config, info)
    return None if footprint is None else (info, footprint)


def offer_of(engine: Engine) -> ModelOffer:
    """What a worker serving ``engine`` offers its coordinators."""
    template = getattr(engine, "chat_template", None)
    return ModelOffer(
        name=engine.model.name,
        contract=engine.contract,
        chat_template=template.template if template else "",
        bos_token=template.bos_token if template else "",
        eos_token=template.eos_token if template else "",
        n_params=int(getattr(engine, "n_params", 0)),  # prices its tokens (spec/ledger.md §7)
    )


async def probe(engine: Engine | None, *, skip_speed_test: bool = False) -> tuple[str, float]:
    """Probe the hardware and, on a node that serves a model, measure its speed: the tier we announce
    and the tokens/s measured (0 without an engine, or with ``skip_speed_test``).

    The speed test reports each run in the log (and with a spinner on a terminal), and stops between two
    runs when the node is cancelled (Ctrl-C during start-up)."""
    hardware = await trio.to_thread.run_sync(probe_hardware)
    tokens_per_s = 0.0
    if engine is not None and skip_speed_test:
        log.info("speed test skipped (--skip-speed-test): the tier comes from the hardware alone")
    elif engine is not None:
        name = engine.model.name
        log.info(
            "measuring tokens/s on %s: %d short runs, the median counts (--skip-speed-test skips this)",
            name,
            SPEED_RUNS,
        )

        def after_run(done: int, planned: int, speed: float) -> None:
            log.info("speed test run %d/%d on %s: %.1f tokens/s", done, planned, name, speed)
            trio.from_thread.check_cancelled()  # raises Cancelled here when the node is being stopped

        with _progress(f"measuring tokens/s on {name}"):
            tokens_per_s = await trio.to_thread.run_sync(measure_tokens_per_s, engine, after_run)
    tier = tier_of(hardware, tokens_per_s)
    speed = f"; {tokens_per_s:.0f} tokens/s on {engine.model.name}" if engine and tokens_per_s else ""
    log.info("this machine: %s%s: tier %s", hardware.describe(), speed, tier)
    return tier, tokens_per_s


async def _maybe_adversary(config: NodeConfig, public_key: bytes, engine: Engine) -> Engine:
    """Demo/test only (hidden --adversary flag): wrap the honest engine in a cheating one."""
    adversary = config.adversary
    if adversary is None or adversary == "sealed-lie":
        return engine
    log.warning("ADVERSARY MODE %r: this worker cheats, to demonstrate and test verification", adversary)
    if adversary == "wrong-tokens":
        return WrongTokensEngine(engine)
    if adversary == "lazy":
        return LazyEngine(engine, seed=int.from_bytes(public_key[:4], "big"))
    if adversary == "one-in-twenty":
        return OneInNEngine(engine, n=20)
    if adversary == "rubber-stamp":
        return RubberStampEngine(engine)
    # model-swap: run a different tiny model behind the announced one
    path = default_cache_dir() / "tiny-swap-seed1.gguf"
    if not path.exists():  # written aside, then renamed: concurrent workers never read half a file
        tmp = path.with_suffix(f".{public_key.hex()[:8]}.tmp")
        await trio.to_thread.run_sync(lambda: write_tiny_gguf(tmp, seed=1))
        tmp.replace(path)
    swapped = ModelInfo(name="tiny-swap", path=path, sha256=await trio.to_thread.run_sync(sha256_file, path))
    actual = await trio.to_thread.run_sync(lambda: load_engine(swapped, n_threads=config.threads))
    return SwappedModelEngine(engine, actual)


async def _load_engine(
    cfg: NodeConfig, info: ModelInfo, own_server: Callable[[ManagedServer], None]
) -> Engine:
    """llama.cpp in this process, or an OpenAI-compatible server (attached, or started and owned)."""
    if cfg.engine == "llama":
        return await trio.to_thread.run_sync(
            lambda: load_engine(
                info,
                n_threads=cfg.threads,
                n_ctx=cfg.max_context,
                gpu_layers=cfg.gpu_layers,
                score_with=cfg.score_with,
                cache_dir=default_cache_dir(),  # copies beside the generated and pulled models
            )
        )
    if cfg.http_url:
        backend: Literal["vllm", "llama.cpp-server"] = (
            "vllm" if cfg.http_backend == "vllm" else "llama.cpp-server"
        )
        log.info("attaching to the %s server at %s", backend, cfg.http_url)
        return await trio.to_thread.run_sync(lambda: HttpEngine(cfg.http_url or "", info, backend=backend))
    server = ManagedServer(
        info,
        backend=None if cfg.http_backend == "auto" else cfg.http_backend,
        n_ctx=cfg.max_context,
        n_threads=cfg.threads,
        gpu_layers=cfg.gpu_layers,
    )
    own_server(server)  # stopped with the node, even if it fails to start
    await trio.to_thread.run_sync(server.start)
    log.info("started a model server for %s (ready after %.1f s)", info.name, server.ready_after_s)
    return server.engine()


def _model_for_this_machine() -> str:
    """No --model given: the largest catalog model that fits this machine's memory and is already here
    (shipped or pulled); otherwise the default, with a hint to pull the bigger one."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    pick = pick_model_for_memory(total)
    if pick is None or pick.name == DEFAULT_MODEL:
        return DEFAULT_MODEL
    try:
        resolve_model(pick.name)
    except OpenGridError:
        log.info(
            "this machine (%.0f GiB) could serve %s: `opengrid models pull %s` to serve it; serving %s",
            total / 2**30,
            pick.name,
            pick.name,
            DEFAULT_MODEL,
        )
        return DEFAULT_MODEL
    log.info("no --model given: serving %s, the largest that fits %.0f GiB", pick.name, total / 2**30)
    return pick.name


@contextlib.contextmanager
def _progress(what: str) -> Iterator[None]:
    """A spinner on the terminal while long start-up work runs (nothing when output is not a terminal)."""
    console = Console(stderr=True)
    if not console.is_terminal:
        yield
        return
    with console.status(what):
        yield

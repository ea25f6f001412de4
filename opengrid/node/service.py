"""The node: a trio service that drives the sans-IO core over libp2p.

It owns the libp2p host, the ledger store and (on workers) the engine; it turns stream messages into core
events and executes the effects the core returns. All tasks live in one nursery: nothing outlives ``run``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import math
import os
import pathlib
import random
import secrets
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import BinaryIO, Final, TypeVar

import msgspec
import trio
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey
from opengrid_ledger import (
    Entry,
    Fraud,
    LedgerState,
    Receipt,
    decode_body,
    decode_entry,
    encode_entry,
    open_entry,
    sign_entry,
)
from opengrid_ledger.genesis import Genesis, decode_genesis
from opengrid_ledger.sync import IdIndex, SyncSession
from rich.console import Console

import opengrid
from opengrid.core.availability import Decision, Policy, decide, parse_windows
from opengrid.core.coordinator import Coordinator, CoordinatorConfig
from opengrid.core.effects import (
    AppendEntry,
    CancelReplica,
    DispatchReplica,
    Effect,
    FinishJob,
    Penalize,
    SendReceipt,
)
from opengrid.core.events import (
    Event,
    JobCancelled,
    JobSubmitted,
    ReplicaFailed,
    ReplicaReturned,
    WorkerRegistered,
)
from opengrid.core.worker import Output, WorkerLogic
from opengrid.engines import (
    DEFAULT_MODEL,
    Engine,
    GenerationRequest,
    LazyEngine,
    SwappedModelEngine,
    WrongTokensEngine,
    default_cache_dir,
    load_engine,
    resolve_model,
    sha256_file,
    write_tiny_gguf,
)
from opengrid.engines.base import Generation, ModelInfo, StreamingEngine
from opengrid.engines.catalog import pick_model_for_memory, pinned_params
from opengrid.engines.http import HttpEngine, ManagedServer
from opengrid.errors import (
    ConfigError,
    EngineError,
    FrameTooLargeError,
    OpenGridError,
    RemoteProtocolError,
    TransportError,
)
from opengrid.net.announce import ModelAd
from opengrid.net.host import (
    BEAT_PROTOCOL,
    JOB_PROTOCOL,
    RUN_PROTOCOL,
    FrameStream,
    Host,
    derive_psk,
    open_host,
)
from opengrid.net.keys import public_key_of
from opengrid.net.pool import StreamPool
from opengrid.net.reachability import MAX_CONCURRENT_DIALS, check_addresses
from opengrid.net.relay import ReservationKeeper
from opengrid.node import admission, ledger_sync
from opengrid.node.api import ApiSettings, build_app, check_bind
from opengrid.node.autorelay import AutoRelay
from opengrid.node.config import NodeConfig
from opengrid.node.coordinator_admission import CoordinatorAdmission
from opengrid.node.identity import load_or_create_seed
from opengrid.node.ledger_sync import SYNC_PROTOCOL
from opengrid.node.membership import Membership
from opengrid.node.probe import measure_tokens_per_s, probe_hardware, tier_of
from opengrid.node.timing import TimingTrace
from opengrid.node.trust import load_trusted, remember_trusted
from opengrid.store.grant_store import GrantStore, open_grant_journal
from opengrid.store.job_store import JOBS_FILE, JobStore
from opengrid.store.ledger_store import LedgerStore, open_ledger
from opengrid.wire.codec import encode_frame
from opengrid.wire.commitment import commit_output
from opengrid.wire.control import MAX_CLOCK_SKEW_MS, control_signing_bytes
from opengrid.wire.messages import (
    MAX_CLAIMED_TOKENS_PER_S,
    MAX_EXPOSURE,
    AdmitRequest,
    ControlRequest,
    DialBackReport,
    DialBackRequest,
    ErrorReply,
    GrantRequest,
    History,
    HistoryRequest,
    JobAccepted,
    JobProgress,
    Message,
    ModelOffer,
    NodeStatus,
    PromptFormat,
    Quote,
    QuotedWorker,
    QuoteRequest,
    ReceiptNotice,
    Registered,
    RegisterWorker,
    ReplicaProgress,
    ReplicaResult,
    RunJob,
    StatusRequest,
    SubmitJob,
    WorkerSummary,
)
from opengrid.wire.sealed import box_public_key, seal_output

log = logging.getLogger("opengrid.node")
NODE_INFO_FILE = "node.json"
_AVAILABILITY_PERIOD_S = 5.0
_SYNC_TIMEOUT_S = 60.0
_SYNC_PERIOD_BEATS = 6
"""A worker pulls its coordinator's ledger every this many heartbeats, and soon after each receipt."""
_STATUS_LINE_PERIOD_S = 60.0
_PROGRESS_BUFFER = 256  # preview frames buffered per job before the oldest news is dropped


@dataclass
class _PendingJob:
    done: trio.Event = field(default_factory=trio.Event)
    reply: JobAccepted | ErrorReply | None = None
    progress: Callable[[str], None] | None = None
    """Streaming jobs: where to put preview text (from ``streamer`` only)."""
    streamer: str | None = None
    """The first replica that sent progress; only its preview reaches the client."""


class Node:
    """One OpenGrid node (coordinator, worker or edge). Start it with ``nursery.start(node.run)``."""

    def __init__(
        self,
        config: NodeConfig,
        *,
        engine: Engine | None = None,
        api: ApiSettings | None = None,
        coordinator_config: CoordinatorConfig | None = None,
        trace_frames: pathlib.Path | None = None,
        rng: random.Random | None = None,
        trace_timing: pathlib.Path | None = None,
    ) -> None:
        """``rng``: the coordinator's random stream (worker choice); a fresh unseeded one by default.
        Tests pass a seeded one to compare decisions with other drivers (tests/simulations).
        ``trace_timing``: append the points each job passes to this file (opengrid/node/timing.py)."""
        self.config = config.validated()
        self._rng = rng if rng is not None else random.Random()
        self._api = api
        self._trace_path = trace_frames
        self._trace_file: BinaryIO | None = None
        self._timing_path = trace_timing
        self.timing = TimingTrace(None)
        """Where this node's jobs spend their time (``--trace-timing``); records nothing by default."""
        self._coordinator_config = coordinator_config or CoordinatorConfig(
            heartbeat_s=self.config.heartbeat_s,
            require_payment=self.config.require_payment,
            model_params=pinned_params(),
        )
        self.api_urls: list[str] = []
        self._engine = engine
        self._seed = load_or_create_seed(self.config.data_dir)
        self._key = SigningKey(self._seed)
        self.public_key = bytes(self._key.verify_key)
        self.host: Host | None = None
        self.ledger: LedgerState | None = None
        self._store: LedgerStore | None = None
        self.coordinator: Coordinator | None = None
        self.worker: WorkerLogic | None = None
        self._nursery: trio.Nursery | None = None
        self._jobs: dict[bytes, _PendingJob] = {}
        self._replicas: dict[tuple[bytes, str], trio.CancelScope] = {}
        self._runs: StreamPool | None = None
        """Coordinators: idle run-channel streams to workers, reused by later replicas."""
        self._beats: StreamPool | None = None
        """A worker's registration channel to each coordinator (``BEAT_PROTOCOL``)."""
        self._timer_changed = trio.Event()
        self._engine_limiter = trio.CapacityLimiter(1)
        self._dial_backs = trio.CapacityLimiter(MAX_CONCURRENT_DIALS)
        """Dial-backs run for peers at once (spec/discovery.md §9.1): a peer asking in a loop waits."""
        self._server: ManagedServer | None = None
        self._job_store: JobStore | None = None
        self._grant_store: GrantStore | None = None
        self.jobs_run = 0
        self._running = 0
        self._replying = 0
        """Workers: RunJob streams whose result is not sent yet (``drain`` waits for them)."""
        self._sync_index = IdIndex()
        self._rtt: dict[str, float] = {}
        """Coordinators: measured round-trip time per worker peer."""
        self._coordinator_peer = ""
        """Workers: the first coordinator that accepted us (the API's jobs go there)."""
        self._coordinators: dict[str, str] = {}
        """Workers: coordinators we are registered with, peer id -> the address we reached it at."""
        self._not_coordinators: set[str] = set()
        self.admission: CoordinatorAdmission | None = None
        """Coordinators of a network with a genesis file: admission of new coordinators, ours included."""
        self.membership: Membership | None = None
        self.tier = ""
        """Set at start from the hardware probe and the measured speed (opengrid/node/probe.py)."""
        self.tokens_per_s = 0.0
        self._refusals_reported: set[str] = set()
        self._forks_seen: set[bytes] = set()
        """Frozen authors already handled by ``_report_forks``."""
        self._sync_wanted = trio.Event()
        self._tokens_out = 0
        self._busy_s = 0.0
        """Jobs this worker is generating right now."""
        self._owner_paused = False
        self._availability = Decision(True, "available")
        """The working-hours / idle policy's latest decision (workers with such a policy)."""
        self._last_control_ms = 0
        self.registered = trio.Event()
        """Workers: set once the coordinator accepted our first registration."""
        self.relay_keepers: list[ReservationKeeper] = []
        """Reservations on the relays we are reachable through (``NodeConfig.relays``)."""
        self.auto_relay: AutoRelay | None = None
        """Without configured relays: the relay taken when peers cannot dial us (spec/discovery.md §9.3)."""

    # ── lifecycle ────────────────────────────────────────────────────────────────────────────────────
    async def run(self, *, task_status: trio.TaskStatus[Node] = trio.TASK_STATUS_IGNORED) -> None:
        """Start, signal readiness with ``task_status.started(self)``, and serve until cancelled."""
        config = self.config
        if self._trace_path is not None:
            self._trace_file = self._trace_path.open("ab")
        if self._timing_path is not None:
            self.timing = TimingTrace(self._timing_path)
        genesis = _load_genesis(config)
        # A genesis that names coordinators fixes the set: genesis + ADMIT entries, the same on every node
        # (spec/ledger.md §7); without one, a node trusts itself and the coordinators it registered with.
        closed = genesis is not None and bool(genesis.coordinators)
        minters = [] if closed else load_trusted(config.data_dir)
        if config.role == "coordinator" and not closed:
            minters.append(self.public_key)
        self.ledger, self._store = open_ledger(
            config.data_dir, config.network, minters, genesis=genesis, closed=closed
        )
        try:
            if config.serves_models:
                await self._start_worker()
            await self._probe()
            psk = derive_psk(config.network, config.network_key) if config.network_key else None
            async with open_host(self._seed, config.listen, psk=psk, relay=bool(config.relay)) as host:
                self.host = host
                self.timing.node = host.peer_id
                self._runs = StreamPool(host, RUN_PROTOCOL, fallbacks=(JOB_PROTOCOL,))
                self._beats = StreamPool(host, BEAT_PROTOCOL, fallbacks=(JOB_PROTOCOL,), idle_per_peer=1)
                host.set_handler(self._serve_stream)
                if self.worker is not None:
                    host.set_handler(self._serve_runs, RUN_PROTOCOL)
                if config.role == "coordinator":
                    host.set_handler(self._serve_beats, BEAT_PROTOCOL)
                host.set_handler(self._serve_sync, SYNC_PROTOCOL)  # type: ignore[arg-type]
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    # Reserve first, so the first announcement and registration carry the relayed address.
                    self.relay_keepers = [ReservationKeeper(host, address) for address in config.relays]
                    for keeper in self.relay_keepers:
                        await nursery.start(keeper.run)
                    self.membership = Membership(
                        host,
                        network=config.network,
                        signing_key=self._key,
                        role=config.role,
                        models=self._model_ads(),
                        software=f"opengrid/{opengrid.__version__}",
                        tier=self.tier,
                        tokens_per_s=self.tokens_per_s,
                        announce_s=config.announce_s,
                        bootstrap=config.bootstrap,
                        ledger_validator=self._valid_ledger_gossip,
                        relay=bool(config.relay),
                        # DHT servers: reachable, long-lived nodes (spec/discovery.md §4.6)
                        dht_server=bool(config.listen)
                        and (config.role == "coordinator" or bool(config.relay)),
                    )
                    await nursery.start(self.membership.run)
                    self.auto_relay = AutoRelay(
                        host, self.membership, bootstrap=config.bootstrap, given=self.relay_keepers
                    )
                    await nursery.start(self.auto_relay.run)
                    nursery.start_soon(self._ledger_gossip_loop)
                    if config.role == "coordinator":
                        self.coordinator = Coordinator(
                            network=config.network,
                            signing_key=self._key,
                            ledger=self.ledger,
                            rng=self._rng,
                            config=self._coordinator_config,
                        )
                        self._job_store = JobStore(config.data_dir / JOBS_FILE)
                        self._grant_store = open_grant_journal(
                            config.data_dir, self.coordinator.grants, time.time()
                        )
                        saved = self._job_store.all()
                        if saved:
                            log.info("resuming %d job(s) accepted before the last stop", len(saved))
                            self._execute(self.coordinator.resume(saved, trio.current_time()))
                        nursery.start_soon(self._timer_loop)
                        nursery.start_soon(self._peer_sync_loop)
                        self._start_admission(nursery)
                    if self.worker is not None:
                        nursery.start_soon(self._register_loop)
                        nursery.start_soon(self._sync_loop)
                        policy = Policy(windows=parse_windows(config.work_hours), max_load=config.max_load)
                        if policy != Policy():
                            nursery.start_soon(self._availability_loop, policy)
                    if self._api is not None:
                        self.api_urls = await nursery.start(self._serve_api, self._api)
                    nursery.start_soon(self._status_line_loop)
                    self._write_node_info()
                    log.info(
                        "%s %s ready on %s (ledger: %d entries)",
                        config.role,
                        host.peer_id,
                        ", ".join(host.addrs()),
                        len(self.ledger),
                    )
                    task_status.started(self)
                    await trio.sleep_forever()
        finally:
            self._nursery = None
            if self._engine is not None:
                self._engine.close()
            if self._server is not None:
                await trio.to_thread.run_sync(self._server.stop)
            if self._trace_file is not None:
                self._trace_file.close()
            self.timing.close()
            if self._job_store is not None:
                self._job_store.close()
            if self._grant_store is not None:
                self._grant_store.close()
            self._store.close()
            log.info("node stopped cleanly")

    async def _start_worker(self) -> None:
        assert self.ledger is not None
        if self._engine is None:
            name = self.config.model or _model_for_this_machine()
            with _progress(f"checking model {name} (sha256)"):
                info = await trio.to_thread.run_sync(resolve_model, name)
            log.info("loading model %s (%s, sha256 %s…)", info.name, info.path, info.sha256[:12])
            started = trio.current_time()
            with _progress(f"loading {info.name} into {self.config.engine}"):
                engine = await self._load_engine(info)
            log.info("model %s ready in %.1f s", info.name, trio.current_time() - started)
            engine = await self._maybe_adversary(engine)
            self._engine = engine
        template = getattr(self._engine, "chat_template", None)
        offer = ModelOffer(
            name=self._engine.model.name,
            contract=self._engine.contract,
            chat_template=template.template if template else "",
            bos_token=template.bos_token if template else "",
            eos_token=template.eos_token if template else "",
            n_params=int(getattr(self._engine, "n_params", 0)),  # prices its tokens (spec/ledger.md §7)
        )
        self.worker = WorkerLogic(
            network=self.config.network,
            signing_key=self._key,
            offers=(offer,),
            ledger=self.ledger,
            max_tokens_limit=self.config.max_tokens_per_job,
        )

    async def _probe(self) -> None:
        """Probe the hardware and, on a node that serves a model, measure its speed: the tier we announce."""
        hardware = await trio.to_thread.run_sync(probe_hardware)
        if self._engine is not None:
            with _progress("measuring tokens/s"):
                self.tokens_per_s = await trio.to_thread.run_sync(measure_tokens_per_s, self._engine)
        self.tier = tier_of(hardware, self.tokens_per_s)
        speed = f"; {self.tokens_per_s:.0f} tokens/s on {self._engine.model.name}" if self._engine else ""
        log.info("this machine: %s%s: tier %s", hardware.describe(), speed, self.tier)

    def _model_ads(self) -> list[ModelAd]:
        if self.worker is None:
            return []
        return [ModelAd(o.name, o.contract.model_sha256, o.contract.digest()) for o in self.worker.offers]

    async def _maybe_adversary(self, engine: Engine) -> Engine:
        """Demo/test only (hidden --adversary flag): wrap the honest engine in a cheating one."""
        adversary = self.config.adversary
        if adversary is None or adversary == "sealed-lie":
            return engine
        log.warning("ADVERSARY MODE %r: this worker cheats, to demonstrate and test verification", adversary)
        if adversary == "wrong-tokens":
            return WrongTokensEngine(engine)
        if adversary == "lazy":
            return LazyEngine(engine, seed=int.from_bytes(self.public_key[:4], "big"))
        # model-swap: run a different tiny model behind the announced one
        path = default_cache_dir() / "tiny-swap-seed1.gguf"
        if not path.exists():  # written aside, then renamed: concurrent workers never read half a file
            tmp = path.with_suffix(f".{self.public_key.hex()[:8]}.tmp")
            await trio.to_thread.run_sync(lambda: write_tiny_gguf(tmp, seed=1))
            tmp.replace(path)
        swapped = ModelInfo(
            name="tiny-swap", path=path, sha256=await trio.to_thread.run_sync(sha256_file, path)
        )
        actual = await trio.to_thread.run_sync(lambda: load_engine(swapped, n_threads=self.config.threads))
        return SwappedModelEngine(engine, actual)

    async def _load_engine(self, info: ModelInfo) -> Engine:
        """llama.cpp in this process, or an OpenAI-compatible server (attached, or started and owned)."""
        cfg = self.config
        if cfg.engine == "llama":
            return await trio.to_thread.run_sync(
                lambda: load_engine(
                    info, n_threads=cfg.threads, n_ctx=cfg.max_context, gpu_layers=cfg.gpu_layers
                )
            )
        if cfg.http_url:
            backend = "vllm" if cfg.http_backend == "vllm" else "llama.cpp-server"
            log.info("attaching to the %s server at %s", backend, cfg.http_url)
            return await trio.to_thread.run_sync(
                lambda: HttpEngine(cfg.http_url or "", info, backend=backend)
            )
        server = ManagedServer(
            info,
            backend=None if cfg.http_backend == "auto" else cfg.http_backend,
            n_ctx=cfg.max_context,
            n_threads=cfg.threads,
            gpu_layers=cfg.gpu_layers,
        )
        self._server = server  # stopped in run()'s finally, with the node
        await trio.to_thread.run_sync(server.start)
        log.info("started a model server for %s (ready after %.1f s)", info.name, server.ready_after_s)
        return server.engine()

    def _write_node_info(self) -> None:
        assert self.host is not None
        info = {
            "peer_id": self.host.peer_id,
            "role": self.config.role,
            "addrs": self.host.addrs(),
            "network": self.config.network,
            "version": opengrid.__version__,
        }
        (self.config.data_dir / NODE_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")

    # ── inbound streams ──────────────────────────────────────────────────────────────────────────────
    async def _serve_stream(self, stream: FrameStream) -> None:
        try:
            message = await stream.receive()
        except RemoteProtocolError as exc:
            # Answer with a typed error, then close: the connection (and its other streams) lives on.
            hint = "; split the request or shorten it" if isinstance(exc, FrameTooLargeError) else ""
            log.info("refused a bad frame: %s", exc)
            await _try_send(stream, ErrorReply("malformed", f"{exc}{hint}"))
            return
        self._trace(stream.peer, message)
        if isinstance(message, SubmitJob) and self.coordinator and not self.paused:
            await self._serve_job(stream, message)
            return
        if isinstance(message, RunJob) and self.worker is not None and not self.paused:
            await self._serve_run(stream, message)
            return
        if isinstance(message, DialBackRequest):  # needs the requester's IP (anti-amplification)
            private = self.config.network_key is not None
            results = await check_addresses(
                message.addrs, stream.remote_ip, private_network=private, limiter=self._dial_backs
            )
            await stream.send(DialBackReport(results=results))
            return
        reply = await self._answer(stream.peer, message, _operator_of(stream.remote_ip))
        if reply is not None:
            await stream.send(reply)

    async def _serve_runs(self, stream: FrameStream) -> None:
        """A worker's run channel (``RUN_PROTOCOL``): RunJob exchanges one after another on one stream,
        each answered as on its own stream, until the coordinator ends it (spec/job-protocol.md §6.4). The
        coordinator sends the next RunJob only after reading the last one's final frame, so a frame or an
        end of stream while a job runs still means the coordinator left it."""
        await self._serve_channel(stream, RUN_PROTOCOL, RunJob, partial(self._serve_run, stream))

    async def _serve_beats(self, stream: FrameStream) -> None:
        """A coordinator's registration channel (``BEAT_PROTOCOL``): a worker's RegisterWorker heartbeats
        one after another on one stream, each answered as on its own stream (spec/job-protocol.md §6.1).
        A beat on a kept stream costs a few muxer frames; on a fresh one, ~20 frames and a multistream
        negotiation through both event loops (~4.8 ms of CPU against ~1.1 ms, measured in py-libp2p 0.8.1)."""
        operator = _operator_of(stream.remote_ip)

        async def answer(message: RegisterWorker) -> None:
            reply = await self._answer(stream.peer, message, operator)
            assert reply is not None
            await stream.send(reply)

        await self._serve_channel(stream, BEAT_PROTOCOL, RegisterWorker, answer)

    async def _serve_channel(
        self,
        stream: FrameStream,
        protocol: str,
        kind: type[_Exchanged],
        serve: Callable[[_Exchanged], Awaitable[None]],
    ) -> None:
        """Serve a channel that carries ``kind`` exchanges one after another, until the peer ends it; a
        bad frame or another message is answered ``malformed`` and ends it."""
        while True:
            try:
                message = await stream.receive_next()
            except RemoteProtocolError as exc:
                log.info("refused a bad frame on %s: %s", protocol, exc)
                await _try_send(stream, ErrorReply("malformed", str(exc)))
                return
            if message is None:
                return
            self._trace(stream.peer, message)
            if not isinstance(message, kind):
                what = f"{protocol} carries {kind.__name__} only, not {type(message).__name__}"
                await stream.send(ErrorReply("malformed", what))
                return
            await serve(message)

    async def _serve_run(self, stream: FrameStream, message: RunJob) -> None:
        """Run one replica and send its result (or a refusal, e.g. ``busy`` while paused)."""
        self.timing.mark("received", message.job_id, stream.peer)
        if self.paused:
            reply = await self._answer(stream.peer, message)
            assert reply is not None
            await stream.send(reply)
            return
        self._replying += 1  # until the result is sent: a draining node must not stop before that
        try:
            await stream.send(await self._on_run(message, stream))
        finally:
            self._replying -= 1

    def _trace(self, peer: str, message: Message) -> None:
        """Append a received message to the trace file (``--trace-frames``): an audit of what we saw."""
        if self._trace_file is not None:
            self._trace_file.write(encode_frame(message))
            self._trace_file.flush()

    async def _serve_job(self, stream: FrameStream, message: SubmitJob) -> None:
        """Run a client's job; forward preview text if it streams; cancel the job if the client leaves.

        The client sends nothing after its SubmitJob, so anything arriving on the stream — normally the
        end of the stream, when the client gave up, timed out or died — cancels the job and its replicas.
        """
        send, receive = trio.open_memory_channel[str](_PROGRESS_BUFFER)

        def offer(text: str) -> None:
            with contextlib.suppress(trio.WouldBlock):  # a slow client loses preview text, never the answer
                send.send_nowait(text)

        async def forward() -> None:
            async for text in receive:
                await stream.send(JobProgress(job_id=message.job_id, text=text))

        async def watch_client(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            task_status.started()
            with contextlib.suppress(OpenGridError):
                await stream.receive()
            if message.job_id in self._jobs and self.coordinator is not None:
                log.info("client of job %s went away: cancelling it", message.job_id.hex()[:8])
                self._feed(JobCancelled(job_id=message.job_id, client=stream.peer))

        async with trio.open_nursery() as outer:
            await outer.start(watch_client)
            async with trio.open_nursery() as nursery:
                if message.stream:
                    nursery.start_soon(forward)
                try:
                    reply = await self._submit_local(
                        stream.peer, message, progress=offer if message.stream else None
                    )
                finally:
                    send.close()  # the forwarder drains what is queued, then ends
            outer.cancel_scope.cancel()  # the answer is in: stop watching
        await stream.send(reply)

    async def _answer(self, peer: str, message: Message, operator: str = "") -> Message | None:
        match message:
            case StatusRequest():
                return self.status()
            case HistoryRequest():
                return self.history(message.account or self.public_key, message.limit)
            case ControlRequest():
                return self._on_control(message)
            case QuoteRequest() if self.coordinator is not None and not self.paused:
                return self._on_quote(message)
            case AdmitRequest() if self.admission is not None:
                if public_key_of(peer) != message.candidate:  # else anyone could fill our pending list
                    return ErrorReply(
                        "admission_refused", "a candidate asks for its own admission, from its own node"
                    )
                return self.admission.vote(message)
            case QuoteRequest() | GrantRequest() if self.admission is not None and self.admission.candidate:
                return ErrorReply("busy", f"this node takes no work now ({self.pause_reason}); try later")
            case GrantRequest() if self.coordinator is not None:
                return self._on_grant_request(peer, message, operator)
            case SubmitJob() | RunJob() if self.paused:
                return ErrorReply("busy", f"this node takes no work now ({self.pause_reason}); try later")
            case RegisterWorker() if self.coordinator is not None:
                return self._on_register(peer, message, operator)
            case RunJob() if self.worker is not None:
                return await self._on_run(message)
            case ReceiptNotice() if self.worker is not None:
                self._on_receipts(peer, message)
                return None
            case RegisterWorker() | SubmitJob() | GrantRequest():
                return ErrorReply(
                    "not_coordinator", f"{self.config.role} nodes do not accept {type(message).__name__}"
                )
            case _:
                return ErrorReply(
                    "malformed", f"a {self.config.role} does not expect {type(message).__name__} here"
                )

    def _on_quote(self, message: QuoteRequest) -> Message:
        assert self.coordinator is not None
        chosen = self.coordinator.quote(
            message.model, exposure=message.exposure, trusted=message.trusted, max_tokens=message.max_tokens
        )
        if len(chosen) < message.replicas and message.max_tokens:
            any_length = self.coordinator.quote(message.model, exposure=MAX_EXPOSURE, trusted=message.trusted)
            if len(any_length) >= message.replicas:  # as at submission: name the length that would do
                longest = max(self.coordinator.workers[c.peer].max_job_tokens for c in any_length)
                return ErrorReply(
                    "no_capacity",
                    f"the workers serving {message.model!r} here take jobs of at most {longest} tokens "
                    f"(edge nodes); ask for max_tokens <= {longest}, or wait for a full worker",
                )
        if len(chosen) < message.replicas:
            served = ", ".join(self.coordinator.served_models()) or "none yet"
            return ErrorReply(
                "no_capacity" if chosen else "unknown_model",
                f"job asks for {message.replicas} replicas of {message.model!r} but only {len(chosen)} "
                f"worker(s) can run it sealed; lower replicas or wait for workers (served here: {served})",
            )
        return Quote(
            model=message.model,
            workers=[
                QuotedWorker(peer_id=c.peer, public_key=c.key, box_key=box_public_key(c.key)) for c in chosen
            ],
            weight=self.coordinator.class_weight(chosen[0].contract),
        )

    def _on_grant_request(self, peer: str, message: GrantRequest, operator: str) -> Message:
        """Vouch for a client's starting grant if the core's policy allows (spec/ledger.md §7)."""
        assert self.coordinator is not None
        wall_ms = time.time_ns() // 1_000_000  # the rate limit's clock: wall time survives a restart
        reply = self.coordinator.vouch(message, operator=operator, now=wall_ms / 1000, wall_ms=wall_ms)
        if isinstance(reply, ErrorReply):
            log.info(
                "no grant voucher for %s (via %s): %s",
                message.account.hex()[:16],
                _short(peer),
                reply.message,
            )
        else:
            log.info(
                "vouched for the starting grant of %s (via %s)", message.account.hex()[:16], _short(peer)
            )
        return reply

    def _on_control(self, message: ControlRequest) -> Message:
        assert self.host is not None
        now_ms = time.time_ns() // 1_000_000
        signed = control_signing_bytes(
            self.config.network, self.host.peer_id, message.action, message.issued_at_ms
        )
        try:
            self._key.verify_key.verify(signed, message.signature)
        except BadSignatureError:
            return ErrorReply("malformed", "control request not signed by this node's identity key")
        if (
            abs(now_ms - message.issued_at_ms) > MAX_CLOCK_SKEW_MS
            or message.issued_at_ms <= self._last_control_ms
        ):
            return ErrorReply("malformed", "control request is stale or replayed; sign a fresh one")
        self._last_control_ms = message.issued_at_ms
        self._owner_paused = message.action == "pause"
        log.info("%s by the owner", "paused: taking no new work" if self._owner_paused else "resumed")
        return self.status()

    def _on_register(self, peer: str, message: RegisterWorker, operator: str = "") -> Message:
        assert self.coordinator is not None and self.host is not None
        if message.network != self.config.network:
            return ErrorReply(
                "malformed",
                f"this coordinator runs network {self.config.network!r}, not {message.network!r}; "
                "start the worker with the same --network",
            )
        if message.public_key != public_key_of(peer):
            return ErrorReply("malformed", "public_key does not match the connection's peer id")
        if self.config.approve_workers and peer not in admission.approved(self.config.data_dir):
            if admission.note_pending(self.config.data_dir, peer, [o.name for o in message.models]):
                log.warning(
                    "worker %s asks to join (%s); approve it with: opengrid node approve --data-dir %s %s",
                    _short(peer),
                    ", ".join(o.name for o in message.models),
                    self.config.data_dir,
                    peer,
                )
            return ErrorReply(
                "busy", "this coordinator admits workers its operator approved; yours is awaiting approval"
            )
        self.host.remember(peer, message.listen_addrs)
        known = peer in self.coordinator.workers and self.coordinator.workers[peer].online
        self._feed(
            WorkerRegistered(
                peer=peer,
                key=message.public_key,
                offers=tuple(message.models),
                operator=operator,
                rtt_s=self._rtt.get(peer, 0.0),
                slots=message.slots,
                probed_tokens_per_s=message.tokens_per_s,
                max_job_tokens=message.max_job_tokens,
            )
        )
        if not known:
            log.info("worker %s joined with %s", _short(peer), ", ".join(o.name for o in message.models))
            if self._nursery is not None:  # measured now, reported to the core with its next heartbeat
                self._nursery.start_soon(self._measure_rtt, peer)
                self._nursery.start_soon(self._warm_run_channel, peer)
        return Registered(coordinator_key=self.public_key, heartbeat_s=self.config.heartbeat_s)

    async def _measure_rtt(self, peer: str) -> None:
        """Round-trip time to a worker: the best of three status requests on fresh streams (what a job
        dispatch costs on the wire). The scheduler weighs it; failures leave it unknown."""
        assert self.host is not None
        try:
            with trio.fail_after(15):
                best = await self.host.round_trip(peer, tries=3)
        except (OpenGridError, trio.TooSlowError):
            return
        self._rtt[peer] = best
        log.debug("RTT to worker %s: %.1f ms", _short(peer), best * 1000)

    async def _warm_run_channel(self, peer: str) -> None:
        """Open a run channel to a worker that just joined and keep it idle in the pool, so its first
        replica does not wait for a stream to open and its protocol to be negotiated (most of the time
        from dispatch decision to engine start at 50 nodes, where each worker sees its first job late).
        Best effort: a worker that cannot be reached now gets a stream at dispatch, as before."""
        assert self._runs is not None
        try:
            with trio.fail_after(10):
                stream, _ = await self._runs.take(peer)
        except (OpenGridError, trio.TooSlowError) as exc:
            log.debug("no run channel to worker %s yet: %s", _short(peer), exc)
            return
        await self._runs.give_back(stream)

    async def _serve_api(self, settings: ApiSettings, *, task_status: trio.TaskStatus[list[str]]) -> None:
        from hypercorn.config import Config
        from hypercorn.trio import serve

        host, port = check_bind(settings.address, allow_remote=settings.allow_remote)
        config = Config()
        config.bind = [f"{host}:{port}"]
        config.accesslog = None
        config.errorlog = logging.getLogger("opengrid.api.server")
        app = build_app(self, api_key=settings.api_key)

        async def ready_then_report(*, task_status: trio.TaskStatus[list[str]]) -> None:
            await serve(app, config, task_status=task_status)  # type: ignore[arg-type]

        try:
            async with trio.open_nursery() as nursery:
                urls = await nursery.start(ready_then_report)
                log.info("OpenAI-compatible API on %s/v1", ", ".join(urls))
                task_status.started(urls)
        except OSError as exc:
            raise ConfigError(f"cannot serve the API on {settings.address}: {exc.strerror or exc}") from exc

    # ── API backend (opengrid.node.api.ApiBackend) ──────────────────────────────────────────────────
    def api_models(self) -> list[ModelOffer]:
        """Models a client of this node's API can ask for."""
        if self.coordinator is not None:
            return [o for r in self.coordinator.workers.values() if r.online for o in r.offers]
        return list(self.worker.offers) if self.worker is not None else []

    async def api_submit(
        self,
        *,
        prompt: str,
        model: str,
        max_tokens: int,
        replicas: int,
        format: PromptFormat,
        client: str = "",
    ) -> JobAccepted | ErrorReply:
        """Run one verified job: on this node if it coordinates, else through its coordinator. ``client``:
        the API user (``opengrid.node.api.api_client``), its own client of the coordinator's queue."""
        assert self.host is not None
        job = SubmitJob(
            job_id=secrets.token_bytes(16),
            model=model,
            prompt=prompt,
            max_tokens=max_tokens,
            replicas=replicas,
            format=format,
        )
        if self.coordinator is not None:
            # Paid from this node's own account when it can be (spec/ledger.md §7); nothing between here
            # and the submission yields, so the HOLD stays the next link of our chain.
            paid = self.coordinator.pay_own_job(job)
            if isinstance(paid, str):
                if self.coordinator.config.require_payment:
                    return ErrorReply("payment_required", paid, job.job_id)
                log.info("API job %s runs unpaid: %s", job.job_id.hex()[:8], paid)
            else:
                job = paid
            api_user = f"{self.host.peer_id}/{client}" if client else self.host.peer_id  # fair queueing
            return await self._submit_local(api_user, job)
        address = self._coordinators.get(self._coordinator_peer)
        if address is None:
            return ErrorReply(
                "not_coordinator", "this node is not registered with any coordinator yet; retry shortly"
            )
        try:
            peer = await self.host.connect(address)
            reply = await self.host.request(peer, job)
        except OpenGridError as exc:
            return ErrorReply("not_coordinator", f"the coordinator could not be reached: {exc}", job.job_id)
        if isinstance(reply, JobAccepted):
            problem = self._receipt_problem(reply, peer)
            if problem:  # never pass on, as verified, an answer the receipt does not back
                log.warning("coordinator %s sent an unbacked answer: %s", _short(peer), problem)
                return ErrorReply(
                    "verification_failed", f"the coordinator's receipt does not check: {problem}"
                )
            return reply
        if isinstance(reply, ErrorReply):
            return reply
        return ErrorReply("internal", f"the coordinator answered {type(reply).__name__}", job.job_id)

    def _receipt_problem(self, reply: JobAccepted, coordinator: str) -> str:
        """Why ``reply``'s receipt does not back its answer ("" if it does): signature, signer, job and
        the commitment to these very tokens and text."""
        try:
            body = open_entry(decode_entry(reply.receipt), self.config.network)
        except OpenGridError as exc:
            return str(exc)
        receipt = body.payload
        if not isinstance(receipt, Receipt) or receipt.job_id != reply.job_id:
            return "the receipt is not for this job"
        if body.author != public_key_of(coordinator):
            return "the receipt is signed by another node"
        if receipt.output_commitment != commit_output(reply.tokens, reply.text):
            return "the answer does not match the receipt's commitment"
        return ""

    async def _submit_local(
        self, peer: str, message: SubmitJob, *, progress: Callable[[str], None] | None = None
    ) -> JobAccepted | ErrorReply:
        if message.job_id in self._jobs:  # never let a second submission hijack a running job's answer
            return ErrorReply("malformed", "this job id is already running; pick a fresh one", message.job_id)
        assert self.coordinator is not None
        pending = _PendingJob(progress=progress)
        resumed = self.coordinator.is_running(message.job_id)  # taken back after a restart: wait for it
        self._jobs[message.job_id] = pending
        log.info(
            "job %s from %s: model %s, %d tokens, %d replicas",
            message.job_id.hex()[:8],
            _short(peer),
            message.model,
            message.max_tokens,
            message.replicas,
        )
        try:
            if not resumed:
                event = JobSubmitted(client=peer, request=message, wall_ms=time.time_ns() // 1_000_000)
                if self._job_store is not None:
                    self._job_store.put(event)  # before any work: a restart must not lose it
                self._feed(event)
            await pending.done.wait()
        finally:
            self._jobs.pop(message.job_id, None)
        assert pending.reply is not None
        return pending.reply

    async def _on_run(self, run: RunJob, stream: FrameStream | None = None) -> Message:
        assert self.worker is not None and self._engine is not None
        refusal = self.worker.accept(run)
        if refusal is not None:
            return refusal
        prompt, salt = run.prompt, b""
        if run.sealed_prompt:
            try:
                opened = self.worker.open_sealed(run)
            except RemoteProtocolError as exc:
                return ErrorReply("malformed", str(exc), run.job_id)
            prompt, salt = opened.prompt, opened.salt
        log.info(
            "running %sjob %s: %d tokens max",
            "sealed " if run.sealed_prompt else "",
            run.job_id.hex()[:8],
            run.max_tokens,
        )
        request = GenerationRequest(prompt=prompt, max_tokens=run.max_tokens, add_bos=run.format == "text")
        engine = self._engine
        self._running += 1
        try:
            return await self._run_and_attest(run, stream, engine, request, salt)
        finally:
            self._running -= 1

    async def _run_and_attest(
        self, run: RunJob, stream: FrameStream | None, engine: Engine, request: GenerationRequest, salt: bytes
    ) -> Message:
        assert self.worker is not None
        started = trio.current_time()
        engine_started: list[float] = []  # time.monotonic() when the engine's thread took the job

        def timed(generate: Callable[..., Generation]) -> Callable[..., Generation]:
            def in_engine_thread(*args: object) -> Generation:
                engine_started.append(time.monotonic())
                return generate(*args)

            return in_engine_thread if self.timing.enabled else generate

        try:
            if stream is not None and isinstance(engine, StreamingEngine):
                # Never stream a sealed job: the previews would show the coordinator the plaintext.
                previews = run.stream and not run.sealed_prompt
                generation = await self._generate_watched(
                    engine, request, run.job_id, stream, previews, timed=timed
                )
            else:
                generation = await trio.to_thread.run_sync(
                    timed(engine.generate), request, limiter=self._engine_limiter
                )
        except _JobAbandoned:
            log.info("job %s abandoned by the coordinator: stopped generating", run.job_id.hex()[:8])
            return ErrorReply("busy", "stopped: nobody was waiting for this job any more", run.job_id)
        except EngineError as exc:
            log.warning("job %s failed in the engine: %s", run.job_id.hex()[:8], exc)
            return ErrorReply("engine_error", str(exc), run.job_id)
        finally:
            if engine_started:  # marked here, not in the engine's thread: the trace is not thread-safe
                peer = stream.peer if stream is not None else ""
                self.timing.mark("engine_start", run.job_id, peer, t=engine_started[0])
                self.timing.mark("engine_end", run.job_id, peer)
        self.jobs_run += 1
        self._tokens_out += len(generation.tokens)
        self._busy_s += trio.current_time() - started
        log.info("ran job %s: %d tokens", run.job_id.hex()[:8], len(generation.tokens))
        output = Output(
            tokens=generation.tokens, text=generation.text, finish_reason=generation.finish_reason
        )
        result = self.worker.attest(run, output, salt=salt)
        if self.config.adversary == "sealed-lie" and run.sealed_prompt:
            # Demo/test adversary: attest the true output, but seal a different one to the client.
            lie = seal_output(
                list(output.tokens),
                output.text + " (forged)",
                output.finish_reason,
                job_id=run.job_id,
                client_box_key=run.client_box_key,
                signing_key=self._key,
            )
            result = msgspec.structs.replace(result, sealed_output=lie)
        return result

    async def _generate_watched(
        self,
        engine: StreamingEngine,
        request: GenerationRequest,
        job_id: bytes,
        stream: FrameStream,
        previews: bool,
        *,
        timed: Callable[[Callable[..., Generation]], Callable[..., Generation]] = lambda f: f,
    ) -> Generation:
        """Run the engine in a thread; send its text as ReplicaProgress frames if ``previews``; stop it
        as soon as the coordinator abandons the job (its stream ends: the job was settled or cancelled)."""
        send, receive = trio.open_memory_channel[str](_PROGRESS_BUFFER)
        abandoned = threading.Event()

        def on_text(delta: str) -> None:  # called in the engine's thread, once per token
            if abandoned.is_set():
                raise _JobAbandoned
            if previews:
                with contextlib.suppress(trio.WouldBlock, trio.RunFinishedError):
                    trio.from_thread.run_sync(send.send_nowait, delta)

        async def forward() -> None:
            async for text in receive:
                with contextlib.suppress(OpenGridError):  # the coordinator may stop listening; keep working
                    await stream.send(ReplicaProgress(job_id=job_id, text=text))

        watching = trio.CancelScope()

        async def watch_coordinator() -> None:
            with watching:  # cancelled once the job is done: then nothing is abandoned
                with contextlib.suppress(OpenGridError):
                    await stream.receive()  # the coordinator sends nothing more: any event means it left
                abandoned.set()

        generation: Generation | None = None
        failure: EngineError | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(forward)
            nursery.start_soon(watch_coordinator)
            try:  # errors are kept, not raised here: raising inside a nursery wraps them in a group
                generation = await trio.to_thread.run_sync(
                    timed(engine.generate_streaming), request, on_text, limiter=self._engine_limiter
                )
            except EngineError as exc:
                failure = exc
            finally:
                send.close()  # the forwarder sends what is queued, then ends
                watching.cancel()
        if failure is not None:
            if isinstance(failure.__cause__, _JobAbandoned):
                raise _JobAbandoned from failure
            raise failure
        assert generation is not None
        return generation

    async def _serve_sync(self, stream: FrameStream) -> None:
        """A peer syncs its ledger with ours (both sides gain what they lack; everything is verified)."""
        assert self.ledger is not None
        session = SyncSession(self.ledger, self._sync_index)
        try:
            with trio.fail_after(_SYNC_TIMEOUT_S):
                await ledger_sync.respond(stream, session)
        finally:
            self._store_synced(stream.peer, session)

    async def sync_ledger(self, peer: str) -> int:
        """Sync our ledger with ``peer``'s; return how many entries we gained (stored)."""
        assert self.host is not None and self.ledger is not None
        session = SyncSession(self.ledger, self._sync_index)
        stream = await self.host.open_stream(peer, SYNC_PROTOCOL)  # type: ignore[arg-type]
        try:
            with trio.fail_after(_SYNC_TIMEOUT_S):
                await ledger_sync.initiate(stream, session)
        finally:
            await stream.aclose()
            self._store_synced(peer, session)
        return len(session.applied)

    def _store_synced(self, peer: str, session: SyncSession) -> None:
        assert self._store is not None
        if session.applied:
            self._store.append_many(session.applied)
            log.info(
                "ledger sync with %s: %d new entr%s",
                _short(peer),
                len(session.applied),
                "y" if len(session.applied) == 1 else "ies",
            )
        if session.refused:
            # Once per peer at WARNING: a peer holding entries we refuse (often receipts of a coordinator
            # we do not trust) offers them again at every sync.
            level = logging.DEBUG if peer in self._refusals_reported else logging.WARNING
            self._refusals_reported.add(peer)
            log.log(
                level,
                "ledger sync with %s: refused %d entries (first: %s)",
                _short(peer),
                len(session.refused),
                session.refused[0][1],
            )
        if self._nursery is not None:
            self._report_forks()

    async def _sync_with(self, coordinators: Sequence[str]) -> None:
        """Sync with each coordinator in turn; a failure is logged and retried on the next round."""
        for peer in coordinators:
            try:
                await self.sync_ledger(peer)
            except (OpenGridError, trio.TooSlowError) as exc:
                log.info(
                    "ledger sync with coordinator %s failed (will retry): %s",
                    _short(peer),
                    str(exc) or "timed out",
                )

    async def _sync_loop(self) -> None:
        """Workers: keep our ledger in step with our coordinators' (receipts, holds, settlements)."""
        await self.registered.wait()
        while True:
            with trio.move_on_after(self.config.heartbeat_s * _SYNC_PERIOD_BEATS):
                await self._sync_wanted.wait()
            self._sync_wanted = trio.Event()
            await self._sync_with(list(self._coordinators))
            await trio.sleep(0.2)  # let a burst of receipts settle into one sync

    # ── ledger gossip: entries pushed as they are written; sync fills whatever gossip loses ─────────────
    async def _publish_entry(self, entry: Entry) -> None:
        assert self.membership is not None
        try:
            await self.membership.gossip.publish_ledger(encode_entry(entry))
        except OpenGridError as exc:  # best effort: sync carries it later
            log.debug("ledger entry not gossiped: %s", exc)

    def _valid_ledger_gossip(self, sender: str, data: bytes) -> bool:
        """gossipsub validator (runs before delivery and forwarding): a signed entry of our network.
        Whether it applies (minter, chain, balance) is our ledger's call, made after delivery."""
        try:
            open_entry(decode_entry(data), self.config.network)
        except OpenGridError as exc:
            log.info("dropped a ledger gossip message from %s: %s", _short(sender), exc)
            return False
        return True

    async def _ledger_gossip_loop(self) -> None:
        assert self.membership is not None
        async for sender, data in self.membership.gossip.ledger_messages:
            self._take_gossiped_entry(sender, data)

    def _take_gossiped_entry(self, sender: str, data: bytes) -> None:
        assert self.ledger is not None and self._store is not None
        try:
            applied = self.ledger.apply(decode_entry(data))
        except OpenGridError as exc:  # e.g. minted by a coordinator we do not trust, or a fork
            log.debug("ledger entry from gossip (via %s) not applied: %s", _short(sender), exc)
            applied = []
        if applied:
            self._store.append_many(applied)
        self._report_forks()

    def _report_forks(self) -> None:
        """Publish a FRAUD proof for each author our ledger froze for signing two entries with one seq,
        unless one is known already (spec/ledger.md §4, §5.9): nodes that saw one branch only then cut the
        forker too. Only forkers with standing get one (spec/ledger.md §6.3); ours goes on our own chain."""
        assert self.ledger is not None and self._store is not None and self._nursery is not None
        frozen = self.ledger.proven()  # forkers with standing: no proof is made for free keys' forks
        if len(frozen) == len(self._forks_seen):
            return
        fresh = sorted(set(frozen) - self._forks_seen)
        self._forks_seen.update(fresh)
        # A fork is rare: scanning the ledger for proofs someone else published is affordable then.
        payloads = (decode_body(e.body).payload for e in self.ledger.entries())
        proven = {decode_body(decode_entry(p.first).body).author for p in payloads if isinstance(p, Fraud)}
        for author in fresh:
            payload = self.ledger.fraud_payload(author)
            if payload is None or author in proven or author == self.public_key:
                continue
            try:
                entry = sign_entry(self._key, self.ledger.next_body(self.public_key, payload))
                self.ledger.apply(entry)
            except OpenGridError as exc:  # e.g. the two entries do not fit one entry's size limit
                log.warning("fork by %s found, but no FRAUD proof could be made: %s", author.hex()[:16], exc)
                continue
            self._store.append(entry)
            self._nursery.start_soon(self._publish_entry, entry)
            log.warning(
                "%s signed two different ledger entries with one seq: frozen, FRAUD proof published",
                author.hex()[:16],
            )

    async def _peer_sync_loop(self) -> None:
        """Coordinators: keep our ledger in step with every other minting coordinator we hear of on gossip
        (anti-entropy, spec/ledger.md §9): at once when one appears or returns (a healed partition), then
        every few heartbeats. Coordinators that do not mint in our ledger are skipped: their receipts
        would only be refused."""
        assert self.membership is not None and self.ledger is not None
        gossip, ledger = self.membership.gossip, self.ledger

        def minting_coordinators() -> set[str]:
            online = gossip.directory.online(trio.current_time(), role="coordinator")
            return {a.peer_id for a in online if a.public_key in ledger.minters()}

        while True:
            attempted = minting_coordinators()
            await self._sync_with(sorted(attempted))
            # Next round after a few beats, or as soon as a coordinator appears or returns (a healed
            # partition); one that went offline and came back is new again.
            with trio.move_on_after(self.config.heartbeat_s * _SYNC_PERIOD_BEATS):
                while not minting_coordinators() - attempted:
                    attempted &= minting_coordinators()
                    await gossip.changed.wait()

    def _start_admission(self, nursery: trio.Nursery) -> None:
        """Coordinators of a network whose genesis fixes the coordinator set: vote on candidates, and
        seek our own admission while we are one (opengrid/node/coordinator_admission.py)."""
        assert self.ledger is not None and self.host is not None and self.membership is not None
        if not self.ledger.closed:
            return
        host, gossip, store = self.host, self.membership.gossip, self._store
        assert store is not None

        def coordinators() -> list[tuple[str, bytes]]:
            online = gossip.directory.online(trio.current_time(), role="coordinator")
            return [(a.peer_id, a.public_key) for a in online if a.peer_id != host.peer_id]

        def append(applied: list[Entry], entry: Entry) -> None:
            store.append_many(applied)
            nursery.start_soon(self._publish_entry, entry)

        self.admission = CoordinatorAdmission(
            network=self.config.network,
            signing_key=self._key,
            ledger=self.ledger,
            data_dir=self.config.data_dir,
            request=host.request,
            coordinators=coordinators,
            append=append,
            period_s=2 * self.config.heartbeat_s,
            auto_min_jobs=self.config.admit_after_jobs,
        )
        nursery.start_soon(self.admission.run)

    def _on_receipts(self, peer: str, notice: ReceiptNotice) -> None:
        assert self.worker is not None and self._store is not None
        self._sync_wanted.set()  # pull what the notice cannot carry (e.g. a paying client's HOLD)
        applied = []
        for data in notice.entries:  # one at a time: a bad entry must not cost the good ones before it
            try:
                newly = self.worker.receive_entries([data])
            except OpenGridError as exc:
                log.warning("refused an entry from %s: %s", _short(peer), exc)
                continue
            for entry in newly:
                self._store.append(entry)
            applied += newly
        self._report_forks()
        if applied:
            log.info(
                "stored %d ledger entr%s; my balance: %d points",
                len(applied),
                "y" if len(applied) == 1 else "ies",
                self.points(),
            )

    # ── coordinator: events in, effects out ──────────────────────────────────────────────────────────
    def _feed(self, event: Event) -> None:
        assert self.coordinator is not None
        self._execute(self.coordinator.handle(event, trio.current_time()))

    def _execute(self, effects: Sequence[Effect]) -> None:
        assert self._nursery is not None and self._store is not None
        for effect in effects:
            match effect:
                case DispatchReplica(peer=peer, run=run):
                    self.timing.mark("dispatch", run.job_id, peer)
                    scope = trio.CancelScope()
                    self._replicas[(run.job_id, peer)] = scope
                    self._nursery.start_soon(self._run_replica, peer, run, scope)
                case CancelReplica(peer=peer, job_id=job_id):
                    scope = self._replicas.pop((job_id, peer), None)
                    if scope is not None:
                        scope.cancel()
                case FinishJob(job_id=job_id, reply=reply):
                    self._log_outcome(job_id, reply)
                    if self._job_store is not None:
                        self._job_store.delete(job_id)
                    pending = self._jobs.get(job_id)
                    if pending is not None:
                        pending.reply = reply
                        pending.done.set()
                case AppendEntry(entry=entry):
                    self._store.append(entry)
                    self._nursery.start_soon(self._publish_entry, entry)
                case SendReceipt(peer=peer, notice=notice):
                    self._nursery.start_soon(self._send_receipt, peer, notice)
                case Penalize(peer=peer, why=why):
                    log.warning("worker %s penalised: %s", _short(peer), why)
        self._report_forks()  # e.g. a client that signed two HOLDs with one seq
        self._timer_changed.set()

    def _log_outcome(self, job_id: bytes, reply: JobAccepted | ErrorReply) -> None:
        if isinstance(reply, JobAccepted):
            log.info(
                "job %s verified: %d agreeing worker(s), %d dissenter(s), %d token(s); receipt signed",
                job_id.hex()[:8],
                len(reply.workers),
                len(reply.dissenters),
                len(reply.tokens),
            )
        else:
            log.warning("job %s failed (%s): %s", job_id.hex()[:8], reply.code, reply.message)

    async def _run_replica(self, peer: str, run: RunJob, scope: trio.CancelScope) -> None:
        assert self.host is not None
        event: Event | None = None
        with scope:
            try:
                reply = await self._exchange_replica(peer, run)
            except OpenGridError as exc:
                event = ReplicaFailed(job_id=run.job_id, peer=peer, reason=str(exc))
            else:
                if isinstance(reply, ReplicaResult):
                    event = ReplicaReturned(job_id=run.job_id, peer=peer, result=reply)
                elif isinstance(reply, ErrorReply):
                    event = ReplicaFailed(
                        job_id=run.job_id,
                        peer=peer,
                        reason=f"{reply.code}: {reply.message}",
                        # a sealed prompt that does not open is the client's doing, not the worker's
                        client_fault=reply.code == "malformed" and bool(run.sealed_prompt),
                    )
                else:
                    event = ReplicaFailed(
                        job_id=run.job_id, peer=peer, reason=f"unexpected {type(reply).__name__}"
                    )
        if self._replicas.get((run.job_id, peer)) is scope:
            del self._replicas[(run.job_id, peer)]
        if event is not None and not scope.cancel_called:
            if isinstance(event, ReplicaFailed):
                log.warning("worker %s failed job %s: %s", _short(peer), run.job_id.hex()[:8], event.reason)
            self._feed(event)

    async def _exchange_replica(self, peer: str, run: RunJob) -> Message:
        """Send ``run`` to ``peer``; for streaming jobs pass its preview frames on; return its final reply.

        The exchange runs on the worker's run channel (``RUN_PROTOCOL``, a pooled stream that earlier
        replicas used) when one is idle; ``StreamPool.exchange`` replaces one found dead before the worker
        said anything, and without a connection the worker is gone and the replica fails at once.
        """
        assert self.host is not None and self._runs is not None
        pending = self._jobs.get(run.job_id)
        message = (
            run if pending is None or pending.progress is None else msgspec.structs.replace(run, stream=True)
        )

        async def talk(stream: FrameStream) -> Message:
            self.timing.mark("stream_ready", run.job_id, peer)
            await stream.send(message)
            self.timing.mark("sent", run.job_id, peer)
            for _ in range(run.max_tokens + 1):  # at most one progress frame per token, then the answer
                reply = await stream.receive()
                self._trace(peer, reply)
                if not isinstance(reply, ReplicaProgress):
                    self.timing.mark("reply", run.job_id, peer)
                    answered = reply.job_id if isinstance(reply, ReplicaResult | ErrorReply) else b""
                    if answered not in (run.job_id, b""):
                        raise RemoteProtocolError("the answer is for another job", peer=peer)
                    return reply
                if pending is not None and pending.progress is not None:
                    if reply.job_id == run.job_id and pending.streamer in (None, peer):
                        pending.streamer = peer
                        pending.progress(reply.text)
            raise RemoteProtocolError("more progress frames than tokens", peer=peer)

        return await self._runs.exchange(peer, talk)

    async def _send_receipt(self, peer: str, notice: ReceiptNotice) -> None:
        assert self.host is not None
        stream = None
        try:
            with trio.fail_after(10):
                stream = await self.host.open_stream(peer)
                await stream.send(notice)
        except (OpenGridError, trio.TooSlowError) as exc:
            log.info("could not deliver a receipt to %s (ledger sync will): %s", _short(peer), exc)
        finally:
            if stream is not None:
                await stream.aclose()

    async def _timer_loop(self) -> None:
        assert self.coordinator is not None
        while True:
            deadline = self.coordinator.next_deadline()
            with trio.move_on_at(deadline if deadline is not None else math.inf):
                await self._timer_changed.wait()
            self._timer_changed = trio.Event()
            effects = self.coordinator.on_timer(trio.current_time())
            if effects:
                self._execute(effects)

    # ── worker: stay registered ──────────────────────────────────────────────────────────────────────
    async def _register_loop(self) -> None:
        """Keep one registration task per coordinator we know of — our bootstrap addresses, every
        coordinator heard on gossip or listed by a bootstrap node — each repeating the registration as
        our heartbeat (a coordinator marks us offline after 3 missed beats). One task per coordinator, so
        a dead or slow one never delays the heartbeats to the others. A paused worker stops beating, so
        its coordinators stop sending it work; so does a node reachable only through relays while it
        holds no reservation (``_unreachable``)."""
        running: set[str] = set()
        said = ""
        async with trio.open_nursery() as nursery:
            while True:
                unreachable = self._unreachable()
                if bool(unreachable) != bool(said):
                    if unreachable:
                        log.warning("not registering with coordinators: %s", unreachable)
                    else:
                        log.info("reachable through a relay again; registering")
                    said = unreachable
                for address in self._registration_targets():
                    peer = _peer_of(address)
                    if peer not in running:
                        running.add(peer)
                        nursery.start_soon(self._keep_registered, peer, running)
                await trio.sleep(min(self.config.heartbeat_s, 1.0))  # pick up new coordinators soon

    async def _keep_registered(self, peer: str, running: set[str]) -> None:
        """Register with ``peer`` every beat it asks for, until it is no longer a coordinator we know of
        and a registration fails."""
        assert self.host is not None
        interval = self.config.heartbeat_s
        warned = False
        unanswered = 0
        """Registrations in a row that got no answer in time over a connection that stayed open."""
        try:
            while True:
                address = next((a for a in self._registration_targets() if _peer_of(a) == peer), None)
                if address is None:
                    return  # forgotten (offline on gossip and not accepting us): stop beating at it
                started = trio.current_time()
                if not self.paused and not self._unreachable():
                    try:
                        # As often as the coordinator asks, within sane bounds so a hostile one cannot
                        # make us spin or go silent.
                        interval = min(max(await self._register_once(address), 0.5), 60.0)
                        warned, unanswered = False, 0
                    except _NotACoordinator as exc:
                        self._not_coordinators.add(peer)
                        log.info("%s; looking for coordinators through it", exc)
                        return
                    except OpenGridError as exc:
                        unanswered = unanswered + 1 if isinstance(exc, _Unanswered) else 0
                        if unanswered >= _UNANSWERED_BEFORE_REDIAL:
                            # No answer for several beats on a connection that stayed open: it may be
                            # half-dead (the coordinator's machine vanished). Re-dial afresh.
                            await self.host.disconnect(peer)
                            unanswered = 0
                        if not unanswered:  # a late answer is no reason to forget a coordinator yet
                            self._coordinators.pop(peer, None)
                        if not warned:
                            warned = True
                            log.warning(
                                "cannot register with coordinator %s (%s); retrying every beat",
                                _short(peer),
                                str(exc) or "no answer in time",
                            )
                # A beat every ``interval`` from the start of the last one: a registration left unanswered
                # for its whole timeout must not push the next beat past the coordinator's offline limit.
                await trio.sleep(max(0.0, interval - (trio.current_time() - started)))
        finally:
            running.discard(peer)
            if self._beats is not None:
                await self._beats.close_idle(peer)  # its coordinator's handler waits on it otherwise

    def _unreachable(self) -> str:
        """Why coordinators could not reach us for a job, or "" if they can. A node with no listen address
        is reachable only through a relay reservation; registering without one would invite jobs that
        cannot arrive once our own connection closes (spec/discovery.md §8.4)."""
        assert self.host is not None
        # a relayed address is announced while a reservation is held: on a given relay, or on one the
        # node took itself when those were gone (spec/discovery.md §9.3)
        if self.config.listen or not self.relay_keepers or self.host.relay_addresses():
            return ""
        problems = "; ".join(k.problem for k in self.relay_keepers)
        return (
            f"this node listens on no address and holds no relay reservation ({problems}); "
            "start a relay or name a reachable one with --relay-via"
        )

    def _registration_targets(self) -> list[str]:
        """One address per coordinator: bootstrap addresses (unless they said they do not coordinate),
        the coordinators that accepted us (registration is itself the liveness check: a coordinator whose
        gossip is late on a loaded machine must not lose its workers), then the coordinators gossip tells
        us about, deduplicated by peer id."""
        targets: dict[str, str] = {}
        for address in self.config.bootstrap:
            peer = _peer_of(address)
            if peer not in self._not_coordinators:
                targets.setdefault(peer, address)
        for peer, address in self._coordinators.items():
            targets.setdefault(peer, address)
        if self.membership is not None:
            for address in self.membership.addresses_of("coordinator"):
                targets.setdefault(_peer_of(address), address)
        return list(targets.values())

    async def _register_once(self, address: str) -> float:
        assert self.worker is not None and self.host is not None
        timeout = _registration_timeout(self.config.heartbeat_s)
        try:
            with trio.fail_after(timeout):  # a dial to a vanished coordinator must not stall us long
                peer = await self.host.connect(address)
        except trio.TooSlowError as exc:
            await self.host.disconnect(_peer_of(address))  # re-dial afresh next time
            raise TransportError(f"could not connect to {address} within {timeout:.0f} s") from exc
        message = RegisterWorker(
            network=self.config.network,
            public_key=self.public_key,
            listen_addrs=self.host.addrs(),
            models=list(self.worker.offers),
            software=f"opengrid/{opengrid.__version__}",
            tokens_per_s=min(round(self.tokens_per_s, 3), MAX_CLAIMED_TOKENS_PER_S),
            tier=self.tier,
            max_job_tokens=self.config.max_tokens_per_job,
        )
        try:
            with trio.fail_after(timeout):
                reply = await self._beat(peer, message)
        except trio.TooSlowError as exc:
            # Keep the connection: an overloaded coordinator answers late, and re-dialling it (a new
            # handshake, gossip streams, its replay of recent messages) only adds to its load. The caller
            # re-dials after a few beats without an answer (a half-dead connection never answers).
            raise _Unanswered(
                f"the coordinator did not answer the registration within {timeout:.0f} s"
            ) from exc
        except OpenGridError as exc:
            # The stream failed: a coordinator that died may leave a broken connection behind. Re-dial.
            await self.host.disconnect(peer)
            raise TransportError(f"the coordinator did not answer the registration: {exc}") from exc
        if isinstance(reply, ErrorReply) and reply.code == "not_coordinator":
            raise _NotACoordinator(f"bootstrap {_short(peer)} is not a coordinator")
        if isinstance(reply, ErrorReply):
            raise TransportError(f"{address} refused the registration: {reply.message}")
        if not isinstance(reply, Registered):
            raise RemoteProtocolError(f"expected Registered, got {type(reply).__name__}", peer=peer)
        if reply.coordinator_key != public_key_of(peer):
            raise RemoteProtocolError("coordinator_key does not match the coordinator's peer id", peer=peer)
        self.worker.trust_coordinator(reply.coordinator_key)
        if peer not in self._coordinators:
            log.info("registered with coordinator %s", _short(peer))
            if self.ledger is not None and not self.ledger.closed:  # a genesis fixes the minters otherwise
                remember_trusted(self.config.data_dir, reply.coordinator_key)
            self._sync_wanted.set()
        self._coordinators[peer] = address
        if not self._coordinator_peer or self._coordinator_peer not in self._coordinators:
            self._coordinator_peer = peer
        self.registered.set()
        return reply.heartbeat_s

    async def _beat(self, peer: str, message: RegisterWorker) -> Message:
        """One registration exchange on our registration channel to ``peer`` (a kept stream; a fresh
        ``JOB_PROTOCOL`` stream, closed after, for a coordinator without the channel)."""
        assert self._beats is not None

        async def talk(stream: FrameStream) -> Message:
            await stream.send(message)
            return await stream.receive()

        return await self._beats.exchange(peer, talk)

    @property
    def paused(self) -> bool:
        """True while the node takes no new work: paused by its owner, draining, or outside the owner's
        availability policy (working hours, machine busy), or a coordinator not admitted yet."""
        candidate = self.admission is not None and self.admission.candidate
        return self._owner_paused or not self._availability.work or candidate

    async def _status_line_loop(self) -> None:
        """One line a minute saying what the node is doing, so a volunteer's log shows it is alive."""
        while True:
            await trio.sleep(_STATUS_LINE_PERIOD_S)
            state = f"not working: {self.pause_reason}" if self.paused else "working"
            if self.coordinator is not None:
                online = sum(1 for r in self.coordinator.workers.values() if r.online)
                log.info(
                    "status: %s; %d worker(s) online, %d job(s) running, ledger %d entries",
                    state,
                    online,
                    len(self._jobs),
                    len(self.ledger or ()),
                )
            else:
                speed = self._tokens_out / self._busy_s if self._busy_s else 0.0
                log.info(
                    "status: %s; %d job(s) run, %d point(s), %d running, %.0f tokens/s while busy",
                    state,
                    self.jobs_run,
                    self.points(),
                    self._running,
                    speed,
                )

    @property
    def pause_reason(self) -> str:
        """Why the node takes no work ("" when it does)."""
        if self._owner_paused:
            return "paused by its owner"
        if self.admission is not None and self.admission.candidate:
            return self.admission.why_no_jobs()
        return "" if self._availability.work else self._availability.reason

    async def _availability_loop(self, policy: Policy) -> None:
        """Re-decide every few seconds whether this worker takes work; log each change and its reason."""
        cores = os.cpu_count() or 1
        while True:
            now = time.localtime()
            own = min(self._running, 1) * (self.config.threads or max(1, cores // 2))
            other = max(0.0, os.getloadavg()[0] - own) / cores  # our own jobs must not pause us
            decision = decide(
                policy,
                minute_of_day=now.tm_hour * 60 + now.tm_min,
                other_load_per_core=other,
                paused_by_owner=False,
            )
            if decision != self._availability:
                log.info(
                    "availability: %s", "taking work" if decision.work else f"not working: {decision.reason}"
                )
                self._availability = decision
            await trio.sleep(_AVAILABILITY_PERIOD_S)

    async def drain(self) -> None:
        """Take no new work and return once the work in hand is done (a worker's running jobs, a
        coordinator's open jobs). Callers bound it with a timeout; the node keeps serving meanwhile."""
        self._owner_paused = True
        while self._running or self._replying or self._jobs:
            await trio.sleep(0.05)
        log.info("no work left in hand")

    # ── status ───────────────────────────────────────────────────────────────────────────────────────
    def points(self) -> int:
        return self.ledger.balance(self.public_key) if self.ledger is not None else 0

    def status(self) -> NodeStatus:
        """What this node reports about itself; its points come from its own ledger."""
        assert self.host is not None and self.ledger is not None
        workers: list[WorkerSummary] = []
        balances: dict[str, int] = {}
        if self.coordinator is not None:
            workers = [
                WorkerSummary(
                    peer_id=r.peer, public_key=r.key, models=[o.name for o in r.offers], online=r.online
                )
                for r in sorted(self.coordinator.workers.values(), key=lambda r: r.peer)
            ]
            balances = {key.hex(): points for key, points in sorted(self.ledger.balances().items())}
        return NodeStatus(
            peer_id=self.host.peer_id,
            public_key=self.public_key,
            role=self.config.role,
            addrs=self.host.addrs(),
            points=self.points(),
            jobs_done=self.ledger.jobs_done(self.public_key),
            models=[o.name for o in self.worker.offers] if self.worker is not None else [],
            workers=workers,
            balances=balances,
            ledger_entries=len(self.ledger),
            paused=self.paused,
            peers=self.membership.peers(self._rtt.get) if self.membership is not None else [],
            network=self.config.network,
            candidate=self.admission is not None and self.admission.candidate,
            reachability=self.membership.reachability if self.membership is not None else "unknown",
        )

    def history(self, account: bytes, limit: int) -> History:
        """The newest ``limit`` entries that concern ``account`` — receipts that credit or outvote it, and
        entries it authored (its HOLDs: a paying client learns its chain head from them) — oldest first."""
        assert self.ledger is not None
        found = []
        for entry in reversed(self.ledger.entries()):
            body = decode_body(entry.body)  # verified when applied; the client verifies again anyway
            payload = body.payload
            if body.author == account or (
                isinstance(payload, Receipt)
                and (account in payload.dissenters or any(c.account == account for c in payload.credits))
            ):
                found.append(encode_entry(entry))
                if len(found) == limit:
                    break
        return History(entries=found[::-1])


def _operator_of(ip: str) -> str:
    """Who operates a worker, as far as replica spreading can tell: its public IP address.

    Private, loopback and link-local addresses say nothing about the operator (a whole test network or
    LAN shares them), so they count as unknown and never make two workers "the same operator".
    """
    try:
        return ip if ip and ipaddress.ip_address(ip).is_global else ""
    except ValueError:
        return ""


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


class _NotACoordinator(TransportError):
    """A bootstrap peer answered a registration with ``not_coordinator``: use it only to join gossip."""


_Exchanged = TypeVar("_Exchanged", RunJob, RegisterWorker)
"""The request a channel carries, one after another (run channel, registration channel)."""


class _Unanswered(TransportError):
    """A registration sent on an open connection got no answer in time."""


_UNANSWERED_BEFORE_REDIAL: Final = 3
"""Registrations in a row left unanswered on one connection before a worker drops it and dials afresh."""


def _registration_timeout(heartbeat_s: float) -> float:
    """How long one registration (dial included) may take: two of our beats, at least 5 s."""
    return max(5.0, 2 * heartbeat_s)


def _load_genesis(config: NodeConfig) -> Genesis | None:
    if config.genesis is None:
        return None
    try:
        genesis = decode_genesis(config.genesis.read_bytes())
    except OSError as exc:
        raise ConfigError(f"cannot read genesis file {config.genesis}: {exc.strerror or exc}") from exc
    if genesis.network != config.network:
        raise ConfigError(
            f"genesis file {config.genesis} is for network {genesis.network!r}, this node is on "
            f"{config.network!r}; start it with --network {genesis.network}"
        )
    return genesis


def _peer_of(address: str) -> str:
    """The peer id at the end of a ``/.../p2p/<id>`` multiaddr (the whole text if it has none)."""
    return address.rsplit("/p2p/", 1)[-1]


class _JobAbandoned(Exception):
    """Raised inside the engine's thread to stop generating a job nobody waits for any more."""


async def _try_send(stream: FrameStream, message: Message) -> None:
    try:
        await stream.send(message)
    except OpenGridError:
        pass


def _short(peer: str) -> str:
    return peer[-8:]


async def serve(config: NodeConfig) -> None:
    """Run a node until cancelled (the CLI cancels on SIGINT/SIGTERM)."""
    node = Node(config)
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)

"""The node: a trio service that drives the sans-IO core over libp2p.

``Node`` only wires: it opens the ledger store, the engine (opengrid/node/engine_setup.py) and the libp2p
host, builds its parts around one shared ``NodeContext`` (opengrid/node/context.py) and starts their tasks
in one nursery, so nothing outlives ``run``. The parts:

- ``Router`` (router.py): inbound streams, a table of handlers keyed by message type;
- ``CoordinatorDriver`` (coordinator_driver.py): events into the core coordinator, its effects carried
  out (replicas, answers, entries, receipts), its timers; ``CoordinatorRequests``
  (coordinator_requests.py): quotes, grants, workers' registrations;
- ``WorkerDriver`` (worker_driver.py): replicas run on the engine; ``Registration`` (registration.py):
  a worker's heartbeats to its coordinators;
- ``LedgerService`` (ledger_service.py): store, gossip, sync, FRAUD proofs, coordinator admission;
- ``Availability`` (availability.py): whether the node takes work (owner, policy, admission).
"""

from __future__ import annotations

import json
import logging
import pathlib
import random
import time
from collections.abc import Callable

import trio
from nacl.signing import SigningKey
from opengrid_ledger import ChainWriter, LedgerState

import opengrid
from opengrid.core.audit import GREEDY, SamplingParams
from opengrid.core.availability import Policy, parse_windows
from opengrid.core.coordinator import Coordinator, CoordinatorConfig
from opengrid.core.split_plan import ModelFootprint
from opengrid.core.worker import WorkerLogic
from opengrid.engines import Engine, ModelInfo
from opengrid.engines.catalog import pinned_params
from opengrid.engines.http import ManagedServer
from opengrid.errors import ConfigError, OpenGridError
from opengrid.net.announce import ModelAd
from opengrid.net.host import (
    BEAT_PROTOCOL,
    JOB_PROTOCOL,
    RUN_PROTOCOL,
    Host,
    beat_idle_s,
    derive_psk,
)
from opengrid.net.lan import LanDiscovery
from opengrid.net.pool import StreamPool
from opengrid.net.relay import RELAY_TIMING, RelayTiming, ReservationKeeper
from opengrid.net.split import SplitLimits, SplitMember
from opengrid.net.transport import LIBP2P, StreamHost, Transport
from opengrid.node import engine_setup
from opengrid.node.api import ApiSettings
from opengrid.node.api_service import ApiService
from opengrid.node.autorelay import AutoRelay
from opengrid.node.availability import Availability
from opengrid.node.config import NodeConfig, load_genesis
from opengrid.node.context import NodeContext, TaskStatus
from opengrid.node.coordinator_admission import CoordinatorAdmission
from opengrid.node.coordinator_driver import CoordinatorDriver
from opengrid.node.coordinator_requests import CoordinatorRequests
from opengrid.node.identity import load_or_create_seed
from opengrid.node.lan_join import join_lan
from opengrid.node.ledger_service import LedgerService
from opengrid.node.ledger_sync import SYNC_PROTOCOL
from opengrid.node.lookups import Lookups
from opengrid.node.membership import Membership
from opengrid.node.registration import Registration
from opengrid.node.reporting import node_status, status_line_loop
from opengrid.node.router import Router
from opengrid.node.split_group import SplitGroup, check_member, lend_memory
from opengrid.node.timing import TimingTrace
from opengrid.node.trust import load_trusted
from opengrid.node.worker_driver import WorkerDriver
from opengrid.store.auditor_store import AuditorStore, open_auditor_journal
from opengrid.store.grant_store import GrantStore, open_grant_journal
from opengrid.store.job_store import JOBS_FILE, JobStore
from opengrid.store.ledger_store import open_ledger
from opengrid.wire.messages import (
    ErrorReply,
    JobAccepted,
    ModelOffer,
    NodeStatus,
    PromptFormat,
)

log = logging.getLogger("opengrid.node")
NODE_INFO_FILE = "node.json"


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
        transport: Transport = LIBP2P,
        relay_timing: RelayTiming = RELAY_TIMING,
    ) -> None:
        """``rng``: the coordinator's random stream (worker choice); a fresh unseeded one by default.
        Tests pass a seeded one to compare decisions with other drivers (tests/simulations).
        ``trace_timing``: append the points each job passes to this file (opengrid/node/timing.py).
        ``transport``: where the host, gossip and DHT come from (opengrid/net/transport.py); tests pass
        an in-memory network (opengrid.testing.memnet), which offers no relays and no LAN discovery.
        ``relay_timing``: how often relay keepers and auto-relay retry and look (tests shorten it)."""
        config = config.validated()
        self._transport = transport
        self._relay_timing = relay_timing
        self._rng = rng if rng is not None else random.Random()
        self._api = api
        self._trace_path = trace_frames
        self._timing_path = trace_timing
        self._coordinator_config = coordinator_config or CoordinatorConfig(
            **config.coordinator_settings(),
            model_params=pinned_params(),
        )
        self.api_urls: list[str] = []
        self._seed = load_or_create_seed(config.data_dir)
        self.ctx = NodeContext(config=config, key=SigningKey(self._seed), engine=engine)
        """The state this node's parts share."""
        self.public_key = self.ctx.public_key
        self._server: ManagedServer | None = None
        self._grant_store: GrantStore | None = None
        self._auditor_store: AuditorStore | None = None
        """Coordinators: the last day's starting-grant vouchers (the rate limit survives restarts)."""
        self.availability = Availability(self.ctx)
        self.ledger_service = LedgerService(self.ctx)
        self.coordinator_driver = CoordinatorDriver(self.ctx, self.ledger_service)
        self.coordinator_requests = CoordinatorRequests(self.ctx, self.coordinator_driver)
        self.worker_driver = WorkerDriver(self.ctx)
        self.registration = Registration(self.ctx, self.ledger_service, self.availability)
        self.lookups = Lookups(self.ctx, self.coordinator_driver)
        self.router = Router(
            self.ctx,
            availability=self.availability,
            ledger=self.ledger_service,
            coordinator=self.coordinator_driver,
            requests=self.coordinator_requests,
            worker=self.worker_driver,
            status=self.status,
            history=self.lookups.history,
            receipt=self.lookups.receipt,
        )
        self.api_service = ApiService(self.ctx, self.coordinator_driver, self.registration)
        self.split_member: SplitMember | None = None
        """``--split-member`` nodes: what they lend to split groups (spec/split.md §7)."""
        self.split_group: SplitGroup | None = None
        """A worker whose model does not fit its ``--max-memory``: the split group it heads."""
        self._group_needed: tuple[ModelInfo, ModelFootprint] | None = None
        self.auto_relay: AutoRelay | None = None
        self.lan: LanDiscovery | None = None
        """LAN discovery (mDNS) while the node runs with ``lan`` on and an IPv4 listen address."""
        """Without configured relays: the relay taken when peers cannot dial us (spec/discovery.md §9.3)."""

    # ── the shared state, as tests and the CLI read it ───────────────────────────────────────────────
    @property
    def config(self) -> NodeConfig:
        return self.ctx.config

    @property
    def host(self) -> StreamHost | None:
        return self.ctx.host

    @property
    def ledger(self) -> LedgerState | None:
        return self.ctx.ledger

    @property
    def coordinator(self) -> Coordinator | None:
        return self.ctx.coordinator

    @property
    def worker(self) -> WorkerLogic | None:
        return self.ctx.worker

    @property
    def membership(self) -> Membership | None:
        return self.ctx.membership

    @property
    def admission(self) -> CoordinatorAdmission | None:
        return self.ctx.admission

    @property
    def timing(self) -> TimingTrace:
        """Where this node's jobs spend their time (``--trace-timing``); records nothing by default."""
        return self.ctx.timing

    @property
    def relay_keepers(self) -> list[ReservationKeeper]:
        """Reservations on the relays we are reachable through (``NodeConfig.relays``)."""
        return self.ctx.relay_keepers

    @property
    def tier(self) -> str:
        return self.ctx.tier

    @property
    def tokens_per_s(self) -> float:
        return self.ctx.tokens_per_s

    @property
    def registered(self) -> trio.Event:
        """Workers: set once the coordinator accepted our first registration."""
        return self.registration.registered

    @property
    def jobs_run(self) -> int:
        """Workers: replicas this node has run."""
        return self.worker_driver.jobs_run

    @property
    def paused(self) -> bool:
        """True while the node takes no new work (``Availability.paused``)."""
        return self.availability.paused

    @property
    def pause_reason(self) -> str:
        """Why the node takes no work ("" when it does)."""
        return self.availability.pause_reason

    # ── lifecycle ────────────────────────────────────────────────────────────────────────────────────
    async def run(self, *, task_status: TaskStatus[Node] = trio.TASK_STATUS_IGNORED) -> None:
        """Start, signal readiness with ``task_status.started(self)``, and serve until cancelled."""
        ctx, config = self.ctx, self.ctx.config
        try:  # the trace files' folders are created like the data dir; a path we cannot write is the user's
            if self._trace_path is not None:
                self._trace_path.parent.mkdir(parents=True, exist_ok=True)
                ctx.trace_file = self._trace_path.open("ab")
            if self._timing_path is not None:
                ctx.timing = TimingTrace(self._timing_path)
        except OSError as exc:
            if ctx.trace_file is not None:  # the frames file opened, the timing file did not
                ctx.trace_file.close()
                ctx.trace_file = None
            raise ConfigError(
                f"cannot write the trace file {exc.filename}: {exc.strerror or exc}; "
                "choose a writable path for --trace-frames / --trace-timing"
            ) from exc
        genesis = load_genesis(config)
        # A genesis that names coordinators fixes the set: genesis + ADMIT entries, the same on every node
        # (spec/ledger.md §7); without one, a node trusts itself and the coordinators it registered with.
        closed = genesis is not None and bool(genesis.coordinators)
        minters = [] if closed else load_trusted(config.data_dir)
        if config.role == "coordinator" and not closed:
            minters.append(self.public_key)
        ctx.ledger, ctx.store = open_ledger(
            config.data_dir, config.network, minters, genesis=genesis, closed=closed
        )
        ctx.chain = ChainWriter(ctx.ledger, ctx.key)
        try:
            if config.serves_models:
                await self._start_worker()
            if config.split_member:
                check_member()  # before the host opens: a member that cannot serve says so at once
            ctx.tier, ctx.tokens_per_s = await engine_setup.probe(
                ctx.engine, skip_speed_test=config.skip_speed_test
            )
            psk = derive_psk(config.network, config.network_key) if config.network_key else None
            opened = self._transport.open_host(self._seed, config.listen, psk=psk, relay=bool(config.relay))
            async with opened as host:
                await self._serve(host, task_status)
        finally:
            ctx.nursery = None
            if ctx.engine is not None:
                ctx.engine.close()
            if self._server is not None:
                await trio.to_thread.run_sync(self._server.stop)
            if ctx.trace_file is not None:
                ctx.trace_file.close()
            ctx.timing.close()
            if self.coordinator_driver.job_store is not None:
                self.coordinator_driver.job_store.close()
            if self._grant_store is not None:
                self._grant_store.close()
            if self._auditor_store is not None:
                self._auditor_store.close()
            ctx.store.close()
            log.info("node stopped cleanly")

    async def _serve(self, host: StreamHost, task_status: TaskStatus[Node]) -> None:
        """With the host open: install the stream handlers, start every part's tasks, serve."""
        ctx, config = self.ctx, self.ctx.config
        assert ctx.ledger is not None
        ctx.host = host
        ctx.timing.node = host.peer_id
        self.coordinator_driver.runs = StreamPool(host, RUN_PROTOCOL, fallbacks=(JOB_PROTOCOL,))
        self.registration.beats = StreamPool(host, BEAT_PROTOCOL, fallbacks=(JOB_PROTOCOL,), idle_per_peer=1)
        host.set_handler(self.router.serve_stream)
        if config.role == "coordinator":
            host.set_handler(self.router.serve_beats, BEAT_PROTOCOL, idle_s=beat_idle_s(config.heartbeat_s))
        host.set_handler(self.ledger_service.serve_sync, SYNC_PROTOCOL)  # type: ignore[arg-type]
        async with trio.open_nursery() as nursery:
            ctx.nursery = nursery
            # Reserve first, so the first announcement and registration carry the relayed address.
            libp2p = host if isinstance(host, Host) else None  # relays, LAN, auto relay: libp2p's only
            timing, relays = self._relay_timing, config.relays
            ctx.relay_keepers = [ReservationKeeper(libp2p, a, timing) for a in relays] if libp2p else []
            for keeper in ctx.relay_keepers:
                await nursery.start(keeper.run)
            ctx.membership = Membership(
                host,
                network=config.network,
                signing_key=ctx.key,
                role=config.role,
                models=self._model_ads(),
                software=f"opengrid/{opengrid.__version__}",
                tier=ctx.tier,
                tokens_per_s=ctx.tokens_per_s,
                announce_s=config.announce_s,
                bootstrap=config.bootstrap,
                ledger_validator=self.ledger_service.valid_gossip,
                relay=bool(config.relay),
                # DHT servers: reachable, long-lived nodes (spec/discovery.md §4.6)
                dht_server=bool(config.listen) and (config.role == "coordinator" or bool(config.relay)),
                transport=self._transport,
            )
            await nursery.start(ctx.membership.run)
            if config.lan and libp2p is not None:
                self.lan = await nursery.start(join_lan, libp2p, config)
            if libp2p is not None:
                self.auto_relay = AutoRelay(
                    libp2p, ctx.membership, bootstrap=config.bootstrap, given=ctx.relay_keepers, timing=timing
                )
                await nursery.start(self.auto_relay.run)
            nursery.start_soon(self.ledger_service.gossip_loop)
            if config.role == "coordinator":
                ctx.coordinator = Coordinator(
                    network=config.network,
                    signing_key=ctx.key,
                    ledger=ctx.ledger,
                    rng=self._rng,
                    config=self._coordinator_config,
                    chain=ctx.chain,
                )
                driver = self.coordinator_driver
                driver.job_store = JobStore(config.data_dir / JOBS_FILE)
                self._grant_store = open_grant_journal(config.data_dir, ctx.coordinator.grants, time.time())
                self._auditor_store = open_auditor_journal(config.data_dir, ctx.coordinator)
                saved = driver.job_store.all()
                if saved:
                    driver.resume(saved)
                nursery.start_soon(driver.timer_loop)
                nursery.start_soon(self.ledger_service.peer_sync_loop)
                self.ledger_service.start_admission(nursery)
            if ctx.worker is not None:
                self._start_worker_tasks(nursery)
            if config.split_member:
                assert config.max_memory is not None
                limits = SplitLimits(config.max_memory, rpc_threads=config.threads or 1)
                self.split_member = await nursery.start(
                    lend_memory, host, ctx.membership.gossip, limits, ctx.key
                )
            if self._group_needed is not None:
                nursery.start_soon(self._head_group, nursery)
            if self._api is not None:
                self.api_urls = await nursery.start(self.api_service.serve, self._api)
            nursery.start_soon(status_line_loop, self)
            self._write_node_info()
            log.info(
                "%s %s ready on %s (ledger: %d entries)",
                config.role,
                host.peer_id,
                ", ".join(host.addrs()),
                len(ctx.ledger),
            )
            task_status.started(self)
            await trio.sleep_forever()

    def _start_worker_tasks(self, nursery: trio.Nursery) -> None:
        """A worker's tasks: take runs, register with coordinators, sync the ledger, keep its hours."""
        ctx, config = self.ctx, self.ctx.config
        assert ctx.host is not None
        ctx.host.set_handler(self.router.serve_runs, RUN_PROTOCOL)
        registration = self.registration
        nursery.start_soon(registration.register_loop)
        nursery.start_soon(
            self.ledger_service.sync_loop,
            registration.registered,
            lambda: list(registration.coordinators),
        )
        policy = Policy(windows=parse_windows(config.work_hours), max_load=config.max_load)
        if policy != Policy():
            nursery.start_soon(self.availability.policy_loop, policy, lambda: self.worker_driver.running)

    async def _head_group(self, nursery: trio.Nursery) -> None:
        """Form the split group this worker's model needs (spec/split.md §3), then serve as a worker whose
        engine is the group."""
        ctx, config = self.ctx, self.ctx.config
        assert self._group_needed is not None and ctx.host is not None and ctx.membership is not None
        info, footprint = self._group_needed
        assert config.max_memory is not None
        log.info(
            "%s needs %d MiB, over this node's --max-memory %d MiB: forming a split group",
            info.name,
            footprint.total_bytes >> 20,
            config.max_memory >> 20,
        )
        self.split_group = SplitGroup(
            ctx.host,
            ctx.membership.gossip,
            info,
            footprint,
            max_memory=config.max_memory,
            n_ctx=config.max_context,
            n_threads=config.threads,
        )
        try:
            ctx.engine = await nursery.start(self.split_group.run)
        except OpenGridError as exc:
            log.error("this worker serves nothing: %s", exc)
            return
        self._make_worker()
        ctx.membership.gossip.update(models=self._model_ads())
        self._start_worker_tasks(nursery)

    async def _start_worker(self) -> None:
        ctx = self.ctx
        assert ctx.ledger is not None
        if ctx.engine is None:
            self._group_needed = await engine_setup.split_needed(ctx.config)
            if self._group_needed is not None:
                return  # the engine is the split group, formed once the host is up (_head_group)
            ctx.engine = await engine_setup.open_engine(
                ctx.config, ctx.public_key, own_server=self._own_server
            )
        self._make_worker()

    def _make_worker(self) -> None:
        ctx = self.ctx
        assert ctx.ledger is not None and ctx.engine is not None
        ctx.worker = WorkerLogic(
            network=ctx.config.network,
            signing_key=ctx.key,
            offers=(engine_setup.offer_of(ctx.engine),),
            ledger=ctx.ledger,
            max_tokens_limit=ctx.config.max_tokens_per_job,
        )

    def _own_server(self, server: ManagedServer) -> None:
        self._server = server  # stopped in run()'s finally, with the node

    def _model_ads(self) -> list[ModelAd]:
        if self.worker is None:
            return []
        return [ModelAd(o.name, o.contract.model_sha256, o.contract.digest()) for o in self.worker.offers]

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

    async def drain(self) -> None:
        """Take no new work and return once the work in hand is done (a worker's running jobs, a
        coordinator's open jobs). Callers bound it with a timeout; the node keeps serving meanwhile."""
        self.availability.owner_paused = True
        worker, jobs = self.worker_driver, self.coordinator_driver.jobs
        while worker.running or worker.replying or jobs:
            await trio.sleep(0.05)
        log.info("no work left in hand")

    async def sync_ledger(self, peer: str) -> int:
        """Sync our ledger with ``peer``'s; return how many entries we gained (stored)."""
        return await self.ledger_service.sync_ledger(peer)

    # ── OpenAI-compatible API (opengrid.node.api.ApiBackend) ─────────────────────────────────────────
    def api_models(self) -> list[ModelOffer]:
        """Models a client of this node's API can ask for."""
        return self.api_service.api_models()

    async def api_submit(
        self,
        *,
        prompt: str,
        model: str,
        max_tokens: int,
        replicas: int,
        format: PromptFormat,
        client: str = "",
        sampling: SamplingParams = GREEDY,
        job_id: bytes = b"",
        on_verified: Callable[[str], None] | None = None,
    ) -> JobAccepted | ErrorReply:
        """Run one verified job: on this node if it coordinates, else through its coordinator. ``client``:
        the API user (``opengrid.node.api.api_client``), its own client of the coordinator's queue;
        ``job_id`` and ``on_verified``: see ``ApiService.api_submit``."""
        return await self.api_service.api_submit(
            prompt=prompt,
            model=model,
            max_tokens=max_tokens,
            replicas=replicas,
            format=format,
            client=client,
            sampling=sampling,
            job_id=job_id,
            on_verified=on_verified,
        )

    # ── status ───────────────────────────────────────────────────────────────────────────────────────
    def points(self) -> int:
        """This node's balance in its own ledger."""
        return self.ctx.points()

    def status(self) -> NodeStatus:
        """What this node reports about itself; its points come from its own ledger."""
        return node_status(self)


async def serve(config: NodeConfig) -> None:
    """Run a node until cancelled (the CLI cancels on SIGINT/SIGTERM)."""
    node = Node(config)
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)

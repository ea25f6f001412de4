"""Split groups on a running grid (spec/split.md §3, §7): a member lends memory, a head forms a group.

- **Member** (``opengrid node start --split-member --max-memory SIZE``): serves ``/opengrid/split/1``
  (:class:`~opengrid.net.split.SplitMember`) within its ``--max-memory`` and announces what it has left
  (``Announcement.free_memory``) at every beat. It needs no model file: the head sends the weights of the
  layers it holds.
- **Head** (a worker whose model does not fit its own ``--max-memory``): :class:`SplitGroup` plans a group
  from the members it hears on gossip (free memory; ``opengrid.core.split_plan``), invites them, tunnels
  llama.cpp's RPC connections to them and loads a :class:`~opengrid.engines.split.SplitEngine`. The node
  then registers with its coordinators as one worker whose engine is :class:`GroupEngine`.
- **Failover**: when a member dies mid-job, the head's llama.cpp fails (``EngineError``); ``GroupEngine``
  re-forms the group (the dead member cannot be reached, so the plan leaves it out) and runs the call again.
  Greedy and seeded decoding are deterministic on one build, so the run gives the same tokens; the tokens
  the first run already streamed are not streamed twice. The client sees no error.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import msgspec
import trio
from nacl.signing import SigningKey
from opengrid_ledger import Attestation

from opengrid.core.split_plan import (
    MAX_NEIGHBOUR_RTT_MS,
    ModelFootprint,
    SplitCandidate,
    SplitPlan,
    plan_split,
)
from opengrid.engines.base import Generation, GenerationRequest, ModelInfo, ScoreRequest, Scoring
from opengrid.errors import BadRequestError, ConfigError, EngineError, NoCapacityError, OpenGridError
from opengrid.net.split import MemberLease, SplitHead, SplitLimits, SplitMember
from opengrid.wire.contract import DecodingContract
from opengrid.wire.messages import GroupShare, ReplicaResult, SplitShares

if TYPE_CHECKING:
    from opengrid.engines.split import SplitEngine
    from opengrid.net.transport import PubSub, StreamHost
    from opengrid.node.config import NodeConfig
    from opengrid.node.context import TaskStatus

__all__ = [
    "GroupEngine",
    "SplitGroup",
    "check_member",
    "footprint_if_too_big",
    "lend_memory",
    "split_members",
]

log = logging.getLogger("opengrid.split")

FORM_TIMEOUT_S = 600.0
"""How long a head waits for enough members to form its group before it gives up (the node then serves
nothing, and says why)."""
AVOID_S = 60.0
"""A member that refused an invitation or could not be reached is left out of plans for this long."""
SESSION_TTL_S = 24 * 3600
"""The time-to-live a head asks of its members' sessions: a member's cap (``SplitLimits.max_ttl_s``). A
session that ends (its time ran out, or it sat idle) fails the next call, which re-forms the group."""
RTT_TTL_S = 60.0
"""A candidate's measured round trip is reused for this long."""
MAX_PROBED = 16
"""Candidates (largest offers first) whose round trip a head measures per planning pass: as many as a
group may have members (llama.cpp's limit on RPC servers)."""
REFORM_TIMEOUT_S = 60.0
"""How long a failed call waits for a new group (a job in flight waits on it; past this the call fails
and the coordinator moves the job to another worker)."""
MAX_REFORMS = 2
"""Times one engine call is run again on a re-formed group before its error reaches the job."""


def footprint_if_too_big(config: NodeConfig, info: ModelInfo) -> ModelFootprint | None:
    """The footprint of ``info`` at the node's context window when it does not fit the node's
    ``--max-memory`` (the node must head a split group), else None (no cap, or it fits)."""
    if config.max_memory is None:
        return None
    from opengrid.engines.footprint import model_footprint

    fp = model_footprint(info.path, n_ctx=config.max_context)
    if fp.total_bytes <= config.max_memory:
        return None
    fixed = fp.input_bytes + fp.output_bytes + fp.overhead_bytes
    if config.max_memory < fixed:  # no group helps: the head must hold these itself (split.md §3)
        raise ConfigError(
            f"{info.name} needs {fp.total_bytes >> 20} MiB, more than --max-memory {config.max_memory >> 20} "
            f"MiB; as the head of a split group this node must still hold its input and output layers and "
            f"scratch ({fixed >> 20} MiB): give it at least --max-memory {-(-fixed // (1 << 20))}M"
        )
    _require_rpc("a model larger than --max-memory runs as a split group")
    return fp


def _require_rpc(why: str) -> None:
    from opengrid.engines.ggml_rpc import rpc_available

    if not rpc_available():
        raise ConfigError(
            f"{why}, which needs llama-cpp-python built with llama.cpp's RPC backend (-DGGML_RPC=ON, as "
            "scripts/setup.sh builds it); this one has none"
        )


def check_member() -> None:
    """ConfigError unless this node can lend memory (``--split-member``): its RPC servers need ggml-rpc."""
    _require_rpc("--split-member lends memory to split groups")


async def lend_memory(
    host: StreamHost,
    gossip: PubSub,
    limits: SplitLimits,
    signing_key: SigningKey,
    *,
    task_status: TaskStatus[SplitMember],
) -> None:
    """Serve ``/opengrid/split/1`` as a member within ``limits`` (co-signing its heads' jobs with
    ``signing_key``, the node's identity) and keep the announced ``free_memory`` equal to what is left;
    ``task_status.started(member)``; runs until cancelled."""
    changed = trio.Event()

    def on_change() -> None:
        changed.set()

    member = SplitMember(host, limits, on_change=on_change, signing_key=signing_key, network=gossip.network)
    gossip.update(free_memory=member.free_bytes)
    async with trio.open_nursery() as nursery:
        await nursery.start(member.run)
        task_status.started(member)
        while True:  # for the node's life: one update per session change
            await changed.wait()
            changed = trio.Event()
            gossip.update(free_memory=member.free_bytes)
            await gossip.announce_now()  # heads plan from it: do not let them wait a beat


@dataclass(frozen=True)
class GroupView:
    """What ``opengrid status`` shows of a head's group: who runs which layers."""

    head: str
    head_layers: int
    members: tuple[tuple[str, int, int], ...]
    """(peer, first layer, layer count) per member, in layer order."""
    n_layers: int
    formed: int
    """Groups formed so far (1 + re-formations after a member left)."""


class SplitGroup:
    """A head's split group: plans it from gossip, invites the members, serves their tunnels' loopback
    endpoints and loads the engine; re-forms it on request (:meth:`reform`). Run with
    ``engine = await nursery.start(group.run)``."""

    def __init__(
        self,
        host: StreamHost,
        gossip: PubSub,
        info: ModelInfo,
        footprint: ModelFootprint,
        *,
        max_memory: int,
        n_ctx: int,
        n_threads: int | None,
        form_timeout_s: float = FORM_TIMEOUT_S,
    ) -> None:
        self._host = host
        self._gossip = gossip
        self._info = info
        self._footprint = footprint
        self._max_memory = max_memory
        self._n_ctx = n_ctx
        self._n_threads = n_threads
        self._form_timeout_s = form_timeout_s
        self.head = SplitHead(host)
        self.plan: SplitPlan | None = None
        self.formed = 0
        self._leases: list[MemberLease] = []
        self._avoid: dict[str, float] = {}
        self._rtt: dict[str, tuple[float, float]] = {}
        """peer -> (round trip in seconds, when measured): the planner's RTT bound (split.md §3)."""
        self._endpoints: trio.CancelScope | None = None
        self._nursery: trio.Nursery | None = None
        self._engine: SplitEngine | None = None
        self._lock = trio.Lock()

    @property
    def model(self) -> str:
        """The name of the model the group runs."""
        return self._info.name

    def view(self) -> GroupView | None:
        """The group now (None before it is formed)."""
        plan = self.plan
        if plan is None:
            return None
        members = tuple((m.peer, m.first, m.count) for m in plan.members)
        return GroupView(plan.head, plan.head_layers, members, plan.n_layers, self.formed)

    async def run(self, *, task_status: TaskStatus[GroupEngine]) -> None:
        """Form the group and hand back its engine; serve the tunnels until cancelled, then end the
        members' sessions."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                engine = await self._form()
                task_status.started(GroupEngine(self, engine))
                await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                await self._release()

    async def reform(self, why: str) -> SplitEngine:
        """A new group after ``why`` (the old engine failed): its engine. Raises NoCapacityError when no
        group can be formed within the form timeout."""
        async with self._lock:
            log.warning("split group for %s failed (%s); re-forming it", self._info.name, why)
            await self._release()
            return await self._form(min(self._form_timeout_s, REFORM_TIMEOUT_S))

    async def co_sign(self, result: ReplicaResult) -> ReplicaResult:
        """``result`` (the head's) with the group's shares: each member's attestation of the same output
        and the layers it ran, so the receipt credits it (spec/split.md §8). A member that cannot be
        asked or refuses is left out (it is not credited; the job's answer is unaffected)."""
        plan = self.plan
        if plan is None or not self._leases:
            return result
        att = msgspec.msgpack.decode(result.attestation, type=Attestation)
        layers = {m.peer: m.count for m in plan.members}
        shares = []
        for lease in self._leases:
            try:
                signed = await self.head.attest(
                    lease,
                    job_id=att.job_id,
                    contract_hash=att.contract_hash,
                    output_commitment=att.output_commitment,
                    n_tokens=att.n_tokens,
                )
            except OpenGridError as exc:
                log.warning("member %s did not co-sign job %s: %s", lease.peer, att.job_id.hex()[:8], exc)
                continue
            shares.append(GroupShare(signed, layers.get(lease.peer, 1)))
        if not shares:
            return result
        return msgspec.structs.replace(result, group=SplitShares(plan.head_layers, shares))

    async def _release(self) -> None:
        """End the old group: its engine, its endpoints, its members' sessions (best effort)."""
        engine, self._engine = self._engine, None
        if engine is not None:
            await trio.to_thread.run_sync(engine.close)
        if self._endpoints is not None:
            self._endpoints.cancel()
            self._endpoints = None
        leases, self._leases = self._leases, []
        for lease in leases:
            if not await self.head.close(lease, timeout_s=2.0):
                self._avoid[lease.peer] = trio.current_time() + AVOID_S

    async def _candidates(self) -> list[SplitCandidate]:
        """Online peers lending memory, largest offers first, each with its round trip to this head
        (measured, then kept ``RTT_TTL_S``; at most ``MAX_PROBED`` probed per pass). A peer that cannot
        be reached is avoided for ``AVOID_S``."""
        now = trio.current_time()
        me = self._host.peer_id
        offers = sorted(
            (
                (a.free_memory, a.peer_id)
                for a in self._gossip.directory.online(now)
                if a.peer_id != me and a.free_memory > 0 and self._avoid.get(a.peer_id, 0.0) <= now
            ),
            reverse=True,
        )[:MAX_PROBED]
        self._rtt = {p: v for p, v in self._rtt.items() if any(p == peer for _, peer in offers)}  # bounded
        out = []
        for free, peer in offers:
            known = self._rtt.get(peer)
            # One over the bound is measured again at the next pass: a busy moment must not bar it a minute.
            if known is None or now - known[1] > RTT_TTL_S or known[0] * 1000 > MAX_NEIGHBOUR_RTT_MS:
                try:
                    await self._connect(peer)
                    with trio.fail_after(10):
                        known = (await self._host.round_trip(peer, tries=3), trio.current_time())
                except (OpenGridError, trio.TooSlowError) as exc:
                    log.info("split candidate %s is unreachable (%s): left out for now", peer, exc)
                    self._avoid[peer] = trio.current_time() + AVOID_S
                    continue
                self._rtt[peer] = known
            out.append(SplitCandidate(peer, free, rtt_ms=known[0] * 1000))
        return out

    async def _form(self, timeout_s: float | None = None) -> SplitEngine:
        """Plan, invite, tunnel, load; retried as gossip changes until ``timeout_s`` (default: the form
        timeout)."""
        me = SplitCandidate(self._host.peer_id, self._max_memory)
        why = "no member heard yet"
        timeout_s = self._form_timeout_s if timeout_s is None else timeout_s
        with trio.move_on_after(timeout_s):
            while True:  # bounded by the timeout; each pass waits for news or a second
                try:
                    plan = plan_split(self._footprint, me, await self._candidates())
                except NoCapacityError as exc:
                    why = str(exc)
                else:
                    try:
                        return await self._start(plan)
                    except OpenGridError as exc:
                        why = str(exc)
                        log.info("could not form the split group for %s: %s", self._info.name, exc)
                with trio.move_on_after(1.0):
                    await self._gossip.changed.wait()
        raise NoCapacityError(
            f"no split group for {self._info.name} formed in {timeout_s:.0f} s: {why}; start "
            "members with `opengrid node start --split-member --max-memory SIZE`"
        )

    async def _start(self, plan: SplitPlan) -> SplitEngine:
        from opengrid.engines.split import SplitEngine

        assert self._nursery is not None
        leases: list[MemberLease] = []
        try:
            for share in plan.members:
                try:
                    await self._connect(share.peer)
                    leases.append(
                        await self.head.invite(
                            share.peer,
                            model_sha256=self._info.sha256,
                            units=share.count,
                            bytes_needed=share.bytes,
                            ttl_s=SESSION_TTL_S,
                            timeout_s=30.0,
                        )
                    )
                except (OpenGridError, trio.TooSlowError) as exc:
                    self._avoid[share.peer] = trio.current_time() + AVOID_S
                    raise NoCapacityError(f"member {share.peer} cannot join: {exc}") from exc
            endpoints = await self._nursery.start(self._serve_endpoints, leases)
            self._leases = leases
            leases = []
            engine = await trio.to_thread.run_sync(
                lambda: SplitEngine(
                    self._info,
                    endpoints,
                    plan.tensor_split,
                    plan.offloaded,
                    n_ctx=self._n_ctx,
                    n_threads=self._n_threads,
                )
            )
        except BaseException:
            for lease in leases:  # invited but never tunnelled: free their memory now
                with trio.CancelScope(shield=True):
                    await self.head.close(lease, timeout_s=2.0)
            if self._leases:
                with trio.CancelScope(shield=True):
                    await self._release()
            raise
        self._engine = engine
        self.plan = plan
        self.formed += 1
        log.info(
            "split group %d for %s: head %d layers, %s",
            self.formed,
            self._info.name,
            plan.head_layers,
            ", ".join(
                f"{m.peer[-8:]} layers {m.first}..{m.first + m.count - 1} "
                f"(RTT {self._rtt.get(m.peer, (0.0, 0.0))[0] * 1000:.1f} ms)"
                for m in plan.members
            ),
        )
        return engine

    async def _connect(self, peer: str) -> None:
        if peer in self._host.connected_peers():
            return
        entry = self._gossip.directory.get(peer)
        addrs = list(entry.announcement.addrs) if entry is not None else []
        errors = []
        for address in addrs[:4]:
            try:
                with trio.fail_after(10):
                    await self._host.connect(address)
                return
            except (OpenGridError, trio.TooSlowError) as exc:
                errors.append(str(exc) or type(exc).__name__)
        raise NoCapacityError(f"could not reach member {peer}: {'; '.join(errors) or 'no address'}")

    async def _serve_endpoints(
        self, leases: list[MemberLease], *, task_status: TaskStatus[list[str]]
    ) -> None:
        """One loopback endpoint per lease, until the group is released."""
        with trio.CancelScope() as scope:
            self._endpoints = scope
            async with trio.open_nursery() as nursery:
                endpoints = [await nursery.start(self.head.serve_endpoint, lease) for lease in leases]
                task_status.started(endpoints)


def split_members(engine: object) -> list[str] | msgspec.UnsetType:
    """The members of the group whose engine is ``engine``, in layer order (what a head's registration
    lists); unset for any other engine, or before the group formed."""
    if not isinstance(engine, GroupEngine) or engine.group.plan is None:
        return msgspec.UNSET
    return list(engine.group.plan.peers) or msgspec.UNSET


class GroupEngine:
    """The engine of a worker that heads a split group: the group's live :class:`SplitEngine`, with a
    failed call run again on a re-formed group (module docstring). Called from the worker's engine
    thread (it re-forms the group through ``trio.from_thread``)."""

    def __init__(self, group: SplitGroup, engine: SplitEngine) -> None:
        self.group = group
        self._engine = engine
        self.reforms = 0
        """Calls that were run again on a new group (tests and statistics)."""

    @property
    def model(self) -> ModelInfo:
        """The model the group runs."""
        return self._engine.model

    @property
    def contract(self) -> DecodingContract:
        """The group's decoding contract (backend ``llama.cpp+rpc``: its numerical class)."""
        return self._engine.contract

    @property
    def n_params(self) -> int:
        """Parameters of the whole model."""
        return self._engine.n_params

    @property
    def n_vocab(self) -> int:
        """Vocabulary size."""
        return self._engine.n_vocab

    @property
    def n_ctx(self) -> int:
        """Context window."""
        return self._engine.n_ctx

    def generate(self, request: GenerationRequest) -> Generation:
        """Completion of ``request`` on the group; blocking."""
        return self.generate_streaming(request, None)

    def generate_streaming(
        self,
        request: GenerationRequest,
        on_text: Callable[[str], None] | None,
        on_token: Callable[[int, str], None] | None = None,
    ) -> Generation:
        """Like ``SplitEngine.generate_streaming``; a run again after a failover reports only the tokens
        past those already reported."""
        reported = seen = 0

        def token(token_id: int, piece: str) -> None:
            nonlocal reported, seen
            seen += 1
            if seen <= reported:
                return  # the failed run reported it already (same tokens: deterministic decoding)
            reported = seen
            if on_token is not None:
                on_token(token_id, piece)
            if on_text is not None and piece:
                on_text(piece)

        streaming = on_text is not None or on_token is not None
        for attempt in range(MAX_REFORMS + 1):
            seen = 0
            engine = self._engine
            try:
                return engine.generate_streaming(request, None, token if streaming else None)
            except BadRequestError:
                raise  # the request's own fault: a new group would refuse it too
            except EngineError as exc:
                if attempt == MAX_REFORMS:
                    raise
                self._failover(engine, exc)
        raise AssertionError("unreachable")  # pragma: no cover

    def score(self, request: ScoreRequest) -> Scoring:
        """Audit a claimed output on the group (run again on a re-formed group after a failover)."""
        for attempt in range(MAX_REFORMS + 1):
            engine = self._engine
            try:
                return engine.score(request)
            except BadRequestError:
                raise
            except EngineError as exc:
                if attempt == MAX_REFORMS:
                    raise
                self._failover(engine, exc)
        raise AssertionError("unreachable")  # pragma: no cover

    def _failover(self, failed: SplitEngine, exc: EngineError) -> None:
        if self._engine is failed:  # another call may have re-formed it already
            try:
                self._engine = trio.from_thread.run(self.group.reform, str(exc))
            except OpenGridError as why:  # no group in time: the job fails over to another worker
                raise EngineError(f"{exc}; and no new split group formed: {why}") from why
        self.reforms += 1

    def close(self) -> None:
        """End the engine (the group's sessions end with the node's SplitGroup task)."""
        self._engine.close()

    def __repr__(self) -> str:
        return f"GroupEngine({self._engine!r}, reforms={self.reforms})"

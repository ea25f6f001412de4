"""The split protocol ``/opengrid/split/1``: a member serves layers to the one head it agreed to, over a
libp2p tunnel to a ggml RPC server that listens on 127.0.0.1 only (spec/split.md §2, §4, §5).

Member side (:class:`SplitMember`): a head's ``SplitInvite`` asks for memory; if the member has it (within
its ``--max-memory``), it starts an RPC server child process (``opengrid.engines.rpc_server``) bound to a
loopback port, and answers ``SplitAccept`` with a random token. A later stream opening with
``SplitTunnel`` is connected to that server only if it comes from the same head (the peer id Noise
authenticated on the connection) with the session's token; its bytes then pass through the member's
``RpcGuard`` (commands, sizes, the memory budget). Sessions end on ``SplitClose``, when idle, at their
time-to-live, or when the node stops: the server process is killed and its memory freed.

Head side (:class:`SplitHead`): invites members, and for each accepted session listens on a loopback port
of its own; every connection llama.cpp opens there becomes one tunnel stream to the member.

Bounds (``SplitLimits``): sessions per member, tunnel streams per session, the byte budget, idle time and
time-to-live, and the bytes each read moves. Nothing here listens on anything but 127.0.0.1.
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
import subprocess
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import msgspec
import trio
from libp2p.custom_types import TProtocol
from nacl.signing import SigningKey
from opengrid_ledger import sign_attestation

from opengrid.core.rpc_guard import Allocations, RpcGuard, RpcRefused
from opengrid.errors import (
    NoCapacityError,
    OpenGridError,
    RemoteProtocolError,
    TransportError,
)
from opengrid.net.host import FrameStream
from opengrid.net.transport import StreamHost
from opengrid.wire.split import (
    SESSION_ID_BYTES,
    TOKEN_BYTES,
    SplitAccept,
    SplitAttest,
    SplitAttested,
    SplitClose,
    SplitInvite,
    SplitRefuse,
    SplitTunnel,
    SplitTunnelOk,
    decode_reply,
    decode_request,
    encode,
)

if TYPE_CHECKING:
    from trio_typing import TaskStatus  # trio-typing's stubs (a py-libp2p dependency) hide trio.TaskStatus

__all__ = [
    "LOOPBACK",
    "SPLIT_PROTOCOL",
    "MemberLease",
    "SplitHead",
    "SplitLimits",
    "SplitMember",
    "TunnelStats",
]

SPLIT_PROTOCOL = TProtocol("/opengrid/split/1")
LOOPBACK = "127.0.0.1"
log = logging.getLogger("opengrid.split")


@dataclass(frozen=True)
class SplitLimits:
    """What a member offers split groups and the bounds on what a head may do with it."""

    max_memory_bytes: int
    """The node's ``--max-memory``: all its sessions together hold at most this."""
    max_sessions: int = 4
    max_streams_per_session: int = 4
    """Tunnel streams open at once per session (llama.cpp opens one per RPC server)."""
    max_ttl_s: int = 24 * 3600
    idle_s: float = 600.0
    """A session with no tunnel byte for this long ends (its server is killed)."""
    rpc_threads: int = 1
    start_timeout_s: float = 30.0
    """The RPC server child must listen within this."""
    chunk_bytes: int = 256 * 1024
    """The most one read moves through a tunnel (each write is bounded by it)."""
    max_attestations: int = 100_000
    """Jobs a session's member co-signs (``SplitAttest``) at most: a bound on what a head may ask."""


@dataclass
class TunnelStats:
    """Bytes and reads through one session's tunnels (both sides keep one), and time spent in them."""

    to_member: int = 0
    to_head: int = 0
    reads: int = 0
    busy_s: float = 0.0
    """Seconds spent forwarding reads (writes included): the tunnel's own cost, per side."""


@dataclass
class _Session:
    session: bytes
    head: str
    token: bytes
    budget: int
    expires_at: float
    process: trio.Process
    port: int
    streams: int = 0
    last_active: float = 0.0
    ended: bool = False
    stats: TunnelStats = field(default_factory=TunnelStats)
    allocations: Allocations = field(default_factory=Allocations)
    tunnels: set[trio.CancelScope] = field(default_factory=set)
    """One scope per open tunnel, all cancelled when the session ends."""
    attested: int = 0


class SplitMember:
    """Serves ``/opengrid/split/1`` on ``host``: memory for split groups, within ``limits``."""

    def __init__(
        self,
        host: StreamHost,
        limits: SplitLimits,
        *,
        python: str | None = None,
        on_session: Callable[[int], None] | None = None,
        rpc_stream: Callable[[trio.SocketStream], trio.abc.Stream] | None = None,
        on_change: Callable[[], None] | None = None,
        signing_key: SigningKey | None = None,
        network: str = "",
    ) -> None:
        """``on_session(port)`` is called with each new session's RPC server port (benchmarks use it to
        compare the tunnel with a direct loopback connection); ``on_change()`` whenever a session starts
        or ends (the node re-announces its free memory). ``rpc_stream`` wraps each tunnel's connection to
        the RPC server; it exists for ``opengrid.testing.split_adversary`` (a member that tampers with its
        server's answers, to test that audits catch it) and a real node leaves it None."""
        self._on_session = on_session
        self._rpc_stream = rpc_stream
        self._on_change = on_change
        self._signing_key = signing_key
        """The node's identity key: co-signs the jobs its sessions ran (``SplitAttest``); None: refuses."""
        self._network = network
        self._host = host
        self.limits = limits
        self._python = python or sys.executable
        self._sessions: dict[bytes, _Session] = {}
        self._nursery: trio.Nursery | None = None
        self.refused = 0
        """Requests refused so far (tests and statistics)."""

    @property
    def reserved_bytes(self) -> int:
        """Memory promised to live sessions."""
        return sum(s.budget for s in self._sessions.values())

    @property
    def free_bytes(self) -> int:
        """What this node can still offer (what it announces)."""
        return max(0, self.limits.max_memory_bytes - self.reserved_bytes)

    def rpc_ports(self) -> list[int]:
        """Loopback ports of the RPC servers now running (tests check where they listen)."""
        return [s.port for s in self._sessions.values()]

    def sessions(self) -> list[tuple[str, int, TunnelStats]]:
        """(head, budget, stats) of each live session."""
        return [(s.head, s.budget, s.stats) for s in self._sessions.values()]

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve the protocol until cancelled; then end every session."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self._host.set_handler(self._serve, SPLIT_PROTOCOL)
                task_status.started()
                while True:  # for the node's life; one pass a second
                    await trio.sleep(1.0)
                    now = trio.current_time()
                    for s in list(self._sessions.values()):
                        if now >= s.expires_at or (
                            s.streams == 0 and now - s.last_active >= self.limits.idle_s
                        ):
                            log.info(
                                "split session %s of %s ended: %s",
                                s.session.hex()[:8],
                                s.head,
                                "its time ran out" if now >= s.expires_at else "idle",
                            )
                            await self._end(s)
        finally:
            with trio.CancelScope(shield=True):
                for s in list(self._sessions.values()):
                    await self._end(s)

    async def _serve(self, stream: FrameStream) -> None:
        request = decode_request(await stream.receive_body(), peer=stream.peer)
        if isinstance(request, SplitInvite):
            await self._invite(stream, request)
        elif isinstance(request, SplitTunnel):
            await self._tunnel(stream, request)
        elif isinstance(request, SplitAttest):
            await self._attest(stream, request)
        else:
            await self._close(stream, request)

    async def _refuse(self, stream: FrameStream, session: bytes, reason: str) -> None:
        self.refused += 1
        log.info("refused a split request from %s: %s", stream.peer, reason)
        await stream.send_body(encode(SplitRefuse(session, reason[:512])))

    async def _invite(self, stream: FrameStream, invite: SplitInvite) -> None:
        if invite.session in self._sessions:
            await self._refuse(stream, invite.session, "that session id is taken; pick another")
            return
        if len(self._sessions) >= self.limits.max_sessions:
            await self._refuse(
                stream, invite.session, f"this member serves {self.limits.max_sessions} sessions already"
            )
            return
        if invite.bytes > self.free_bytes:
            await self._refuse(
                stream,
                invite.session,
                f"asked for {invite.bytes} bytes; this member has {self.free_bytes} free of its "
                f"--max-memory {self.limits.max_memory_bytes}",
            )
            return
        ttl = min(invite.ttl_s, self.limits.max_ttl_s)
        try:
            process, port = await self._start_server()
        except OpenGridError as exc:
            await self._refuse(stream, invite.session, str(exc))
            return
        now = trio.current_time()
        session = _Session(
            invite.session,
            stream.peer,
            secrets.token_bytes(TOKEN_BYTES),
            invite.bytes,
            now + ttl,
            process,
            port,
            last_active=now,
        )
        self._sessions[invite.session] = session
        if self._on_session is not None:
            self._on_session(port)
        if self._on_change is not None:
            self._on_change()
        log.info(
            "split session %s: %d units of %s for head %s, %d bytes, RPC server on %s:%d",
            invite.session.hex()[:8],
            invite.units,
            invite.model_sha256[:12],
            stream.peer,
            invite.bytes,
            LOOPBACK,
            port,
        )
        await stream.send_body(encode(SplitAccept(invite.session, session.token, invite.bytes, ttl)))

    async def _start_server(self) -> tuple[trio.Process, int]:
        """Start an RPC server child; its port once it accepts connections."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        process = await trio.lowlevel.open_process(
            [self._python, "-m", "opengrid.engines.rpc_server", str(self.limits.rpc_threads)],
            stdin=subprocess.PIPE,  # held until the session ends: the server exits when it closes
            stdout=subprocess.PIPE,
            stderr=None,  # ggml's error lines (a refused command, a failed allocation) go to the node's
            env=env,
        )
        assert process.stdout is not None
        first = b""
        with trio.move_on_after(self.limits.start_timeout_s) as waited:
            while b"\n" not in first and len(first) < 64:
                chunk = await process.stdout.receive_some(64 - len(first))
                if not chunk:
                    break
                first += chunk
            line = first.split(b"\n", 1)[0]
            port = int(line[5:]) if b"\n" in first and line.startswith(b"port ") and line[5:].isdigit() else 0
            if port:
                for _ in range(int(self.limits.start_timeout_s / 0.02)):  # until it listens
                    try:
                        probe = await trio.open_tcp_stream(LOOPBACK, port)
                    except OSError:
                        if process.poll() is not None:
                            break
                        await trio.sleep(0.02)
                        continue
                    await probe.aclose()
                    assert self._nursery is not None
                    self._nursery.start_soon(_drain, process.stdout)  # ggml prints a line per connection
                    return process, port
        process.kill()
        with trio.CancelScope(shield=True):
            await process.wait()
        why = "in time" if waited.cancelled_caught else f"(it said {first[:64]!r}, exit {process.returncode})"
        raise NoCapacityError(f"the RPC server did not start {why}; is llama-cpp-python built with ggml-rpc?")

    async def _tunnel(self, stream: FrameStream, request: SplitTunnel) -> None:
        session = self._sessions.get(request.session)
        if session is None:
            await self._refuse(stream, request.session, "no such split session on this member")
            return
        # The peer id is Noise's: only the head that was accepted can be it. The token binds the stream to
        # the session that head agreed (a head with two sessions cannot mix them up).
        if stream.peer != session.head or not hmac.compare_digest(request.token, session.token):
            await self._refuse(stream, request.session, "this session was agreed with another head")
            return
        if session.streams >= self.limits.max_streams_per_session:
            await self._refuse(
                stream,
                request.session,
                f"the session has {self.limits.max_streams_per_session} tunnels open, the cap",
            )
            return
        try:
            tcp = await trio.open_tcp_stream(LOOPBACK, session.port)
        except OSError as exc:
            await self._refuse(stream, request.session, f"the RPC server is gone ({exc})")
            await self._end(session)
            return
        session.streams += 1
        rpc: trio.abc.Stream = tcp if self._rpc_stream is None else self._rpc_stream(tcp)
        guard = RpcGuard(session.budget, session.allocations)
        scope = trio.CancelScope()
        session.tunnels.add(scope)
        try:
            await stream.send_body(encode(SplitTunnelOk(request.session)))

            with scope:
                # the guard raises RpcRefused: the tunnel is cut
                await _pipe(
                    stream, rpc, session, self.limits, check=guard.feed, check_answer=guard.feed_answer
                )
        except RpcRefused:
            await self._end(session)  # a head that oversteps loses the session, and its memory
            raise
        finally:
            guard.close()  # the server frees the connection's buffers
            session.tunnels.discard(scope)
            session.streams -= 1
            session.last_active = trio.current_time()
            await rpc.aclose()

    async def _attest(self, stream: FrameStream, request: SplitAttest) -> None:
        """Co-sign a job's output for the head of a live session whose tunnels carried bytes: the
        member's claim to its share of the job's credit (spec/split.md §8). The member cannot check the
        output (it saw only activations); it vouches that it served the head, as the head vouches for
        the output."""
        session = self._sessions.get(request.session)
        if (
            session is None
            or stream.peer != session.head
            or not hmac.compare_digest(request.token, session.token)
        ):
            await self._refuse(stream, request.session, "no such session of yours on this member")
            return
        if self._signing_key is None:
            await self._refuse(stream, request.session, "this member does not co-sign jobs")
            return
        if session.stats.reads == 0:
            await self._refuse(stream, request.session, "this session ran nothing: no tunnel carried a byte")
            return
        if session.attested >= self.limits.max_attestations:
            await self._refuse(
                stream,
                request.session,
                f"this session co-signed {self.limits.max_attestations} jobs, the cap",
            )
            return
        try:
            attestation = sign_attestation(
                self._signing_key,
                self._network,
                request.job_id,
                request.contract_hash,
                request.output_commitment,
                request.n_tokens,
            )
        except OpenGridError as exc:
            await self._refuse(stream, request.session, f"cannot co-sign that: {exc}")
            return
        session.attested += 1
        await stream.send_body(encode(SplitAttested(request.session, msgspec.msgpack.encode(attestation))))

    async def _close(self, stream: FrameStream, request: SplitClose) -> None:
        session = self._sessions.get(request.session)
        if (
            session is None
            or stream.peer != session.head
            or not hmac.compare_digest(request.token, session.token)
        ):
            await self._refuse(stream, request.session, "no such session of yours on this member")
            return
        await self._end(session)
        await stream.send_body(encode(SplitTunnelOk(request.session)))

    async def _end(self, session: _Session) -> None:
        if session.ended:
            return
        session.ended = True
        self._sessions.pop(session.session, None)
        if self._on_change is not None:
            self._on_change()
        for scope in session.tunnels:
            scope.cancel()
        with trio.CancelScope(shield=True):
            if session.process.returncode is None:
                session.process.kill()
            await session.process.wait()
            for pipe in (session.process.stdin, session.process.stdout):
                if pipe is not None:
                    await pipe.aclose()


async def _drain(stdout: trio.abc.ReceiveStream) -> None:
    """Read and drop what an RPC server prints, so its pipe never fills and blocks it."""
    try:
        while await stdout.receive_some(4096):
            pass
    except (trio.ClosedResourceError, trio.BrokenResourceError):
        pass


async def _pipe(
    stream: FrameStream,
    tcp: trio.abc.Stream,
    session: _Session | None,
    limits: SplitLimits,
    *,
    check: Callable[[bytes], None] | None,
    check_answer: Callable[[bytes], None] | None = None,
    stats: TunnelStats | None = None,
    at_member: bool = True,
) -> None:
    """Move bytes both ways between a tunnel stream and a loopback connection until either side ends.

    ``check`` sees every byte that comes in over the tunnel and ``check_answer`` every byte that goes out,
    before it is sent (the member's guard); a refusal ends it."""
    stats = stats if stats is not None else (session.stats if session is not None else TunnelStats())
    chunk = limits.chunk_bytes

    async def inbound() -> None:  # tunnel -> loopback
        while data := await stream.read_raw(chunk):
            started = trio.current_time()
            if check is not None:
                check(data)
            await tcp.send_all(data)
            stats.busy_s += trio.current_time() - started
            if at_member:
                stats.to_member += len(data)
            else:
                stats.to_head += len(data)
            stats.reads += 1
            if session is not None:
                session.last_active = trio.current_time()

    async def outbound() -> None:  # loopback -> tunnel
        while True:
            try:
                data = await tcp.receive_some(chunk)
            except trio.BrokenResourceError:
                return
            if not data:
                return
            started = trio.current_time()
            if check_answer is not None:
                check_answer(data)
            await stream.write_raw(data)
            stats.busy_s += trio.current_time() - started
            if at_member:
                stats.to_head += len(data)
            else:
                stats.to_member += len(data)
            stats.reads += 1
            if session is not None:
                session.last_active = trio.current_time()

    refused: list[OpenGridError] = []

    async def either(fn: Callable[[], Awaitable[None]], nursery: trio.Nursery) -> None:
        """Run one direction; whichever ends first ends both. A peer or socket going away is the tunnel's
        normal end; an OpenGrid error (the guard's refusal) is re-raised once both have stopped."""
        try:
            await fn()
        except (TransportError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            log.debug("split tunnel with %s ended: %r", stream.peer, exc)
        except OpenGridError as exc:
            refused.append(exc)
        finally:
            nursery.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(either, inbound, nursery)
        nursery.start_soon(either, outbound, nursery)
    if refused:
        raise refused[0]


@dataclass(frozen=True)
class MemberLease:
    """A session a member accepted: what the head needs to open its tunnels."""

    peer: str
    session: bytes
    token: bytes
    bytes: int
    ttl_s: int


class SplitHead:
    """A head's side of ``/opengrid/split/1``: invitations, loopback endpoints, tunnels."""

    def __init__(self, host: StreamHost, *, chunk_bytes: int = 256 * 1024, max_connections: int = 4) -> None:
        self._host = host
        self._limits = SplitLimits(max_memory_bytes=0, chunk_bytes=chunk_bytes)
        self._max_connections = max_connections
        self.stats: dict[str, TunnelStats] = {}
        """member peer -> its tunnels' statistics as the head sees them."""

    async def invite(
        self,
        peer: str,
        *,
        model_sha256: str,
        units: int,
        bytes_needed: int,
        ttl_s: int = 3600,
        timeout_s: float = 60.0,
    ) -> MemberLease:
        """Ask ``peer`` to hold ``units`` layers in ``bytes_needed`` bytes; its lease, or NoCapacityError
        with the member's reason."""
        session = secrets.token_bytes(SESSION_ID_BYTES)
        with trio.fail_after(timeout_s):
            stream = await self._host.open_stream(peer, SPLIT_PROTOCOL)
            try:
                await stream.send_body(encode(SplitInvite(session, model_sha256, units, bytes_needed, ttl_s)))
                reply = decode_reply(await stream.receive_body(), peer=peer)
            finally:
                await stream.aclose()
        if isinstance(reply, SplitRefuse):
            raise NoCapacityError(f"member {peer} refused to hold {units} layers: {reply.reason}")
        if not isinstance(reply, SplitAccept) or reply.session != session:
            raise RemoteProtocolError(
                f"member {peer} answered an invitation with {type(reply).__name__}", peer=peer
            )
        return MemberLease(peer, session, reply.token, reply.bytes, reply.ttl_s)

    async def serve_endpoint(
        self, lease: MemberLease, *, task_status: TaskStatus[str] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen on a loopback port for ``lease``; ``task_status.started("127.0.0.1:PORT")``. Each
        connection (llama.cpp's RPC client) is tunnelled to the member; runs until cancelled."""
        listeners = await trio.open_tcp_listeners(0, host=LOOPBACK)
        port = listeners[0].socket.getsockname()[1]
        stats = self.stats.setdefault(lease.peer, TunnelStats())
        limiter = trio.CapacityLimiter(self._max_connections)
        async with trio.open_nursery() as nursery:
            task_status.started(f"{LOOPBACK}:{port}")
            async with listeners[0]:
                while True:
                    tcp = await listeners[0].accept()
                    if limiter.available_tokens == 0:
                        log.info(
                            "refused a local connection to %s's endpoint: %d tunnels open, the cap",
                            lease.peer,
                            self._max_connections,
                        )
                        await tcp.aclose()
                        continue
                    nursery.start_soon(self._connection, lease, tcp, stats, limiter)

    async def _connection(
        self, lease: MemberLease, tcp: trio.SocketStream, stats: TunnelStats, limiter: trio.CapacityLimiter
    ) -> None:
        async with limiter:
            try:
                stream = await self._host.open_stream(lease.peer, SPLIT_PROTOCOL)
            except OpenGridError as exc:
                log.info("could not open a split tunnel to %s: %s", lease.peer, exc)
                await tcp.aclose()
                return
            try:
                await stream.send_body(encode(SplitTunnel(lease.session, lease.token)))
                reply = decode_reply(await stream.receive_body(), peer=lease.peer)
                if not isinstance(reply, SplitTunnelOk):
                    reason = reply.reason if isinstance(reply, SplitRefuse) else type(reply).__name__
                    log.info("member %s refused a tunnel: %s", lease.peer, reason)
                    return
                await _pipe(stream, tcp, None, self._limits, check=None, stats=stats, at_member=False)
            except OpenGridError as exc:
                log.info("split tunnel to %s ended: %s", lease.peer, exc)
            finally:
                await stream.aclose()
                await tcp.aclose()

    async def attest(
        self,
        lease: MemberLease,
        *,
        job_id: bytes,
        contract_hash: bytes,
        output_commitment: bytes,
        n_tokens: int,
        timeout_s: float = 10.0,
    ) -> bytes:
        """The member's attestation of a job the group ran (encoded); NoCapacityError with its reason
        if it refuses, TransportError if it cannot be asked within ``timeout_s``."""
        with trio.move_on_after(timeout_s) as waited:
            stream = await self._host.open_stream(lease.peer, SPLIT_PROTOCOL)
            try:
                await stream.send_body(
                    encode(
                        SplitAttest(
                            lease.session, lease.token, job_id, contract_hash, output_commitment, n_tokens
                        )
                    )
                )
                reply = decode_reply(await stream.receive_body(), peer=lease.peer)
            finally:
                await stream.aclose()
        if waited.cancelled_caught:
            raise TransportError(f"member {lease.peer} did not co-sign within {timeout_s:.0f} s")
        if isinstance(reply, SplitRefuse):
            raise NoCapacityError(f"member {lease.peer} refused to co-sign: {reply.reason}")
        if not isinstance(reply, SplitAttested) or reply.session != lease.session:
            raise RemoteProtocolError(
                f"member {lease.peer} answered an attestation request with {type(reply).__name__}",
                peer=lease.peer,
            )
        return reply.attestation

    async def close(self, lease: MemberLease, *, timeout_s: float = 10.0) -> bool:
        """End the session on the member (it frees the memory); False if it could not be told."""
        with trio.move_on_after(timeout_s):
            try:
                stream = await self._host.open_stream(lease.peer, SPLIT_PROTOCOL)
                try:
                    await stream.send_body(encode(SplitClose(lease.session, lease.token)))
                    return isinstance(
                        decode_reply(await stream.receive_body(), peer=lease.peer), SplitTunnelOk
                    )
                finally:
                    await stream.aclose()
            except OpenGridError as exc:
                log.info("could not close split session on %s: %s", lease.peer, exc)
        return False

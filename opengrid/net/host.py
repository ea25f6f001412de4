"""A libp2p host configured the OpenGrid way, and framed message streams over it.

Configuration (shared/notes/py-libp2p.md): TCP + Noise + yamux only (no plaintext, secio or TLS that a
default host would also accept), one connection per peer (avoids a fixed 250 ms dial delay), and our own
read loop for frames (the library's exact-read helper gives up on large messages). Every host speaks
circuit relay v2 (relay.py): it accepts relayed connections and dials peers known only by a relayed
address; a host opened with ``relay=True`` also relays for others.

No peer can hold or fill a node through its streams (spec/limits.md §1-2): a frame must complete within a
deadline once its first byte arrived, an inbound one-exchange stream must start its request soon after it
opens, a kept channel (run, beat) is closed when idle too long (``FrameStream``); one peer may hold only so
many inbound streams per protocol (``Host.set_handler``) and in all, counted before negotiation
(``_StreamGuard``); what is over a cap is reset and logged at INFO, once a minute per peer.

Cancelling a task that reads or writes a stream costs that stream only: each Noise message is written
whole, whatever happens to its writer (``_CancelSafeNoise``; py-libp2p's own write would leave the peer's
decryption one message behind, and the peer would drop the connection).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import multiaddr
import trio
from libp2p import create_yamux_muxer_option, new_host
from libp2p.abc import IHost, INetStream, IRawConnection, ISecureConn
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.io.exceptions import ConnectionClosedError
from libp2p.network.config import ConnectionConfig, RetryConfig
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr
from libp2p.protocol_muxer.exceptions import MultiselectClientError, ProtocolNotSupportedError
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport

from opengrid.errors import (
    ConfigError,
    IncompatiblePeerError,
    LocalProtocolError,
    OpenGridError,
    PeerTooSlowError,
    TransportError,
)
from opengrid.net.addr_cache import cache_advertised_addrs
from opengrid.net.holepunch import HolePuncher, is_relayed_connection
from opengrid.net.keys import keypair_from_seed
from opengrid.net.names import Resolver, connect_by_name, dns_protocol
from opengrid.net.relay import CircuitSupport, is_circuit
from opengrid.wire.codec import MAX_FRAME_BYTES, FrameBuffer, decode_message, encode_frame
from opengrid.wire.messages import PROTOCOL_VERSION, Message, StatusRequest

if TYPE_CHECKING:
    from opengrid.net.transport import ByteStream

JOB_PROTOCOL = TProtocol("/opengrid/job/1")
RUN_PROTOCOL = TProtocol("/opengrid/run/1")
"""A coordinator's channel of RunJob exchanges to one worker, one after another on one stream
(spec/job-protocol.md §6.4): no stream opening and protocol negotiation per replica."""
BEAT_PROTOCOL = TProtocol("/opengrid/beat/1")
"""A worker's channel of RegisterWorker heartbeats to one coordinator, likewise (§6.1)."""
_READ_CHUNK = 64 * 1024
log = logging.getLogger("opengrid.net")

# ── Deadlines and caps on inbound streams (spec/limits.md). Plain module values, read at each use, so
# tests may shorten them with monkeypatch. ──────────────────────────────────────────────────────────────
FRAME_BASE_S: float = 10.0
"""Seconds a frame may take, once its first byte arrived, before its length is counted (see
``FRAME_MIN_RATE``). Senders write a frame in one go, so a frame that dribbles in is a peer holding our
stream open, not a slow network: the issue-15 probe kept a job stream alive for good with one byte every
5 s."""
FRAME_MIN_RATE: int = 64 * 1024
"""Bytes per second a frame must at least arrive at, after ``FRAME_BASE_S``: a frame of ``L`` bytes gets
``FRAME_BASE_S + L / FRAME_MIN_RATE`` seconds, 74 s for a full 4 MiB frame. 64 KiB/s (~0.5 Mbit/s) is below
a relayed circuit or a home uplink; a peer slower than that cannot move a job's prompt in time anyway."""
FIRST_FRAME_S: float = 10.0
"""Seconds after a one-exchange stream (``/opengrid/job/1``, ``/opengrid/ledger-sync/1``) was accepted
within which the first byte of its request must arrive. Openers send the request right after negotiating
(a few ms on loopback, one round trip elsewhere); 10 s is also py-libp2p's bound on that negotiation."""
RUN_IDLE_S: float = 300.0
"""Seconds a run channel (``/opengrid/run/1``, spec/job-protocol.md §6.4) may wait for its next RunJob
before the worker closes it. Coordinators keep idle channels for reuse (and open one as a worker joins),
so this is long; a coordinator that finds its channel closed opens a new one (~6 ms). What bounds an
attacker's idle channels is the per-peer cap (``MAX_STREAMS_PER_PEER``)."""
BEAT_IDLE_BEATS: float = 4.0
"""Heartbeat periods a registration channel (``/opengrid/beat/1``, §6.1) may stay idle between beats
before the coordinator closes it: a worker beats once a period, so four without one mean it stopped
(three silent periods already mark it offline)."""
BEAT_IDLE_MIN_S: float = 20.0
"""The least idle time a registration channel gets, whatever the heartbeat (a 0.5 s beat must not turn
a loaded worker's late beat into a closed channel)."""
BEAT_PERIOD_MAX_S: Final = 60.0
"""Workers clamp the coordinator's ``heartbeat_s`` to 0.5..60 s (spec/job-protocol.md §6.1)."""
MAX_STREAMS_PER_PEER: dict[str, int] = {
    "/opengrid/job/1": 256,
    "/opengrid/run/1": 96,
    "/opengrid/beat/1": 4,
    "/opengrid/ledger-sync/1": 4,
}
"""Inbound streams one peer may have open at once, per protocol we serve (others: ``MAX_STREAMS_OTHER``);
the next one is reset. Job streams: a client's jobs in flight (64 may wait per client, more run) and its
status and quote requests. Run channels: a coordinator's replicas in flight on one worker (``slots`` ≤ 64)
and the 4 idle ones it keeps. Beat and sync: an honest peer opens one at a time."""
MAX_STREAMS_OTHER: int = 16
"""Inbound streams one peer may have open at once on a protocol we serve that ``MAX_STREAMS_PER_PEER``
does not name."""
MAX_INBOUND_STREAMS_PER_PEER: int = 512
"""Inbound streams one peer may have open at once, every protocol together, counted from the moment the
muxer hands a stream over: during protocol negotiation (which py-libp2p bounds to 10 s, but not in number)
and on the library's own protocols (gossipsub, identify, DHT, relay) too. py-libp2p 0.8.1 has one global
cap of 10,000 streams, inbound and outbound together: one peer's idle streams filled it and a legitimate
client could no longer open a stream (issue 15)."""
_REFUSAL_LOG_EVERY_S: Final = 60.0
"""A peer's refused streams are logged at most once a minute (with a count), never one line each."""
_REFUSAL_LOG_PEERS: Final = 1024
"""Peers whose last refusal line is remembered; the table is pruned of quiet peers beyond this."""


_WRITE_CLOSE_S: Final = 2.0
"""Seconds we give a connection's close once one of its writes overran its deadline."""


class _CancelSafeNoise(NoiseTransport):
    """The Noise transport, whose sessions write each message whole or not at all, whatever happens to
    the task that writes it.

    Why: py-libp2p 0.8.1 encrypts a Noise message, which advances the session's send nonce, and only then
    awaits the socket (``NoiseTransportReadWriter.write_msg`` -> TCP ``write`` under a ``trio.Lock``). A
    writer cancelled in between sends nothing, yet its nonce is spent: the peer decrypts our next
    message with the nonce before, fails ("Failed authentication of message"), and its yamux reader
    closes the whole connection with every stream on it. Yamux writes frames from the task that uses a
    stream (a WINDOW_UPDATE after every read, the SYN, FIN, RST), so cancelling any task while it reads
    or writes a stream could do it, and trio delivers a cancel at the first checkpoint after the
    encryption. Seen in the soak: a coordinator cancelled a replica as the worker's answer arrived; the
    WINDOW_UPDATE its read sends was encrypted, then cancelled; the worker dropped the connection and
    the next jobs failed with "No valid connections available for peer" until it re-dialled
    (tests/net/test_cancel_safe_writes.py reproduces it in a few of 100 rounds on loopback). So each
    message is written under a shield, bounded like a frame we read (``frame_deadline_s``): a message
    that cannot leave in that time means a peer that stopped reading, and the connection (its byte
    stream broken mid-message) is closed."""

    async def secure_inbound(self, conn: IRawConnection) -> ISecureConn:
        return _whole_writes(await super().secure_inbound(conn))

    async def secure_outbound(self, conn: IRawConnection, peer_id: ID) -> ISecureConn:
        return _whole_writes(await super().secure_outbound(conn, peer_id))


def _whole_writes(conn: ISecureConn) -> ISecureConn:
    """Make ``conn.write`` immune to its caller's cancellation (see ``_CancelSafeNoise``)."""
    write = conn.write

    async def write_whole(data: bytes) -> None:
        bound = frame_deadline_s(len(data))
        with trio.CancelScope(shield=True):
            with trio.move_on_after(bound) as bounded:
                await write(data)
            if bounded.cancelled_caught:  # part of a message may be out: nothing can follow it
                with trio.move_on_after(_WRITE_CLOSE_S), contextlib.suppress(Exception):
                    await conn.close()
        if bounded.cancelled_caught:
            log.info(
                "a %d-byte write to %s took over %.1f s: connection closed", len(data), _peer_of(conn), bound
            )
            raise ConnectionClosedError(
                f"a {len(data)}-byte write did not complete within {bound:.1f} s; the connection is closed"
            )

    conn.write = write_whole  # type: ignore[method-assign]  # on purpose: the instance's write, wrapped
    return conn


def _peer_of(conn: ISecureConn) -> str:
    try:
        return conn.get_remote_peer().to_base58()
    except Exception:
        return "a peer"


def beat_idle_s(heartbeat_s: float) -> float:
    """The idle bound of a registration channel on a coordinator whose heartbeat is ``heartbeat_s``."""
    period = min(max(heartbeat_s, 0.5), BEAT_PERIOD_MAX_S)
    return max(BEAT_IDLE_MIN_S, BEAT_IDLE_BEATS * period)


def frame_deadline_s(length: int | None) -> float:
    """Seconds a frame announcing ``length`` body bytes (None: header not read yet) may take from its
    first byte."""
    return FRAME_BASE_S + (length or 0) / FRAME_MIN_RATE


@dataclass(frozen=True)
class StreamBounds:
    """The waits and numbers an inbound stream of one protocol may impose on us (spec/limits.md)."""

    first_frame_s: float | None
    """Seconds from acceptance to the first byte of the first frame (None: no bound of its own)."""
    idle_s: float | None
    """Seconds a kept channel may wait for its next exchange (None: not a kept channel)."""
    max_per_peer: int
    """Streams of this protocol one peer may have open at once."""


def stream_bounds(protocol: str, *, idle_s: float | None = None) -> StreamBounds:
    """The bounds of inbound ``protocol`` streams, from the module values as they are now."""
    cap = MAX_STREAMS_PER_PEER.get(protocol, MAX_STREAMS_OTHER)
    if protocol == RUN_PROTOCOL:
        return StreamBounds(None, RUN_IDLE_S if idle_s is None else idle_s, cap)
    if protocol == BEAT_PROTOCOL:
        return StreamBounds(None, beat_idle_s(5.0) if idle_s is None else idle_s, cap)
    return StreamBounds(FIRST_FRAME_S, idle_s, cap)


class _ChannelIdle(Exception):
    """A kept channel waited past its idle bound between exchanges (internal: ``receive_next`` ends it)."""


class _Refusals:
    """Streams refused over a cap, counted per peer and logged at INFO at most once a minute per peer."""

    def __init__(self) -> None:
        self.count = 0
        """Streams refused so far (statistics and tests)."""
        self._said: dict[str, tuple[float, int]] = {}
        """peer -> when we last logged a refusal of its streams, and how many we refused since."""

    def note(self, peer: str, why: str) -> None:
        self.count += 1
        now = trio.current_time()
        said, quiet = self._said.get(peer, (-math.inf, 0))
        if now - said < _REFUSAL_LOG_EVERY_S:
            self._said[peer] = (said, quiet + 1)
            return
        more = f" ({quiet} more refused since the last line)" if quiet else ""
        log.info("refused a stream from %s: %s%s", peer, why, more)
        if len(self._said) >= _REFUSAL_LOG_PEERS:  # bounded: forget peers not refused for a minute
            self._said = {p: v for p, v in self._said.items() if now - v[0] < _REFUSAL_LOG_EVERY_S}
        self._said[peer] = (now, 0)


class _OpenCounts:
    """Inbound streams open per key (a peer, or a peer and a protocol); a key at zero is dropped, so the
    table holds live streams only."""

    def __init__(self) -> None:
        self._open: dict[Hashable, int] = {}

    def get(self, key: Hashable) -> int:
        return self._open.get(key, 0)

    @contextlib.contextmanager
    def held(self, key: Hashable) -> Iterator[None]:
        self._open[key] = self._open.get(key, 0) + 1
        try:
            yield
        finally:
            left = self._open[key] - 1
            if left:
                self._open[key] = left
            else:
                del self._open[key]


async def _reset_raw(stream: INetStream) -> None:
    try:
        await stream.reset()
    except Exception as exc:  # already gone
        log.debug("resetting a refused stream: %s", exc)


_LIBRARY_LOGGERS: Final = ("libp2p", "multiaddr", "async_service")


class _AsDebug(logging.Handler):
    """Relabels a library record as DEBUG and hands it to the root logger's handlers."""

    def emit(self, record: logging.LogRecord) -> None:
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        logging.getLogger().handle(record)


def quiet_libp2p_logging(level: int = logging.ERROR) -> None:
    """Keep py-libp2p's own log lines out of an operator's log unless ``level`` asks for debug output.

    The library logs, at ERROR, things that are normal on a network: 7 lines of "Failed to open stream …
    /meshsub/1.1.0" each time a client (``opengrid status``, the SDK) connects, since clients speak no
    gossip; a line per failed dial, 60 in 50 s for an unreachable bootstrap; every normal end of a DHT
    stream as a WARNING (pitfall 10). Every failure that matters reaches our code as an exception, which
    says what happened and what to do at the level it deserves. So the library's records are demoted: at
    ``level`` DEBUG (``-vvv``) they are shown, labelled DEBUG; otherwise they are not even made.
    py-libp2p also detaches some of its loggers from the root logger: they are re-attached here.
    """
    for name in list(logging.root.manager.loggerDict):
        if name.split(".")[0] in _LIBRARY_LOGGERS:
            child = logging.getLogger(name)
            child.handlers.clear()
            child.propagate = True
            child.setLevel(logging.NOTSET)
    show = level <= logging.DEBUG
    for name in _LIBRARY_LOGGERS:
        root = logging.getLogger(name)
        root.handlers = [_AsDebug() if show else logging.NullHandler()]
        root.propagate = False
        root.setLevel(logging.DEBUG if show else logging.CRITICAL + 1)


class FrameStream:
    """One stream speaking length-prefixed OpenGrid messages: a libp2p stream, or an in-memory one
    (``opengrid.testing.memnet``), so framing, size bounds and deadlines are this one code on both.

    ``receive`` reads exactly one frame with its own loop, checking the length before reading the body.
    Every exception of the stream under it is mapped to ``TransportError``; bad bytes become
    ``RemoteProtocolError``s.
    """

    def __init__(
        self,
        stream: ByteStream,
        *,
        peer: str,
        limit: int = MAX_FRAME_BYTES,
        first_frame_s: float | None = None,
        idle_s: float | None = None,
    ) -> None:
        self._stream = stream
        self.peer = peer
        """The peer id at the other end."""
        self._frames = FrameBuffer(limit=limit, peer=self.peer)
        self.frames_received = 0
        """Frames read from this stream so far (a pool tells from it whether an exchange heard anything)."""
        self._frames_limit = limit
        self._opened = trio.current_time()
        self._first_frame_s = first_frame_s
        """The first frame's first byte must arrive this many seconds after the stream was made (None: no
        bound here; the caller bounds its wait). Set on inbound one-exchange streams."""
        self._idle_s = idle_s
        """``receive_next`` waits at most this long for a frame between exchanges on a kept channel, then
        ends the channel as if the peer had closed it (None: no bound)."""

    @property
    def protocol(self) -> str:
        """The protocol id negotiated for this stream ("" if the library does not say)."""
        try:
            return str(self._stream.get_protocol() or "")
        except Exception:
            return ""

    @property
    def reusable(self) -> bool:
        """Whether another exchange may start on this stream: neither side closed or reset it, its
        connection is up, and no byte of it waits unread (a peer that sent more than it should is out of
        step). A best-effort look at the muxer's state: a stream can still die right after."""
        if self._frames.pending:
            return False
        muxed = getattr(self._stream, "muxed_stream", None)
        if muxed is None or any(
            getattr(muxed, flag, False) for flag in ("closed", "send_closed", "recv_closed", "reset_received")
        ):
            return False
        conn = getattr(muxed, "conn", None)
        shutting_down = getattr(conn, "event_shutting_down", None)
        if shutting_down is not None and shutting_down.is_set():
            return False
        buffers = getattr(conn, "stream_buffers", None)
        unread = buffers.get(getattr(muxed, "stream_id", None)) if isinstance(buffers, dict) else None
        return not unread

    @property
    def relayed(self) -> bool:
        """True when the stream runs over a relayed (``/p2p-circuit``) connection."""
        return is_relayed_connection(getattr(self._stream, "muxed_conn", None))

    @property
    def remote_ip(self) -> str:
        """The IP address the peer connects from ("" when the transport does not say, or when the stream
        is relayed: the address would be the relay's, not the peer's)."""
        if self.relayed:
            return ""
        try:
            address = self._stream.get_remote_address()
        except Exception:  # relayed or closed streams may not know
            return ""
        return address[0] if address else ""

    async def send(self, message: Message) -> None:
        """Write one framed message."""
        data = encode_frame(message)
        try:
            await self._stream.write(data)
        except Exception as exc:
            raise TransportError(f"could not write to {self.peer}: {exc or type(exc).__name__}") from exc

    async def send_body(self, body: bytes) -> None:
        """Write one frame around raw bytes (protocols with their own message codec, e.g. ledger sync)."""
        if not body or len(body) > self._frames_limit:
            raise LocalProtocolError(f"a frame body must be 1..{self._frames_limit} bytes, got {len(body)}")
        try:
            await self._stream.write(len(body).to_bytes(4, "big") + body)
        except Exception as exc:
            raise TransportError(f"could not write to {self.peer}: {exc or type(exc).__name__}") from exc

    async def receive(self) -> Message:
        """Read exactly one framed message (raises TransportError if the peer closes first)."""
        return decode_message(await self.receive_body(), peer=self.peer)

    async def receive_next(self) -> Message | None:
        """The next message, or None when the peer ended the stream between two frames (a stream that
        carries several exchanges, e.g. ``RUN_PROTOCOL``, ends that way) or left it idle past the stream's
        idle bound (the channel then ends as if the peer had closed it; the peer may open another). Ending
        inside a frame is still a TransportError, and a frame too slow a PeerTooSlowError."""
        try:
            return decode_message(await self._receive_body(between=True), peer=self.peer)
        except _ChannelIdle:
            log.debug(
                "%s left a kept %s stream idle for %.0f s: ending it", self.peer, self.protocol, self._idle_s
            )
            return None
        except TransportError:
            if self._frames.pending:
                raise
            return None

    async def receive_body(self) -> bytes:
        """Read exactly one frame's raw bytes, its length checked before reading the body (TransportError at
        EOF). A frame whose first byte arrived must complete within ``frame_deadline_s`` of its length, and
        an inbound stream's first frame must start within its ``first_frame_s``: else PeerTooSlowError."""
        return await self._receive_body(between=False)

    async def _receive_body(self, *, between: bool) -> bytes:
        """One frame's body; ``between``: we wait between exchanges of a kept channel (its idle bound)."""
        waiting_until = math.inf  # for the frame's first byte
        if self.frames_received == 0 and self._first_frame_s is not None:
            waiting_until = self._opened + self._first_frame_s
        if between and self._idle_s is not None:
            waiting_until = min(waiting_until, trio.current_time() + self._idle_s)
        frame_started: float | None = None
        while (body := self._frames.next_body()) is None:
            if self._frames.pending:
                if frame_started is None:
                    frame_started = trio.current_time()
                deadline = frame_started + frame_deadline_s(self._frames.announced)
            else:
                deadline = waiting_until
            with trio.move_on_at(deadline) as waited:
                chunk = await self._read(max(self._frames.wanted(), 1))
            if waited.cancelled_caught:
                raise self._too_slow(between=between)
            self._frames.feed(chunk)
        self.frames_received += 1
        return body

    async def _read(self, want: int) -> bytes:
        try:
            chunk = await self._stream.read(min(want, _READ_CHUNK))
        except Exception as exc:  # StreamEOF, StreamReset, muxer errors: the peer went away
            got = self._frames.pending
            raise TransportError(
                f"{self.peer} closed the stream"
                + (f" after {got} of a frame's bytes" if got else "")
                + f" ({type(exc).__name__})"
            ) from exc
        if not chunk:
            raise TransportError(f"{self.peer} closed the stream")
        return chunk

    def _too_slow(self, *, between: bool) -> Exception:
        """The error for the deadline ``_receive_body`` just hit."""
        got = self._frames.pending
        if got:
            length = self._frames.announced
            bound = frame_deadline_s(length)
            size = f"a {length}-byte frame" if length is not None else "a frame header"
            return PeerTooSlowError(
                f"sent {got} bytes of {size} in {bound:.1f} s, the most a frame that size may take "
                f"({FRAME_BASE_S:.0f} s + 1 s per {FRAME_MIN_RATE} bytes); the stream is ended",
                peer=self.peer,
                bound_s=bound,
            )
        if between and (self.frames_received or self._first_frame_s is None):
            return _ChannelIdle()
        bound = self._first_frame_s or 0.0
        return PeerTooSlowError(
            f"opened a {self.protocol or 'stream'} stream and sent no request within {bound:.1f} s; "
            "the stream is ended",
            peer=self.peer,
            bound_s=bound,
        )

    async def read_raw(self, max_bytes: int) -> bytes:
        """Up to ``max_bytes`` unframed bytes (a tunnel after its opening frames, spec/split.md); b"" when
        the peer ended the stream. Only between frames: ``receive`` never reads past a frame's end."""
        if self._frames.pending:
            raise LocalProtocolError("read_raw called inside a frame; finish the frame first")
        try:
            return bytes(await self._stream.read(max_bytes))
        except Exception as exc:  # StreamEOF, StreamReset, a closed connection: the tunnel's end
            log.debug("tunnel read from %s ended: %r", self.peer, exc)
            return b""

    async def write_raw(self, data: bytes) -> None:
        """Write unframed bytes (a tunnel); TransportError when the stream is gone."""
        try:
            await self._stream.write(data)
        except Exception as exc:
            raise TransportError(f"could not write to {self.peer}: {exc or type(exc).__name__}") from exc

    async def aclose(self) -> None:
        """Close our side; never raises (the peer may already be gone)."""
        try:
            await self._stream.close()
        except Exception as exc:
            log.debug("closing stream to %s: %s", self.peer, exc)

    async def abort(self) -> None:
        """Reset the stream even while our task is being cancelled, so the peer learns at once that
        nobody waits for its answer (a worker then stops generating)."""
        with trio.CancelScope(shield=True):
            await self.reset()

    async def reset(self) -> None:
        """Abort the stream (the peer sees a reset); never raises."""
        try:
            await self._stream.reset()
        except Exception as exc:
            log.debug("resetting stream to %s: %s", self.peer, exc)


Handler = Callable[[FrameStream], Awaitable[None]]


class Host:
    """The node's libp2p host: its identity, addresses, and framed streams to peers."""

    def __init__(
        self,
        host: IHost,
        circuits: CircuitSupport,
        *,
        private: bool = False,
        hole_punch: HolePuncher | None = None,
        refusals: _Refusals | None = None,
    ) -> None:
        self._host = host
        self._open = _OpenCounts()
        """Inbound streams being served, per (peer, protocol): the per-peer caps count them."""
        self.refusals = refusals if refusals is not None else _Refusals()
        """Inbound streams reset because their peer was over a cap (``refusals.count``)."""
        self._private = private
        self.circuits = circuits
        """Circuit relay v2 on this host (relay.py): relayed dials, reservations, relay statistics."""
        self.hole_punch = hole_punch
        """DCUtR on this host (holepunch.py): upgrades our relayed dials to direct connections."""
        self._direct_failed: dict[str, float] = {}
        """peer -> when a direct dial to it last failed although it also announced relayed addresses: such
        a peer (behind NAT) is dialled through its relay at once for ``_DIRECT_RETRY_S``."""
        self._relay_addrs: list[str] = []
        self._circuit_addrs: dict[str, list[str]] = {}
        """peer -> the relayed addresses it announced to us (bare, without its own /p2p/ suffix). Kept here
        as well as in the peerstore: py-libp2p's identify replaces a peer's peerstore addresses with the
        listen addresses it reports, which for a node reachable only through a relay is an empty list
        (seen: the circuit address a worker registered with was gone a moment later, at random)."""

    @property
    def peer_id(self) -> str:
        return self._host.get_id().to_base58()

    @property
    def libp2p(self) -> IHost:
        """The underlying libp2p host, for the other modules of ``opengrid.net`` only (DHT, gossip, relay)."""
        return self._host

    def connected_peers(self) -> list[str]:
        """Peer ids we hold a connection to, sorted."""
        return sorted(peer.to_base58() for peer in self._host.get_connected_peers())

    def addrs(self) -> list[str]:
        """Full multiaddrs (with ``/p2p/<id>``) that others can dial: the listen addresses, then the
        circuit addresses of the relays that hold a reservation for us (spec/discovery.md §8.2)."""
        suffix = f"/p2p/{self.peer_id}"
        out: list[str] = []
        for addr in self._host.get_addrs():
            text = str(addr)
            text = text if text.endswith(suffix) else text + suffix
            if text.startswith(_ANY_IPV4):
                # A 0.0.0.0 listener is dialled on the machine's addresses, never on 0.0.0.0 itself
                # (which means "this machine" to a dialler: useless to a peer elsewhere).
                from opengrid.net.lan import local_ipv4_addresses

                rest = text[len(_ANY_IPV4) :]
                out.extend(
                    f"/ip4/{ip}/{rest}" for ip in local_ipv4_addresses() if f"/ip4/{ip}/{rest}" not in out
                )
                continue
            out.append(text)
        return out + self._relay_addrs

    def relay_addresses(self) -> list[str]:
        """Our addresses through relays that hold a reservation for us (empty when we hold none)."""
        return list(self._relay_addrs)

    def add_relay_address(self, address: str) -> None:
        """Announce ``address`` (ours, through a relay) from now on (``ReservationKeeper``)."""
        if address not in self._relay_addrs:
            self._relay_addrs.append(address)

    def remove_relay_address(self, address: str) -> None:
        """Stop announcing a relayed address (its reservation is gone)."""
        if address in self._relay_addrs:
            self._relay_addrs.remove(address)

    def set_handler(
        self, handler: Handler, protocol: TProtocol = JOB_PROTOCOL, *, idle_s: float | None = None
    ) -> None:
        """Serve ``protocol`` with ``handler``; the stream is closed after the handler returns.

        Each stream gets the protocol's ``stream_bounds`` (``idle_s`` overrides the idle bound of a kept
        channel: a coordinator passes ``beat_idle_s`` of its heartbeat); a peer over the protocol's cap of
        open streams has the new one reset."""

        async def _serve(stream: INetStream) -> None:
            bounds = stream_bounds(protocol, idle_s=idle_s)
            peer = stream.muxed_conn.peer_id.to_base58()
            if self._open.get((peer, protocol)) >= bounds.max_per_peer:
                self.refusals.note(peer, f"it has {bounds.max_per_peer} {protocol} streams open, the cap")
                await _reset_raw(stream)
                return
            with self._open.held((peer, protocol)):
                framed = FrameStream(
                    stream, peer=peer, first_frame_s=bounds.first_frame_s, idle_s=bounds.idle_s
                )
                await _serve_framed(framed, protocol, handler)

        self._host.set_stream_handler(protocol, _serve)

    def remember(self, peer_id: str, addrs: Sequence[str]) -> None:
        """Record addresses for a peer so it can be dialled later (relayed ones included)."""
        good = []
        suffix = f"/p2p/{peer_id}"
        for text in addrs:
            # Strip only the peer's own id: a relayed address names the relay's id inside it.
            bare = text[: -len(suffix)] if text.endswith(suffix) else text
            if not bare or (not is_circuit(bare) and "/p2p/" in bare):
                log.debug("ignoring an address of another peer %r from %s", text, peer_id)
                continue
            try:
                good.append(multiaddr.Multiaddr(bare))
            except Exception:
                log.debug("ignoring unparsable address %r from %s", text, peer_id)
        if good:
            self._host.get_peerstore().add_addrs(ID.from_base58(peer_id), good, 3600)
            circuits = [str(a) for a in good if is_circuit(str(a))]
            if circuits:
                self._circuit_addrs[peer_id] = circuits

    def known_addrs(self, peer_id: str) -> list[str]:
        """Addresses we can dial ``peer_id`` at: the peerstore's, then relayed ones it announced to us."""
        try:
            known = [str(a) for a in self._host.get_peerstore().addrs(ID.from_base58(peer_id))]
        except Exception:  # the peerstore raises for a peer it never heard of
            known = []
        return known + [a for a in self._circuit_addrs.get(peer_id, []) if a not in known]

    resolver: Resolver = Resolver()
    """Resolves ``/dns4/``, ``/dns6/`` and ``/dnsaddr/`` addresses given to ``connect`` (names.py)."""

    async def connect(self, address: str) -> str:
        """Dial a full multiaddr (``.../p2p/<id>``) and return the peer id; a DNS multiaddr is resolved
        first (``opengrid.net.names``)."""
        if dns_protocol(address) is not None:
            return await connect_by_name(self, address)
        if is_circuit(address):  # the swarm does not dial these (relay.py)
            peer = address.rsplit("/p2p/", 1)[-1]
            if not self.is_connected(peer):
                await self.circuits.dial(address)
            return peer
        try:
            info = info_from_p2p_addr(multiaddr.Multiaddr(address))
        except Exception as exc:
            raise ConfigError(
                f"{address!r} is not a dialable multiaddr; expected /ip4/HOST/tcp/PORT/p2p/PEER_ID"
            ) from exc
        # An address we were told to dial is always worth a try: py-libp2p otherwise refuses, for a while,
        # a peer whose addresses all failed once (its "negative cache"), e.g. a coordinator that restarts.
        # Likewise forget the addresses it had before (a restarted peer may listen elsewhere now): dialling
        # a dead one first, with the library's retries, can outlast our caller's patience.
        network = self._host.get_network()
        if not self.is_connected(info.peer_id.to_base58()):
            if hasattr(network, "unblock_peer"):
                network.unblock_peer(info.peer_id)
            with contextlib.suppress(Exception):
                self._host.get_peerstore().clear_addrs(info.peer_id)
        try:
            await self._host.connect(info)
        except Exception as exc:
            hint = " (private network: does that peer use the same network key?)" if self._private else ""
            raise TransportError(
                f"could not connect to {address}: {exc or type(exc).__name__}{hint}"
            ) from exc
        return info.peer_id.to_base58()

    async def open_stream(
        self, peer_id: str, protocol: TProtocol = JOB_PROTOCOL, *, fallbacks: Sequence[TProtocol] = ()
    ) -> FrameStream:
        """Open a framed stream to a peer (dialling it if needed: directly if it has a direct address, else
        through a relay it announced), speaking ``protocol`` or, if the peer does not, the first of
        ``fallbacks`` it does (``FrameStream.protocol`` says which)."""
        if not self.is_connected(peer_id):
            await self._dial_relayed(peer_id)
        try:
            stream = await self._host.new_stream(ID.from_base58(peer_id), [protocol, *fallbacks])
        except Exception as exc:
            if _refused_protocols(exc):
                raise incompatible_peer(peer_id, [protocol, *fallbacks]) from exc
            raise TransportError(
                f"could not open a stream to {peer_id}: {exc or type(exc).__name__}"
            ) from exc
        return FrameStream(stream, peer=peer_id)

    async def _dial_relayed(self, peer_id: str) -> None:
        """Connect through a relay when the peer announced relayed addresses (the swarm skips those,
        relay.py). A peer that also announced direct ones (a node behind NAT announces both, spec/
        discovery.md §8.4) is dialled directly first, for at most ``_DIRECT_FIRST_S``; when we end up
        relayed although it has a direct address, hole punching tries to upgrade the connection (§8.5).
        Without relayed addresses, the dial is left to the swarm."""
        known = self.known_addrs(peer_id)
        circuits = [a for a in known if is_circuit(a)]
        direct = [a for a in known if not is_circuit(a)]
        if not circuits:
            return
        failures = []
        now = trio.current_time()
        if direct and now - self._direct_failed.get(peer_id, -_DIRECT_RETRY_S) >= _DIRECT_RETRY_S:
            try:
                with trio.fail_after(_DIRECT_FIRST_S):
                    await self._host.connect(
                        PeerInfo(ID.from_base58(peer_id), [multiaddr.Multiaddr(a) for a in direct])
                    )
                self._direct_failed.pop(peer_id, None)
                return
            except Exception as exc:  # the swarm's errors, or our time bound
                self._direct_failed[peer_id] = now
                failures.append(f"direct: {exc or type(exc).__name__}")
        for address in circuits:
            full = address if address.endswith(f"/p2p/{peer_id}") else f"{address}/p2p/{peer_id}"
            try:
                await self.circuits.dial(full)
            except OpenGridError as exc:
                failures.append(str(exc))
                continue
            if direct and self.hole_punch is not None:
                self.hole_punch.upgrade_soon(peer_id)
            return
        raise TransportError(
            f"could not open a stream to {peer_id}: it is reachable only through relays, and "
            + "; ".join(failures)
        )

    def is_relayed(self, peer_id: str) -> bool:
        """True when we hold connections to ``peer_id`` and every one of them is relayed."""
        conns = self._host.get_network().get_connections(ID.from_base58(peer_id))
        return bool(conns) and all(is_relayed_connection(c) for c in conns)

    async def request(self, peer_id: str, message: Message) -> Message:
        """Open a stream, send one message, read one reply, close."""
        stream = await self.open_stream(peer_id)
        try:
            await stream.send(message)
            reply = await stream.receive()
        except BaseException:  # a protocol error, or our caller gave up (cancelled): abort the stream
            await stream.abort()
            raise
        await stream.aclose()
        return reply

    async def round_trip(self, peer_id: str, *, tries: int) -> float:
        """The best of ``tries`` status requests, each on a fresh stream (what a job dispatch costs on the
        wire), in seconds. Raises ``OpenGridError`` when one fails; the caller bounds the wait."""
        return await best_round_trip(self.request, peer_id, tries)

    async def disconnect(self, peer_id: str) -> None:
        """Close our connections to a peer (so the next dial starts afresh); never raises, and gives up
        after ``_DISCONNECT_S`` (closing writes a GO_AWAY frame, which can block on a half-dead socket:
        the very connections we drop)."""
        try:
            with trio.move_on_after(_DISCONNECT_S):
                await self._host.disconnect(ID.from_base58(peer_id))
        except Exception as exc:
            log.debug("disconnecting %s: %s", peer_id, exc)

    def is_connected(self, peer_id: str) -> bool:
        return bool(self._host.get_network().get_connections(ID.from_base58(peer_id)))


async def _serve_framed(framed: FrameStream, protocol: str, handler: Handler) -> None:
    """Run ``handler`` on one inbound stream (made with its protocol's ``StreamBounds``); close the
    stream after it. The in-memory network (opengrid.testing.memnet) serves its streams with it too."""
    # A handler's failure ends its stream, never the node: py-libp2p runs handlers in the host's own
    # nursery, so anything escaping here would stop the whole process (issue 15: one idle ledger-sync
    # stream's timeout killed coordinators and workers alike).
    try:
        await handler(framed)
    except OpenGridError as exc:
        log.info("stream from %s on %s ended: %s", framed.peer, protocol, exc)
        await framed.reset()
    except trio.TooSlowError:
        log.info("stream from %s on %s ended: the peer was too slow", framed.peer, protocol)
        await framed.reset()
    except Exception:
        log.exception("serving %s to %s failed; the stream is reset, the node goes on", protocol, framed.peer)
        await framed.reset()
    finally:
        await framed.aclose()


class _StreamGuard:
    """Caps the inbound streams one peer may have open at once, every protocol together, at the swarm's
    door: before protocol negotiation (``MAX_INBOUND_STREAMS_PER_PEER``)."""

    def __init__(self, refusals: _Refusals) -> None:
        self._open = _OpenCounts()
        self._refusals = refusals

    def install(self, host: IHost) -> None:
        """Wrap the swarm's handler of every inbound stream (py-libp2p calls ``common_stream_handler`` for
        each stream a connection accepts, and the host's negotiation runs inside it)."""
        network: Any = host.get_network()
        inner = network.common_stream_handler

        async def guarded(stream: INetStream) -> None:
            peer = stream.muxed_conn.peer_id.to_base58()
            cap = MAX_INBOUND_STREAMS_PER_PEER
            if self._open.get(peer) >= cap:
                self._refusals.note(peer, f"it has {cap} inbound streams open (all protocols), the cap")
                await _reset_raw(stream)
                return
            with self._open.held(peer):
                await inner(stream)

        network.set_stream_handler(guarded)


def _listen_multiaddrs(listen: Sequence[str]) -> list[multiaddr.Multiaddr]:
    out = []
    for text in listen:
        try:
            out.append(multiaddr.Multiaddr(text))
        except Exception as exc:
            raise ConfigError(f"--listen {text!r} is not a multiaddr; try /ip4/127.0.0.1/tcp/4001") from exc
    return out


_ANY_IPV4: Final = "/ip4/0.0.0.0/"
PSK_BYTES: Final = 32
_DIRECT_FIRST_S: Final = 3.0
_DISCONNECT_S: Final = 5.0
_DIRECT_RETRY_S: Final = 60.0


def derive_psk(network: str, network_key: str) -> bytes:
    """The 32-byte private-network key for ``network`` from a shared secret (an invite token).

    Binding the network name in means one invite token cannot open two differently named grids.
    """
    if not network_key:
        raise ConfigError("a network key must not be empty; omit it for a public network")
    return hashlib.sha256(b"opengrid/psk/1\x00" + network.encode() + b"\x00" + network_key.encode()).digest()


@asynccontextmanager
async def open_host(
    seed: bytes,
    listen: Sequence[str] = ("/ip4/127.0.0.1/tcp/0",),
    *,
    psk: bytes | None = None,
    upgrade_timeout_s: float | None = None,
    relay: bool = False,
    dial_retries: int | None = None,
) -> AsyncIterator[Host]:
    """Start a host with identity ``seed`` listening on ``listen``; close it cleanly on exit.

    ``listen`` may be empty: the host then dials out only, and is reachable through a relay it holds a
    reservation on (``relay.ReservationKeeper``). ``relay=True`` makes it a relay for others, within
    ``relay.RELAY_LIMITS`` (spec/discovery.md §8).

    ``psk`` (32 bytes, see ``derive_psk``) makes this a private-network host (libp2p pnet: every raw
    connection is XSalsa20-encrypted with the key *before* Noise), so a node without the same key cannot
    even negotiate a security protocol. A mismatched key does not fail fast — each side reads garbage and
    waits — so the dial fails after ``upgrade_timeout_s`` (library default 10 s when None).

    ``dial_retries``: how often a failed dial is tried again (None: the library's 3, after 0.1, 0.2 and
    0.4 s), so a refused dial (another network key) fails after ``(1 + dial_retries) * upgrade_timeout_s``
    and the pauses between.
    """
    key_pair = keypair_from_seed(seed)
    addrs = _listen_multiaddrs(listen)
    noise = _CancelSafeNoise(key_pair, noise_privkey=create_x25519_key_pair().private_key)
    if psk is not None and len(psk) != PSK_BYTES:
        raise ConfigError(f"a network key (psk) is {PSK_BYTES} bytes, got {len(psk)}; use derive_psk()")
    config = ConnectionConfig(max_connections_per_peer=1, min_connections=0, low_watermark=0)
    if upgrade_timeout_s is not None:
        config.outbound_upgrade_timeout = upgrade_timeout_s
        config.inbound_upgrade_timeout = upgrade_timeout_s
    kwargs: dict[str, Any] = dict(
        key_pair=key_pair,
        sec_opt={NOISE_PROTOCOL_ID: noise},
        muxer_opt=create_yamux_muxer_option(),
        listen_addrs=addrs,
        # One connection per peer avoids a fixed 250 ms "happy eyeballs" wait on every dial (pitfall 1);
        # no auto-dialling of every known peer to reach a watermark: we dial whom we need.
        connection_config=config,
        psk=psk.hex() if psk is not None else None,
    )
    try:
        host = new_host(**kwargs)
    except Exception as exc:
        raise ConfigError(f"could not create the libp2p host: {exc}") from exc
    if dial_retries is not None:  # new_host takes no retry settings; the swarm reads them at each dial
        host.get_network().retry_config = RetryConfig(max_retries=dial_retries)  # type: ignore[attr-defined]
    cache_advertised_addrs(host)  # our signed peer record goes with every RPC: see addr_cache.py
    refusals = _Refusals()
    _StreamGuard(refusals).install(host)  # per-peer cap on inbound streams, before negotiation
    circuits = CircuitSupport(host, relay=relay, psk=psk)
    relayed: list[Host] = []  # set below: whether we hold a reservation decides if we answer hole punches
    hole_punch = HolePuncher(host, answering=lambda: bool(relayed and relayed[0].relay_addresses()))
    try:
        async with host.run(listen_addrs=addrs), circuits.running(), hole_punch.running():
            # py-libp2p's auto-connector aims at (low + high watermark) / 2 = 150 connections even with
            # low_watermark=0, so it dials every peer in the peerstore — including the old address of a
            # peer that restarted, which lands the peer in the swarm's negative dial cache and races its
            # new connection (the duplicate is then trimmed with our streams on it). We connect to whom
            # we need: bootstrap, coordinators, workers we dispatch to. Measured: 20 processes where
            # SIGKILLed and restarted workers could not re-register for over 60 s; without it, at once.
            # a Swarm has an auto_connector; the INetworkService that get_network() is declared to return not
            await host.get_network().auto_connector.stop()  # type: ignore[attr-defined]
            ours = Host(host, circuits, private=psk is not None, hole_punch=hole_punch, refusals=refusals)
            relayed.append(ours)
            yield ours
            await _close_connections(host)
            await host.close()
    except OSError as exc:
        raise ConfigError(
            f"could not listen on {', '.join(listen)}: {exc.strerror or exc}; pick another port"
        ) from exc
    # the library's stream readers may still be waking up; give them one checkpoint to notice the close
    await trio.lowlevel.checkpoint()


def incompatible_peer(peer_id: str, asked: Sequence[str]) -> IncompatiblePeerError:
    """The error for a peer that answered "na" to every protocol in ``asked``."""
    return IncompatiblePeerError(
        f"{peer_id} speaks none of {', '.join(asked)}: it runs another OpenGrid protocol version (this "
        f"node speaks {PROTOCOL_VERSION}), or it is not an OpenGrid node; run compatible "
        "versions on both sides (`opengrid --version`)"
    )


async def _close_connections(host: IHost) -> None:
    """Close every connection of ``host`` at once. py-libp2p's swarm closes them one after another on
    ``host.close()``, and each close pauses 0.2 s (two fixed 0.1 s sleeps, in the connection's and in
    yamux's close): a node with 10 connections took 2 s to stop. Closed together, they take 0.2 s in all;
    the swarm's own close then finds none left (each close removes its connection from the swarm)."""
    network = host.get_network()
    connections = [conn for conns in list(network.connections.values()) for conn in list(conns)]

    async def close(conn: Any) -> None:
        try:
            await conn.close()
        except Exception as exc:  # best effort, as the swarm's own close: the host closes next
            log.debug("closing a connection at shutdown: %s", exc)

    async with trio.open_nursery() as nursery:
        for conn in connections:
            nursery.start_soon(close, conn)


def _refused_protocols(exc: BaseException) -> bool:
    """True when stream negotiation failed because the peer answered "na" to every protocol asked (the
    library raises a ``MultiselectClientError`` saying so, wrapped in a ``StreamFailure``)."""
    seen: BaseException | None = exc
    for _ in range(8):  # a bounded walk down the cause chain
        if seen is None:
            return False
        if isinstance(seen, ProtocolNotSupportedError) or (
            isinstance(seen, MultiselectClientError) and str(seen).startswith("protocols not supported")
        ):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


async def best_round_trip(
    request: Callable[[str, Message], Awaitable[Message]], peer_id: str, tries: int
) -> float:
    """The best of ``tries`` ``StatusRequest`` round trips to ``peer_id`` through ``request``, in seconds
    of trio's clock (any transport's ``round_trip``)."""
    best = math.inf
    for _ in range(tries):
        started = trio.current_time()
        await request(peer_id, StatusRequest())
        best = min(best, trio.current_time() - started)
    return best

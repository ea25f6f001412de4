"""An in-memory network for node and SDK tests: the transport seam (opengrid/net/transport.py) without
sockets, deterministic under ``trio.testing.MockClock``.

One ``MemoryNetwork`` is a ``Transport``: nodes join it by opening a host (``Node(config,
transport=net)``), which gets the peer id its seed gives on libp2p and the address
``/memory/<number>/p2p/<peer id>`` (``address_of``). Everything is trio memory, no threads, no sockets:

- Streams: a connection is a pair of bounded byte pipes per stream (a 256 KiB window, as yamux's).
  ``open_stream`` negotiates as the real host does: the first protocol of ``[protocol, *fallbacks]`` the
  peer serves, else ``IncompatiblePeerError`` with the real host's words; a peer that is gone gives
  ``TransportError``. Both ends are ``opengrid.net.host.FrameStream``s, and inbound streams are served by
  the real host's ``_serve_framed`` within the same ``stream_bounds`` and caps (per peer and protocol;
  per peer over all protocols, refused at opening as the real host's guard refuses before negotiation),
  so frame size bounds, deadlines and refusals are the code that faces the internet.
- Gossip: ``MemoryGossip`` is ``opengrid.net.gossip.Gossip`` with the pub/sub underneath replaced. A
  message floods from its origin over connections, through peers subscribed to the topic; each receiver
  runs Gossip's own validators first and neither keeps nor forwards what they reject (gossipsub's
  rule), and messages over 1 MiB are dropped, as gossipsub's receivers drop them.
- DHT: ``MemoryDiscovery`` keeps a provider and value store per node; ``provide``/``put_value`` store
  at the DHT servers in the routing table, ``find_providers``/``get_value`` ask them. Values pass the real
  ``OpenGridValidator`` (signed ``ValueRecord``s of this network only) at every store.
- Not offered: relays, hole punching, LAN discovery, dial-backs (a memory address has no IP): the node
  skips them on a host that is not a libp2p ``Host``.

The SDK: ``Client(bootstrap, transport=net)`` (and ``AsyncClient.connect(..., transport=net)``) runs its
work in the network's trio run (``trio_token``, set by the first host), so a test drives the synchronous
client from ``trio.to_thread.run_sync`` (its streams and the asyncio client from ``run_sync_waiting``).

Time: ``clock_stops_for_threads`` keeps a ``MockClock(autojump_threshold=0)`` from jumping while a
worker thread computes (the node runs engines, the hardware probe and the like in threads) or a child
process is read (chat-template renderers); without it, the clock would race through every pending
deadline while the work goes on outside the loop, and time out what waits for it. A thread that only
waits for the loop (a streaming client: the SDK's ``stream``, an HTTP client of a node's API) must not stop
the clock, or what it waits for never comes: run it with ``run_sync_waiting``.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Final, TypeVar, cast

import trio
import trio.testing
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID
from libp2p.pubsub.pb import rpc_pb2
from nacl.signing import SigningKey

from opengrid.errors import ConfigError, LocalProtocolError, TransportError
from opengrid.net import host as real_host
from opengrid.net.discovery import (
    MAX_VALUE_BYTES,
    NAMESPACE,
    OpenGridValidator,
    Provider,
    ValueRecord,
    decode_value_record,
    encode_value_record,
    provider_key_bytes,
)
from opengrid.net.gossip import Gossip
from opengrid.net.host import (
    JOB_PROTOCOL,
    PSK_BYTES,
    FrameStream,
    _Refusals,
    _serve_framed,
    incompatible_peer,
    stream_bounds,
)
from opengrid.net.keys import peer_id_of
from opengrid.net.transport import Handler, StreamHost
from opengrid.wire.messages import Message

if TYPE_CHECKING:
    from trio_typing import TaskStatus

T = TypeVar("T")

_PLAIN_RUN_SYNC: Final = trio.to_thread.run_sync
"""trio's own ``to_thread.run_sync`` (this module is imported before ``clock_stops_for_threads`` runs)."""

WINDOW_BYTES: Final = 256 * 1024
"""Bytes a stream buffers one way before its writer waits (yamux's initial window)."""
MAX_GOSSIP_BYTES: Final = 1024 * 1024
"""gossipsub's receivers drop larger messages silently (shared/notes/py-libp2p.md, pitfall 6)."""
SUBSCRIPTION_QUEUE: Final = 32
"""Messages a subscription holds before it drops the next, as py-libp2p's does."""
_ADDRESS_PREFIX: Final = "/memory/"


def address_of(peer_id: str) -> str:
    """The one address of a peer on a memory network: ``/memory/N/p2p/PEER_ID``, N a number derived from
    the peer id (the multiaddr ``memory`` protocol takes a 64-bit number), so the address is a valid
    multiaddr that a node's configuration accepts."""
    return f"{_ADDRESS_PREFIX}{_number_of(peer_id)}/p2p/{peer_id}"


def _number_of(peer_id: str) -> int:
    return int.from_bytes(hashlib.sha256(peer_id.encode()).digest()[:8], "big") >> 1


def _peer_in(address: str) -> str:
    """The peer id a memory address names; ``ConfigError`` for anything else."""
    head, sep, peer = address.rpartition("/p2p/")
    if not sep or not peer or head != f"{_ADDRESS_PREFIX}{_number_of(peer)}":
        raise ConfigError(
            f"{address!r} is not a memory-network address; expected {_ADDRESS_PREFIX}N/p2p/PEER_ID "
            "(memnet.address_of)"
        )
    return peer


class _StreamGone(Exception):
    """A memory stream was reset, closed or lost its connection (FrameStream maps it to TransportError)."""


class _Pipe:
    """One direction of a stream: a bounded byte buffer; its writer waits while it is full."""

    def __init__(self, window: int = WINDOW_BYTES) -> None:
        self._buffer = bytearray()
        self._window = window
        self.ended = False
        """The writer closed its side: the reader gets what is buffered, then the end."""
        self.broken = False
        """Reset: both sides fail at once, buffered bytes are lost."""
        self._lot = trio.lowlevel.ParkingLot()

    @property
    def unread(self) -> int:
        return len(self._buffer)

    async def write(self, data: bytes) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        view = memoryview(data)
        while view:
            if self.broken:
                raise _StreamGone("the stream was reset")
            if self.ended:
                raise _StreamGone("the stream is closed for writing")
            room = self._window - len(self._buffer)
            if room <= 0:
                await self._lot.park()
                continue
            self._buffer += view[:room]
            view = view[room:]
            self._lot.unpark_all()
        await trio.lowlevel.cancel_shielded_checkpoint()

    async def read(self, n: int | None) -> bytes:
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            if self.broken:
                raise _StreamGone("the stream was reset")
            if self._buffer:
                break
            if self.ended:
                raise _StreamGone("end of stream")
            await self._lot.park()
        size = len(self._buffer) if n is None else max(1, n)
        chunk = bytes(self._buffer[:size])
        del self._buffer[:size]
        self._lot.unpark_all()
        await trio.lowlevel.cancel_shielded_checkpoint()
        return chunk

    def end(self) -> None:
        self.ended = True
        self._lot.unpark_all()

    def break_(self) -> None:
        self.broken = True
        self._buffer.clear()
        self._lot.unpark_all()


class _Connection:
    """A connection between two hosts: its streams, reset together when it goes down."""

    def __init__(self) -> None:
        self.up = True
        self.streams: set[MemoryByteStream] = set()

    def pair(self, protocol: str) -> tuple[MemoryByteStream, MemoryByteStream]:
        """A new stream: the opener's end, and the acceptor's."""
        there, back = _Pipe(), _Pipe()
        ours = MemoryByteStream(inbound=back, outbound=there, protocol=protocol, connection=self)
        theirs = MemoryByteStream(inbound=there, outbound=back, protocol=protocol, connection=self)
        self.streams.update((ours, theirs))
        return ours, theirs

    def close(self) -> None:
        self.up = False
        for stream in list(self.streams):
            stream.break_()
        self.streams.clear()


class MemoryByteStream:
    """One end of a memory stream (a ``ByteStream``, what ``FrameStream`` frames)."""

    def __init__(self, *, inbound: _Pipe, outbound: _Pipe, protocol: str, connection: _Connection) -> None:
        self._inbound = inbound
        self._outbound = outbound
        self._protocol = protocol
        self._connection = connection

    async def read(self, n: int | None = None) -> bytes:
        return await self._inbound.read(n)

    async def write(self, data: bytes) -> None:
        await self._outbound.write(data)

    async def close(self) -> None:
        self._outbound.end()
        self._forget_if_done()
        await trio.lowlevel.checkpoint()

    async def reset(self) -> None:
        self.break_()
        await trio.lowlevel.checkpoint()

    def break_(self) -> None:
        self._inbound.break_()
        self._outbound.break_()
        self._connection.streams.discard(self)

    def _forget_if_done(self) -> None:
        if self._inbound.ended and self._outbound.ended:
            self._connection.streams.discard(self)

    def get_protocol(self) -> TProtocol | None:
        return TProtocol(self._protocol)

    def get_remote_address(self) -> tuple[str, int] | None:
        return None  # a memory peer has no IP: FrameStream.remote_ip is ""

    @property
    def reusable(self) -> bool:
        """Neither side closed or reset it, its connection is up, and nothing waits unread."""
        pipes = (self._inbound, self._outbound)
        return (
            self._connection.up and not any(p.ended or p.broken for p in pipes) and not self._inbound.unread
        )


class MemoryFrameStream(FrameStream):
    """A ``FrameStream`` over a memory stream: the same framing, bounds and deadlines."""

    def __init__(
        self,
        stream: MemoryByteStream,
        *,
        peer: str,
        first_frame_s: float | None = None,
        idle_s: float | None = None,
    ) -> None:
        super().__init__(stream, peer=peer, first_frame_s=first_frame_s, idle_s=idle_s)
        self._memory = stream

    @property
    def reusable(self) -> bool:
        return not self._frames.pending and self._memory.reusable


class _Counts:
    """Open inbound streams per key; zero keys are dropped."""

    def __init__(self) -> None:
        self._open: dict[Hashable, int] = {}

    def get(self, key: Hashable) -> int:
        return self._open.get(key, 0)

    def take(self, key: Hashable) -> None:
        self._open[key] = self._open.get(key, 0) + 1

    def release(self, key: Hashable) -> None:
        left = self._open[key] - 1
        if left:
            self._open[key] = left
        else:
            del self._open[key]


class MemoryHost:
    """A host on a ``MemoryNetwork`` (a ``StreamHost``). Open one with ``MemoryNetwork.open_host``."""

    def __init__(
        self, network: MemoryNetwork, peer_id: str, psk: bytes | None, nursery: trio.Nursery
    ) -> None:
        self.network = network
        self._peer_id = peer_id
        self._psk = psk
        self._nursery = nursery
        self._handlers: dict[str, tuple[Handler, float | None]] = {}
        self._connections: dict[str, _Connection] = {}
        self._addrs: dict[str, list[str]] = {}
        self._per_protocol = _Counts()
        self._per_peer = _Counts()
        self.refusals = _Refusals()
        """Inbound streams reset because their peer was over a cap (``refusals.count``), as on a Host."""

    @property
    def peer_id(self) -> str:
        return self._peer_id

    def addrs(self) -> list[str]:
        return [address_of(self._peer_id)]

    def relay_addresses(self) -> list[str]:
        return []  # no relays on a memory network

    def connected_peers(self) -> list[str]:
        return sorted(self._connections)

    def is_connected(self, peer_id: str) -> bool:
        return peer_id in self._connections

    def set_handler(
        self, handler: Handler, protocol: TProtocol = JOB_PROTOCOL, *, idle_s: float | None = None
    ) -> None:
        self._handlers[protocol] = (handler, idle_s)

    def serves(self, protocol: str) -> bool:
        return protocol in self._handlers

    def remember(self, peer_id: str, addrs: Sequence[str]) -> None:
        known = self._addrs.setdefault(peer_id, [])
        for address in addrs:
            with contextlib.suppress(ConfigError):  # not a memory address (a test's, or a relay's): ignored
                if _peer_in(address) == peer_id and address not in known:
                    known.append(address)
        if not known:
            del self._addrs[peer_id]

    def known_addrs(self, peer_id: str) -> list[str]:
        return list(self._addrs.get(peer_id, ()))

    async def connect(self, address: str) -> str:
        await trio.lowlevel.checkpoint()
        peer = _peer_in(address)
        if not self.is_connected(peer):
            self.network._connect(self, peer, address)
        return peer

    async def open_stream(
        self, peer_id: str, protocol: TProtocol = JOB_PROTOCOL, *, fallbacks: Sequence[TProtocol] = ()
    ) -> FrameStream:
        await trio.lowlevel.checkpoint()
        if not self.is_connected(peer_id):
            known = self.known_addrs(peer_id)
            if not known:
                raise TransportError(f"could not open a stream to {peer_id}: no known address for it")
            try:
                self.network._connect(self, peer_id, known[0])
            except TransportError as exc:
                raise TransportError(f"could not open a stream to {peer_id}: {exc}") from exc
        target = self.network._hosts[peer_id]
        asked = [protocol, *fallbacks]
        chosen = next((p for p in asked if target.serves(p)), None)
        if chosen is None:
            raise incompatible_peer(peer_id, asked)
        # The real host's guard refuses a peer over its cap of inbound streams before negotiation: the
        # opener's new_stream fails.
        cap = real_host.MAX_INBOUND_STREAMS_PER_PEER
        if target._per_peer.get(self._peer_id) >= cap:
            target.refusals.note(self._peer_id, f"it has {cap} inbound streams open (all protocols), the cap")
            raise TransportError(f"could not open a stream to {peer_id}: the peer reset it")
        ours, theirs = self._connections[peer_id].pair(chosen)
        target._accept(theirs, self._peer_id, chosen)
        return MemoryFrameStream(ours, peer=peer_id)

    def _accept(self, stream: MemoryByteStream, opener: str, protocol: str) -> None:
        handler, idle_s = self._handlers[protocol]
        bounds = stream_bounds(protocol, idle_s=idle_s)
        if self._per_protocol.get((opener, protocol)) >= bounds.max_per_peer:
            self.refusals.note(opener, f"it has {bounds.max_per_peer} {protocol} streams open, the cap")
            stream.break_()
            return
        self._per_peer.take(opener)
        self._per_protocol.take((opener, protocol))
        framed = MemoryFrameStream(
            stream, peer=opener, first_frame_s=bounds.first_frame_s, idle_s=bounds.idle_s
        )
        self._nursery.start_soon(self._serve, framed, opener, protocol, handler)

    async def _serve(self, framed: FrameStream, opener: str, protocol: str, handler: Handler) -> None:
        try:
            await _serve_framed(framed, protocol, handler)
        finally:
            self._per_protocol.release((opener, protocol))
            self._per_peer.release(opener)

    async def request(self, peer_id: str, message: Message) -> Message:
        """Open a stream, send one message, read one reply, close (as ``Host.request``)."""
        stream = await self.open_stream(peer_id)
        try:
            await stream.send(message)
            reply = await stream.receive()
        except BaseException:
            await stream.abort()
            raise
        await stream.aclose()
        return reply

    async def round_trip(self, peer_id: str, *, tries: int) -> float:
        """The best of ``tries`` status requests (as ``Host.round_trip``); 0.0 under a MockClock."""
        return await real_host.best_round_trip(self.request, peer_id, tries)

    async def disconnect(self, peer_id: str) -> None:
        await trio.lowlevel.checkpoint()
        self.network._disconnect(self._peer_id, peer_id)


class _Inbox:
    """A subscription the Gossip drains read (``get``), fed by the network."""

    def __init__(self, channel: trio.MemoryReceiveChannel[rpc_pb2.Message]) -> None:
        self._channel = channel

    async def get(self) -> rpc_pb2.Message:
        return await self._channel.receive()


class MemoryGossip(Gossip):
    """``Gossip`` on a memory network: its announcements, directory, drains and validators unchanged;
    publishing floods over the network's connections (``MemoryNetwork._publish``)."""

    def _open_pubsub(self) -> None:
        self._network = _memory_host(self._host).network
        self._inboxes: dict[str, trio.MemorySendChannel[rpc_pb2.Message]] = {}

    async def run(self, *, task_status: TaskStatus[Gossip] = trio.TASK_STATUS_IGNORED) -> None:
        announce_send, announce_receive = trio.open_memory_channel[rpc_pb2.Message](SUBSCRIPTION_QUEUE)
        ledger_send, ledger_receive = trio.open_memory_channel[rpc_pb2.Message](SUBSCRIPTION_QUEUE)
        self._inboxes = {self.announce_topic: announce_send, self.ledger_topic: ledger_send}
        self._network._gossips[self._host.peer_id] = self
        try:
            await self._serve(_Inbox(announce_receive), _Inbox(ledger_receive), task_status)
        finally:
            self._network._gossips.pop(self._host.peer_id, None)
            self._inboxes = {}

    async def publish_raw(self, topic: str, data: bytes) -> None:
        await trio.lowlevel.checkpoint()
        if topic not in self._inboxes:
            raise TransportError(f"could not publish on {topic}: not subscribed (is gossip running?)")
        self._network._publish(self._host.peer_id, topic, bytes(data))

    def accepts(self, topic: str, forwarder: ID, message: rpc_pb2.Message) -> bool:
        """What this node's gossipsub validator says of ``message`` (False: drop, do not forward)."""
        if topic == self.announce_topic:
            return self._validate_announcement(forwarder, message)
        if topic == self.ledger_topic:
            return self._validate_ledger(forwarder, message)
        return False

    def deliver(self, topic: str, message: rpc_pb2.Message) -> None:
        with contextlib.suppress(trio.WouldBlock, KeyError):  # a full queue drops, as py-libp2p's does
            self._inboxes[topic].send_nowait(message)


class MemoryDiscovery:
    """The DHT on a memory network (a ``Directory``): provider and value stores per node; servers in the
    routing table are asked and told, as Kademlia's closest peers would be."""

    def __init__(
        self, host: MemoryHost, *, network: str, signing_key: SigningKey, server: bool = True
    ) -> None:
        from opengrid.net.discovery import _check_component

        self._host = host
        self.network = _check_component("network", network)
        self._key = signing_key
        self.server = server
        self.validator = OpenGridValidator(network)
        self._table: set[str] = set()
        self._providers: dict[bytes, dict[str, tuple[str, ...]]] = {}
        self._values: dict[str, bytes] = {}

    async def run(self, *, task_status: TaskStatus[MemoryDiscovery] = trio.TASK_STATUS_IGNORED) -> None:
        dhts = self._host.network._dhts
        dhts[self._host.peer_id] = self
        try:
            task_status.started(self)
            await trio.sleep_forever()
        finally:
            dhts.pop(self._host.peer_id, None)

    def _servers(self) -> list[MemoryDiscovery]:
        dhts = self._host.network._dhts
        return [dhts[p] for p in sorted(self._table) if p in dhts]

    async def bootstrap(self, addrs: Sequence[str]) -> list[str]:
        reached = [await self._host.connect(a) for a in addrs]
        for peer in reached:
            await self.add_peer(peer)
        await self.refresh()
        return reached

    async def add_peer(self, peer: str) -> bool:
        await trio.lowlevel.checkpoint()
        other = self._host.network._dhts.get(peer)
        if other is None or not other.server or peer == self._host.peer_id:
            return False  # like identify saying it does not serve the DHT
        self._table.add(peer)
        return True

    async def refresh(self) -> None:
        """Learn the servers our servers know (a lookup of ourselves)."""
        await trio.lowlevel.checkpoint()
        for server in self._servers():
            self._table.update(p for p in server._table if p != self._host.peer_id)

    def routing_table_size(self) -> int:
        return len(self._servers())

    def _check_key(self, key: str) -> str:
        if not key.startswith(f"/{NAMESPACE}/{self.network}/"):
            raise LocalProtocolError(f"DHT key {key!r} is not in this node's network {self.network!r}")
        return key

    def _add_provider(self, raw: bytes, peer: str, addrs: tuple[str, ...]) -> None:
        self._providers.setdefault(raw, {})[peer] = addrs

    async def provide(self, key: str) -> None:
        raw = provider_key_bytes(self._check_key(key))
        await trio.lowlevel.checkpoint()
        me, addrs = self._host.peer_id, tuple(self._host.addrs())
        for store in [self, *self._servers()]:
            store._add_provider(raw, me, addrs)

    def hold(self, key: str) -> None:
        self._add_provider(
            provider_key_bytes(self._check_key(key)), self._host.peer_id, tuple(self._host.addrs())
        )

    async def find_providers(self, key: str, limit: int = 64) -> list[Provider]:
        raw = provider_key_bytes(self._check_key(key))
        await trio.lowlevel.checkpoint()
        me = self._host.peer_id
        found: dict[str, tuple[str, ...]] = {}
        for store in [self, *self._servers()]:
            for peer, addrs in store._providers.get(raw, {}).items():
                if peer != me and len(addrs) >= len(found.get(peer, ())):
                    found[peer] = addrs
        out = [Provider(peer, found[peer]) for peer in sorted(found)]
        for provider in out:
            self._host.remember(provider.peer_id, provider.addrs)
        return out[:limit]

    def _store_value(self, key: str, data: bytes) -> None:
        try:
            self.validator.validate(key, data)
        except ValueError:
            return  # strict validation: the store refuses it
        old = self._values.get(key)
        self._values[key] = data if old is None else [old, data][self.validator.select(key, [old, data])]

    async def put_value(self, key: str, value: bytes, *, seq: int | None = None) -> None:
        key = self._check_key(key)
        await trio.lowlevel.checkpoint()
        seq = time.time_ns() // 1_000_000 if seq is None else seq
        data = encode_value_record(self.network, key, value, seq, self._key)
        if len(data) > MAX_VALUE_BYTES:
            raise LocalProtocolError(
                f"DHT value for {key} encodes to {len(data)} bytes, over {MAX_VALUE_BYTES}"
            )
        try:
            self.validator.validate(key, data)
        except ValueError as exc:
            raise TransportError(f"could not store {key}: {exc}") from exc
        for store in [self, *self._servers()]:
            store._store_value(key, data)

    async def get_value(self, key: str) -> ValueRecord | None:
        key = self._check_key(key)
        await trio.lowlevel.checkpoint()
        found = [v for store in [self, *self._servers()] if (v := store._values.get(key)) is not None]
        if not found:
            return None
        return decode_value_record(self.network, key, found[self.validator.select(key, found)])


def _memory_host(host: StreamHost) -> MemoryHost:
    if not isinstance(host, MemoryHost):
        raise ConfigError(f"a memory network serves memory hosts only, got {type(host).__name__}")
    return host


class MemoryNetwork:
    """An in-memory network (a ``Transport``): pass it to ``Node(config, transport=net)``, and open a
    bare client host with ``async with net.open_host(seed) as host``."""

    name: Final = "memory"
    """For logs."""

    def __init__(self) -> None:
        self.trio_token: trio.lowlevel.TrioToken | None = None
        """The trio run the network lives in, from its first host on (an SDK ``Client`` given this
        network runs its calls there, not in a run of its own)."""
        self._hosts: dict[str, MemoryHost] = {}
        self._gossips: dict[str, MemoryGossip] = {}
        self._dhts: dict[str, MemoryDiscovery] = {}

    def peers(self) -> list[str]:
        """Peer ids of the hosts on the network now, sorted."""
        return sorted(self._hosts)

    @contextlib.asynccontextmanager
    async def open_host(
        self, seed: bytes, listen: Sequence[str] = (), *, psk: bytes | None = None, relay: bool = False
    ) -> AsyncIterator[MemoryHost]:
        """Join with identity ``seed`` until the block ends; then every connection of the host is reset.
        ``listen`` and ``relay`` are ignored (one memory address, no relays); hosts with different
        ``psk``s cannot connect, as on a private libp2p network."""
        if len(seed) != 32:
            raise ConfigError(f"an identity seed is 32 bytes, got {len(seed)}")
        if psk is not None and len(psk) != PSK_BYTES:
            raise ConfigError(f"a network key (psk) is {PSK_BYTES} bytes, got {len(psk)}; use derive_psk()")
        peer = peer_id_of(bytes(SigningKey(seed).verify_key))
        token = trio.lowlevel.current_trio_token()
        if self.trio_token is None:
            self.trio_token = token
        elif token is not self.trio_token:
            raise ConfigError("a memory network lives in one trio run; this host was opened in another")
        if peer in self._hosts:
            raise ConfigError(f"peer {peer} is already on this memory network; give each host its own seed")
        async with trio.open_nursery() as nursery:
            host = MemoryHost(self, peer, psk, nursery)
            self._hosts[peer] = host
            try:
                yield host
            finally:
                del self._hosts[peer]
                for other in list(host._connections):
                    self._disconnect(peer, other)
                nursery.cancel_scope.cancel()

    def gossip(self, host: StreamHost, **settings: Any) -> MemoryGossip:
        return MemoryGossip(host, **settings)

    def discovery(
        self, host: StreamHost, *, network: str, signing_key: SigningKey, server: bool = True
    ) -> MemoryDiscovery:
        return MemoryDiscovery(_memory_host(host), network=network, signing_key=signing_key, server=server)

    # ── what the hosts and gossip call ───────────────────────────────────────────────────────────────
    def _connect(self, host: MemoryHost, peer: str, address: str) -> None:
        target = self._hosts.get(peer)
        if target is None:
            raise TransportError(f"could not connect to {address}: no such peer on the network (it left?)")
        if peer == host.peer_id:
            raise TransportError(f"could not connect to {address}: that is this host")
        if target._psk != host._psk:
            raise TransportError(
                f"could not connect to {address}: the handshake failed (private network: does that peer use "
                "the same network key?)"
            )
        connection = _Connection()
        host._connections[peer] = target._connections[host.peer_id] = connection
        # as identify does: each side learns where the other listens
        host.remember(peer, target.addrs())
        target.remember(host.peer_id, host.addrs())

    def _disconnect(self, one: str, other: str) -> None:
        a, b = self._hosts.get(one), self._hosts.get(other)
        connection = None
        for host, peer in ((a, other), (b, one)):
            if host is not None:
                connection = host._connections.pop(peer, None) or connection
        if connection is not None:
            connection.close()

    def _publish(self, origin: str, topic: str, data: bytes) -> None:
        """Flood ``data`` from ``origin`` through subscribed peers over connections; each receiver
        validates before it keeps or forwards (gossipsub's order)."""
        if len(data) > MAX_GOSSIP_BYTES:
            return
        message = rpc_pb2.Message(from_id=ID.from_base58(origin).to_bytes(), data=data, topicIDs=[topic])
        seen = {origin}
        frontier = [origin]
        while frontier:
            forwarder = frontier.pop(0)
            host = self._hosts.get(forwarder)
            if host is None:
                continue
            for peer in host.connected_peers():
                receiver = self._gossips.get(peer)
                if peer in seen or receiver is None or topic not in receiver._inboxes:
                    continue
                seen.add(peer)
                if receiver.accepts(topic, ID.from_base58(forwarder), message):
                    receiver.deliver(topic, message)
                    frontier.append(peer)


async def run_sync_waiting(sync_fn: Callable[..., T], *args: Any) -> T:
    """Run ``sync_fn(*args)`` in a worker thread that does NOT stop the clock of
    ``clock_stops_for_threads``, for a thread that waits for the loop rather than computing: a client
    reading a stream (the SDK's ``Client.stream`` hands the exchange to a thread of its own and waits on a
    queue; an HTTP client of a node's API waits on a socket). Counted, such a thread would hold virtual
    time still while the nodes it waits for need it to pass (a worker paces its progress frames with a
    timer), and the test would hang. Virtual time flows while it runs, as real time would; what the
    thread does between its waits is short (decoding a frame, opening a chunk)."""
    return await _PLAIN_RUN_SYNC(sync_fn, *args)


@contextlib.contextmanager
def clock_stops_for_threads(clock: trio.testing.MockClock) -> Iterator[trio.testing.MockClock]:
    """While the block runs, ``clock`` does not autojump while a thread started by
    ``trio.to_thread.run_sync`` in its run computes, or while a task reads the output of a child process
    it started with ``trio.lowlevel.open_process`` (the SDK's and the API's chat-template renderers):
    virtual time stands still while work outside the loop goes on, as if it took no time, instead of
    racing through every pending deadline meanwhile. A thread that calls back into the loop
    (``trio.from_thread.run``: a test driving the synchronous SDK from a thread) does not count while that
    call runs, so virtual time flows for what it asked the loop to do. (So a child or a thread that never
    finishes hangs the test instead of timing out: bound such tests with real time.)

    Use it as a pytest fixture's body (tests/conftest.py ``memnet_clock``)."""
    run_sync, run = trio.to_thread.run_sync, trio.from_thread.run
    threshold = clock.autojump_threshold
    computing = 0
    marked = threading.local()

    def count(step: int) -> None:  # in the loop's thread only
        nonlocal computing
        computing += step
        clock.autojump_threshold = math.inf if computing > 0 else threshold

    async def counted_run_sync(sync_fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if trio.lowlevel.current_clock() is not clock:  # another trio run (an SDK client's own loop)
            return await run_sync(sync_fn, *args, **kwargs)

        def in_thread(*inner: Any) -> T:
            marked.counted = True  # trio reuses its worker threads: unmarked again below
            try:
                return sync_fn(*inner)
            finally:
                marked.counted = False

        count(+1)
        try:
            return await run_sync(in_thread, *args, **kwargs)
        finally:
            count(-1)

    def counted_run(afn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        if not getattr(marked, "counted", False):
            return run(afn, *args, **kwargs)

        async def waited_for() -> T:
            count(-1)
            try:
                return await afn(*args)
            finally:
                count(+1)

        return run(waited_for, **kwargs)

    open_process = trio.lowlevel.open_process

    async def counted_open_process(*args: Any, **kwargs: Any) -> trio.Process:
        process = await open_process(*args, **kwargs)
        if trio.lowlevel.current_clock() is clock and process.stdout is not None:
            process.stdout = _CountedReceive(process.stdout, count)
        return process

    trio.to_thread.run_sync = counted_run_sync  # on purpose: restored below
    trio.from_thread.run = counted_run
    trio.lowlevel.open_process = counted_open_process
    try:
        yield clock
    finally:
        trio.to_thread.run_sync, trio.from_thread.run = run_sync, run
        trio.lowlevel.open_process = open_process


class _CountedReceive(trio.abc.ReceiveStream):
    """A child's output stream whose reads stop the clock (``clock_stops_for_threads``)."""

    def __init__(self, inner: trio.abc.ReceiveStream, count: Callable[[int], None]) -> None:
        self._inner = inner
        self._count = count

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        self._count(+1)
        try:
            return await self._inner.receive_some(max_bytes)
        finally:
            self._count(-1)

    async def aclose(self) -> None:
        await self._inner.aclose()


if TYPE_CHECKING:  # mypy checks here that the network is a Transport and its hosts StreamHosts
    from opengrid.net.transport import Transport

    _network: Transport = MemoryNetwork()
    _host: StreamHost = MemoryHost(MemoryNetwork(), "", None, cast(trio.Nursery, None))

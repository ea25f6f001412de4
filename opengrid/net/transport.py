"""The transport seam: what a node and the SDK use of the network, as small protocols, and the libp2p
implementation of them.

A node never names py-libp2p: it gets a ``Transport`` (``Node(config, transport=...)``, default
``LIBP2P``) and asks it for a host, gossip and a DHT directory. Two implementations exist:

- ``LIBP2P`` (this module): ``opengrid.net.host.open_host``, ``Gossip`` over gossipsub and ``Discovery``
  over Kademlia: today's behaviour, unchanged;
- ``opengrid.testing.memnet.MemoryNetwork``: an in-memory network for tests (trio memory only, no
  sockets), deterministic under ``trio.testing.MockClock``.

The protocols::

    Transport      open_host(seed, listen, psk=, relay=) -> StreamHost; gossip(host, ...) -> PubSub;
                   discovery(host, ...) -> Directory
    StreamHost     identity and addresses, dialling, framed streams by protocol (FrameStream)
    ByteStream     the raw byte stream a FrameStream frames (a libp2p INetStream, or a memory pipe)
    PubSub         the announce and ledger topics of one network (opengrid.net.gossip.Gossip)
    Directory      the DHT: provider records and signed values (opengrid.net.discovery.Discovery)

There is one frame stream class, ``opengrid.net.host.FrameStream``, over a ``ByteStream``: framing,
frame size bounds and read deadlines are the same code on every transport, so a test of hostile input
on the in-memory network tests the code that faces the internet. Relays, hole punching and LAN
discovery are libp2p features, not part of the seam: a node uses them only on a libp2p ``Host``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, Final, Protocol

import trio
from libp2p.custom_types import TProtocol
from nacl.signing import SigningKey

from opengrid.errors import ConfigError
from opengrid.net.discovery import Discovery, Provider, ValueRecord
from opengrid.net.gossip import Gossip
from opengrid.net.host import FrameStream, Host, open_host

if TYPE_CHECKING:
    from typing import Unpack

    from trio_typing import TaskStatus  # trio-typing's stubs (a py-libp2p dependency) hide trio.TaskStatus

    from opengrid.net.directory import PeerDirectory
    from opengrid.net.gossip import _FieldUpdate
    from opengrid.wire.messages import Message

Handler = Callable[[FrameStream], Awaitable[None]]
"""Serves one inbound stream; the host closes the stream after it returns."""


class ByteStream(Protocol):
    """A raw, ordered, reliable byte stream to one peer (what ``FrameStream`` frames)."""

    async def read(self, n: int | None = None) -> bytes:
        """Up to ``n`` bytes; raises once the peer ended or reset the stream."""
        ...

    async def write(self, data: bytes) -> None:
        """Write all of ``data``; raises when the stream is gone."""
        ...

    async def close(self) -> None:
        """End our side: the peer reads to the end, then sees the end."""
        ...

    async def reset(self) -> None:
        """Abort both sides: the peer's reads and writes fail."""
        ...

    def get_protocol(self) -> TProtocol | None:
        """The protocol negotiated for the stream."""
        ...

    def get_remote_address(self) -> tuple[str, int] | None:
        """The peer's (IP, port), when the transport has one."""
        ...


class StreamHost(Protocol):
    """A node's endpoint: its identity, its addresses, and framed streams to peers by protocol."""

    @property
    def peer_id(self) -> str:
        """Our base58 peer id (``12D3KooW...``), derived from the identity seed."""
        ...

    def addrs(self) -> list[str]:
        """Full addresses (ending ``/p2p/<peer id>``) others can dial us at."""
        ...

    def relay_addresses(self) -> list[str]:
        """Our addresses through relays that hold a reservation for us (empty without relays)."""
        ...

    def connected_peers(self) -> list[str]:
        """Peer ids we hold a connection to, sorted."""
        ...

    def is_connected(self, peer_id: str) -> bool: ...

    def set_handler(
        self, handler: Handler, protocol: TProtocol = ..., *, idle_s: float | None = None
    ) -> None:
        """Serve ``protocol`` (default the job protocol) with ``handler``, within the protocol's bounds
        (``opengrid.net.host.stream_bounds``; ``idle_s`` overrides a kept channel's idle bound)."""
        ...

    def remember(self, peer_id: str, addrs: Sequence[str]) -> None:
        """Record addresses for a peer so it can be dialled later."""
        ...

    def known_addrs(self, peer_id: str) -> list[str]: ...

    async def connect(self, address: str) -> str:
        """Dial a full address; return the peer id. ``TransportError`` when it cannot be reached,
        ``ConfigError`` when ``address`` is not an address."""
        ...

    async def open_stream(
        self, peer_id: str, protocol: TProtocol = ..., *, fallbacks: Sequence[TProtocol] = ()
    ) -> FrameStream:
        """A framed stream to ``peer_id`` speaking ``protocol`` or the first of ``fallbacks`` the peer
        speaks (dialling it first if needed). ``IncompatiblePeerError`` when it speaks none of them,
        ``TransportError`` when it cannot be reached."""
        ...

    async def request(self, peer_id: str, message: Message) -> Message:
        """Open a stream, send one message, read one reply, close."""
        ...

    async def round_trip(self, peer_id: str, *, tries: int) -> float:
        """The best of ``tries`` status requests on fresh streams, in seconds."""
        ...

    async def disconnect(self, peer_id: str) -> None:
        """Close our connections to a peer; never raises."""
        ...


class PubSub(Protocol):
    """The network's two gossip topics as a node uses them: our signed announcement at every beat, the
    directory of who announced what, and ledger entries (``opengrid.net.gossip.Gossip``)."""

    network: str
    directory: PeerDirectory
    beat_s: float
    changed: trio.Event
    ledger_messages: trio.MemoryReceiveChannel[tuple[str, bytes]]

    async def run(self, *, task_status: TaskStatus[Any] = ...) -> None: ...

    def update(self, **fields: Unpack[_FieldUpdate]) -> None:
        """Change announced fields; they go out at the next beat."""
        ...

    async def publish_ledger(self, data: bytes) -> None: ...

    async def announce_now(self) -> None:
        """Send our announcement at once (a change others plan from must not wait a beat)."""
        ...


class Directory(Protocol):
    """The DHT as a node and the SDK use it (``opengrid.net.discovery.Discovery``)."""

    network: str

    async def run(self, *, task_status: TaskStatus[Any] = ...) -> None: ...

    async def add_peer(self, peer: str) -> bool:
        """Add a connected peer to the routing table if it serves the DHT."""
        ...

    async def refresh(self) -> None: ...

    def routing_table_size(self) -> int: ...

    async def provide(self, key: str) -> None:
        """Advertise that we provide ``key``."""
        ...

    def hold(self, key: str) -> None:
        """Keep our own provider record of ``key`` in our local store (answered to direct queries)."""
        ...

    async def find_providers(self, key: str, limit: int = 64) -> list[Provider]:
        """Providers of ``key`` other than us, deduped and sorted by peer id."""
        ...

    async def put_value(self, key: str, value: bytes, *, seq: int | None = None) -> None: ...

    async def get_value(self, key: str) -> ValueRecord | None: ...


class Transport(Protocol):
    """Where a node gets its network from (``Node(config, transport=...)``)."""

    @property
    def name(self) -> str:
        """``"libp2p"`` or ``"memory"``: for logs."""
        ...

    @property
    def trio_token(self) -> trio.lowlevel.TrioToken | None:
        """The trio run this transport's hosts must live in (an in-memory network's), or None when any
        run will do (libp2p: the SDK's ``Client`` runs its own, on a private thread)."""
        ...

    def open_host(
        self, seed: bytes, listen: Sequence[str], *, psk: bytes | None = None, relay: bool = False
    ) -> AbstractAsyncContextManager[StreamHost]:
        """Open a host with identity ``seed``; it closes when the block ends."""
        ...

    def gossip(self, host: StreamHost, **settings: Any) -> PubSub:
        """Gossip for ``host``; ``settings`` are ``Gossip``'s keyword arguments (network, signing_key,
        roles, models, ...)."""
        ...

    def discovery(
        self, host: StreamHost, *, network: str, signing_key: SigningKey, server: bool = True
    ) -> Directory:
        """The DHT for ``host`` (``server``: answer queries and store records)."""
        ...


class Libp2pTransport:
    """The real network: py-libp2p hosts (TCP + Noise + yamux), gossipsub and Kademlia."""

    name: Final = "libp2p"
    """For logs."""
    trio_token: Final = None
    """Any trio run will do."""

    def __init__(self, *, dial_retries: int | None = None) -> None:
        """``dial_retries``: how often its hosts try a failed dial again (``open_host``; None: the
        library's 3, after 0.1, 0.2 and 0.4 s). Tests that dial closed ports on purpose pass 0."""
        self.dial_retries = dial_retries

    def open_host(
        self, seed: bytes, listen: Sequence[str], *, psk: bytes | None = None, relay: bool = False
    ) -> AbstractAsyncContextManager[StreamHost]:
        return open_host(seed, listen, psk=psk, relay=relay, dial_retries=self.dial_retries)

    def gossip(self, host: StreamHost, **settings: Any) -> PubSub:
        return Gossip(_libp2p_host(host), **settings)

    def discovery(
        self, host: StreamHost, *, network: str, signing_key: SigningKey, server: bool = True
    ) -> Directory:
        return Discovery(_libp2p_host(host), network=network, signing_key=signing_key, server=server)


def _libp2p_host(host: StreamHost) -> Host:
    if not isinstance(host, Host):
        raise ConfigError(f"libp2p gossip and DHT need a libp2p host, got {type(host).__name__}")
    return host


LIBP2P: Final = Libp2pTransport()
"""The default transport: exactly what a node ran on before the seam."""

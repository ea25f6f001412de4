"""Kademlia DHT: provider records per model and per role, and signed, validated values.

Content keys are prefixed and namespaced by network, so they are never re-encoded as hex or CIDs by the
library (pitfall 9) and two grids never answer each other's lookups:

* ``model_key(network, sha256)``  -> ``/opengrid/<network>/model:<sha256>``
* ``model_name_key(network, name)`` -> ``/opengrid/<network>/model-name:<name>``
* ``role_key(network, role)``     -> ``/opengrid/<network>/role:<role>`` (coordinator, relay, ...)

On the wire a provider key is the sha2-256 multihash of the UTF-8 logical key above (34 bytes): the
library's servers ignore ADD_PROVIDER keys over 80 bytes and FIND_NODE keys that are neither a multihash nor
at most 50 bytes (found the hard way: an 88-byte key was silently dropped), and a multihash is what other
implementations expect. Value keys are sent as is, so they must stay within 50 bytes (``value_key`` checks).

Values (``put_value`` / ``get_value``) live under the ``opengrid`` DHT namespace with strict validation on:
a value is a ``ValueRecord`` signed by its writer, naming the network and the key; the registered
``OpenGridValidator`` rejects anything else (another network, a foreign namespace, a bad signature, more
than 8 KiB), and prefers the higher ``seq`` when records conflict.

Applied from shared/notes/py-libp2p.md: after connecting to a bootstrap peer we add it to the routing
table and refresh (pitfall 8); ``find_providers`` asks the closest peers directly, merges local records,
dedupes by peer id and drops our own record (pitfall 7). Provider records are hints: health-check a
provider before sending it work.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Final

import msgspec
import trio
from libp2p.kad_dht import peer_routing
from libp2p.kad_dht.common import PROTOCOL_ID as KAD_PROTOCOL_ID
from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.records.validator import NamespacedValidator, Validator
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from opengrid.errors import (
    ConfigError,
    LocalProtocolError,
    OpenGridError,
    RemoteProtocolError,
    TransportError,
)
from opengrid.net.host import Host
from opengrid.net.services import background_service

if TYPE_CHECKING:
    from trio_typing import TaskStatus  # trio-typing's stubs (a py-libp2p dependency) hide trio.TaskStatus

log = logging.getLogger("opengrid.net.discovery")

# py-libp2p starts a lookup from every connected peer and then from EVERY peer in the peerstore whenever
# the routing table holds fewer than 5 peers — in a grid with a few DHT servers, always; the peerstore
# holds every node gossip told us of, so each lookup dialled the whole grid, DHT clients included (20
# nodes fully meshed, 81 refused kad streams per worker in a minute, heartbeats missed). Lookups start
# from the routing table only, which holds DHT servers only (``_ServersOnlyKadDHT``).
peer_routing.MIN_PEERS_THRESHOLD = 0

NAMESPACE: Final = "opengrid"
VALUE_DOMAIN: Final = b"opengrid/dht-value/1\x00"
MAX_VALUE_BYTES: Final = 8 * 1024
MAX_VALUE_KEY_BYTES: Final = 50
_SHA256_MULTIHASH: Final = b"\x12\x20"
_QUERY_LIMIT: Final = 8


def _check_component(what: str, text: str) -> str:
    if not text or "/" in text or len(text) > 128:
        raise ConfigError(f"{what} {text!r} must be 1-128 characters without '/'")
    return text


def model_key(network: str, sha256: str) -> str:
    """Provider key of a model by its GGUF sha256 (hex)."""
    return f"/{NAMESPACE}/{_check_component('network', network)}/model:{sha256.lower()}"


def model_name_key(network: str, name: str) -> str:
    """Provider key of a model by its human name."""
    return f"/{NAMESPACE}/{_check_component('network', network)}/model-name:{_check_component('name', name)}"


def role_key(network: str, role: str) -> str:
    """Provider key of a role: ``coordinator``, ``relay``, ``worker``..."""
    return f"/{NAMESPACE}/{_check_component('network', network)}/role:{_check_component('role', role)}"


def value_key(network: str, name: str) -> str:
    """Key of a DHT value named ``name`` in ``network`` (at most 50 bytes in all; see module docstring)."""
    key = f"/{NAMESPACE}/{_check_component('network', network)}/{_check_component('name', name)}"
    if len(key.encode()) > MAX_VALUE_KEY_BYTES:
        raise ConfigError(f"DHT value key {key!r} is over {MAX_VALUE_KEY_BYTES} bytes; use a shorter name")
    return key


def provider_key_bytes(key: str) -> bytes:
    """The DHT key a logical provider key is advertised under: its sha2-256 multihash."""
    return _SHA256_MULTIHASH + hashlib.sha256(key.encode()).digest()


class ValueRecord(msgspec.Struct, frozen=True, array_like=True):
    """A DHT value: signed by its writer over ``VALUE_DOMAIN + msgpack([network, key, value, seq, pk])``."""

    network: Annotated[str, msgspec.Meta(max_length=128)]
    key: Annotated[str, msgspec.Meta(max_length=MAX_VALUE_KEY_BYTES)]
    value: Annotated[bytes, msgspec.Meta(max_length=MAX_VALUE_BYTES)]
    seq: Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
    public_key: Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]
    signature: Annotated[bytes, msgspec.Meta(max_length=64)]


_encoder = msgspec.msgpack.Encoder()
_record_decoder = msgspec.msgpack.Decoder(ValueRecord)


def _signing_bytes(network: str, key: str, value: bytes, seq: int, public_key: bytes) -> bytes:
    return VALUE_DOMAIN + _encoder.encode([network, key, value, seq, public_key])


def encode_value_record(network: str, key: str, value: bytes, seq: int, signing_key: SigningKey) -> bytes:
    public_key = bytes(signing_key.verify_key)
    signature = signing_key.sign(_signing_bytes(network, key, value, seq, public_key)).signature
    return _encoder.encode(ValueRecord(network, key, value, seq, public_key, signature))


def decode_value_record(network: str, key: str, data: bytes) -> ValueRecord:
    """Decode and verify a stored value for ``key``; raises ``RemoteProtocolError``."""
    if len(data) > MAX_VALUE_BYTES:
        raise RemoteProtocolError(f"DHT value for {key} is {len(data)} bytes, over {MAX_VALUE_BYTES}")
    if not key.startswith(f"/{NAMESPACE}/{network}/"):
        raise RemoteProtocolError(f"DHT key {key!r} is not in network {network!r}")
    try:
        record = _record_decoder.decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise RemoteProtocolError(f"DHT value for {key} is not a signed record: {exc}") from exc
    if record.network != network or record.key != key:
        raise RemoteProtocolError(
            f"DHT record names network {record.network!r} key {record.key!r}; expected {network!r} {key!r}"
        )
    try:
        VerifyKey(record.public_key).verify(
            _signing_bytes(record.network, record.key, record.value, record.seq, record.public_key),
            record.signature,
        )
    except (BadSignatureError, ValueError) as exc:
        raise RemoteProtocolError(f"DHT value for {key} has a bad signature") from exc
    return record


class _ServersOnlyKadDHT(KadDHT):
    """KadDHT whose routing table holds DHT servers only, as the Kademlia spec says.

    py-libp2p adds every peer that opens a DHT stream to us, on the grounds that it "MUST support server
    mode" — but client-mode peers open streams too. With clients in routing tables, lookups hand them out
    as closer peers and every node dials every other: measured on a 20-node grid (2 coordinators serving,
    18 workers as clients), all nodes ended fully meshed and the Noise handshakes starved 2 cores until
    heartbeats were missed. Here a peer enters the table when identify says it serves the DHT; before
    identify has said anything, only when we add it ourselves (a bootstrap, a connected peer), never
    because it opened a DHT stream to us (``skip_server_mode_check``: the library's inbound path).
    """

    async def add_peer(self, peer_id: ID, *, skip_server_mode_check: bool = False) -> bool:
        try:
            protocols = self.host.get_peerstore().get_protocols(peer_id) or []
        except Exception:  # not in the peerstore yet
            protocols = []
        if protocols:
            if str(KAD_PROTOCOL_ID) not in protocols:
                return False
            return bool(await super().add_peer(peer_id, skip_server_mode_check=True))
        if skip_server_mode_check:
            return False  # an inbound stream from a peer identify has not described: maybe a client
        return bool(await super().add_peer(peer_id))


class OpenGridValidator(Validator):
    """libp2p validator of the ``/opengrid/`` namespace for one network (strict: everything else fails)."""

    def __init__(self, network: str) -> None:
        self.network = network
        self.rejected = 0

    def validate(self, key: str, value: bytes) -> None:
        try:
            decode_value_record(self.network, key, value)
        except RemoteProtocolError as exc:
            self.rejected += 1
            log.debug("DHT value refused: %s", exc)
            raise ValueError(str(exc)) from exc

    def select(self, key: str, values: list[bytes]) -> int:
        def rank(i: int) -> tuple[int, int, bytes]:
            try:
                return (1, decode_value_record(self.network, key, values[i]).seq, values[i])
            except RemoteProtocolError:
                return (0, -1, b"")

        return max(range(len(values)), key=rank)


@dataclass(frozen=True)
class Provider:
    """A peer that says it provides a key, and where it said it listens."""

    peer_id: str
    addrs: tuple[str, ...]

    def address(self) -> str:
        """Its first address as a full multiaddr ending in ``/p2p/<peer id>`` (what ``Host.connect`` dials);
        an empty string when it gave none."""
        if not self.addrs:
            return ""
        first = self.addrs[0]
        return first if first.endswith(f"/p2p/{self.peer_id}") else f"{first}/p2p/{self.peer_id}"


class Discovery:
    """The node's Kademlia DHT. Start with ``await nursery.start(discovery.run)`` inside ``open_host``.

    ``server=True`` on reachable nodes (they answer DHT queries and store records); ``False`` (client
    mode) behind NAT: they query and provide, but are not added to others' routing tables.
    """

    def __init__(self, host: Host, *, network: str, signing_key: SigningKey, server: bool = True) -> None:
        self._host = host
        self.network = _check_component("network", network)
        self._key = signing_key
        self.validator = OpenGridValidator(network)
        self._dht = _ServersOnlyKadDHT(
            host.libp2p,
            DHTMode.SERVER if server else DHTMode.CLIENT,
            validator=NamespacedValidator({NAMESPACE: self.validator}, strict_validation=True),
            validator_changed=True,
            strict_validation=True,
        )
        self._me = host.libp2p.get_id()

    async def run(self, *, task_status: TaskStatus[Discovery] = trio.TASK_STATUS_IGNORED) -> None:
        async with background_service(self._dht):
            task_status.started(self)
            await trio.sleep_forever()

    # ── peers ────────────────────────────────────────────────────────────────────────────────────────
    async def bootstrap(self, addrs: Sequence[str]) -> list[str]:
        """Connect to bootstrap multiaddrs, add them to the routing table, refresh it (pitfall 8).

        Returns the peer ids reached; raises ``TransportError`` only if none was.
        """
        reached: list[str] = []
        errors: list[str] = []
        for addr in addrs:
            try:
                peer = await self._host.connect(addr)
            except OpenGridError as exc:
                errors.append(str(exc))
                continue
            reached.append(peer)
            await self._dht.add_peer(ID.from_base58(peer))
        if addrs and not reached:
            raise TransportError("no bootstrap peer reachable: " + "; ".join(errors))
        await self.refresh()
        return reached

    async def add_peer(self, peer: str) -> bool:
        """Add a connected peer to the routing table if it serves the DHT (identify told us so)."""
        try:
            return bool(await self._dht.add_peer(ID.from_base58(peer)))
        except Exception as exc:  # a peer that vanished between listing and adding
            log.debug("could not add %s to the routing table: %s", peer, exc)
            return False

    async def refresh(self) -> None:
        """Look ourselves and random keys up, filling the routing table (the library waits 600 s)."""
        try:
            await self._dht.refresh_routing_table()
        except Exception as exc:
            raise TransportError(f"DHT refresh failed: {exc or type(exc).__name__}") from exc

    def routing_table_size(self) -> int:
        return int(self._dht.get_routing_table_size())

    # ── provider records ─────────────────────────────────────────────────────────────────────────────
    def _check_key(self, key: str) -> str:
        if not key.startswith(f"/{NAMESPACE}/{self.network}/"):
            raise LocalProtocolError(f"DHT key {key!r} is not in this node's network {self.network!r}")
        return key

    async def provide(self, key: str) -> None:
        """Advertise that we provide ``key`` (records last 48 h; re-provided by the library)."""
        try:
            await self._dht.provider_store.provide(provider_key_bytes(self._check_key(key)))
        except OpenGridError:
            raise
        except Exception as exc:
            raise TransportError(f"could not provide {key}: {exc or type(exc).__name__}") from exc

    def hold(self, key: str) -> None:
        """Keep our own provider record of ``key`` in the local store, refreshing its 48 h lifetime, so a
        peer that asks this node directly (GET_PROVIDERS) finds us: the one way a grid's only DHT server,
        whose routing table is empty, can be found at all. Sends nothing; ``provide`` also tells others."""
        addrs = list(self._host.libp2p.get_addrs())
        self._dht.provider_store.add_provider(
            provider_key_bytes(self._check_key(key)), PeerInfo(self._me, addrs)
        )

    async def find_providers(self, key: str, limit: int = 64) -> list[Provider]:
        """Providers of ``key`` except us, deduped by peer id, sorted by peer id, at most ``limit``.

        Unlike the library's call (which returns local records alone whenever it has any), this asks the
        closest peers on the network too and merges everything.
        """
        raw = provider_key_bytes(self._check_key(key))
        store = self._dht.provider_store
        found: dict[ID, PeerInfo] = {}

        def add(infos: Sequence[PeerInfo]) -> None:
            for info in infos:
                if info.peer_id != self._me:
                    old = found.get(info.peer_id)
                    if old is None or len(info.addrs) > len(old.addrs):
                        found[info.peer_id] = info

        add(store.get_providers(raw))
        try:
            closest = await self._dht.peer_routing.find_closest_peers_network(raw)
        except Exception as exc:
            raise TransportError(f"DHT lookup of {key} failed: {exc or type(exc).__name__}") from exc
        limiter = trio.CapacityLimiter(_QUERY_LIMIT)

        async def ask(peer: ID) -> None:
            async with limiter:
                try:
                    with trio.move_on_after(5):
                        providers, _closer = await store._get_providers_from_peer_with_closers(peer, raw)
                        add(providers)
                except Exception as exc:  # one unreachable peer must not fail the lookup
                    log.debug("provider query to %s failed: %s", peer, exc)

        async with trio.open_nursery() as nursery:
            for peer in closest:
                if peer != self._me:
                    nursery.start_soon(ask, peer)
        out = [
            Provider(peer.to_base58(), tuple(str(a) for a in info.addrs))
            for peer, info in sorted(found.items(), key=lambda item: item[0].to_base58())
        ]
        for provider in out:
            self._host.remember(provider.peer_id, provider.addrs)
        return out[:limit]

    # ── values ───────────────────────────────────────────────────────────────────────────────────────
    async def put_value(self, key: str, value: bytes, *, seq: int | None = None) -> None:
        """Store a signed value under ``key`` (see ``value_key``); ``seq`` defaults to unix ms."""
        key = self._check_key(key)
        seq = time.time_ns() // 1_000_000 if seq is None else seq
        data = encode_value_record(self.network, key, value, seq, self._key)
        if len(data) > MAX_VALUE_BYTES:
            raise LocalProtocolError(
                f"DHT value for {key} encodes to {len(data)} bytes, over {MAX_VALUE_BYTES}"
            )
        try:
            await self._dht.put_value(key, data)
        except Exception as exc:
            raise TransportError(f"could not store {key}: {exc or type(exc).__name__}") from exc

    async def get_value(self, key: str) -> ValueRecord | None:
        """The best valid record for ``key`` (highest seq), or None."""
        key = self._check_key(key)
        try:
            data = await self._dht.get_value(key)
        except Exception as exc:
            raise TransportError(f"could not look up {key}: {exc or type(exc).__name__}") from exc
        if data is None:
            return None
        return decode_value_record(self.network, key, data)

"""gossipsub for small control messages: signed capability announcements (= heartbeats) and ledger entries.

Topics (one network never sees another's): ``/opengrid/<network>/announce/1`` and
``/opengrid/<network>/ledger/1``. Never prompts or outputs: those go over direct streams.

Configured per shared/notes/py-libp2p.md: ``heartbeat_interval=1`` (the library's default is 120 s),
spam protection off (it silently drops our own messages above 10/s; our topic validators do the checking),
messages signed and verified by libp2p (``strict_signing``), and every subscription drained in its own task
(a subscription queue holds 32 messages and drops the rest).

Heartbeat period: ``DEFAULT_BEAT_S = 5.0`` with ``DEFAULT_MISSED_BEATS = 3``, so a dead node drops out of
every directory within ~15 s. Momagrid's 90 s would keep offering a crashed worker interactive jobs for a
minute and a half; 2 s (the first choice) was measured too costly in py-libp2p: every beat is a network-wide
broadcast, so each node's cost grows with N/beat — 10 nodes at 2 s cost 0.07 core per node with the
library's defaults (gossipsub 1.2, D=6) and 0.02 with the settings below; extrapolated, 50 nodes at 2 s would
need ~0.1 core each just for heartbeats. 5 s keeps that at ~0.04 core for 50 nodes. Sub-second failure
detection is not gossip's job: a coordinator health-checks (direct stream, RTT) a worker before dispatching
to it, and a failed dispatch is retried elsewhere. Lower ``beat_s`` for small LAN grids and demos.

Router settings: gossipsub 1.1 only (1.2 adds an IDONTWANT to every mesh peer for every message; for our
sub-KB messages it costs more than it saves: 0.72 -> 0.48 core for 10 in-process nodes) and a smaller mesh
(D=4, D_low=3, D_high=6 instead of 6/4/12: -> 0.21 core), still redundant enough for delivery to all.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol, TypedDict, Unpack, cast

import trio
from libp2p.abc import INetStream
from libp2p.peer.id import ID
from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11, GossipSub
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.pubsub import Pubsub
from libp2p.pubsub.subscription import TrioSubscriptionAPI
from nacl.signing import SigningKey

from opengrid.errors import ConfigError, LocalProtocolError, TransportError
from opengrid.net.announce import (
    Announcement,
    AnnouncementChecker,
    AnnouncementRejected,
    ModelAd,
    sign_announcement,
)
from opengrid.net.directory import PeerDirectory, beat_period
from opengrid.net.host import Host
from opengrid.net.services import background_service

if TYPE_CHECKING:
    from trio_typing import TaskStatus  # trio-typing's stubs (a py-libp2p dependency) hide trio.TaskStatus

    from opengrid.net.transport import StreamHost

log = logging.getLogger("opengrid.net.gossip")

DEFAULT_BEAT_S = 5.0
DEFAULT_MISSED_BEATS = 3
MAX_LEDGER_MESSAGE_BYTES = 64 * 1024


def announce_topic(network: str) -> str:
    return f"/opengrid/{network}/announce/1"


def ledger_topic(network: str) -> str:
    return f"/opengrid/{network}/ledger/1"


class _Pubsub(Pubsub):
    """libp2p's Pubsub, but a peer still sending while we shut down is dropped instead of crashing the host.

    Once the pubsub service has stopped, its inbound stream readers (owned by the host's connections, not
    by the service) still try to schedule work on the stopped service and raise ``RuntimeError`` ("Nursery
    is closed to new arrivals") up through the host's nursery. Reproduced by stopping gossip on one of five
    nodes that heartbeat every 0.5 s.
    """

    async def stream_handler(self, stream: INetStream) -> None:
        try:
            await super().stream_handler(stream)
        except RuntimeError as exc:
            if "closed to new arrivals" not in str(exc):  # trio's words for a nursery that is shutting down
                raise
            log.debug("dropping a pubsub stream after shutdown: %s", exc)
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await stream.reset()


class Subscription(Protocol):
    """A topic's messages as the drains read them (libp2p's subscription, or the in-memory network's)."""

    async def get(self) -> rpc_pb2.Message: ...


class _FieldUpdate(TypedDict, total=False):
    """The announcement fields a node changes while it runs (``Gossip.update``); the rest are the wire's."""

    roles: list[str]
    models: list[ModelAd]
    tier: str
    free_slots: int
    tokens_per_s: float
    software: str
    reachability: str
    free_memory: int


class _AnnouncedFields(TypedDict):
    """All of them, as announced at every beat (the same keys as ``_FieldUpdate``, each required)."""

    roles: list[str]
    models: list[ModelAd]
    tier: str
    free_slots: int
    tokens_per_s: float
    software: str
    reachability: str
    free_memory: int


class Gossip:
    """The node's gossipsub service: announces itself every ``beat_s`` and keeps ``directory`` current.

    Start with ``await nursery.start(gossip.run)`` inside ``open_host``; connect peers (``Discovery``
    bootstrap) separately. Update what is announced with ``update(...)``; it goes out at the next beat, or
    at once with ``await announce_now()``.
    """

    def __init__(
        self,
        host: StreamHost,
        *,
        network: str,
        signing_key: SigningKey,
        roles: Sequence[str] = (),
        models: Sequence[ModelAd] = (),
        tier: str = "",
        free_slots: int = 0,
        tokens_per_s: float = 0.0,
        software: str = "",
        beat_s: float = DEFAULT_BEAT_S,
        missed_beats: int = DEFAULT_MISSED_BEATS,
        ledger_validator: Callable[[str, bytes], bool] | None = None,
        ledger_buffer: int = 256,
    ) -> None:
        self._host = host
        self.network = network
        self._key = signing_key
        self.configured_beat_s = beat_s
        self.beat_s = beat_s
        """The period we announce now: the configured one, stretched in networks over 20 nodes
        (``beat_period``, spec/discovery.md §5.5)."""
        self._fields = _AnnouncedFields(
            roles=list(roles),
            models=list(models),
            tier=tier,
            free_slots=free_slots,
            tokens_per_s=tokens_per_s,
            software=software,
            reachability="",
            free_memory=0,  # set by the node once it knows what it lends (Gossip.update)
        )
        self.directory = PeerDirectory(missed_beats=missed_beats, self_peer=host.peer_id)
        self.checker = AnnouncementChecker(network)
        self.announce_topic = announce_topic(network)
        self.ledger_topic = ledger_topic(network)
        self._ledger_validator = ledger_validator
        self._ledger_send, self.ledger_messages = trio.open_memory_channel[tuple[str, bytes]](ledger_buffer)
        """(originator peer id, bytes) of every valid ledger message from others."""
        self.ledger_dropped = 0
        self.changed = trio.Event()
        """Set (and replaced) when the directory or the rejection counts change: wait on it, do not poll."""
        self._seq = 0
        self._open_pubsub()

    def _open_pubsub(self) -> None:
        """Build gossipsub on our libp2p host, with our validators (opengrid.testing.memnet's subclass
        delivers through the same validators without libp2p)."""
        if not isinstance(self._host, Host):
            raise ConfigError(f"gossipsub needs a libp2p host, got {type(self._host).__name__}")
        self._router = GossipSub(
            protocols=[PROTOCOL_ID_V11],
            degree=4,
            degree_low=3,
            degree_high=6,
            heartbeat_interval=1,
            heartbeat_initial_delay=0.1,
            spam_protection_enabled=False,
            # 127.0.0.1 and small grids have few distinct IPs; the diversity check would fight the mesh
            eclipse_protection_enabled=False,
        )
        self._pubsub = _Pubsub(
            self._host.libp2p,
            self._router,
            strict_signing=True,
            allowed_topics={self.announce_topic, self.ledger_topic},
        )
        self._pubsub.set_topic_validator(self.announce_topic, self._validate_announcement, False)
        self._pubsub.set_topic_validator(self.ledger_topic, self._validate_ledger, False)

    # ── accounting ───────────────────────────────────────────────────────────────────────────────────
    @property
    def rejections(self) -> dict[str, int]:
        """Rejected messages per originator peer id (both topics)."""
        return dict(self.checker.rejections)

    def rejection_reasons(self, peer: str) -> dict[str, int]:
        return {reason: n for (p, reason), n in sorted(self.checker.reasons.items()) if p == peer}

    # ── what we announce ─────────────────────────────────────────────────────────────────────────────
    def update(self, **fields: Unpack[_FieldUpdate]) -> None:
        """Change announced fields (``roles``, ``models``, ``tier``, ``free_slots``, ``tokens_per_s``...)."""
        unknown = set(fields) - set(self._fields)
        if unknown:
            raise LocalProtocolError(f"not announcement fields: {sorted(unknown)}")
        self._fields.update(fields)

    def build_announcement(self) -> Announcement:
        now_ms = time.time_ns() // 1_000_000
        # start at unix ms so a restarted node (same identity) is not taken for a replay
        self._seq = max(self._seq + 1, now_ms)
        return Announcement(
            network=self.network,
            peer_id=self._host.peer_id,
            public_key=bytes(self._key.verify_key),
            seq=self._seq,
            timestamp_ms=now_ms,
            beat_ms=round(self.beat_s * 1000),
            addrs=self._host.addrs(),
            **self._fields,
        )

    async def announce_now(self) -> None:
        await self.publish_raw(self.announce_topic, sign_announcement(self.build_announcement(), self._key))

    async def publish_ledger(self, data: bytes) -> None:
        if len(data) > MAX_LEDGER_MESSAGE_BYTES:
            raise LocalProtocolError(
                f"ledger message of {len(data)} bytes is over {MAX_LEDGER_MESSAGE_BYTES}; split it"
            )
        await self.publish_raw(self.ledger_topic, data)

    async def publish_raw(self, topic: str, data: bytes) -> None:
        """Publish bytes unchecked (our own messages skip our validators). Tests use it to misbehave."""
        try:
            await self._pubsub.publish(topic, data)
        except Exception as exc:
            raise TransportError(f"could not publish on {topic}: {exc or type(exc).__name__}") from exc

    # ── validators (run by libp2p before delivery and before forwarding) ───────────────────────────────
    def _is_own(self, forwarder: ID, msg: rpc_pb2.Message) -> bool:
        me = self._host.peer_id
        return forwarder.to_base58() == me and ID(msg.from_id).to_base58() == me

    def _validate_announcement(self, forwarder: ID, msg: rpc_pb2.Message) -> bool:
        if self._is_own(forwarder, msg):
            return True
        try:
            sender = ID(msg.from_id).to_base58()
        except Exception:
            return False
        try:
            self.checker.check(sender, msg.data)
        except AnnouncementRejected:
            self._notify()
            return False
        return True

    def _validate_ledger(self, forwarder: ID, msg: rpc_pb2.Message) -> bool:
        if self._is_own(forwarder, msg):
            return True
        try:
            sender = ID(msg.from_id).to_base58()
        except Exception:
            return False
        ok = len(msg.data) <= MAX_LEDGER_MESSAGE_BYTES and (
            self._ledger_validator is None or self._ledger_validator(sender, msg.data)
        )
        if not ok:
            self.checker.rejections[sender] += 1
            self.checker.reasons[(sender, "ledger_invalid")] += 1
            self._notify()
        return ok

    # ── the service ──────────────────────────────────────────────────────────────────────────────────
    async def run(self, *, task_status: TaskStatus[Gossip] = trio.TASK_STATUS_IGNORED) -> None:
        """Run pubsub, subscribe, announce every beat, expire silent peers; ready once subscribed."""
        async with background_service(self._pubsub), background_service(self._router):
            await self._pubsub.wait_until_ready()
            # Pubsub.subscribe is declared to return the ISubscriptionAPI interface, which lacks the get()
            # the drains use; what it builds is always a TrioSubscriptionAPI (py-libp2p 0.8.1).
            announcements = cast(TrioSubscriptionAPI, await self._pubsub.subscribe(self.announce_topic))
            ledger = cast(TrioSubscriptionAPI, await self._pubsub.subscribe(self.ledger_topic))
            await self._serve(announcements, ledger, task_status)

    async def _serve(
        self, announcements: Subscription, ledger: Subscription, task_status: TaskStatus[Gossip]
    ) -> None:
        """Drain both topics, announce every beat, expire silent peers; ready at once."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._drain_announcements, announcements)
            nursery.start_soon(self._drain_ledger, ledger)
            nursery.start_soon(self._beat)
            nursery.start_soon(self._expire_loop)
            task_status.started(self)
            await trio.sleep_forever()

    async def _beat(self) -> None:
        while True:
            self.pace(trio.current_time())
            try:
                await self.announce_now()
            except TransportError as exc:
                log.info("heartbeat not sent: %s", exc)
            await trio.sleep(self.beat_s)

    async def _expire_loop(self) -> None:
        """Mark silent peers offline, every configured beat (our own announcements may be further apart,
        ``pace``; each peer is timed out by the period it announced)."""
        while True:
            await trio.sleep(self.configured_beat_s)
            gone = self.directory.expire(trio.current_time())
            for peer in gone:
                log.info(
                    "peer %s went offline (no heartbeat for %d beats)", peer, self.directory.missed_beats
                )
            if gone:
                self._notify()

    def pace(self, now: float) -> float:
        """Set our announcement period for the peers online at ``now`` (``beat_period``) and return it."""
        self.beat_s = beat_period(self.configured_beat_s, len(self.directory.online(now)))
        return self.beat_s

    def _notify(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    async def _drain_announcements(self, subscription: Subscription) -> None:
        from opengrid.net.announce import decode_announcement

        me = self._host.peer_id
        while True:
            msg = await subscription.get()
            if ID(msg.from_id).to_base58() == me:
                continue
            # the validator already verified these exact bytes; decoding again is cheap
            announcement, _, _ = decode_announcement(msg.data)
            before = self.directory.get(announcement.peer_id)
            change = self.directory.observe(announcement, trio.current_time())
            if change is not None:
                if change != "updated":
                    log.info("peer %s %s (%s)", announcement.peer_id, change, ",".join(announcement.roles))
                # and whenever its addresses change: a node that took a relay (spec/discovery.md §9.3)
                if change != "updated" or before is None or before.announcement.addrs != announcement.addrs:
                    self._host.remember(announcement.peer_id, announcement.addrs)
                self._notify()

    async def _drain_ledger(self, subscription: Subscription) -> None:
        me = self._host.peer_id
        while True:
            msg = await subscription.get()
            sender = ID(msg.from_id).to_base58()
            if sender == me:
                continue
            try:
                self._ledger_send.send_nowait((sender, bytes(msg.data)))
            except trio.WouldBlock:
                self.ledger_dropped += 1
                log.warning("ledger gossip from %s dropped: nobody reads gossip.ledger_messages", sender)

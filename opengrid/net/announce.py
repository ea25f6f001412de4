"""Signed capability announcements (the payload of ``/opengrid/<network>/announce/1``) and their checker.

Sans-IO: no libp2p here, so the simulator and fuzz tests can use the same code. (Kept out of
``opengrid.wire`` for now; the lead may move the structs there.)

Wire format: a ``SignedAnnouncement`` is the msgpack array ``[body, signature]`` where ``body`` is the
msgpack of an ``Announcement`` and ``signature`` is Ed25519 over ``ANNOUNCE_DOMAIN + body`` with the key
whose peer id is ``Announcement.peer_id``. Receivers verify the *received* body bytes, never a re-encoding.

The checker refuses, and counts against the gossip originator (whose pubsub envelope libp2p has
already authenticated):

============  =========================================================================================
oversized     more than ``MAX_ANNOUNCEMENT_BYTES`` (8 KiB) on the wire
malformed     bytes that do not decode to a ``SignedAnnouncement`` whose body decodes to an
              ``Announcement``
unsigned      an empty signature
bad_signature a signature that does not verify, or a key that does not match ``peer_id``
impersonation ``peer_id`` is not the gossip originator (someone relaying another node's claim as new)
wrong_network another network's announcement (logged once per peer: it is a configuration mistake)
replayed      ``seq`` equal to one recently accepted from that peer (the same claim published again)
============  =========================================================================================

An announcement older than the last accepted one but never seen before is ``stale``: dropped (neither
delivered nor forwarded) but *not* counted against its sender, because gossipsub routes messages over
several paths (mesh, IHAVE/IWANT) and an honest node's beat N can arrive after its beat N+1.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from typing import Annotated, Final

import msgspec
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from opengrid.errors import LocalProtocolError, RemoteProtocolError

log = logging.getLogger("opengrid.net.announce")

RECENT_SEQS: Final = 64
"""Accepted ``seq`` values remembered per sender to tell a replay (counted) from a late beat (not)."""

ANNOUNCE_DOMAIN: Final = b"opengrid/announce/1\x00"
"""Domain tag prepended to the body before signing, so an announcement signature can never be
mistaken for a ledger entry or control request signature."""
MAX_ANNOUNCEMENT_BYTES: Final = 8 * 1024
ROLES: Final = frozenset({"coordinator", "worker", "relay", "edge"})

ShortText = Annotated[str, msgspec.Meta(max_length=256)]
Sha256Hex = Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{64}$")]
Digest = Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]
KeyBytes = Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]


class ModelAd(msgspec.Struct, frozen=True):
    """One model a node serves: its human name, the GGUF's sha256, and its decoding contract digest."""

    name: ShortText
    sha256: Sha256Hex
    contract_digest: Digest


class Announcement(msgspec.Struct, frozen=True):
    """What a node tells the network about itself; re-sent every heartbeat with a higher ``seq``.

    Unknown fields are accepted (a newer version may add some, always with defaults, always last).
    """

    network: ShortText
    peer_id: ShortText
    public_key: KeyBytes
    seq: Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
    """Strictly increasing per peer; drivers start it at unix milliseconds so a restart keeps it rising."""
    timestamp_ms: Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
    roles: Annotated[list[ShortText], msgspec.Meta(max_length=8)]
    models: Annotated[list[ModelAd], msgspec.Meta(max_length=16)] = []
    tier: ShortText = ""
    free_slots: Annotated[int, msgspec.Meta(ge=0, le=1024)] = 0
    tokens_per_s: Annotated[float, msgspec.Meta(ge=0.0)] = 0.0
    """Measured at start-up on the first model."""
    software: ShortText = ""
    beat_ms: Annotated[int, msgspec.Meta(ge=100, le=3_600_000)] = 2000
    """The sender's heartbeat period, so receivers time it out by its own clock, not theirs."""
    addrs: Annotated[list[ShortText], msgspec.Meta(max_length=16)] = []
    """Multiaddrs (with ``/p2p/<id>``) the sender can be dialled at, relay addresses included."""
    reachability: ShortText = ""
    """What dial-backs told the sender of itself (spec/discovery.md §9): public, private, relayed,
    unknown."""
    free_memory: Annotated[int, msgspec.Meta(ge=0, le=2**62)] = 0
    """Bytes the sender can still lend to split groups (spec/split.md §2): its ``--max-memory`` less what
    its own model and its live split sessions hold; 0: it lends none (older nodes never say)."""


class SignedAnnouncement(msgspec.Struct, frozen=True, array_like=True):
    body: Annotated[bytes, msgspec.Meta(max_length=MAX_ANNOUNCEMENT_BYTES)]
    signature: Annotated[bytes, msgspec.Meta(max_length=64)]
    """Ed25519 over ``ANNOUNCE_DOMAIN + body``: 64 bytes (a shorter one fails verification)."""


_encoder = msgspec.msgpack.Encoder()
_signed_decoder = msgspec.msgpack.Decoder(SignedAnnouncement)
_body_decoder = msgspec.msgpack.Decoder(Announcement)


def sign_announcement(announcement: Announcement, key: SigningKey) -> bytes:
    """Encode and sign; the bytes to publish. Refuses what receivers would reject."""
    if bytes(key.verify_key) != announcement.public_key:
        raise LocalProtocolError("announcement public_key is not the signing key's")
    body = _encoder.encode(announcement)
    try:
        _body_decoder.decode(body)  # constraints are checked on decode only: fail here, not at every peer
    except msgspec.ValidationError as exc:
        raise LocalProtocolError(f"announcement would be refused by peers: {exc}") from exc
    signature = key.sign(ANNOUNCE_DOMAIN + body).signature
    data = _encoder.encode(SignedAnnouncement(body, signature))
    if len(data) > MAX_ANNOUNCEMENT_BYTES:
        raise LocalProtocolError(
            f"announcement encodes to {len(data)} bytes, over the {MAX_ANNOUNCEMENT_BYTES}-byte limit; "
            "announce fewer models or addresses"
        )
    return data


class AnnouncementRejected(RemoteProtocolError):
    """An announcement failed the checker; ``reason`` is one of the table in the module docstring."""

    def __init__(self, reason: str, message: str, *, peer: str | None = None) -> None:
        super().__init__(f"{reason}: {message}", peer=peer)
        self.reason = reason


def decode_announcement(data: bytes, *, peer: str | None = None) -> tuple[Announcement, bytes, bytes]:
    """Size-check and decode (no signature check): ``(announcement, body, signature)``."""
    if len(data) > MAX_ANNOUNCEMENT_BYTES:
        raise AnnouncementRejected("oversized", f"{len(data)} bytes > {MAX_ANNOUNCEMENT_BYTES}", peer=peer)
    try:
        signed = _signed_decoder.decode(data)
        return _body_decoder.decode(signed.body), signed.body, signed.signature
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise AnnouncementRejected("malformed", str(exc), peer=peer) from exc


def verify_announcement(data: bytes, *, peer: str | None = None) -> Announcement:
    """Decode and verify the signature and key binding; raises ``AnnouncementRejected``."""
    from opengrid.net.keys import peer_id_of  # keys imports libp2p; keep this module importable without

    announcement, body, signature = decode_announcement(data, peer=peer)
    if not signature:
        raise AnnouncementRejected("unsigned", "empty signature", peer=peer)
    if peer_id_of(announcement.public_key) != announcement.peer_id:
        raise AnnouncementRejected(
            "bad_signature", f"public key does not belong to {announcement.peer_id}", peer=peer
        )
    try:
        VerifyKey(announcement.public_key).verify(ANNOUNCE_DOMAIN + body, signature)
    except (BadSignatureError, ValueError) as exc:
        raise AnnouncementRejected("bad_signature", "signature does not verify", peer=peer) from exc
    return announcement


class AnnouncementChecker:
    """Stateful admission of announcements for one network: signature, network, freshness.

    ``check(sender, data)`` returns the announcement or raises ``AnnouncementRejected``, and counts every
    rejection in ``rejections[sender]`` (and ``reasons[(sender, reason)]``).
    """

    def __init__(self, network: str) -> None:
        self.network = network
        self.last_seq: dict[str, int] = {}
        self._recent_seqs: dict[str, deque[int]] = {}
        self.rejections: Counter[str] = Counter()
        self.stale: Counter[str] = Counter()
        """Out-of-order beats dropped per sender; not misbehaviour (see the module docstring)."""
        self.reasons: Counter[tuple[str, str]] = Counter()
        self._warned_network: set[str] = set()

    def check(self, sender: str, data: bytes) -> Announcement:
        try:
            announcement = verify_announcement(data, peer=sender)
            if announcement.peer_id != sender:
                raise AnnouncementRejected(
                    "impersonation", f"announces {announcement.peer_id}, published by {sender}", peer=sender
                )
            if announcement.network != self.network:
                if sender not in self._warned_network:
                    self._warned_network.add(sender)
                    log.warning(
                        "ignoring peer %s: it is on network %r, we are on %r (start it with --network %s "
                        "to join this grid)",
                        sender,
                        announcement.network,
                        self.network,
                        self.network,
                    )
                raise AnnouncementRejected(
                    "wrong_network", f"network {announcement.network!r} != {self.network!r}", peer=sender
                )
            last = self.last_seq.get(sender)
            if last is not None and announcement.seq <= last:
                if announcement.seq in self._recent_seqs[sender]:
                    raise AnnouncementRejected(
                        "replayed", f"seq {announcement.seq} was already accepted", peer=sender
                    )
                raise AnnouncementRejected(
                    "stale", f"seq {announcement.seq} is older than {last} (out of order)", peer=sender
                )
        except AnnouncementRejected as exc:
            if exc.reason == "stale":
                self.stale[sender] += 1
            else:
                self.rejections[sender] += 1
                self.reasons[(sender, exc.reason)] += 1
            log.debug("rejected an announcement: %s", exc)
            raise
        self.last_seq[sender] = announcement.seq
        self._recent_seqs.setdefault(sender, deque(maxlen=RECENT_SEQS)).append(announcement.seq)
        return announcement

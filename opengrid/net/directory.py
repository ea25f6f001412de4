"""Who is online, serving what: the last announcement of every peer, and liveness from heartbeats.

Sans-IO: the caller passes ``now`` (monotonic seconds) to every method, so tests step time explicitly and
the simulator can drive it. A peer is *online* while ``now - last_seen <= missed_beats * beat`` where
``beat`` is the period the peer itself announced (``Announcement.beat_ms``). A peer that went offline and
announces again is online again at once (it "rejoins on its own").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from opengrid.net.announce import Announcement

Change = Literal["joined", "updated", "returned"]

FULL_RATE_NODES: Final = 20
"""Up to this many nodes a node announces at its configured beat; beyond, its period grows in proportion
(spec/discovery.md §5.5). Every announcement reaches every node, so a node's gossip work grows with the
network's announcement rate: holding that rate at what 20 nodes produce bounds each node's cost however
large the network grows (50 nodes at the 5 s default: one beat per 12.5 s, 4 announcements/s in all)."""
MAX_BEAT_S: Final = 60.0
"""The longest a node stretches its beat (unless configured longer). Whether a worker gets work is decided
by its registration heartbeats to each coordinator, not by gossip."""


MAX_PEERS: Final = 4096
"""Peers a directory holds at most (announcing identities are free, spec/limits.md §5): a new peer over it
takes the place of the offline peer heard from longest ago, and is ignored while every peer held is online."""


def beat_period(base_s: float, peers: int) -> float:
    """A node's announcement period while it knows ``peers`` other peers online: its configured
    ``base_s`` up to ``FULL_RATE_NODES`` nodes, and ``base_s x nodes / FULL_RATE_NODES`` beyond, at most
    ``MAX_BEAT_S`` (or ``base_s`` if that is longer). Receivers time a peer out by the period it
    announces, so nothing else changes."""
    stretched = base_s * (peers + 1) / FULL_RATE_NODES
    return max(base_s, min(stretched, MAX_BEAT_S))


@dataclass(frozen=True)
class PeerEntry:
    announcement: Announcement
    first_seen: float
    last_seen: float

    @property
    def peer_id(self) -> str:
        return self.announcement.peer_id

    def deadline(self, missed_beats: int) -> float:
        """The ``now`` after which this peer counts as offline."""
        return self.last_seen + missed_beats * self.announcement.beat_ms / 1000


class PeerDirectory:
    """The latest announcement per peer and who is online at a given ``now``.

    Feed it announcements that already passed ``AnnouncementChecker`` (signature, network, seq); it
    still ignores one with a lower ``seq`` than the one it holds (gossip may deliver out of order).
    """

    def __init__(
        self, *, missed_beats: int = 3, self_peer: str | None = None, max_peers: int = MAX_PEERS
    ) -> None:
        if missed_beats < 1:
            raise ValueError(f"missed_beats must be >= 1, got {missed_beats}")
        self.missed_beats = missed_beats
        self.self_peer = self_peer
        self.max_peers = max_peers
        self.refused = 0
        """New peers ignored because the directory was full of online peers."""
        self._entries: dict[str, PeerEntry] = {}
        self._offline: set[str] = set()

    def observe(self, announcement: Announcement, now: float) -> Change | None:
        """Record an announcement seen at ``now``; say what changed (None: stale or our own)."""
        peer = announcement.peer_id
        if peer == self.self_peer:
            return None
        old = self._entries.get(peer)
        if old is not None and announcement.seq <= old.announcement.seq:
            return None
        if old is None and len(self._entries) >= self.max_peers and not self._make_room(now):
            self.refused += 1
            return None
        first = old.first_seen if old is not None else now
        self._entries[peer] = PeerEntry(announcement, first_seen=first, last_seen=now)
        if old is None:
            return "joined"
        if peer in self._offline or now > old.deadline(self.missed_beats):
            self._offline.discard(peer)
            return "returned"
        return "updated"

    def _make_room(self, now: float) -> bool:
        """Forget the offline peer heard from longest ago; False when every peer held is online."""
        offline = [e for e in self._entries.values() if now > e.deadline(self.missed_beats)]
        if not offline:
            return False
        self.forget(min(offline, key=lambda e: (e.last_seen, e.peer_id)).peer_id)
        return True

    def expire(self, now: float) -> list[str]:
        """Peers that went offline since the last call (sorted); they stay listed, as offline."""
        gone = sorted(
            peer
            for peer, entry in self._entries.items()
            if peer not in self._offline and now > entry.deadline(self.missed_beats)
        )
        self._offline.update(gone)
        return gone

    def forget(self, peer: str) -> None:
        self._entries.pop(peer, None)
        self._offline.discard(peer)

    def is_online(self, peer: str, now: float) -> bool:
        entry = self._entries.get(peer)
        return entry is not None and now <= entry.deadline(self.missed_beats)

    def get(self, peer: str) -> PeerEntry | None:
        return self._entries.get(peer)

    def entries(self) -> list[PeerEntry]:
        """Every known peer, online or not, sorted by peer id."""
        return [self._entries[peer] for peer in sorted(self._entries)]

    def online(self, now: float, *, model: str | None = None, role: str | None = None) -> list[Announcement]:
        """Announcements of online peers, sorted by peer id; ``model`` matches a name or a sha256."""
        out = []
        for entry in self.entries():
            ann = entry.announcement
            if now > entry.deadline(self.missed_beats):
                continue
            if role is not None and role not in ann.roles:
                continue
            if model is not None and not any(model in (m.name, m.sha256) for m in ann.models):
                continue
            out.append(ann)
        return out

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, peer: object) -> bool:
        return peer in self._entries

"""PeerDirectory is pure: time is an argument, so liveness is tested by stepping ``now``."""

from __future__ import annotations

import pytest
from nacl.signing import SigningKey

from opengrid.net.announce import Announcement, ModelAd
from opengrid.net.directory import FULL_RATE_NODES, MAX_BEAT_S, PeerDirectory, beat_period
from opengrid.net.keys import peer_id_of

SHA = "ab" * 32


def announcement(
    seed: int, seq: int, *, roles: list[str], models: list[str] = (), beat_ms: int = 2000
) -> Announcement:  # type: ignore[assignment]
    key = SigningKey(bytes([seed]) * 32)
    public = bytes(key.verify_key)
    return Announcement(
        network="testnet",
        peer_id=peer_id_of(public),
        public_key=public,
        seq=seq,
        timestamp_ms=seq,
        roles=roles,
        models=[ModelAd(name, SHA, bytes(32)) for name in models],
        beat_ms=beat_ms,
    )


def test_offline_after_missed_beats_and_back_on_the_next_announcement() -> None:
    directory = PeerDirectory(missed_beats=3)
    worker = announcement(1, 1, roles=["worker"], models=["smollm2"])
    assert directory.observe(worker, now=100.0) == "joined"
    assert directory.is_online(worker.peer_id, 105.9)
    assert directory.expire(105.9) == []
    assert directory.expire(106.1) == [worker.peer_id]  # 3 beats of 2 s missed
    assert directory.expire(107.0) == []  # reported once
    assert not directory.is_online(worker.peer_id, 106.1)
    assert directory.online(106.1) == []
    assert worker.peer_id in directory  # still known, just offline
    back = announcement(1, 2, roles=["worker"], models=["smollm2"])
    assert directory.observe(back, now=120.0) == "returned"
    assert directory.online(120.0, model="smollm2") == [back]


def test_a_returned_peer_is_reported_even_without_an_expire_call() -> None:
    directory = PeerDirectory(missed_beats=3)
    directory.observe(announcement(1, 1, roles=["worker"]), now=0.0)
    assert directory.observe(announcement(1, 2, roles=["worker"]), now=60.0) == "returned"
    assert directory.observe(announcement(1, 3, roles=["worker"]), now=61.0) == "updated"


def test_uses_each_peers_own_beat_period() -> None:
    directory = PeerDirectory(missed_beats=3)
    fast = announcement(1, 1, roles=["worker"], beat_ms=500)
    slow = announcement(2, 1, roles=["worker"], beat_ms=10_000)
    directory.observe(fast, 0.0)
    directory.observe(slow, 0.0)
    assert directory.expire(2.0) == [fast.peer_id]
    assert [a.peer_id for a in directory.online(29.0)] == [slow.peer_id]


def test_filters_by_role_and_model_name_or_sha256() -> None:
    directory = PeerDirectory()
    worker = announcement(1, 1, roles=["worker"], models=["smollm2"])
    coordinator = announcement(2, 1, roles=["coordinator", "relay"])
    for ann in (worker, coordinator):
        directory.observe(ann, 0.0)
    assert directory.online(1.0, role="coordinator") == [coordinator]
    assert directory.online(1.0, role="relay") == [coordinator]
    assert directory.online(1.0, model="smollm2") == [worker]
    assert directory.online(1.0, model=SHA) == [worker]
    assert directory.online(1.0, model="other") == []
    assert directory.online(1.0, model="smollm2", role="coordinator") == []
    assert len(directory.online(1.0)) == 2


def test_stale_and_own_announcements_are_ignored() -> None:
    mine = announcement(9, 5, roles=["worker"])
    directory = PeerDirectory(self_peer=mine.peer_id)
    assert directory.observe(mine, 0.0) is None
    peer = announcement(1, 5, roles=["worker"])
    directory.observe(peer, 0.0)
    assert directory.observe(announcement(1, 4, roles=["edge"]), 1.0) is None
    entry = directory.get(peer.peer_id)
    assert entry is not None and entry.announcement.roles == ["worker"] and entry.last_seen == 0.0
    directory.forget(peer.peer_id)
    assert len(directory) == 0


def test_missed_beats_must_be_positive() -> None:
    with pytest.raises(ValueError):
        PeerDirectory(missed_beats=0)


@pytest.mark.parametrize(
    ("base_s", "peers", "expected"),
    [
        (5.0, 0, 5.0),  # alone: the configured beat
        (5.0, 19, 5.0),  # 20 nodes: still the configured beat
        (5.0, 49, 12.5),  # 50 nodes: stretched, so the network still announces 20 / 5 s = 4 times a second
        (2.0, 49, 5.0),  # a faster configured beat is a higher rate the operator chose, held the same way
        (0.3, 4, 0.3),  # a small demo grid keeps its fast beat
        (5.0, 10_000, MAX_BEAT_S),  # never beyond the cap ...
        (120.0, 10_000, 120.0),  # ... nor below what the operator configured
    ],
)
def test_the_beat_stretches_beyond_20_nodes_so_the_network_announcement_rate_stays_bounded(
    base_s: float, peers: int, expected: float
) -> None:
    period = beat_period(base_s, peers)
    assert period == pytest.approx(expected)
    if period < MAX_BEAT_S:
        rate = (peers + 1) / period
        assert rate == pytest.approx(min(peers + 1, FULL_RATE_NODES) / base_s)


def test_a_full_directory_makes_room_from_offline_peers_only() -> None:
    # Announcing identities are free: the directory holds at most max_peers, replacing the offline peer
    # heard from longest ago and ignoring newcomers while every peer held is online (spec/limits.md §5).
    directory = PeerDirectory(missed_beats=3, max_peers=3)
    first, second, third, fourth, fifth = (announcement(i, 1, roles=["worker"]) for i in range(1, 6))
    assert directory.observe(first, now=0.0) == "joined"
    assert directory.observe(second, now=1.0) == "joined"
    assert directory.observe(third, now=2.0) == "joined"
    assert directory.observe(fourth, now=3.0) is None  # full of online peers: ignored
    assert directory.refused == 1 and len(directory) == 3
    # at 6.5 s the first two are offline (6 s without a beat): the one heard from longest ago goes
    assert directory.observe(fourth, now=6.5) == "joined"
    assert first.peer_id not in directory and second.peer_id in directory
    assert directory.observe(fifth, now=7.5) == "joined"
    assert second.peer_id not in directory and len(directory) == 3
    # a peer already held is always updated, full or not
    assert directory.observe(announcement(3, 2, roles=["worker"]), now=7.6) == "updated"

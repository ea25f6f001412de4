"""gossipsub on real libp2p hosts in one process: announcements reach everyone, bad ones are counted."""

from __future__ import annotations

import msgspec
import trio
from nacl.signing import SigningKey

from opengrid.net.announce import MAX_ANNOUNCEMENT_BYTES, ModelAd, SignedAnnouncement, sign_announcement
from opengrid.net.gossip import Gossip
from opengrid.net.keys import peer_id_of
from tests.net.conftest import NETWORK, open_grid, open_node

SHA = "5e" * 32


async def wait_until(gossip: Gossip, condition: object) -> None:
    """Wait (event-driven: directory or rejection change) until ``condition()`` holds."""
    while not condition():  # type: ignore[operator]
        await gossip.changed.wait()


async def test_every_node_learns_every_other_and_their_models() -> None:
    model = ModelAd("smollm2", SHA, bytes(32))
    async with open_grid(5, models=[model]) as nodes:
        with trio.fail_after(20):
            for node in nodes:
                await wait_until(node.gossip, lambda node=node: len(node.gossip.directory) == 4)
        now = trio.current_time()
        for node in nodes:
            others = sorted(n.host.peer_id for n in nodes if n is not node)
            assert [a.peer_id for a in node.gossip.directory.online(now, model="smollm2")] == others
            assert [a.peer_id for a in node.gossip.directory.online(now, model=SHA, role="worker")] == others
            assert node.gossip.directory.online(now, role="coordinator") == []
            assert node.gossip.rejections == {}


async def test_a_silent_node_goes_offline_within_its_missed_beats() -> None:
    async with open_node(beat_s=0.2) as watcher:
        async with open_node(beat_s=0.2, bootstrap=watcher.host.addrs()[:1]) as leaver:
            with trio.fail_after(10):
                await wait_until(watcher.gossip, lambda: leaver.host.peer_id in watcher.gossip.directory)
            peer = leaver.host.peer_id
        with trio.fail_after(10):
            await wait_until(
                watcher.gossip, lambda: not watcher.gossip.directory.is_online(peer, trio.current_time())
            )
        assert watcher.gossip.directory.online(trio.current_time()) == []


async def test_bad_announcements_are_dropped_and_counted_against_their_sender() -> None:
    async with open_node() as victim, open_node(bootstrap=victim.host.addrs()[:1]) as rogue:
        target = victim.gossip
        topic = target.announce_topic
        key, me = rogue.key, rogue.host.peer_id
        with trio.fail_after(10):
            await wait_until(target, lambda: me in target.directory)
        rogue_beat = rogue.gossip.build_announcement()
        valid = sign_announcement(rogue_beat, key)
        await rogue.gossip.publish_raw(topic, valid)
        body = msgspec.msgpack.encode(msgspec.structs.replace(rogue_beat, seq=rogue_beat.seq + 1))
        other = SigningKey.generate()
        foreign = msgspec.structs.replace(rogue_beat, network="elsewhere", seq=rogue_beat.seq + 2)
        bad = {
            "malformed": b"\x00not msgpack",
            "oversized": b"\x00" * (MAX_ANNOUNCEMENT_BYTES + 100),
            "unsigned": msgspec.msgpack.encode(SignedAnnouncement(body, b"")),
            "bad_signature": msgspec.msgpack.encode(SignedAnnouncement(body, other.sign(body).signature)),
            "wrong_network": sign_announcement(foreign, key),
            "replayed": valid,
        }
        with trio.fail_after(10):
            await wait_until(target, lambda: target.checker.last_seq.get(me, 0) >= rogue_beat.seq)
            for data in bad.values():
                await rogue.gossip.publish_raw(topic, data)
            await wait_until(target, lambda: target.rejections.get(me, 0) >= len(bad))
        assert target.rejection_reasons(me) == dict.fromkeys(sorted(bad), 1)
        assert target.rejections == {me: len(bad)}
        entry = target.directory.get(me)
        assert entry is not None and entry.announcement.network == NETWORK
        assert rogue.gossip.rejections == {}  # the victim's own beats are fine


async def test_in_a_network_over_20_nodes_a_node_announces_a_stretched_beat() -> None:
    """39 other peers online: 40 nodes at a configured 1 s beat would announce 40 times a second; the node
    stretches its period to 2 s (20 announcements/s in all, what 20 nodes make) and says so in
    ``beat_ms``, by which receivers time it out."""
    async with open_node(beat_s=1.0) as node:
        gossip = node.gossip
        assert gossip.pace(trio.current_time()) == 1.0
        assert gossip.build_announcement().beat_ms == 1000
        for seed in range(1, 40):
            key = SigningKey(bytes([seed]) * 32)
            other = msgspec.structs.replace(
                gossip.build_announcement(),
                public_key=bytes(key.verify_key),
                peer_id=peer_id_of(bytes(key.verify_key)),
            )
            gossip.directory.observe(other, trio.current_time())
        assert gossip.pace(trio.current_time()) == 2.0
        assert gossip.build_announcement().beat_ms == 2000
        assert gossip.configured_beat_s == 1.0

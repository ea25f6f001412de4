"""The announcement checker, without a network: every rejection reason, counted per sender."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from opengrid.errors import LocalProtocolError, RemoteProtocolError
from opengrid.net.announce import (
    ANNOUNCE_DOMAIN,
    MAX_ANNOUNCEMENT_BYTES,
    Announcement,
    AnnouncementChecker,
    AnnouncementRejected,
    ModelAd,
    SignedAnnouncement,
    sign_announcement,
    verify_announcement,
)
from opengrid.net.keys import peer_id_of

KEY = SigningKey(b"\x01" * 32)
PEER = peer_id_of(bytes(KEY.verify_key))


def make(seq: int = 1, *, network: str = "testnet", key: SigningKey = KEY, **fields: object) -> Announcement:
    public = bytes(key.verify_key)
    fields.setdefault("models", [ModelAd("smollm2", "cd" * 32, bytes(32))])
    return Announcement(
        network=network,
        peer_id=peer_id_of(public),
        public_key=public,
        seq=seq,
        timestamp_ms=seq,
        roles=["worker"],
        **fields,  # type: ignore[arg-type]
    )


def reason(checker: AnnouncementChecker, sender: str, data: bytes) -> str:
    with pytest.raises(AnnouncementRejected) as caught:
        checker.check(sender, data)
    return caught.value.reason


def test_accepts_a_signed_announcement_and_rejects_each_kind_of_bad_one() -> None:
    checker = AnnouncementChecker("testnet")
    good = sign_announcement(make(5), KEY)
    assert checker.check(PEER, good) == make(5)
    body = msgspec.msgpack.encode(make(6))
    other = SigningKey(b"\x02" * 32)
    cases = {
        "oversized": b"\x00" * (MAX_ANNOUNCEMENT_BYTES + 1),
        "malformed": b"\x92\xc4\x01x",
        "unsigned": msgspec.msgpack.encode(SignedAnnouncement(body, b"")),
        "bad_signature": msgspec.msgpack.encode(SignedAnnouncement(body, other.sign(body).signature)),
        "wrong_network": sign_announcement(make(7, network="elsewhere"), KEY),
        "replayed": good,
        "impersonation": sign_announcement(make(8, key=other), other),
    }
    for expected, data in cases.items():
        assert reason(checker, PEER, data) == expected
    assert checker.rejections[PEER] == len(cases)
    assert {r for (_, r) in checker.reasons} == set(cases)
    assert checker.check(PEER, sign_announcement(make(9), KEY)).seq == 9


def test_a_late_beat_is_dropped_but_not_held_against_its_sender() -> None:
    # gossipsub delivers over several paths, so an honest beat 5 can arrive after beat 6
    checker = AnnouncementChecker("testnet")
    checker.check(PEER, sign_announcement(make(6), KEY))
    assert reason(checker, PEER, sign_announcement(make(5), KEY)) == "stale"
    assert checker.rejections == {} and checker.stale == {PEER: 1}
    assert reason(checker, PEER, sign_announcement(make(6), KEY)) == "replayed"
    assert checker.rejections == {PEER: 1}


def test_a_key_that_is_not_the_peer_ids_is_a_bad_signature() -> None:
    other = SigningKey(b"\x02" * 32)
    forged = msgspec.structs.replace(make(1), public_key=bytes(other.verify_key))
    body = msgspec.msgpack.encode(forged)

    data = msgspec.msgpack.encode(SignedAnnouncement(body, other.sign(ANNOUNCE_DOMAIN + body).signature))
    assert reason(AnnouncementChecker("testnet"), PEER, data) == "bad_signature"


def test_we_refuse_to_sign_what_others_would_reject() -> None:
    with pytest.raises(LocalProtocolError, match="over the"):
        models = [ModelAd("m" * 256, "cd" * 32, bytes(32))] * 16
        sign_announcement(make(1, models=models, addrs=["/ip4/127.0.0.1/" + "x" * 240] * 16), KEY)
    with pytest.raises(LocalProtocolError, match="refused by peers"):
        sign_announcement(make(1, free_slots=-1), KEY)
    with pytest.raises(LocalProtocolError):
        sign_announcement(make(1), SigningKey(b"\x03" * 32))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_any_bytes_give_an_announcement_or_a_remote_protocol_error(data: bytes) -> None:
    try:
        AnnouncementChecker("testnet").check(PEER, data)
    except RemoteProtocolError:
        pass


def test_free_memory_is_read_by_new_nodes_and_ignored_by_old_ones() -> None:
    """``free_memory`` (split.md §2) came last, with a default: a node that predates it signs bodies
    without it (read as 0 here), and its decoder skips it in ours (the signature covers the bytes sent)."""

    class OldAnnouncement(msgspec.Struct, frozen=True):  # the struct before free_memory was added
        network: str
        peer_id: str
        public_key: bytes
        seq: int
        timestamp_ms: int
        roles: list[str]
        models: list[ModelAd] = []
        tier: str = ""
        free_slots: int = 0
        tokens_per_s: float = 0.0
        software: str = ""
        beat_ms: int = 2000
        addrs: list[str] = []
        reachability: str = ""

    public = bytes(KEY.verify_key)
    old_body = msgspec.msgpack.encode(OldAnnouncement("testnet", PEER, public, 1, 1, ["worker"]))
    old_data = msgspec.msgpack.encode(
        SignedAnnouncement(old_body, KEY.sign(ANNOUNCE_DOMAIN + old_body).signature)
    )
    assert verify_announcement(old_data).free_memory == 0

    new_data = sign_announcement(make(free_memory=3 << 30), KEY)
    assert verify_announcement(new_data).free_memory == 3 << 30
    body = msgspec.msgpack.decode(new_data, type=SignedAnnouncement).body
    assert msgspec.msgpack.decode(body, type=OldAnnouncement).peer_id == PEER  # old nodes still read it
    with pytest.raises(LocalProtocolError):  # over the bound: refused before it is sent
        sign_announcement(make(free_memory=2**63), KEY)

"""Every field that arrives from the network has a size limit, and NodeStatus fits a frame whatever a
node knows (issue 15, item 5; spec/limits.md §4)."""

from __future__ import annotations

import typing
from collections.abc import Iterator

import msgspec
import pytest
from opengrid_ledger.entries import MAX_ENTRY_SIZE

from opengrid.wire.codec import HEADER_BYTES, decode_message, encode_frame
from opengrid.wire.messages import (
    MAX_CHAT_TEMPLATE_CHARS,
    MAX_ENTRY_BYTES,
    MAX_MODEL_LIST_BYTES,
    MAX_MODELS_LISTED,
    MAX_MODELS_PER_WORKER,
    MAX_SHORT_TEXT,
    MAX_STATUS_BALANCES,
    MAX_STATUS_BYTES,
    MAX_STATUS_PEERS,
    MAX_STATUS_WORKERS,
    Message,
    ModelInfo,
    ModelList,
    NodeStatus,
    PeerSummary,
    WorkerSummary,
    bounded_models,
    bounded_status,
)
from opengrid.wire.sealed import SealedOutput, SealedPrompt

WIDE = "\U0001d11e"  # 4 bytes in UTF-8: the worst case for a character limit


def _sized_fields() -> Iterator[tuple[str, msgspec.inspect.Type]]:
    """(struct.field, type) for every str, bytes, list and dict reachable from the wire types."""
    seen: set[type] = set()

    def walk(info: msgspec.inspect.Type, where: str) -> Iterator[tuple[str, msgspec.inspect.Type]]:
        if isinstance(info, msgspec.inspect.StructType):
            if info.cls in seen:
                return
            seen.add(info.cls)
            for field in info.fields:
                yield from walk(field.type, f"{info.cls.__name__}.{field.name}")
            return
        if isinstance(info, msgspec.inspect.UnionType):
            for member in info.types:
                yield from walk(member, where)
            return
        if isinstance(info, (msgspec.inspect.StrType, msgspec.inspect.BytesType)):
            yield where, info
        if isinstance(info, (msgspec.inspect.ListType, msgspec.inspect.DictType)):
            yield where, info
            inner = (
                [info.item_type]
                if isinstance(info, msgspec.inspect.ListType)
                else [info.key_type, info.value_type]
            )
            for item in inner:
                yield from walk(item, f"{where}[]")

    for root in (*typing.get_args(Message), SealedPrompt, SealedOutput):
        yield from walk(msgspec.inspect.type_info(root), root.__name__)


def test_every_text_bytes_list_and_map_field_has_a_limit() -> None:
    fields = list(_sized_fields())
    assert len(fields) > 100  # the walk reached the messages and their embedded structs
    unbounded = [where for where, info in fields if getattr(info, "max_length", None) is None]
    assert not unbounded, f"fields without a size limit: {unbounded}"


def test_the_wire_entry_limit_is_the_ledgers() -> None:
    assert MAX_ENTRY_BYTES == MAX_ENTRY_SIZE


def _worker(i: int, *, online: bool) -> WorkerSummary:
    names = [WIDE * MAX_SHORT_TEXT for _ in range(MAX_MODELS_PER_WORKER)]
    return WorkerSummary(peer_id=f"w{i:05d}", public_key=b"k" * 32, models=names, online=online)


def _peer(i: int, *, online: bool, char: str = WIDE) -> PeerSummary:
    text = char * MAX_SHORT_TEXT
    return PeerSummary(
        peer_id=f"p{i:05d}",
        roles=["coordinator" if i % 7 == 0 else "worker"],
        models=[text] * 16,
        addrs=[text] * 16,
        last_seen_s=1.0,
        online=online,
        tier=text,
        software=text,
        reachability=text,
    )


def test_a_status_of_a_huge_registry_still_fits_one_frame() -> None:
    # What a coordinator flooded with fake workers (every field at its limit, 4-byte characters) would
    # list: ~33 MB of workers and ~38 MB of peers before bounding.
    huge = NodeStatus(
        peer_id="me",
        public_key=b"k" * 32,
        role="coordinator",
        addrs=[],
        points=0,
        jobs_done=0,
        workers=[_worker(i, online=i % 2 == 0) for i in range(1000)],
        peers=[_peer(i, online=i % 3 == 0) for i in range(1000)],
        balances={f"{i:064x}": i for i in range(10_000)},
    )
    status = bounded_status(huge)
    frame = encode_frame(status)  # raises if over the 4 MiB frame limit
    assert len(frame) - HEADER_BYTES <= MAX_STATUS_BYTES
    again = decode_message(frame[HEADER_BYTES:])  # a client's decoder takes it: every list within its limit
    assert isinstance(again, NodeStatus) and again == status
    assert 0 < len(status.workers) <= MAX_STATUS_WORKERS and 0 < len(status.peers) <= MAX_STATUS_PEERS
    assert all(w.online for w in status.workers) and all(p.online for p in status.peers)
    assert [w.peer_id for w in status.workers] == sorted(w.peer_id for w in status.workers)
    assert len(status.balances) == MAX_STATUS_BALANCES and min(status.balances.values()) == 10_000 - 4096
    assert list(status.balances) == sorted(status.balances)


def test_a_model_list_of_a_flooded_coordinator_still_fits_one_frame() -> None:
    # Fake workers announcing 500 files of one name, each with a template at its limit in 4-byte
    # characters (~131 MB before bounding): the list keeps the most-served, templates until 2 MiB.
    flood = [
        ModelInfo(
            name=WIDE * MAX_SHORT_TEXT,
            sha256=f"{i:064x}",
            workers=1 + i % 7,
            chat_template=WIDE * MAX_CHAT_TEMPLATE_CHARS,
        )
        for i in range(500)
    ]
    listed = bounded_models(flood)
    frame = encode_frame(listed)  # raises if over the 4 MiB frame limit
    assert len(frame) - HEADER_BYTES <= MAX_MODEL_LIST_BYTES
    again = decode_message(frame[HEADER_BYTES:])
    assert isinstance(again, ModelList) and again == listed
    assert len(listed.models) == MAX_MODELS_LISTED and all(m.workers == 7 for m in listed.models)
    kept = [m for m in listed.models if m.chat_template]
    assert 0 < len(kept) < MAX_MODELS_LISTED and listed.models[: len(kept)] == kept  # the first keep theirs
    assert [m.sha256 for m in listed.models] == sorted(m.sha256 for m in listed.models)


def test_coordinators_are_kept_among_peers() -> None:
    peers = [_peer(i, online=True, char="a") for i in range(600)]
    status = bounded_status(NodeStatus("me", b"", "worker", [], 0, 0, peers=peers))
    coordinators = [p for p in peers if "coordinator" in p.roles]
    assert {p.peer_id for p in coordinators} <= {p.peer_id for p in status.peers}


def test_a_small_status_is_left_as_it_is() -> None:
    status = NodeStatus(
        "me",
        b"k" * 32,
        "coordinator",
        ["/ip4/127.0.0.1/tcp/1/p2p/me"],
        5,
        1,
        workers=[_worker(2, online=False), _worker(1, online=True)],
        balances={"b": 1, "a": 2},
    )
    assert bounded_status(status) == msgspec.structs.replace(
        status, workers=sorted(status.workers, key=lambda w: w.peer_id), balances={"a": 2, "b": 1}
    )


@pytest.mark.parametrize("name_chars", [MAX_SHORT_TEXT, MAX_SHORT_TEXT + 1])
def test_a_model_name_over_the_limit_is_malformed(name_chars: int) -> None:
    from opengrid.errors import MalformedMessageError
    from opengrid.wire.codec import encode_message
    from opengrid.wire.contract import DecodingContract
    from opengrid.wire.messages import ModelOffer, RegisterWorker

    offer = ModelOffer(name="m" * name_chars, contract=DecodingContract(model_sha256="ab" * 32))
    body = encode_message(RegisterWorker("net", b"k" * 32, [], [offer]))
    if name_chars <= MAX_SHORT_TEXT:
        assert isinstance(decode_message(body), RegisterWorker)
    else:
        with pytest.raises(MalformedMessageError, match="length <= 256"):
            decode_message(body)

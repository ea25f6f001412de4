"""The member's guard on ggml-rpc requests (opengrid/core/rpc_guard.py, spec/split.md §5)."""

from __future__ import annotations

import pytest

from opengrid.core.rpc_guard import MAX_CONTROL_BYTES, Allocations, RpcCommand, RpcGuard, RpcRefused


def request(command: int, body: bytes) -> bytes:
    return bytes([command]) + len(body).to_bytes(8, "little") + body


def alloc(size: int) -> bytes:
    return request(RpcCommand.ALLOC_BUFFER, (0).to_bytes(4, "little") + size.to_bytes(8, "little"))


def alloc_answer(pointer: int, size: int) -> bytes:
    return (16).to_bytes(8, "little") + pointer.to_bytes(8, "little") + size.to_bytes(8, "little")


def free(pointer: int) -> bytes:
    return request(RpcCommand.FREE_BUFFER, pointer.to_bytes(8, "little"))


def test_allocations_within_the_budget_pass_in_any_chunking() -> None:
    stream = (
        request(RpcCommand.HELLO, b"\0" * 8)
        + alloc(600)
        + request(RpcCommand.SET_TENSOR, b"x" * 500)
        + alloc(400)
    )
    for step in (1, 3, 7, len(stream)):
        guard = RpcGuard(budget_bytes=1000)
        for i in range(0, len(stream), step):
            guard.feed(stream[i : i + step])
        assert guard.allocated == 1000 and guard.requests == 4


def test_allocation_over_the_budget_is_refused() -> None:
    guard = RpcGuard(budget_bytes=1000)
    guard.feed(alloc(900))
    with pytest.raises(RpcRefused, match="agreed to hold 1000 bytes"):
        guard.feed(alloc(101))


def test_freed_buffers_are_given_back_as_the_server_answers() -> None:
    """llama.cpp re-allocates scratch as the context grows (free, then a bigger alloc): an honest head
    must not run out of budget. Sizes are settled from the server's answers, in any chunking."""
    guard = RpcGuard(budget_bytes=1000)
    guard.feed(request(RpcCommand.HELLO, b"\0" * 24) + alloc(600))
    answers = (28).to_bytes(8, "little") + bytes(28) + alloc_answer(0xA0, 640)  # aligned up by the server
    for i in range(len(answers)):
        guard.feed_answer(answers[i : i + 1])
    assert guard.allocated == 640
    guard.feed(request(RpcCommand.GET_TENSOR, b"\0" * 16) + free(0xA0) + alloc(900))
    guard.feed_answer((3).to_bytes(8, "little") + b"abc" + alloc_answer(0xB0, 900))  # GET_TENSOR's data
    assert guard.allocated == 900
    with pytest.raises(RpcRefused):
        guard.feed(alloc(200))
    guard.close()  # the connection ends: the server frees its buffers
    assert guard.allocated == 0


def test_a_failed_allocation_holds_nothing_and_stray_answers_are_refused() -> None:
    guard = RpcGuard(budget_bytes=1000)
    guard.feed(alloc(500))
    guard.feed_answer(alloc_answer(0, 0))
    assert guard.allocated == 0
    with pytest.raises(RpcRefused, match="never sent"):
        guard.feed_answer(alloc_answer(0xC0, 10))


def test_unknown_commands_are_refused() -> None:
    with pytest.raises(RpcRefused, match="unknown"):
        RpcGuard(10).feed(request(200, b""))
    with pytest.raises(RpcRefused, match="unknown"):
        RpcGuard(10).feed(request(RpcCommand.MEMSET_TENSOR + 1, b""))
    RpcGuard(10).feed(request(RpcCommand.SET_TENSOR_HASH, b"\0" * 16))  # answered "not cached"


def test_announced_lengths_are_bounded_before_any_body_arrives() -> None:
    # A control command announcing 1 GiB: refused on its 9-byte header (the server would resize a
    # vector to it).
    header = bytes([RpcCommand.GET_ALLOC_SIZE]) + (2**30).to_bytes(8, "little")
    with pytest.raises(RpcRefused, match="over the"):
        RpcGuard(2**40).feed(header)
    big = bytes([RpcCommand.SET_TENSOR]) + (10_000 + MAX_CONTROL_BYTES + 1).to_bytes(8, "little")
    with pytest.raises(RpcRefused, match="budget 10000"):
        RpcGuard(10_000).feed(big)


def test_malformed_alloc_is_refused() -> None:
    with pytest.raises(RpcRefused, match="12 bytes"):
        RpcGuard(1000).feed(request(RpcCommand.ALLOC_BUFFER, b"\0" * 4))


def test_a_sessions_tunnels_share_one_budget() -> None:
    account = Allocations()
    first, second = RpcGuard(1000, account), RpcGuard(1000, account)
    first.feed(alloc(600))
    with pytest.raises(RpcRefused, match="holding 600 bytes"):
        second.feed(alloc(500))

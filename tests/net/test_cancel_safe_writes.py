"""Cancelling a task that reads or writes a stream, or resetting a stream mid-answer, ends that stream only:
the connection and its next streams live on (the soak's "No valid connections available for peer").

In py-libp2p 0.8.1 a Noise message is encrypted (its nonce spent) before its write awaits the socket, and
yamux writes a frame from the stream's own task (a WINDOW_UPDATE after every read): a task cancelled in
between left the two sides' nonces apart, and the peer closed the connection at the next message
(``host._CancelSafeNoise``). The rounds race real tasks on real hosts; before the fix the first two tests
failed in each of 5 runs: the reader case lost the connection in round 0 to 10 ("No valid connections
available for peer"), the writer case in round 0.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
from libp2p.custom_types import TProtocol

from opengrid.errors import OpenGridError
from opengrid.net.host import RUN_PROTOCOL, FrameStream, Host, open_host, quiet_libp2p_logging
from opengrid.wire.messages import ErrorReply, Message, ReplicaProgress, StatusRequest
from tests.waiting import until

ROUNDS = 40
"""Rounds per test (was 100): before the fix every run failed by round 10, so 40 keeps a 4x margin."""
JOB_ID = b"\x01" * 16
RESET_PROTOCOL = TProtocol("/opengrid/test-reset/1")


async def _status(stream: FrameStream) -> None:
    await stream.receive()
    await stream.send(ErrorReply("busy", "alive"))


@asynccontextmanager
async def _pair() -> AsyncIterator[tuple[Host, Host]]:
    """An asker connected to an answerer that also answers plain requests (the liveness check)."""
    quiet_libp2p_logging()
    async with open_host(secrets.token_bytes(32)) as answerer, open_host(secrets.token_bytes(32)) as asker:
        answerer.set_handler(_status)
        await asker.connect(answerer.addrs()[0])
        yield asker, answerer


async def _still_connected(asker: Host, answerer: Host) -> str:
    """Whether the connection survived: a new stream opens and is answered at once ("" if so, else what
    happened). Failures are returned, not raised: raised inside the hosts' nurseries, the cause would be
    buried under ten levels of exception groups."""
    try:
        with trio.fail_after(5):
            reply = await asker.request(answerer.peer_id, StatusRequest())
    except (OpenGridError, trio.TooSlowError) as exc:
        return f"the connection did not survive ({type(exc).__name__}: {exc})"
    return "" if reply == ErrorReply("busy", "alive") else f"unexpected reply {reply!r}"


class _Round:
    """Two exchanges of one round: the answerer holds both answers until both requests arrived."""

    def __init__(self) -> None:
        self.received = 0
        self.both = trio.Event()
        self.writers: list[trio.CancelScope] = []

    def arrived(self) -> None:
        self.received += 1
        if self.received == 2:
            self.both.set()


async def test_a_reader_cancelled_as_its_answer_arrives_keeps_the_connection() -> None:
    """The coordinator's CancelReplica: one replica's answer cancels the other's task while that one's
    answer is arriving (its read then writes a WINDOW_UPDATE); the stream is then reset (``abort``)."""
    rounds = [_Round()]

    async def answer(stream: FrameStream) -> None:
        while await stream.receive_next() is not None:
            now = rounds[-1]
            now.arrived()
            await now.both.wait()
            await stream.send(ErrorReply("malformed", "refused"))

    problem = ""
    failures: list[str] = []  # this round's
    async with _pair() as (asker, answerer):
        answerer.set_handler(answer, RUN_PROTOCOL)
        for round_ in range(ROUNDS):
            rounds.append(_Round())
            failures.clear()
            try:
                first = await asker.open_stream(answerer.peer_id, RUN_PROTOCOL)
                second = await asker.open_stream(answerer.peer_id, RUN_PROTOCOL)
            except OpenGridError as exc:
                problem = f"round {round_}: {exc}"
                break
            cancel_second = trio.CancelScope()

            async def ask_first(
                first: FrameStream = first, cancel_second: trio.CancelScope = cancel_second
            ) -> None:
                try:
                    await first.send(StatusRequest())
                    await first.receive()
                except OpenGridError as exc:
                    failures.append(f"the first exchange failed: {exc}")
                cancel_second.cancel()
                await first.aclose()

            async def ask_second(
                second: FrameStream = second, cancel_second: trio.CancelScope = cancel_second
            ) -> None:
                with cancel_second:
                    try:
                        await second.send(StatusRequest())
                        await second.receive()
                    except OpenGridError as exc:
                        failures.append(f"the second exchange failed: {exc}")
                await second.abort()  # what StreamPool.discard does with a cancelled exchange

            with trio.fail_after(10):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(ask_first)
                    nursery.start_soon(ask_second)
            if problem := "; ".join(failures) or await _still_connected(asker, answerer):
                problem = f"round {round_}: {problem}"
                break
    assert not problem, problem


async def test_a_writer_cancelled_mid_answer_keeps_the_connection() -> None:
    """The reverse: on the answering side, the first answer sent cancels the task writing the other."""
    rounds = [_Round()]

    async def answer(stream: FrameStream) -> None:
        await stream.receive()
        now = rounds[-1]
        mine = trio.CancelScope()
        now.writers.append(mine)
        now.arrived()
        await now.both.wait()
        with mine:
            await stream.send(ErrorReply("malformed", "refused"))
            for other in now.writers:
                other.cancel()  # ours is done: a no-op on it

    problem = ""
    async with _pair() as (asker, answerer):
        answerer.set_handler(answer, RUN_PROTOCOL)
        for round_ in range(ROUNDS):
            rounds.append(_Round())
            answers: list[Message | str] = []

            async def ask(answers: list[Message | str] = answers) -> None:
                try:
                    stream = await asker.open_stream(answerer.peer_id, RUN_PROTOCOL)
                except OpenGridError as exc:
                    answers.append(str(exc))
                    return
                try:
                    await stream.send(StatusRequest())
                    answers.append(await stream.receive())
                except OpenGridError as exc:  # the cancelled answer: cut short, then the stream ends
                    answers.append(str(exc))
                    await stream.abort()
                else:
                    await stream.aclose()

            with trio.fail_after(10):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(ask)
                    nursery.start_soon(ask)
            if ErrorReply("malformed", "refused") not in answers:
                problem = f"round {round_}: no answer came through: {answers}"
                break
            if problem := await _still_connected(asker, answerer):
                problem = f"round {round_}: {problem}"
                break
    assert not problem, problem


async def test_a_stream_reset_while_the_other_side_writes_keeps_the_connection() -> None:
    """A reset lands while the other side is writing a long answer (a streaming job's previews) or a long
    request: the writer gets a typed error for that stream, and the connection lives on."""
    writing = trio.Event()
    writer_failed: list[str] = []

    async def previews(stream: FrameStream) -> None:
        await stream.receive()
        try:
            for _ in range(2000):  # far more than the asker waits for
                await stream.send(ReplicaProgress(job_id=JOB_ID, text="x" * 1000))
                writing.set()
        except OpenGridError as exc:
            writer_failed.append(str(exc))
            raise

    async def reset_at_once(stream: FrameStream) -> None:
        await stream.receive()
        await stream.reset()

    async with _pair() as (asker, answerer):
        answerer.set_handler(previews, RUN_PROTOCOL)
        answerer.set_handler(reset_at_once, RESET_PROTOCOL)
        for round_ in range(10):
            writing = trio.Event()
            stream = await asker.open_stream(answerer.peer_id, RUN_PROTOCOL)
            await stream.send(StatusRequest())
            with trio.fail_after(10):
                await stream.receive()
                await writing.wait()
            await stream.abort()  # the coordinator left while the worker streams
            assert not (problem := await _still_connected(asker, answerer)), f"round {round_}: {problem}"

            stream = await asker.open_stream(answerer.peer_id, RESET_PROTOCOL)
            with pytest.raises(OpenGridError), trio.fail_after(10):
                for _ in range(2000):  # a long request; the answerer resets after its first frame
                    await stream.send(ReplicaProgress(job_id=JOB_ID, text="y" * 1000))
            await stream.abort()
            assert not (problem := await _still_connected(asker, answerer)), f"round {round_}: {problem}"
        # each answerer's write failed on the reset, as a typed error of that stream
        await until(lambda: len(writer_failed) == 10, 10, lambda: f"failed writes: {writer_failed}")


class _SlowSocket:
    """Stands in for a Noise session under ``host._whole_writes``: each write takes ``steps`` checkpoints,
    or never ends (a peer that stopped reading its socket)."""

    def __init__(self, steps: int | None) -> None:
        self.steps = steps
        self.written: list[bytes] = []
        self.closed = False

    async def write(self, data: bytes) -> None:
        if self.steps is None:
            await trio.sleep_forever()
        for _ in range(self.steps):
            await trio.lowlevel.checkpoint()
        self.written.append(data)

    async def close(self) -> None:
        self.closed = True

    def get_remote_peer(self) -> object:
        raise NotImplementedError


async def test_a_cancelled_writer_finishes_its_message_and_a_stuck_one_closes_the_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from libp2p.io.exceptions import ConnectionClosedError

    from opengrid.net import host

    slow = _SlowSocket(steps=5)
    conn: Any = host._whole_writes(slow)  # type: ignore[arg-type]
    with trio.CancelScope() as scope:
        scope.cancel()  # cancelled before the write starts: it still goes out whole
        await conn.write(b"message")
        assert slow.written == [b"message"]
        await trio.lowlevel.checkpoint()  # the cancel lands at the caller's next checkpoint (yamux has one)
        pytest.fail("the cancel was lost")
    assert slow.written == [b"message"] and not slow.closed

    monkeypatch.setattr(host, "FRAME_BASE_S", 0.2)
    stuck = _SlowSocket(steps=None)
    conn = host._whole_writes(stuck)
    started = trio.current_time()
    with pytest.raises(ConnectionClosedError, match="did not complete within"):
        await conn.write(b"message")
    assert stuck.closed and trio.current_time() - started < 2

"""Driving ``/opengrid/ledger-sync/1`` over a libp2p stream (the protocol itself is sans-IO:
``opengrid_ledger.sync.SyncSession``; spec/ledger.md §9).

The session speaks in *flights*: one side sends every turn it has, the other answers all of them with
its own flight, and so on until a side has nothing to say. On the stream each turn is one frame, and a
one-byte frame ``0x00`` (which no turn encodes to) closes a flight; an empty flight ends the exchange.
"""

from __future__ import annotations

import logging
from typing import Final

from opengrid_ledger.sync import MAX_TURN_SIZE, PROTOCOL, SyncSession

from opengrid.errors import RemoteProtocolError
from opengrid.net.host import FrameStream

SYNC_PROTOCOL: Final = PROTOCOL
END_OF_FLIGHT: Final = b"\x00"
MAX_FLIGHTS: Final = 64
"""Flights per exchange; two ledgers that differ by thousands of entries converge in a handful."""
MAX_TURNS_PER_FLIGHT: Final = 4096
log = logging.getLogger("opengrid.sync")


async def send_flight(stream: FrameStream, turns: list[bytes]) -> None:
    for turn in turns:
        await stream.send_body(turn)
    await stream.send_body(END_OF_FLIGHT)


async def receive_flight(stream: FrameStream) -> list[bytes]:
    turns: list[bytes] = []
    while (body := await stream.receive_body()) != END_OF_FLIGHT:
        if len(body) > MAX_TURN_SIZE or len(turns) >= MAX_TURNS_PER_FLIGHT:
            raise RemoteProtocolError("ledger-sync flight over its limits", peer=stream.peer)
        turns.append(body)
    return turns


def _answer(session: SyncSession, turns: list[bytes]) -> list[bytes]:
    return [reply for turn in turns for reply in session.receive(turn)]


async def initiate(stream: FrameStream, session: SyncSession) -> None:
    """Run an exchange we started; entries we gain end up in ``session.applied``."""
    flight = session.start()
    for _ in range(MAX_FLIGHTS):
        await send_flight(stream, flight)
        if not flight:
            return
        incoming = await receive_flight(stream)
        if not incoming:
            return
        flight = _answer(session, incoming)


async def respond(stream: FrameStream, session: SyncSession) -> None:
    """Serve an exchange a peer started."""
    for _ in range(MAX_FLIGHTS):
        incoming = await receive_flight(stream)
        if not incoming:
            return
        flight = _answer(session, incoming)
        await send_flight(stream, flight)
        if not flight:
            return

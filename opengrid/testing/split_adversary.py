"""A split-group member that corrupts the activations it returns to its head (issue 17), for audit tests.

A member of a split group (spec/split.md) runs its layers in a ggml RPC server; the head reads each
member's output hidden state back with ggml-rpc ``GET_TENSOR`` requests. This member is honest in every
way its head can check (it accepts, allocates within its budget, passes its own guard) but multiplies
every float of every F32 ``GET_TENSOR`` answer by ``1 + relative_noise * n``, ``n`` a standard normal
from a seeded generator: the hidden state the head receives is wrong, by a chosen relative size.

It plugs into the product's one hook for it: ``SplitMember(..., rpc_stream=...)`` wraps each tunnel's
connection to the RPC server (:func:`corrupting_member` builds such a member). The wrapper follows the
requests it sends (command, and for ``GET_TENSOR`` the tensor's type, from the serialized ``rpc_tensor``
at the start of the body) to know which answer is which, answers coming back in request order exactly
as :class:`~opengrid.core.rpc_guard.RpcGuard` follows them.

Framing (ggml-rpc protocol 7): a request is ``| command u8 | length u64le | body |``; an answer, for the
commands the server answers, ``| length u64le | body |``. ``GET_TENSOR``'s body is ``rpc_tensor``
(packed: ``id u64, type u32, ...``), ``offset u64``, ``size u64``; its answer's body is the tensor's bytes.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np
import trio

from opengrid.core.rpc_guard import _ANSWERED, RpcCommand  # the guard's table: the two cannot disagree
from opengrid.net.host import Host
from opengrid.net.split import SplitLimits, SplitMember

__all__ = ["CorruptingRpcStream", "Corruption", "corrupting_member"]

_GGML_TYPE_F32 = 0
_MAX_BUFFERED = 64 * 1024 * 1024
"""A GET_TENSOR answer larger than this passes through untouched (activations are far smaller)."""


@dataclass
class Corruption:
    """What the adversary does, and what it did (shared by all its tunnels)."""

    relative_noise: float
    """Each float x of an F32 GET_TENSOR answer becomes ``x * (1 + relative_noise * n)``, n ~ N(0, 1)."""
    """Change it between generations to measure several sizes on one group."""
    seed: int = 0
    answers_seen: int = 0
    """F32 GET_TENSOR answers seen so far."""
    answers_corrupted: int = 0
    floats_corrupted: int = 0
    rng: np.random.Generator = field(init=False)

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)

    def apply(self, body: bytearray) -> None:
        """Corrupt one F32 answer body in place."""
        self.answers_seen += 1
        if self.relative_noise == 0.0:
            return
        values = np.frombuffer(body, dtype="<f4")
        noise = self.rng.standard_normal(values.shape[0], dtype=np.float32)
        corrupted = values * (np.float32(1.0) + np.float32(self.relative_noise) * noise)
        body[:] = corrupted.astype("<f4").tobytes()
        self.answers_corrupted += 1
        self.floats_corrupted += values.shape[0]


class CorruptingRpcStream(trio.abc.Stream):
    """Wraps a member's connection to its RPC server: requests pass unchanged, F32 ``GET_TENSOR``
    answers come back corrupted by :class:`Corruption`."""

    def __init__(self, inner: trio.abc.Stream, corruption: Corruption) -> None:
        self._inner = inner
        self._corruption = corruption
        # request side
        self._header = bytearray()
        self._command: int | None = None
        self._body_left = 0
        self._body_head = bytearray()
        # (command, tensor type or -1) of each request whose answer has not come back
        self._awaiting: deque[tuple[int, int]] = deque()
        # answer side
        self._answer_header = bytearray()
        self._answering: tuple[int, int] | None = None
        self._answer_left = 0
        self._held: bytearray | None = None  # a GET_TENSOR answer body being collected
        self._out = bytearray()

    # ── head -> server: follow the requests ──────────────────────────────────────────────────────────

    async def send_all(self, data: bytes | memoryview) -> None:
        """Forward ``data`` unchanged, noting which requests it completes."""
        self._follow_requests(memoryview(data))
        await self._inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        """As the inner stream."""
        await self._inner.wait_send_all_might_not_block()

    def _follow_requests(self, view: memoryview) -> None:
        while view:
            if self._command is None:
                take = min(len(view), 9 - len(self._header))
                self._header += view[:take]
                view = view[take:]
                if len(self._header) == 9:
                    self._command = self._header[0]
                    self._body_left = int.from_bytes(self._header[1:], "little")
                    self._header.clear()
                    self._body_head.clear()
                    if self._body_left == 0:
                        self._request_done()
                continue
            take = min(len(view), self._body_left)
            if len(self._body_head) < 12:
                self._body_head += view[: min(take, 12 - len(self._body_head))]
            view = view[take:]
            self._body_left -= take
            if self._body_left == 0:
                self._request_done()

    def _request_done(self) -> None:
        command = self._command
        self._command = None
        if command is None or command not in _ANSWERED:
            return
        tensor_type = -1
        if command == RpcCommand.GET_TENSOR and len(self._body_head) >= 12:
            tensor_type = int.from_bytes(self._body_head[8:12], "little")
        self._awaiting.append((command, tensor_type))

    # ── server -> head: corrupt the activations ─────────────────────────────────────────────────────

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """The server's next bytes, F32 GET_TENSOR answers corrupted; b"" at its end."""
        limit = max_bytes or 65536
        while not self._out:
            data = await self._inner.receive_some(limit)
            if not data:
                return b""
            self._rewrite_answers(memoryview(data))
        out = bytes(self._out[:limit])
        del self._out[:limit]
        return out

    def _rewrite_answers(self, view: memoryview) -> None:
        while view:
            if self._answering is None:
                take = min(len(view), 8 - len(self._answer_header))
                self._answer_header += view[:take]
                view = view[take:]
                if len(self._answer_header) < 8:
                    continue
                self._out += self._answer_header
                self._answer_left = int.from_bytes(self._answer_header, "little")
                self._answer_header.clear()
                # An answer nobody asked for would be the server's fault; pass it on, the guard cuts it.
                self._answering = self._awaiting.popleft() if self._awaiting else (-1, -1)
                command, tensor_type = self._answering
                corrupt = (
                    command == RpcCommand.GET_TENSOR
                    and tensor_type == _GGML_TYPE_F32
                    and 0 < self._answer_left <= _MAX_BUFFERED
                    and self._answer_left % 4 == 0
                )
                self._held = bytearray() if corrupt else None
                if self._answer_left == 0:
                    self._answering = None
                continue
            take = min(len(view), self._answer_left)
            if self._held is not None:
                self._held += view[:take]
            else:
                self._out += view[:take]
            view = view[take:]
            self._answer_left -= take
            if self._answer_left == 0:
                if self._held is not None:
                    self._corruption.apply(self._held)
                    self._out += self._held
                    self._held = None
                self._answering = None

    async def aclose(self) -> None:
        """Close the inner stream."""
        await self._inner.aclose()


def corrupting_member(host: Host, limits: SplitLimits, corruption: Corruption) -> SplitMember:
    """A split member on ``host`` whose tunnels return activations corrupted by ``corruption``."""
    return SplitMember(host, limits, rpc_stream=lambda tcp: CorruptingRpcStream(tcp, corruption))

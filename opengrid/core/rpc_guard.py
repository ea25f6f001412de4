"""A member's check of the ggml-rpc traffic its head sends through the tunnel (spec/split.md §5): sans-IO.

llama.cpp's RPC server trusts its client: it allocates whatever size it is asked for and reads whatever
length a request announces. The member's end of the tunnel therefore parses the request stream (head ->
member) and cuts the tunnel at the first request that

- names a command outside protocol 7 (``ALLOWED_COMMANDS``),
- announces a body larger than the session's byte budget, or larger than ``MAX_CONTROL_BYTES`` for a
  command that carries no tensor data,
- asks for a buffer that would take the session's live buffers over its budget.

Live buffers are counted from the server's answers (member -> head, parsed too): an ALLOC_BUFFER answer
names the buffer and its size, FREE_BUFFER gives it back, and a closed connection gives back all of its
buffers (the server frees them). llama.cpp re-allocates its scratch as the context grows (FREE then a
bigger ALLOC), so counting allocations without frees cut honest heads after a few dozen tokens.

Framing (ggml-rpc protocol 7, the version llama-cpp-python 0.3.36 vendors): a request is
``| command: u8 | body length: u64 little-endian | body |``, an answer ``| length: u64 le | body |``, sent
for the commands in ``_ANSWERED`` only, in request order. ALLOC_BUFFER's body is ``| device: u32 | size:
u64 |`` and its answer ``| remote_ptr: u64 | remote_size: u64 |``; FREE_BUFFER's body is ``| remote_ptr:
u64 |``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import IntEnum

from opengrid.errors import RemoteProtocolError

__all__ = ["ALLOWED_COMMANDS", "MAX_CONTROL_BYTES", "Allocations", "RpcCommand", "RpcGuard", "RpcRefused"]


class RpcCommand(IntEnum):
    """ggml-rpc commands (ggml-rpc.cpp ``enum rpc_cmd``, protocol 7.0.0)."""

    ALLOC_BUFFER = 0
    GET_ALIGNMENT = 1
    GET_MAX_SIZE = 2
    BUFFER_GET_BASE = 3
    FREE_BUFFER = 4
    BUFFER_CLEAR = 5
    SET_TENSOR = 6
    SET_TENSOR_HASH = 7
    GET_TENSOR = 8
    COPY_TENSOR = 9
    GRAPH_COMPUTE = 10
    GET_DEVICE_MEMORY = 11
    INIT_TENSOR = 12
    GET_ALLOC_SIZE = 13
    HELLO = 14
    DEVICE_COUNT = 15
    GRAPH_RECOMPUTE = 16
    MEMSET_TENSOR = 17


ALLOWED_COMMANDS = frozenset(RpcCommand)
"""The commands of protocol 7. SET_TENSOR_HASH (load a tensor from the server's file cache) is among them:
the head's llama.cpp sends it first for every tensor over 10 MB, and a member's server, which runs without
a cache directory, answers "not cached", after which the head sends the data."""

_DATA_COMMANDS = frozenset({RpcCommand.SET_TENSOR, RpcCommand.GRAPH_COMPUTE})
"""Commands whose body carries tensor data or a whole graph: bounded by the session budget only."""

_ANSWERED = frozenset(
    {
        RpcCommand.HELLO,
        RpcCommand.DEVICE_COUNT,
        RpcCommand.ALLOC_BUFFER,
        RpcCommand.GET_ALLOC_SIZE,
        RpcCommand.GET_ALIGNMENT,
        RpcCommand.GET_MAX_SIZE,
        RpcCommand.BUFFER_GET_BASE,
        RpcCommand.SET_TENSOR_HASH,
        RpcCommand.GET_TENSOR,
        RpcCommand.COPY_TENSOR,
        RpcCommand.GET_DEVICE_MEMORY,
    }
)
"""Commands the server answers (ggml-rpc.cpp ``rpc_serve_client``); the others get no answer."""

_KEPT_BODIES = frozenset({RpcCommand.ALLOC_BUFFER, RpcCommand.FREE_BUFFER})
"""Requests whose bodies the guard reads (the rest are only counted and skipped)."""

MAX_CONTROL_BYTES = 64 * 1024
"""The largest body of any other command (the biggest, GET_ALLOC_SIZE, is ~3.5 KB)."""

_HEADER = 9


class RpcRefused(RemoteProtocolError):
    """The head sent a ggml-rpc request the member's guard does not accept; the tunnel is cut."""


@dataclass
class Allocations:
    """Bytes of live buffers a session's head holds on the member, over all its tunnels."""

    bytes: int = 0


@dataclass
class RpcGuard:
    """One tunnel's guard: feed it the head -> member bytes (:meth:`feed`) and the member -> head bytes
    (:meth:`feed_answer`) in order; it raises :class:`RpcRefused` at the first refused request. Call
    :meth:`close` when the tunnel ends.

    ``budget_bytes`` is what the member agreed to hold for the session (its ``--max-memory`` share);
    ``account`` is the session's, shared by the guards of all its tunnels."""

    budget_bytes: int
    account: Allocations = field(default_factory=Allocations)
    requests: int = 0
    _header: bytearray = field(default_factory=bytearray)
    _body_left: int = 0
    _command: RpcCommand | None = None
    _body: bytearray = field(default_factory=bytearray)
    _awaiting: deque[tuple[RpcCommand, int]] = field(default_factory=deque)
    """Requests whose answers have not arrived: (command, size asked for, for ALLOC_BUFFER)."""
    _buffers: dict[int, int] = field(default_factory=dict)
    """This connection's live buffers: remote pointer -> size."""
    _answer_header: bytearray = field(default_factory=bytearray)
    _answer_left: int = 0
    _answer_body: bytearray = field(default_factory=bytearray)
    _answering: tuple[RpcCommand, int] | None = None

    @property
    def allocated(self) -> int:
        """Bytes of the session's live buffers."""
        return self.account.bytes

    def feed(self, data: bytes | memoryview) -> None:
        """Check the next bytes of the head -> member stream (any split of the stream into chunks)."""
        view = memoryview(data)
        while view:
            if self._body_left == 0 and self._command is None:
                take = min(len(view), _HEADER - len(self._header))
                self._header += view[:take]
                view = view[take:]
                if len(self._header) == _HEADER:
                    self._start(bytes(self._header))
                    self._header.clear()
                continue
            take = min(len(view), self._body_left)
            if self._command in _KEPT_BODIES:
                self._body += view[:take]
            view = view[take:]
            self._body_left -= take
            if self._body_left == 0:
                self._finish()

    def feed_answer(self, data: bytes | memoryview) -> None:
        """Follow the next bytes of the member -> head stream: the server's answers, in request order."""
        view = memoryview(data)
        while view:
            if self._answering is None:
                take = min(len(view), 8 - len(self._answer_header))
                self._answer_header += view[:take]
                view = view[take:]
                if len(self._answer_header) == 8:
                    if not self._awaiting:
                        raise RpcRefused("the RPC server answered a request that was never sent")
                    self._answering = self._awaiting.popleft()
                    self._answer_left = int.from_bytes(self._answer_header, "little")
                    self._answer_header.clear()
                    self._answer_body.clear()
                    if self._answer_left == 0:
                        self._answered()
                continue
            take = min(len(view), self._answer_left)
            if self._answering[0] is RpcCommand.ALLOC_BUFFER:
                self._answer_body += view[:take]
            view = view[take:]
            self._answer_left -= take
            if self._answer_left == 0:
                self._answered()

    def close(self) -> None:
        """The tunnel ended: the server frees every buffer of the connection."""
        self.account.bytes -= sum(self._buffers.values())
        self.account.bytes -= sum(
            asked for command, asked in self._awaiting if command is RpcCommand.ALLOC_BUFFER
        )
        self._buffers.clear()
        self._awaiting.clear()

    def _start(self, header: bytes) -> None:
        code = header[0]
        length = int.from_bytes(header[1:], "little")
        try:
            command = RpcCommand(code)
        except ValueError:
            raise RpcRefused(f"ggml-rpc command {code} is unknown to this member (protocol 7)") from None
        if command not in ALLOWED_COMMANDS:
            raise RpcRefused(f"ggml-rpc command {command.name} is not accepted on a split tunnel")
        bound = self.budget_bytes + MAX_CONTROL_BYTES if command in _DATA_COMMANDS else MAX_CONTROL_BYTES
        if length > bound:
            raise RpcRefused(
                f"a ggml-rpc {command.name} request announced {length} bytes, over the {bound}-byte bound "
                f"of this session (budget {self.budget_bytes} bytes)"
            )
        self.requests += 1
        self._command = command
        self._body_left = length
        self._body.clear()
        if length == 0:
            self._finish()

    def _finish(self) -> None:
        command = self._command
        assert command is not None
        asked = 0
        if command is RpcCommand.ALLOC_BUFFER:
            if len(self._body) != 12:
                raise RpcRefused(f"a ggml-rpc ALLOC_BUFFER body is 12 bytes, got {len(self._body)}")
            asked = int.from_bytes(self._body[4:12], "little")
            if self.account.bytes + asked > self.budget_bytes:
                raise RpcRefused(
                    f"the head asked for a {asked}-byte buffer while holding {self.account.bytes} bytes; "
                    f"this member agreed to hold {self.budget_bytes} bytes for the session"
                )
            self.account.bytes += asked  # reserved now; settled when the answer names the real size
        elif command is RpcCommand.FREE_BUFFER and len(self._body) == 8:
            self.account.bytes -= self._buffers.pop(int.from_bytes(self._body, "little"), 0)
        if command in _ANSWERED:
            self._awaiting.append((command, asked))
        self._command = None
        self._body.clear()

    def _answered(self) -> None:
        answering = self._answering
        assert answering is not None
        command, asked = answering
        if command is RpcCommand.ALLOC_BUFFER:
            body = bytes(self._answer_body)
            pointer = int.from_bytes(body[0:8], "little") if len(body) == 16 else 0
            size = int.from_bytes(body[8:16], "little") if len(body) == 16 else 0
            self.account.bytes -= asked
            if pointer:  # 0: the server could not allocate; nothing is held
                self.account.bytes += size
                self._buffers[pointer] = size
        self._answering = None

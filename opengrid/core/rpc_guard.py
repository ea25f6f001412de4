"""A member's check of the ggml-rpc requests its head sends through the tunnel (spec/split.md §5): sans-IO.

llama.cpp's RPC server trusts its client: it allocates whatever size it is asked for and reads whatever
length a request announces. The member's end of the tunnel therefore parses the request stream (head ->
member; responses are not inspected) and cuts the tunnel at the first request that

- names a command outside the ones a head needs (``ALLOWED_COMMANDS``),
- announces a body larger than the session's byte budget, or larger than ``MAX_CONTROL_BYTES`` for a
  command that carries no tensor data,
- asks for a buffer that would take the session's allocations over its budget. Allocations are counted
  cumulatively, frees are not credited back (the server's reply, which names the freed buffer's size, is
  not parsed): a conservative count; a head re-allocates scratch rarely, and the planner leaves room.

Request framing (ggml-rpc protocol 7, the version llama-cpp-python 0.3.36 vendors):
``| command: u8 | body length: u64 little-endian | body |``; ALLOC_BUFFER's body is
``| device: u32 | size: u64 |``.
"""

from __future__ import annotations

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


ALLOWED_COMMANDS = frozenset(RpcCommand) - {RpcCommand.SET_TENSOR_HASH}
"""Every command but SET_TENSOR_HASH, which asks the server to load a tensor from its local file cache
(members run without one, so it would only ever fail)."""

_DATA_COMMANDS = frozenset({RpcCommand.SET_TENSOR, RpcCommand.GRAPH_COMPUTE})
"""Commands whose body carries tensor data or a whole graph: bounded by the session budget only."""

MAX_CONTROL_BYTES = 64 * 1024
"""The largest body of any other command (the biggest, GET_ALLOC_SIZE, is ~3.5 KB)."""

_HEADER = 9


class RpcRefused(RemoteProtocolError):
    """The head sent a ggml-rpc request the member's guard does not accept; the tunnel is cut."""


@dataclass
class Allocations:
    """Bytes of buffers a session's head asked for so far, over all its tunnels (never decreases, see the
    module docstring)."""

    bytes: int = 0


@dataclass
class RpcGuard:
    """Feed it one tunnel's head -> member bytes in order; it raises :class:`RpcRefused` at the first
    refused request.

    ``budget_bytes`` is what the member agreed to hold for the session (its ``--max-memory`` share);
    ``account`` is the session's, shared by the guards of all its tunnels."""

    budget_bytes: int
    account: Allocations = field(default_factory=Allocations)
    requests: int = 0
    _need: int = _HEADER
    _header: bytearray = field(default_factory=bytearray)
    _body_left: int = 0
    _command: RpcCommand | None = None
    _body: bytearray = field(default_factory=bytearray)

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
            if self._command is RpcCommand.ALLOC_BUFFER:
                self._body += view[:take]
            view = view[take:]
            self._body_left -= take
            if self._body_left == 0:
                self._finish()

    @property
    def allocated(self) -> int:
        """Bytes allocated in the session so far."""
        return self.account.bytes

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
        if self._command is RpcCommand.ALLOC_BUFFER:
            if len(self._body) != 12:
                raise RpcRefused(f"a ggml-rpc ALLOC_BUFFER body is 12 bytes, got {len(self._body)}")
            size = int.from_bytes(self._body[4:12], "little")
            if self.account.bytes + size > self.budget_bytes:
                raise RpcRefused(
                    f"the head asked for a {size}-byte buffer after {self.account.bytes} bytes; this member "
                    f"agreed to hold {self.budget_bytes} bytes for the session"
                )
            self.account.bytes += size
        self._command = None
        self._body.clear()

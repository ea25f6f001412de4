"""A model split across nodes: the head's engine (spec/split.md §4).

:class:`SplitEngine` implements :class:`~opengrid.engines.base.Engine` for a head whose model has layers
on members. It runs llama.cpp in a child process (``opengrid.engines.split_runner``: the RPC client aborts
its process when a member fails) that loads the GGUF with the members' ggml RPC devices, reached at
loopback endpoints the node tunnels to the members over libp2p (``opengrid.net.split``). Generation is
llama.cpp's own, at llama.cpp's speed: only activations cross the tunnel, once per member per evaluated
batch. Tokens are chosen by the same code as :class:`~opengrid.engines.llama.LlamaEngine` (it runs in the
child), so a split group's greedy tokens are those of one process of the same build (tested).

When the child ends (a member died, a tunnel closed) every call raises :class:`EngineError`; the engine
is then dead and the node re-plans (``opengrid.core.split_plan.replan``) and builds a new one.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import IO, Any, Literal, Self, TypeVar

import msgspec

from opengrid.core.audit import SamplingParams
from opengrid.engines.base import (
    DEFAULT_N_CTX,
    Generation,
    GenerationRequest,
    ModelInfo,
    ScoreRequest,
    Scoring,
)
from opengrid.errors import BadRequestError, EngineError
from opengrid.wire.contract import DecodingContract

__all__ = ["SPLIT_BACKEND", "SplitEngine"]

SPLIT_BACKEND = "llama.cpp+rpc"
"""The numerical class of a split group: llama.cpp's CPU kernels, with layers on several machines."""

_ERROR_LINE = re.compile(r"error|abort|assert|failed|crashed|Traceback|Exception", re.IGNORECASE)

MAX_RUNNER_FRAME = 64 * 1024 * 1024
"""The largest reply a runner may send (a scoring of a long claim is the biggest)."""


# ── The runner protocol: length-prefixed msgpack over the child's pipes ─────────────────────────────────


class RunnerLoad(msgspec.Struct, tag="load"):
    model_path: str
    name: str
    sha256: str
    endpoints: list[str]
    tensor_split: list[float]
    offloaded: int
    n_ctx: int
    n_threads: int = 0


class RunnerGenerate(msgspec.Struct, tag="generate"):
    prompt: str
    max_tokens: int
    add_bos: bool
    sampling: SamplingParams
    job_id: bytes
    stream: bool


class RunnerScore(msgspec.Struct, tag="score"):
    request: ScoreRequest


class RunnerLoaded(msgspec.Struct, tag="loaded"):
    n_params: int
    n_vocab: int


class RunnerToken(msgspec.Struct, tag="token"):
    token: int
    piece: str


class RunnerDone(msgspec.Struct, tag="done"):
    tokens: list[int]
    text: str
    finish_reason: Literal["stop", "length"]


class RunnerScored(msgspec.Struct, tag="scored"):
    scoring: Scoring


class RunnerFailed(msgspec.Struct, tag="failed"):
    message: str


RunnerRequest = RunnerLoad | RunnerGenerate | RunnerScore
RunnerReply = RunnerLoaded | RunnerToken | RunnerDone | RunnerScored | RunnerFailed
T = TypeVar("T")


def write_frame(out: IO[bytes], message: msgspec.Struct) -> None:
    """Write one length-prefixed msgpack message."""
    body = msgspec.msgpack.encode(message)
    out.write(len(body).to_bytes(4, "big") + body)
    out.flush()


def _read_exact(inp: IO[bytes], n: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < n:
        chunk = inp.read(n - len(chunks))
        if not chunk:
            raise EOFError(f"the pipe closed after {len(chunks)} of {n} bytes")
        chunks += chunk
    return bytes(chunks)


def read_frame(inp: IO[bytes], kind: Any) -> Any:
    """Read one message of type ``kind`` (a union of tagged structs); EOFError when the pipe closed."""
    length = int.from_bytes(_read_exact(inp, 4), "big")
    if length > MAX_RUNNER_FRAME:
        raise EngineError(f"a split runner message announced {length} bytes, over {MAX_RUNNER_FRAME}")
    return msgspec.msgpack.decode(_read_exact(inp, length), type=kind)


# ── The engine ────────────────────────────────────────────────────────────────────────────────────────


class SplitEngine:
    """A head's engine for a model with layers on members; implements ``Engine`` and ``ScoringEngine``.

    ``endpoints`` are loopback ``HOST:PORT`` addresses, one per member in layer order, that reach each
    member's ggml RPC server (through the node's tunnel, or directly in tests); ``tensor_split`` and
    ``offloaded`` come from the plan (``SplitPlan.tensor_split``, ``SplitPlan.offloaded``).
    Blocking and serialised by a lock, like ``LlamaEngine``.
    """

    def __init__(
        self,
        model: ModelInfo,
        endpoints: Sequence[str],
        tensor_split: Sequence[float],
        offloaded: int,
        *,
        n_ctx: int = DEFAULT_N_CTX,
        n_threads: int | None = None,
        load_timeout_s: float = 120.0,
        token_timeout_s: float = 60.0,
        python: str | None = None,
    ) -> None:
        """Start the runner and load the model; raises ``EngineError`` if a member cannot be reached or
        the model does not load within ``load_timeout_s``. ``token_timeout_s`` bounds each wait for the
        runner's next reply during a call (a silent member must not hang a job forever)."""
        if len(endpoints) != len(tensor_split):
            raise EngineError(f"{len(endpoints)} endpoints but a split over {len(tensor_split)} members")
        import llama_cpp  # the same build as the runner's: it names the contract's version

        self._model = model
        self._contract = DecodingContract(
            model_sha256=model.sha256, backend=SPLIT_BACKEND, backend_version=llama_cpp.__version__
        )
        self._n_ctx = n_ctx
        self._token_timeout_s = token_timeout_s
        self._lock = threading.Lock()
        self._stderr = tempfile.TemporaryFile()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)  # the runner imports this very code
        self._proc: subprocess.Popen[bytes] | None = subprocess.Popen(
            [python or sys.executable, "-m", "opengrid.engines.split_runner"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=env,
            bufsize=0,  # raw pipes: select() must see every byte not yet read
        )
        load = RunnerLoad(
            model_path=str(model.path),
            name=model.name,
            sha256=model.sha256,
            endpoints=list(endpoints),
            tensor_split=[float(x) for x in tensor_split],
            offloaded=offloaded,
            n_ctx=n_ctx,
            n_threads=n_threads or 0,
        )
        try:
            self._send(load)
            reply = self._receive(load_timeout_s)
        except EngineError:
            self.close()
            raise
        if isinstance(reply, RunnerFailed):
            self.close()
            raise EngineError(f"the split group could not load {model.name!r}: {reply.message}")
        if not isinstance(reply, RunnerLoaded):
            self.close()
            raise EngineError(f"the split runner answered a load with {type(reply).__name__}")
        self._n_params = reply.n_params
        self._n_vocab = reply.n_vocab

    @property
    def model(self) -> ModelInfo:
        """The model file this engine runs."""
        return self._model

    @property
    def contract(self) -> DecodingContract:
        """The decoding contract: LlamaEngine's, with backend ``llama.cpp+rpc`` (the group's class)."""
        return self._contract

    @property
    def n_params(self) -> int:
        """Parameters of the whole model (what prices a token of it)."""
        return self._n_params

    @property
    def n_vocab(self) -> int:
        """Vocabulary size."""
        return self._n_vocab

    @property
    def n_ctx(self) -> int:
        """Context window of every request."""
        return self._n_ctx

    @property
    def alive(self) -> bool:
        """False once the runner ended (a member or tunnel failed, or ``close``)."""
        return self._proc is not None and self._proc.poll() is None

    def generate(self, request: GenerationRequest) -> Generation:
        """Completion of ``request`` on the split model; blocking."""
        return self.generate_streaming(request, None)

    def generate_streaming(
        self,
        request: GenerationRequest,
        on_text: Callable[[str], None] | None,
        on_token: Callable[[int, str], None] | None = None,
    ) -> Generation:
        """Like ``LlamaEngine.generate_streaming``; the callbacks run in this thread as the runner reports
        each token."""
        if request.max_tokens < 1:
            raise EngineError(f"max_tokens must be >= 1, got {request.max_tokens}")
        stream = on_text is not None or on_token is not None
        with self._lock:
            self._send(
                RunnerGenerate(
                    prompt=request.prompt,
                    max_tokens=request.max_tokens,
                    add_bos=request.add_bos,
                    sampling=request.sampling,
                    job_id=request.job_id,
                    stream=stream,
                )
            )
            for _ in range(request.max_tokens + 2):  # tokens, then the result: bounded
                reply = self._receive(self._token_timeout_s)
                if isinstance(reply, RunnerToken):
                    if on_token is not None:
                        on_token(reply.token, reply.piece)
                    if on_text is not None and reply.piece:
                        on_text(reply.piece)
                    continue
                if isinstance(reply, RunnerDone):
                    return Generation(tuple(reply.tokens), reply.text, reply.finish_reason)
                raise self._failed(reply)
            raise EngineError(f"the split runner sent more than {request.max_tokens} tokens; it is ended")

    def score(self, request: ScoreRequest) -> Scoring:
        """Audit a claimed output on the split model (``LlamaEngine.score``, in the runner)."""
        with self._lock:
            self._send(RunnerScore(request))
            reply = self._receive(self._token_timeout_s * max(1, request.rows // 64 + 1))
            if isinstance(reply, RunnerScored):
                return reply.scoring
            raise self._failed(reply)

    def _failed(self, reply: RunnerReply) -> Exception:
        if isinstance(reply, RunnerFailed):
            if reply.message.startswith("BadRequestError: "):
                return BadRequestError(reply.message.removeprefix("BadRequestError: "))
            return EngineError(f"the split group failed: {reply.message}")
        return EngineError(f"the split runner sent an unexpected {type(reply).__name__}")

    def _send(self, message: msgspec.Struct) -> None:
        proc = self._proc
        if proc is None or proc.stdin is None:
            raise EngineError(f"the split engine for {self._model.name!r} is closed; plan a new group")
        try:
            write_frame(proc.stdin, message)
        except OSError as exc:
            raise self._died(f"could not write to it ({exc})") from exc

    def _receive(self, timeout_s: float) -> RunnerReply:
        proc = self._proc
        if proc is None or proc.stdout is None:
            raise EngineError(f"the split engine for {self._model.name!r} is closed; plan a new group")
        ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
        if not ready:
            raise self._died(f"no reply within {timeout_s:.0f} s (a member or tunnel stalled)")
        try:
            reply: RunnerReply = read_frame(proc.stdout, RunnerReply)
        except (EOFError, OSError) as exc:
            raise self._died(f"it ended ({exc})") from exc
        except msgspec.DecodeError as exc:
            raise self._died(f"it sent a malformed reply ({exc})") from exc
        return reply

    def _died(self, why: str) -> EngineError:
        """End the runner and say why, with the last lines it wrote (llama.cpp's abort message)."""
        self._kill()
        tail = self._stderr_tail()
        return EngineError(
            f"the split group running {self._model.name!r} failed: the head's llama.cpp {why}"
            + (f"; it said: {tail}" if tail else "")
            + ". A member probably left; the node re-plans the group"
        )

    def _stderr_tail(self, limit: int = 600) -> str:
        """What the runner said last: its error lines if any (ggml prints a backtrace after them), else
        its last bytes."""
        with contextlib.suppress(OSError, ValueError):
            self._stderr.seek(0, os.SEEK_END)
            size = self._stderr.tell()
            self._stderr.seek(max(0, size - 64 * 1024))
            lines = self._stderr.read().decode("utf-8", errors="replace").splitlines()
            errors = [
                line.strip()
                for line in lines
                if _ERROR_LINE.search(line) and not line.startswith(("#", "[", "warning: "))
            ]
            text = " | ".join(errors[-3:]) if errors else " | ".join(lines)[-limit:]
            return text[-limit:]
        return ""

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with contextlib.suppress(OSError):
            if proc.stdin is not None:
                proc.stdin.close()
        if proc.poll() is None:
            proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()

    def close(self) -> None:
        """End the runner (the members' sessions end with their tunnels); idempotent."""
        self._kill()
        with contextlib.suppress(OSError):
            self._stderr.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SplitEngine(model={self._model.name!r}, {'open' if self.alive else 'closed'})"

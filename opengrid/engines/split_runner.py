"""The head's llama.cpp for a split model, as a child process: ``python -m opengrid.engines.split_runner``.

Why a process of its own: llama.cpp's RPC client aborts the whole process (``GGML_ABORT``) when a member's
connection fails or answers garbage, which is exactly what a member that dies or cheats does. The node
survives that as a failed job (the engine raises :class:`~opengrid.errors.EngineError` and the coordinator
fails the job over), never as a crash.

The runner reads length-prefixed msgpack requests (:mod:`opengrid.engines.split`) on stdin and writes
replies on the file descriptor it was given, stdout at start: it moves stdout to stderr first, so that
anything native code prints cannot corrupt the replies.
"""

from __future__ import annotations

import ctypes
import os
import pathlib
import sys
from typing import TYPE_CHECKING, BinaryIO

import msgspec

from opengrid.engines.split import (
    RunnerDone,
    RunnerFailed,
    RunnerGenerate,
    RunnerLoad,
    RunnerLoaded,
    RunnerReply,
    RunnerRequest,
    RunnerScore,
    RunnerScored,
    RunnerToken,
    read_frame,
    write_frame,
)

if TYPE_CHECKING:
    from opengrid.engines.llama import LlamaEngine


class _Override(ctypes.Structure):
    """``struct llama_model_tensor_buft_override`` (llama.h): tensors whose name matches ``pattern`` go
    to buffer type ``buft`` (not bound by llama-cpp-python 0.3.36)."""

    _fields_ = [("pattern", ctypes.c_char_p), ("buft", ctypes.c_void_p)]


_KEEP_ALIVE: list[object] = []
"""The device and split arrays of the loaded model: llama.cpp borrows them for the process's life."""


def _load(request: RunnerLoad) -> LlamaEngine:
    """A LlamaEngine whose last ``offloaded`` units run on the RPC devices at ``request.endpoints``."""
    import llama_cpp
    import llama_cpp.llama_cpp as low

    from opengrid.engines.base import ModelInfo
    from opengrid.engines.ggml_rpc import cpu_buffer_type, rpc_devices
    from opengrid.engines.llama import LlamaEngine

    devices: list[int] = []
    for endpoint in request.endpoints:
        devices.extend(rpc_devices(endpoint))
    device_array = (ctypes.c_void_p * (len(devices) + 1))(*devices, None)  # NULL-terminated
    split = list(request.tensor_split) + [0.0] * (llama_cpp.LLAMA_MAX_DEVICES - len(request.tensor_split))
    split_array = (ctypes.c_float * llama_cpp.LLAMA_MAX_DEVICES)(*split)
    # llama-cpp-python 0.3.36's Llama() has no `devices` argument: it fills llama_model_params from
    # llama_model_default_params(), looked up on this module at call time, so hand it params with our
    # devices and split. This process loads one model, once: nothing else sees the substitute.
    original = low.llama_model_default_params

    # The output layer stays on the head (spec/split.md §1): llama.cpp assigns it to the last device, and
    # this override (llama_model_params.tensor_buft_overrides, a regex per tensor name, NULL-terminated)
    # puts its tensors in CPU memory, so the head computes the logits and only a hidden state per token
    # crosses each tunnel. token_embd is the output matrix of models with tied embeddings.
    overrides = (_Override * 2)(_Override(b"^output|^token_embd", cpu_buffer_type()), _Override(None, None))

    def params_with_devices() -> low.llama_model_params:
        params: low.llama_model_params = original()
        if devices:
            params.tensor_buft_overrides = ctypes.cast(overrides, ctypes.c_void_p)  # type: ignore[assignment]
            # the binding declares the field c_void_p (its stub says an array): a pointer to ours
            params.devices = ctypes.cast(device_array, ctypes.c_void_p)  # type: ignore[assignment]
            params.tensor_split = split_array
        return params

    low.llama_model_default_params = params_with_devices
    try:
        engine = LlamaEngine(
            ModelInfo(request.name, pathlib.Path(request.model_path), request.sha256),
            n_threads=request.n_threads or None,
            n_ctx=request.n_ctx,
            gpu_layers=request.offloaded,
        )
    finally:
        low.llama_model_default_params = original
    _KEEP_ALIVE.extend((device_array, split_array, overrides))
    return engine


def serve(inp: BinaryIO, out: BinaryIO) -> int:
    """Answer requests until stdin closes: one RunnerLoad first, then generations and scorings."""
    from opengrid.engines.base import GenerationRequest
    from opengrid.errors import OpenGridError

    first = read_frame(inp, RunnerRequest)
    if not isinstance(first, RunnerLoad):
        write_frame(out, RunnerFailed("the first request to a split runner must be a load"))
        return 2
    try:
        engine = _load(first)
    except OpenGridError as exc:
        write_frame(out, RunnerFailed(str(exc)))
        return 1
    write_frame(out, RunnerLoaded(n_params=engine.n_params, n_vocab=engine.n_vocab))
    while True:
        try:
            request = read_frame(inp, RunnerRequest)
        except EOFError:
            return 0
        reply: RunnerReply
        try:
            if isinstance(request, RunnerGenerate):
                gen_request = GenerationRequest(
                    prompt=request.prompt,
                    max_tokens=request.max_tokens,
                    add_bos=request.add_bos,
                    sampling=request.sampling,
                    job_id=request.job_id,
                )

                def on_token(token: int, piece: str) -> None:
                    write_frame(out, RunnerToken(token, piece))

                result = engine.generate_streaming(gen_request, None, on_token if request.stream else None)
                reply = RunnerDone(list(result.tokens), result.text, result.finish_reason)
            elif isinstance(request, RunnerScore):
                reply = RunnerScored(engine.score(request.request))
            else:
                reply = RunnerFailed(f"unexpected request {type(request).__name__} after the load")
        except OpenGridError as exc:
            reply = RunnerFailed(f"{type(exc).__name__}: {exc}")
        write_frame(out, reply)


def main() -> int:
    """Entry point: keep the reply channel on a private descriptor, then serve."""
    # No parent-death signal here (Linux sends it when the *thread* that started us ends, and engines
    # start in worker threads): a dead parent closes our stdin, and the next read or write ends us.
    reply_fd = os.dup(1)
    os.dup2(2, 1)  # native code's printf now goes to stderr
    sys.stdout = sys.stderr
    with os.fdopen(reply_fd, "wb", buffering=0) as out, os.fdopen(0, "rb", buffering=0) as inp:
        try:
            return serve(inp, out)
        except msgspec.DecodeError as exc:
            write_frame(out, RunnerFailed(f"malformed request to the split runner: {exc}"))
            return 2


if __name__ == "__main__":
    sys.exit(main())

"""llama.cpp's RPC backend (ggml-rpc), reached through ctypes: llama-cpp-python 0.3.36 binds none of it.

Two uses (spec/split.md §4):

- a member runs :func:`serve_forever` in a child process of its own (``python -m
  opengrid.engines.rpc_server``): ggml's server loop never returns and serves one client at a time, and a
  malformed graph may abort the process, so it never runs inside a node;
- a head's runner calls :func:`rpc_devices` to turn an endpoint (a loopback port whose connections the
  node tunnels to a member) into ggml devices that a model can be loaded onto.

Both need a llama-cpp-python built with ``CMAKE_ARGS="-DGGML_RPC=ON"`` (scripts/setup.sh does): its
``llama_cpp/lib`` then holds ``libggml-rpc.so``. :func:`rpc_available` says whether this one does.
"""

from __future__ import annotations

import ctypes
import functools
import pathlib

import llama_cpp

from opengrid.errors import EngineError

__all__ = ["RPC_LIBRARY", "cpu_buffer_type", "library_dir", "rpc_available", "rpc_devices", "serve_forever"]

RPC_LIBRARY = "libggml-rpc.so"
_DEVICE_TYPE_CPU = 0  # enum ggml_backend_dev_type: GGML_BACKEND_DEVICE_TYPE_CPU


def library_dir() -> pathlib.Path:
    """Where llama-cpp-python keeps its shared libraries."""
    return pathlib.Path(llama_cpp.__file__).parent / "lib"


def rpc_available() -> bool:
    """Whether this llama-cpp-python was built with ggml-rpc (``-DGGML_RPC=ON``)."""
    return (library_dir() / RPC_LIBRARY).is_file()


@functools.cache
def _libs() -> tuple[ctypes.CDLL, ctypes.CDLL, ctypes.CDLL]:
    """(ggml-rpc, ggml, ggml-base), with the signatures we call declared."""
    if not rpc_available():
        raise EngineError(
            f"this llama-cpp-python {llama_cpp.__version__} was built without ggml-rpc ({RPC_LIBRARY} is "
            f"not in {library_dir()}), so it cannot split a model across nodes; rebuild it with "
            'CMAKE_ARGS="-DGGML_RPC=ON" (scripts/setup.sh does) and try again'
        )
    folder = library_dir()
    # The same files llama_cpp already loaded: dlopen hands back those handles.
    rpc = ctypes.CDLL(str(folder / RPC_LIBRARY))
    ggml = ctypes.CDLL(str(folder / "libggml.so"))
    base = ctypes.CDLL(str(folder / "libggml-base.so"))
    rpc.ggml_backend_rpc_add_server.argtypes = [ctypes.c_char_p]
    rpc.ggml_backend_rpc_add_server.restype = ctypes.c_void_p
    rpc.ggml_backend_rpc_start_server.argtypes = [
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_size_t,
        ctypes.c_size_t,
        ctypes.POINTER(ctypes.c_void_p),
    ]
    rpc.ggml_backend_rpc_start_server.restype = None
    ggml.ggml_backend_dev_by_type.argtypes = [ctypes.c_int]
    ggml.ggml_backend_dev_by_type.restype = ctypes.c_void_p
    base.ggml_backend_reg_dev_count.argtypes = [ctypes.c_void_p]
    base.ggml_backend_reg_dev_count.restype = ctypes.c_size_t
    base.ggml_backend_reg_dev_get.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    base.ggml_backend_reg_dev_get.restype = ctypes.c_void_p
    base.ggml_backend_dev_buffer_type.argtypes = [ctypes.c_void_p]
    base.ggml_backend_dev_buffer_type.restype = ctypes.c_void_p
    return rpc, ggml, base


def cpu_buffer_type() -> int:
    """The CPU device's buffer type (a pointer): what a tensor override names to keep tensors here."""
    _rpc, ggml, base = _libs()
    cpu = ggml.ggml_backend_dev_by_type(_DEVICE_TYPE_CPU)
    if not cpu:
        raise EngineError("llama.cpp has no CPU device in this process")
    return int(base.ggml_backend_dev_buffer_type(cpu))


def rpc_devices(endpoint: str) -> list[int]:
    """The ggml devices (pointers) of the RPC server at ``endpoint`` (``"127.0.0.1:PORT"``); connects to
    it. llama.cpp caches them per endpoint for the life of the process: use each endpoint once."""
    rpc, _ggml, base = _libs()
    reg = rpc.ggml_backend_rpc_add_server(endpoint.encode())
    if not reg:
        raise EngineError(f"the RPC server at {endpoint} reports no devices; the member cannot hold layers")
    count = base.ggml_backend_reg_dev_count(reg)
    return [int(base.ggml_backend_reg_dev_get(reg, i)) for i in range(count)]


def serve_forever(endpoint: str, n_threads: int) -> None:
    """Serve this process's CPU as a ggml RPC device at ``endpoint``; returns only if the server could not
    start (the port is taken, ...). ggml prints its start-up lines on stdout."""
    rpc, ggml, _base = _libs()
    cpu = ggml.ggml_backend_dev_by_type(_DEVICE_TYPE_CPU)
    if not cpu:
        raise EngineError("llama.cpp has no CPU device in this process; cannot serve layers")
    devices = (ctypes.c_void_p * 1)(cpu)
    rpc.ggml_backend_rpc_start_server(endpoint.encode(), None, n_threads, 1, devices)

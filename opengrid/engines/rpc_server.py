"""A member's ggml RPC server, as a child process: ``python -m opengrid.engines.rpc_server THREADS``.

It binds to 127.0.0.1 only, on a port it picks (the kernel's ephemeral range), and writes
``port <N>`` as its first line on stdout before serving; everything else it prints (ggml's start-up
lines) follows. The node that started it connects to it through the split tunnel (opengrid/net/split.py)
and ends it by killing the process when the session ends: ggml's server loop never returns.
"""

from __future__ import annotations

import os
import socket
import sys

LOOPBACK = "127.0.0.1"
"""The only address a member's RPC server ever listens on (spec/split.md §4)."""


def _free_port() -> int:
    """A port free on the loopback interface right now (the kernel's choice); ggml binds it next."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


def die_with_parent() -> None:
    """Ask Linux to kill this process when its parent dies (a killed member node must not leave a server
    holding memory and a port behind); elsewhere a no-op. Linux means the parent *thread*: members start
    servers from the node's trio thread, which lives as long as the node."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def main(argv: list[str]) -> int:
    """Entry point; ``argv``: ``[THREADS]``."""
    die_with_parent()
    threads = int(argv[0]) if argv else 1
    from opengrid.engines.ggml_rpc import serve_forever  # after the argument check: loading takes ~0.3 s

    port = _free_port()
    os.write(1, f"port {port}\n".encode())
    serve_forever(f"{LOOPBACK}:{port}", max(1, threads))
    print(f"rpc_server: could not serve on {LOOPBACK}:{port}", file=sys.stderr)
    return 3


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

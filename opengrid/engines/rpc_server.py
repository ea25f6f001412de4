"""A member's ggml RPC server, as a child process: ``python -m opengrid.engines.rpc_server THREADS``.

It binds to 127.0.0.1 only, on a port it picks (the kernel's ephemeral range), and writes
``port <N>`` as its first line on stdout before serving; everything else it prints (ggml's start-up
lines) follows. It exits when its stdin closes (the node that started it holds the pipe). That node
connects to it through the split tunnel (opengrid/net/split.py)
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
    """End this process when the node that started it goes away: its stdin (a pipe the node holds) then
    reads EOF. A killed member node must not leave a server holding memory and a port behind.

    Not PR_SET_PDEATHSIG: Linux sends it when the parent *thread* ends, and trio starts processes from a
    worker thread that exits after ~10 s idle, which killed healthy servers mid-session."""
    import threading

    def watch() -> None:
        while os.read(0, 4096):
            pass
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


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

"""Which optional dependency group ("extra") a missing module belongs to, to say so in one line.

``pip install opengrid`` brings the SDK, the wire format, the ledger and the client commands (``submit``,
``status``, ``peers``, ``ledger``, ``config``); running a node needs ``pip install 'opengrid[node]'``
(llama.cpp, the API server, the TUI wallet, the simulator's plots, model downloads). A command that needs
the node extra where only the plain install is present fails with one line naming the extra, not a
traceback.
"""

from __future__ import annotations

__all__ = ["NODE_EXTRA_MODULES", "missing_extra"]

NODE_EXTRA_MODULES = frozenset(
    {
        "gguf",
        "huggingface_hub",
        "hypercorn",
        "llama_cpp",
        "matplotlib",
        "numpy",
        "starlette",
        "textual",
    }
)
"""Top-level modules that come with ``opengrid[node]`` only (pyproject.toml's ``node`` extra)."""


def missing_extra(exc: ModuleNotFoundError, command: str) -> str | None:
    """The one-line message for ``exc`` raised by ``opengrid COMMAND``; None when the missing module is
    not one of the node extra's (a real bug, which should show its traceback)."""
    name = (exc.name or "").partition(".")[0]
    if name == "simulations":  # the simulator's package lives in the source tree, not in the wheel
        return (
            f"`opengrid {command.strip()}` runs the simulator, which ships with OpenGrid's source tree, "
            "not with the installed package: run it from a checkout "
            "(`make setup`, then `.venv/bin/opengrid sim ...`)"
        )
    if name not in NODE_EXTRA_MODULES:
        return None
    return (
        f"`opengrid {command.strip()}` needs the node extra, which is not installed (no module {name!r}): "
        "pip install 'opengrid[node]' (or `make setup` in a checkout)"
    )

"""A node process whose split-group member corrupts the activations it returns (issue 17), for e2e tests.

``python -m opengrid.testing.corrupt_member node start --split-member ... [--corrupt-sigma 0.3]
[--corrupt-seed 0]`` runs the ordinary ``opengrid`` command line, except that every ``SplitMember`` the
node creates wraps its tunnels' RPC connections in :class:`~opengrid.testing.split_adversary.
CorruptingRpcStream` (each float of an F32 ``GET_TENSOR`` answer times ``1 + sigma * N(0, 1)``), through
the product's one hook for it, ``SplitMember(rpc_stream=...)``. The two ``--corrupt-*`` options may stand
anywhere; everything else goes to ``opengrid`` unchanged. The product never imports this module.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import opengrid.node.split_group as split_group
from opengrid.cli.main import main as opengrid_main
from opengrid.errors import ConfigError
from opengrid.net.split import SplitMember
from opengrid.testing.split_adversary import CorruptingRpcStream, Corruption

__all__ = ["main", "take_options"]


def take_options(argv: Sequence[str]) -> tuple[Corruption, list[str]]:
    """The corruption ``argv`` asks for (``--corrupt-sigma``, default 0.3; ``--corrupt-seed``, default 0)
    and the rest of ``argv``, for ``opengrid``."""
    values = {"--corrupt-sigma": "0.3", "--corrupt-seed": "0"}
    rest: list[str] = []
    args = iter(argv)
    for arg in args:
        if arg in values:
            value = next(args, None)
            if value is None:
                raise ConfigError(f"{arg} needs a value")
            values[arg] = value
        else:
            rest.append(arg)
    try:
        sigma, seed = float(values["--corrupt-sigma"]), int(values["--corrupt-seed"])
    except ValueError as exc:
        raise ConfigError(f"--corrupt-sigma takes a number, --corrupt-seed an integer: {exc}") from exc
    if not 0.0 <= sigma <= 10.0:
        raise ConfigError(f"--corrupt-sigma must be in [0, 10], got {sigma}")
    return Corruption(relative_noise=sigma, seed=seed), rest


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``opengrid`` with corrupting split members; the exit status of ``opengrid``."""
    corruption, rest = take_options(sys.argv[1:] if argv is None else argv)

    class CorruptingMember(SplitMember):
        """The node's member, its tunnels wrapped (the keyword the product leaves unset)."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["rpc_stream"] = lambda tcp: CorruptingRpcStream(tcp, corruption)
            super().__init__(*args, **kwargs)

    split_group.SplitMember = CorruptingMember  # type: ignore[attr-defined]  # the node's name for it
    print(f"split member corrupting activations at sigma={corruption.relative_noise}", flush=True)
    return opengrid_main(rest)


if __name__ == "__main__":
    sys.exit(main())

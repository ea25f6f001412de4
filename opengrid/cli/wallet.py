"""``opengrid wallet``: the terminal wallet (Textual) for a node beside you or any node on the network.

Wiring, in ``opengrid/cli/main.py``: ``wallet.register(commands)`` while building the parser, and
``return wallet.run(args)`` when ``args.command == "wallet"``.
"""

from __future__ import annotations

import argparse
import logging
import os
import pathlib
import sys

from opengrid.errors import OpenGridError
from opengrid.settings import resolve_data_dir


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Add the ``wallet`` command to the ``opengrid`` parser's subcommands."""
    wallet = subparsers.add_parser(
        "wallet",
        help="open the terminal wallet: balance, history, reputation, network, pause/resume",
        description=(
            "Open the OpenGrid wallet in the terminal. With --data-dir it reads the node's address from "
            "DIR/node.json and may pause or resume it (signed with DIR/identity.key); with --node it "
            "connects to any node, read-only. Keys: 1-5 or tab switch screens, r refreshes, p pauses or "
            "resumes, q quits."
        ),
    )
    where = wallet.add_mutually_exclusive_group()
    where.add_argument(
        "--data-dir",
        type=pathlib.Path,
        metavar="DIR",
        help="the data dir of a node started on this machine (enables pause/resume; default: the one "
        "`node start` uses)",
    )
    where.add_argument("--node", metavar="MULTIADDR", help="any node's full multiaddr (read-only)")
    wallet.add_argument("--network", help="network name (default: the one in node.json, else opengrid-local)")
    wallet.add_argument(
        "--refresh",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="seconds between live updates (default: 2)",
    )
    wallet.set_defaults(command="wallet")
    return wallet


def run(args: argparse.Namespace) -> int:
    """Run the wallet until the user quits; returns the exit status."""
    from textual.logging import TextualHandler

    from opengrid.tui.app import WalletApp
    from opengrid.tui.source import SdkWalletSource

    if args.data_dir is None and args.node is None:
        default = resolve_data_dir(None, os.environ)
        if not default.is_dir():
            print(
                f"opengrid wallet: error: no node has run in the default data dir {default}; give "
                "--data-dir DIR (a node on this machine) or --node MULTIADDR",
                file=sys.stderr,
            )
            return 2
        args.data_dir = default
    if not args.refresh > 0:
        print(f"opengrid wallet: error: --refresh must be > 0 seconds, not {args.refresh}", file=sys.stderr)
        return 2
    if args.data_dir is not None and not args.data_dir.is_dir():
        print(
            f"opengrid wallet: error: {args.data_dir} is not a directory; give the --data-dir the node "
            "was started with",
            file=sys.stderr,
        )
        return 2
    timeout = max(5.0, 3 * args.refresh)
    try:
        if args.data_dir is not None:
            source = SdkWalletSource.for_data_dir(args.data_dir, network=args.network, timeout=timeout)
        else:
            source = SdkWalletSource.for_node(args.node, network=args.network, timeout=timeout)
    except OpenGridError as exc:
        print(f"opengrid wallet: error: {exc}", file=sys.stderr)
        return 1
    root = logging.getLogger()
    handlers = root.handlers[:]
    # Log lines written to the terminal would tear the screen: send them to Textual's devtools log instead.
    root.handlers = [TextualHandler()]
    try:
        WalletApp(source, refresh_s=args.refresh).run()
    finally:
        root.handlers = handlers
        source.close()
    return 0

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
from collections.abc import Callable

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
    actions = wallet.add_subparsers(dest="wallet_command", metavar="ACTION")
    send = actions.add_parser(
        "send",
        help="send (donate) points to another account, after a confirmation",
        description=(
            "Send POINTS to account TO (its 64-hex key, or a node's peer id) from a node's account — the "
            "node beside you, through its data dir: the node writes the transfer on its own chain — or from "
            "a client identity (--identity KEYFILE with --bootstrap). Asks for confirmation unless --yes."
        ),
    )
    send.add_argument("to", metavar="TO", help="the recipient: a 64-hex-digit account key or a peer id")
    send.add_argument("points", metavar="POINTS", help="how many points (a whole number >= 1)")
    send.add_argument("--memo", default="", metavar="TEXT", help="a note for the recipient (<= 256 chars)")
    send.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    send.add_argument(
        "--new-recipient",
        action="store_true",
        help="TO is a new account the ledger has never seen (otherwise such a recipient is refused as a "
        "likely typo: points sent to a mistyped key are lost)",
    )
    source = send.add_mutually_exclusive_group()
    source.add_argument(
        "--data-dir",
        type=pathlib.Path,
        metavar="DIR",
        default=argparse.SUPPRESS,
        help="send from the account of the node running on this data dir (default: the one `node start` "
        "uses); signed with DIR/identity.key",
    )
    source.add_argument(
        "--identity",
        type=pathlib.Path,
        metavar="KEYFILE",
        help="send from a client identity: a file holding a 32-byte seed (never a running node's "
        "identity.key: two writers of one chain fork it and freeze the account)",
    )
    send.add_argument(
        "--bootstrap", action="append", default=[], metavar="MULTIADDR", help="with --identity: any node"
    )
    send.add_argument("--network", default=argparse.SUPPRESS, help="network name (default: from node.json)")
    send.set_defaults(command="wallet", wallet_command="send")
    return wallet


def run(args: argparse.Namespace) -> int:
    """Run the wallet until the user quits (or ``wallet send``); returns the exit status."""
    if getattr(args, "wallet_command", None) == "send":
        return send(args)
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


def send(args: argparse.Namespace, *, confirm: Callable[[str], str] = input) -> int:
    """``opengrid wallet send TO POINTS``: check the input, show what will happen, ask, send, say what
    happened. ``confirm`` asks the question (``input`` on a terminal)."""
    from opengrid_sdk import Client
    from opengrid_sdk.transfers import check_transfer, recipient_key

    from opengrid.tui.source import SdkWalletSource

    try:
        to = recipient_key(args.to)
        points = _points(args.points)
        check_transfer(points, args.memo)
    except OpenGridError as exc:
        print(f"opengrid wallet send: error: {exc}", file=sys.stderr)
        return 2
    network = getattr(args, "network", None)
    if args.identity is not None:
        if not args.bootstrap:
            print("opengrid wallet send: error: --identity needs --bootstrap MULTIADDR", file=sys.stderr)
            return 2
        try:
            seed = _read_seed(args.identity)
            with Client(
                args.bootstrap, network=network or DEFAULT_NETWORK, timeout=30, identity_seed=seed
            ) as c:
                sender, recipient = c.account_info(), c.account_info(to)
                if not _confirmed(
                    args, sender.account, sender.balance, to, recipient.standing, points, confirm
                ):
                    print("nothing sent")
                    return 1
                done = c.transfer(to, points, memo=args.memo, new_recipient=args.new_recipient)
        except OpenGridError as exc:
            print(f"opengrid wallet send: error: {exc}", file=sys.stderr)
            return 1
    else:
        data_dir = getattr(args, "data_dir", None) or resolve_data_dir(None, os.environ)
        wallet = SdkWalletSource.for_data_dir(data_dir, network=network, timeout=30)
        try:
            status = wallet.status()
            recipient = wallet.account_info(to)
            if not _confirmed(
                args, status.public_key, status.points, to, recipient.standing, points, confirm
            ):
                print("nothing sent")
                return 1
            done = wallet.send(to, points, args.memo, new_recipient=args.new_recipient)
        except OpenGridError as exc:
            print(f"opengrid wallet send: error: {exc}", file=sys.stderr)
            return 1
        finally:
            wallet.close()
    print(
        f"sent {done.points} points to {done.to.hex()}"
        + (f' ("{done.memo}")' if done.memo else "")
        + f"; entry {done.entry_id.hex()[:16]}, applied by {done.node}; balance now {done.balance} points"
    )
    return 0


DEFAULT_NETWORK = "opengrid-local"
"""The network a node joins by default (keep in step with ``opengrid.node.config.DEFAULT_NETWORK``)."""


def _points(text: str) -> int:
    from opengrid.errors import InvalidAmountError

    try:
        return int(text, 10)
    except ValueError:
        raise InvalidAmountError(f"POINTS must be a whole number, got {text!r}") from None


def _read_seed(path: pathlib.Path) -> bytes:
    from opengrid.errors import ConfigError

    try:
        seed = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if len(seed) != 32:
        raise ConfigError(f"{path} holds {len(seed)} bytes, not a 32-byte identity seed")
    return seed


def _confirmed(
    args: argparse.Namespace,
    sender: bytes,
    balance: int,
    to: bytes,
    known: bool,
    points: int,
    confirm: Callable[[str], str],
) -> bool:
    """Show the transfer and ask (unless --yes); True to send."""
    who = "a known account" if known else "an account this ledger has never seen"
    print(f"from   {sender.hex()} ({balance} points spendable)")
    print(f"to     {to.hex()} ({who})")
    print(f"points {points}" + (f'\nmemo   "{args.memo}"' if args.memo else ""))
    if not known and not args.new_recipient:
        from opengrid.errors import UnknownRecipientError

        raise UnknownRecipientError(
            f"account {to.hex()} has never appeared on this ledger (no entry, no credit, not a "
            "coordinator): check it, or pass --new-recipient if it is a new account — points sent to a "
            "mistyped key are lost"
        )
    if args.yes:
        return True
    try:
        answer = confirm(f"send {points} points? [y/N] ")
    except EOFError:
        return False
    return answer.strip().lower() in ("y", "yes")

"""The ``opengrid`` command line.

opengrid node start   run one long-lived node (coordinator, worker, edge, or auto)
opengrid demo         a whole network on 127.0.0.1: one coordinator, several workers, verified jobs
opengrid submit       send one prompt to a network and print the verified answer
opengrid status       ask a node who it is, its role and its points
opengrid bench run    send a file of prompts through a network; per-job report and JSON export
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pathlib
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from opengrid import __version__
from opengrid.cli.extras import missing_extra
from opengrid.cli.interrupt import ctrl_c_raises_again
from opengrid.errors import ConfigError, OpenGridError
from opengrid.node.config import (
    DEFAULT_NETWORK,
    NodeConfig,
)
from opengrid.settings import (
    SECRET_KEYS,
    add_node_flags,
    field_of,
    flags_from_namespace,
    load_settings,
    resolve_config_file,
    unknown_env_vars,
)

if TYPE_CHECKING:
    from opengrid.node.api import ApiSettings
    from opengrid.wire.messages import NodeStatus

log = logging.getLogger("opengrid")
DRAIN_S = 60.0
"""On SIGTERM/Ctrl-C a node finishes the work it has for at most this long before it stops."""


def _setup_logging(verbose: int) -> None:
    from rich.logging import RichHandler

    from opengrid.net.host import quiet_libp2p_logging

    level = {0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG)
    if sys.stderr.isatty():
        handler: logging.Handler = RichHandler(show_path=False, rich_tracebacks=False, markup=False)
        form = "%(message)s"
    else:  # a log file or a pipe: plain lines, ~20x cheaper than Rich's layout (0.45 ms a line, measured
        # on a node's way from a RunJob to its engine) and without its padding
        handler = logging.StreamHandler()
        form = "%(asctime)s.%(msecs)03d %(levelname)-7s %(message)s"
    logging.basicConfig(level=level, format=form, datefmt="%H:%M:%S", handlers=[handler], force=True)
    quiet_libp2p_logging(logging.DEBUG if verbose > 2 else logging.ERROR)
    logging.getLogger("gguf").setLevel(logging.WARNING)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="opengrid",
        description="OpenGrid: volunteer computing for LLM inference, verified by redundancy, "
        "paid in points.",
    )
    parser.add_argument("--version", action="version", version=f"opengrid {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=1, help="more logs (-vv for debug)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _verbose_after(commands)

    node = commands.add_parser("node", help="run a node")
    node_commands = node.add_subparsers(dest="node_command", required=True, metavar="ACTION")
    start = node_commands.add_parser(
        "start",
        help="start a node and serve until Ctrl-C",
        description=(
            "Start one OpenGrid node. A coordinator accepts jobs, sends each to several workers, compares "
            "their outputs and signs receipts that pay the agreeing workers. A worker runs a model and "
            "joins the network through --bootstrap (any node) or, without one, through a node of its "
            "network it finds on the LAN (mDNS, 3 s; none found: an auto node starts a grid as its "
            "coordinator), hears every node's announcements on gossip and registers with every "
            "coordinator. The node's identity (an Ed25519 key) is created in "
            "--data-dir on first start and reused afterwards."
        ),
    )
    # Every flag is a setting (opengrid/settings.py): a flag beats the environment, which beats the config
    # file; `opengrid config show` prints the effective values and their sources.
    add_node_flags(start)

    for action in ("pause", "resume"):
        control = node_commands.add_parser(
            action,
            help=f"{action} a node running on this machine (signed with its identity key)",
            description=f"{action.capitalize()} the node whose data dir is DIR. A paused node takes no new "
            "work (a worker stops its heartbeats, so coordinators stop sending it jobs) and finishes what "
            "it runs.",
        )
        control.add_argument("--data-dir", type=pathlib.Path, required=True, metavar="DIR")
    approve = node_commands.add_parser(
        "approve",
        help="admit a worker to a coordinator started with --approve-workers, or (--coordinator) co-sign "
        "a new coordinator's admission",
        description="Add PEER_ID to the workers the coordinator whose data dir is DIR serves; the running "
        "coordinator accepts it at its next heartbeat. With --coordinator, approve PEER_ID as a new "
        "coordinator of the network: the running coordinator co-signs its admission when it next asks "
        "(it is admitted once 2/3 of the coordinators did, spec/ledger.md §7.1).",
    )
    approve.add_argument("peer_id", metavar="PEER_ID")
    approve.add_argument("--data-dir", type=pathlib.Path, required=True, metavar="DIR")
    approve.add_argument(
        "--coordinator", action="store_true", help="PEER_ID is a candidate coordinator, not a worker"
    )
    waiting = node_commands.add_parser(
        "pending",
        help="list the workers asking to join a coordinator started with --approve-workers, and the "
        "coordinators asking to be admitted",
    )
    waiting.add_argument("--data-dir", type=pathlib.Path, required=True, metavar="DIR")

    demo = commands.add_parser(
        "demo",
        help="run a whole network on 127.0.0.1 and submit verified jobs",
        description=(
            "Start one coordinator and several workers, each its own process on 127.0.0.1, submit jobs "
            "through the SDK, and explain what happened: who ran each job, whether outputs agreed, the "
            "receipts, and every node's points. One worker cheats unless --cheaters 0."
        ),
    )
    demo.add_argument("--workers", type=int, default=3, help="honest workers (default: 3)")
    demo.add_argument(
        "--cheaters",
        type=int,
        default=1,
        help="workers that return wrong tokens, to show verification catching them (default: 1)",
    )
    demo.add_argument("--jobs", type=int, default=4, help="jobs to submit (default: 4)")
    demo.add_argument("--model", default="smollm2-135m-instruct", help="model name or .gguf path")
    demo.add_argument("--max-tokens", type=int, default=24, help="tokens per job (default: 24)")
    demo.add_argument("--replicas", type=int, default=2, help="workers per job (default: 2)")
    demo.add_argument("--json", action="store_true", help="print one JSON object instead of prose")
    demo.add_argument(
        "--stay",
        action="store_true",
        help="keep the network running after the jobs (for the wallet, submit, the API) until Ctrl-C",
    )
    demo.add_argument(
        "--keep",
        type=pathlib.Path,
        metavar="DIR",
        help="keep the nodes' data dirs under DIR (default: a temporary dir)",
    )

    submit = commands.add_parser("submit", help="send one prompt to a network")
    submit.add_argument("prompt")
    submit.add_argument(
        "--bootstrap",
        required=True,
        metavar="MULTIADDR",
        help="any node's multiaddr; the job goes to a coordinator found through it",
    )
    submit.add_argument(
        "--model",
        default="smollm2-135m-instruct",
        help="a model name workers announce, or a GGUF sha256 (default: smollm2-135m-instruct)",
    )
    submit.add_argument(
        "--max-tokens",
        type=_positive("--max-tokens"),
        default=64,
        metavar="N",
        help="generate at most N tokens (default 64)",
    )
    submit.add_argument(
        "--replicas",
        type=_positive("--replicas"),
        default=2,
        metavar="N",
        help="workers that run the job independently and must agree (default 2)",
    )
    submit.add_argument(
        "--network", default=DEFAULT_NETWORK, help=f"the network's name (default {DEFAULT_NETWORK})"
    )
    _add_network_key(submit)
    submit.add_argument(
        "--identity",
        type=pathlib.Path,
        metavar="DATA_DIR|KEYFILE",
        help="pay for the job from this identity's points: a node's data dir (its identity.key) or a "
        "32-byte key file; a new identity claims the network's starting grant first (default: unpaid). "
        "Pay from one place at a time: two payers signing with one key at once can fork its chain",
    )
    submit.add_argument("--json", action="store_true", help="print one JSON object with the receipt")
    submit.add_argument(
        "--stream", action="store_true", help="print text as the first worker generates it, then verify it"
    )
    sampling = submit.add_argument_group(
        "sampling",
        "greedy (the most likely token every time) unless --temperature > 0; a sample is fixed by the job's "
        "fresh id and --seed, so every worker and auditor of the job recomputes and verifies it "
        "(spec/verification.md §11); the same seed on another job is another sample",
    )
    sampling.add_argument(
        "--temperature",
        type=_sampling_value("temperature", float),
        default=0.0,
        metavar="T",
        help="0..10; 0 = greedy (default 0)",
    )
    sampling.add_argument(
        "--top-k",
        type=_sampling_value("top_k", int),
        default=0,
        metavar="K",
        help="keep only the K most likely tokens when sampling; 0 = all (default 0)",
    )
    sampling.add_argument(
        "--top-p",
        type=_sampling_value("top_p", float),
        default=1.0,
        metavar="P",
        help="then keep the smallest most-likely set whose probability reaches P, in (0, 1]; 1 = all "
        "(default 1)",
    )
    sampling.add_argument(
        "--seed",
        type=_sampling_value("seed", int),
        default=0,
        metavar="N",
        help="the sampling seed, 0..2**64-1 (default 0)",
    )

    from opengrid.cli import bench as bench_cli
    from opengrid.cli import config as config_cli
    from opengrid.cli import doctor as doctor_cli
    from opengrid.cli import ledger as ledger_cli
    from opengrid.cli import models as models_cli
    from opengrid.cli import sim, wallet

    sim.register(commands)
    wallet.register(commands)
    models_cli.register(commands)
    config_cli.register(commands)
    ledger_cli.register(commands)
    doctor_cli.register(commands)
    bench_cli.register(commands)

    status = commands.add_parser(
        "status",
        help="ask a node for its identity, role, points and workers",
        description="Ask the node at MULTIADDR who it is: role, addresses, reachability, points and jobs in "
        "its ledger, the models it serves, and (a coordinator) its workers and balances. `opengrid peers` "
        "lists the peers it heard on gossip.",
    )
    status.add_argument("address", metavar="MULTIADDR")
    status.add_argument(
        "--network", default=DEFAULT_NETWORK, help=f"the network's name (default {DEFAULT_NETWORK})"
    )
    _add_network_key(status)
    status.add_argument(
        "--json", action="store_true", help="print one JSON object (every field, for scripts)"
    )

    peers = commands.add_parser(
        "peers",
        help="list the peers a node has heard on gossip: roles, models, last heartbeat, RTT",
        description="Ask the node at MULTIADDR which peers it knows: every node announces itself on "
        "gossip every few seconds; one that misses 3 announcements is shown offline and gets no work.",
    )
    peers.add_argument("address", metavar="MULTIADDR")
    peers.add_argument(
        "--network", default=DEFAULT_NETWORK, help=f"the network's name (default {DEFAULT_NETWORK})"
    )
    _add_network_key(peers)
    peers.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def _verbose_after(commands: Any) -> None:
    """Accept -v after a command too (`opengrid node start -v`): every parser made through ``commands``
    (and through its own subcommands) counts it into ``verbose_after``, which adds to ``--verbose``."""
    add_parser = commands.add_parser

    def adding_verbose(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = add_parser(name, **kwargs)
        sub.add_argument(
            "-v",
            "--verbose",
            dest="verbose_after",
            action="count",
            default=argparse.SUPPRESS,
            help="more logs (-vv for debug)",
        )
        add_subparsers = sub.add_subparsers

        def subparsers_adding_verbose(**options: Any) -> Any:
            nested = add_subparsers(**options)
            _verbose_after(nested)
            return nested

        sub.add_subparsers = subparsers_adding_verbose  # type: ignore[method-assign]
        return sub

    commands.add_parser = adding_verbose


def _sampling_value(name: str, kind: Callable[[str], float]) -> Callable[[str], float]:
    """An argparse type for one sampling setting, checked by the SDK's and the API's rule
    (``opengrid.wire.contract.sampling_problem``), so a bad value is refused before anything starts."""
    from opengrid.wire.contract import sampling_problem

    defaults: dict[str, object] = {"temperature": 0.0, "top_k": 0, "top_p": 1.0, "seed": 0}

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            wanted = "a whole number" if kind is int else "a number"
            raise argparse.ArgumentTypeError(
                f"--{name.replace('_', '-')} takes {wanted}, got {text!r}"
            ) from None
        problem = sampling_problem(**{**defaults, name: value})
        if problem:
            raise argparse.ArgumentTypeError(problem.replace(name, f"--{name.replace('_', '-')}", 1))
        return value

    return parse


def _positive(flag: str) -> Callable[[str], int]:
    """An argparse type for a whole number >= 1 that names the flag in its error."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} takes a whole number, got {text!r}") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"{flag} must be at least 1, got {value}")
        return value

    return parse


def _add_network_key(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--network-key",
        default=os.environ.get("OPENGRID_NETWORK_KEY"),
        metavar="SECRET",
        help="the private network's key (default: $OPENGRID_NETWORK_KEY)",
    )


async def _run_node(config: NodeConfig, api: ApiSettings | None) -> None:
    import trio

    from opengrid.core.coordinator import CoordinatorConfig
    from opengrid.node.service import Node

    policy = CoordinatorConfig.plain if config.plain_verification else CoordinatorConfig
    node = Node(
        config,
        api=api,
        coordinator_config=policy(**config.coordinator_settings()),
        trace_frames=config.trace_frames,
        trace_timing=config.trace_timing,
    )
    # Listen for signals before anything starts, so a Ctrl-C during start-up also shuts down cleanly.
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def stop_on_signal() -> None:
                async for signum in signals:
                    log.info(
                        "received %s: taking no new work, finishing what runs (up to %.0f s; "
                        "signal again to stop at once)",
                        signal.Signals(signum).name,
                        DRAIN_S,
                    )
                    break
                async with trio.open_nursery() as draining:

                    async def stop_now() -> None:
                        async for _ in signals:
                            log.info("stopping now")
                            draining.cancel_scope.cancel()
                            return

                    draining.start_soon(stop_now)
                    with trio.move_on_after(DRAIN_S):
                        await node.drain()
                    draining.cancel_scope.cancel()
                nursery.cancel_scope.cancel()

            nursery.start_soon(stop_on_signal)
            started = await nursery.start(node.run)
            assert node.host is not None
            addrs = node.host.addrs()
            print(f"OpenGrid {started.config.role} {node.host.peer_id}", flush=True)
            for addr in addrs:
                print(f"  listening on {addr}", flush=True)
            if started.config.relay:
                print("  relaying for nodes that cannot be dialled (circuit relay v2)", flush=True)
            for url in node.api_urls:
                print(f"  OpenAI-compatible API at {url}/v1", flush=True)
            if started.config.role == "coordinator" and addrs:
                if started.config.lan and node.lan is not None:
                    print(
                        "  workers on this LAN join with: opengrid node start (they find it by mDNS)",
                        flush=True,
                    )
                print(
                    f"  workers join with: opengrid node start --role worker --bootstrap {addrs[0]} "
                    "--data-dir DIR",
                    flush=True,
                )


def _cmd_node_admission(args: argparse.Namespace) -> int:
    from opengrid.node import admission

    if args.node_command == "approve":
        new = admission.approve(args.data_dir, args.peer_id, coordinator=args.coordinator)
        state = "approved" if new else "was already approved"
        then = (
            "its admission is co-signed when it next asks"
            if args.coordinator
            else "it joins at its next heartbeat"
        )
        print(f"{args.peer_id} {state}; {then}")
        return 0
    waiting = admission.pending(args.data_dir)
    candidates = admission.pending(args.data_dir, coordinators=True)
    if not waiting and not candidates:
        print("no worker or coordinator is waiting for approval")
    for peer, info in sorted(waiting.items(), key=lambda item: item[1].get("since", 0)):
        since = time.strftime("%Y-%m-%d %H:%M", time.localtime(info.get("since", 0)))
        print(f"{peer}  asked {since}  models: {', '.join(info.get('models', [])) or '-'}")
    for peer, info in sorted(candidates.items(), key=lambda item: item[1].get("since", 0)):
        since = time.strftime("%Y-%m-%d %H:%M", time.localtime(info.get("since", 0)))
        print(
            f"{peer}  asked {since}  coordinator (admission epoch {info.get('epoch', '?')}): "
            f"opengrid node approve --coordinator --data-dir {args.data_dir} {peer}"
        )
    return 0


def _cmd_node_control(args: argparse.Namespace) -> int:
    from opengrid_sdk import Client

    from opengrid.node.identity import IDENTITY_FILE
    from opengrid.node.service import NODE_INFO_FILE

    try:
        info = json.loads((args.data_dir / NODE_INFO_FILE).read_text())
        seed = (args.data_dir / IDENTITY_FILE).read_bytes()
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"no running node found in {args.data_dir} ({exc}); start one with opengrid node start"
        ) from exc
    with Client(info["addrs"], network=info["network"]) as client:
        status = client.control(info["addrs"][0], args.node_command, identity_seed=seed)
    print(f"{status.role} {status.peer_id}: {'paused' if status.paused else 'running'}")
    return 0


def _cmd_node_start(args: argparse.Namespace) -> int:
    env = dict(os.environ)
    for problem in unknown_env_vars(env):
        log.warning("%s", problem)
    config, sources = load_settings(flags_from_namespace(args), env, resolve_config_file(args.config, env))
    from opengrid.node.lan_join import look_before_start

    config = look_before_start(config).validated()
    _check_listen_ports(config.listen)
    for key, source in sorted(sources.items()):
        if source != "default":
            shown = "(set, hidden)" if key in SECRET_KEYS else repr(getattr(config, field_of(key)))
            log.info("config %s = %s (from %s)", key, shown, source)
    api = None
    if config.api is not None:
        from opengrid.node.api import ApiSettings, check_bind  # the node extra (starlette)

        api = ApiSettings(address=config.api, api_key=config.api_key, allow_remote=config.api_allow_remote)
        check_bind(api.address, allow_remote=api.allow_remote)  # fail before anything starts
    import trio  # on use: the other commands do not need it

    # A Ctrl-C from here until _run_node's signal receiver takes over exits at once
    # (opengrid.cli.interrupt); the receiver restores that handler when the node has stopped.

    trio.run(_run_node, config, api)
    return 0


def _check_listen_ports(listen: Sequence[str]) -> None:
    """Refuse a fixed listen port another program (or node) holds, naming it, before anything starts:
    py-libp2p binds with SO_REUSEPORT, so a second node would otherwise share the port silently."""
    from opengrid.cli.doctor import _bind_failure, parse_tcp_multiaddr, try_bind

    for text in listen:
        try:
            target = parse_tcp_multiaddr(text)
        except ValueError as exc:
            raise ConfigError(f"--listen {text}: {exc}; use e.g. /ip4/0.0.0.0/tcp/4001") from exc
        if target.port == 0 or target.kind not in ("ip4", "ip6"):
            continue
        problem = try_bind(target.host, target.port)
        if problem is not None:
            what, fix = _bind_failure(target.host, target.port, problem)
            raise ConfigError(f"--listen {text}: {what}; {fix}")


def _cmd_submit(args: argparse.Namespace) -> int:
    from opengrid_sdk import Client

    from opengrid.node.identity import read_identity

    seed = read_identity(args.identity) if args.identity is not None else None  # before any network
    with Client(
        [args.bootstrap], network=args.network, network_key=args.network_key, identity_seed=seed
    ) as client:
        if args.stream and not args.json:
            return _stream_to_terminal(client, args)
        done = client.complete(
            args.prompt,
            model=args.model,
            max_tokens=args.max_tokens,
            replicas=args.replicas,
            **_sampling_args(args),
        )
        # Paid: what the account has left once the job settled (the coordinator's ledger).
        paid = {"account": client.account.hex(), "balance": client.balance()} if client.account else None
    if args.json:
        print(
            json.dumps(
                {
                    "job_id": done.job_id.hex(),
                    "text": done.text,
                    "tokens": done.tokens,
                    "finish_reason": done.finish_reason,
                    "workers": done.workers,
                    "dissenters": done.dissenters,
                    "receipt": done.receipt.entry.hex(),
                    "verified": True,
                    **({"paid": paid} if paid else {}),
                }
            )
        )
    else:
        print(done.text)
        print(
            f"\n[job {done.job_id.hex()[:8]} verified: {len(done.workers)} workers agreed; receipt checked]",
            file=sys.stderr,
        )
        if paid:
            print(
                f"[paid by account {str(paid['account'])[:16]}...: {paid['balance']} points left]",
                file=sys.stderr,
            )
    return 0


def _sampling_args(args: argparse.Namespace) -> dict[str, Any]:
    """``opengrid submit``'s sampling flags as the SDK's keyword arguments."""
    return {"temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p, "seed": args.seed}


def _stream_to_terminal(client: Any, args: argparse.Namespace) -> int:
    """Print the answer as it is verified (the SDK yields only verified text, spec/verification.md §14,
    and raises ``VerificationError`` if the final answer does not start with it)."""
    from opengrid_sdk import Completion

    for item in client.stream(
        args.prompt,
        model=args.model,
        max_tokens=args.max_tokens,
        replicas=args.replicas,
        **_sampling_args(args),
    ):
        if isinstance(item, Completion):
            print()
            print(
                f"[job {item.job_id.hex()[:8]} verified: {len(item.workers)} workers agreed]", file=sys.stderr
            )
            return 0
        print(item, end="", flush=True)
    return 1


def _cmd_status(args: argparse.Namespace) -> int:
    import msgspec
    from opengrid_sdk import Client

    with Client([args.address], network=args.network, network_key=args.network_key) as client:
        status = client.status()
    if not args.json:
        print("\n".join(status_lines(status)))
        return 0
    as_json = msgspec.to_builtins(status, enc_hook=None)
    as_json["public_key"] = status.public_key.hex()  # hex, like every key OpenGrid prints
    for worker, summary in zip(as_json["workers"], status.workers, strict=True):
        worker["public_key"] = summary.public_key.hex()
    print(json.dumps(as_json, indent=2))
    return 0


def status_lines(status: NodeStatus) -> list[str]:
    """``opengrid status`` as a table: the node's headline, then one labelled row per fact, the workers
    of a coordinator one per line (as ``opengrid peers`` lists peers)."""
    state = "paused (takes no new work)" if status.paused else "running"
    lines = [peers_headline(status).split(" knows ")[0] + f", {state}"]

    def row(label: str, value: str) -> None:
        lines.append(f"  {label:<10}  {value}")

    row("public key", status.public_key.hex())
    for addr in status.addrs or ["- (reachable through relays only)"]:
        row("address", addr)
    row(
        "points",
        f"{status.points}  ({status.jobs_done} job(s) done; ledger: {status.ledger_entries} entries)",
    )
    row("models", ", ".join(status.models) or "-")
    if status.role == "coordinator":
        row("workers", f"{len(status.workers)} registered, {sum(w.online for w in status.workers)} online")
        for w in status.workers:
            lines.append(
                f"    {'online ' if w.online else 'OFFLINE'}  {w.peer_id}  {', '.join(w.models) or '-'}"
            )
            if isinstance(w.split_members, list):  # a split group's head: its members, in layer order
                lines.append(f"      split group with {', '.join(w.split_members)}")
    if status.balances:
        row("balances", "points per account in its ledger, largest first")
        for key, points in sorted(status.balances.items(), key=lambda kv: (-kv[1], kv[0])):
            lines.append(f"    {key}  {points:>8}")
    lines += split_group_lines(status)
    online = sum(p.online for p in status.peers)
    row("peers", f"{len(status.peers)} heard on gossip, {online} online (`opengrid peers` lists them)")
    return lines


def shown_reachability(reachability: str, addrs: Sequence[str]) -> str:
    """A node's announced reachability as ``status`` and ``peers`` show it. A dial-back verdict of
    "public" from a node whose direct addresses are all loopback (127.0.0.1, ::1) only means that this
    machine can dial it: it says ``loopback``."""
    import ipaddress

    from opengrid.net.reachability import ip_and_port

    direct = [target[0] for target in map(ip_and_port, addrs) if target is not None]
    if reachability == "public" and direct and all(ipaddress.ip_address(ip).is_loopback for ip in direct):
        return "loopback"
    return reachability or "unknown"


def split_group_lines(status: NodeStatus) -> list[str]:
    """The split group a worker heads (spec/split.md §7), as ``status`` and ``peers`` show it: the head's
    layers, then each member's; nothing for other nodes."""
    import msgspec

    group = status.split_group
    if isinstance(group, msgspec.UnsetType):
        return []
    head = f"layers 0..{group.head_layers - 1}" if group.head_layers else "no layer"
    lines = [
        f"  {'split':<10}  {group.model}: {group.n_layers} layers over {1 + len(group.members)} nodes; this "
        f"head runs {head} (and the input and output layers); group formed {group.formed} time(s)"
    ]
    for m in group.members:
        lines.append(f"    member  {m.peer_id}  layers {m.first_layer}..{m.first_layer + m.layers - 1}")
    return lines


def peers_headline(status: NodeStatus) -> str:
    """The first line of ``opengrid peers``: who answered, its reachability and the relay it is reached
    through (taken by itself or given with --relay-via), and how many peers it knows."""
    from opengrid.net.relay import relays_of

    online = sum(p.online for p in status.peers)
    role = f"{status.role} (candidate: not admitted yet, takes no jobs)" if status.candidate else status.role
    relays = relays_of(status.addrs)
    reachability = shown_reachability(status.reachability, status.addrs)
    if reachability == "loopback":
        reachability = "loopback: this machine only"
    if relays:
        reachability += f", through relay {', '.join(peer for peer, _ in relays)}"
    return (
        f"{role} {status.peer_id} on network {status.network!r} ({reachability}) "
        f"knows {len(status.peers)} peer(s), {online} online"
    )


def _cmd_peers(args: argparse.Namespace) -> int:
    import msgspec
    from opengrid_sdk import Client

    with Client([args.address], network=args.network, network_key=args.network_key) as client:
        status = client.status()
    if args.json:
        print(json.dumps({"peer_id": status.peer_id, "peers": msgspec.to_builtins(status.peers)}, indent=2))
        return 0
    print(peers_headline(status))
    for line in split_group_lines(status):
        print(line)
    for p in status.peers:
        rtt = f"{p.rtt_ms:.1f} ms" if p.rtt_ms is not None else "-"
        print(
            f"  {'online ' if p.online else 'OFFLINE'}  {p.peer_id}  {','.join(p.roles):<11}  "
            f"{','.join(p.models) or '-':<24}  {p.tier or '-':<8}  "
            f"{shown_reachability(p.reachability, p.addrs) if p.reachability else '-':<8}  "
            f"heard {p.last_seen_s:5.1f} s ago  RTT {rtt}"
            + ("" if isinstance(p.free_memory, msgspec.UnsetType) else f"  lends {p.free_memory >> 20} MiB")
        )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line (``opengrid.__main__.run`` is the console script around it)."""
    try:
        return _main(argv)
    except KeyboardInterrupt:  # Ctrl-C before a command could handle it (parsing): stop quietly
        return 130


def _main(argv: Sequence[str] | None) -> int:
    args = _build_parser().parse_args(argv)
    if not (args.command == "node" and args.node_command == "start"):
        ctrl_c_raises_again()  # the node keeps exiting at once until its signal receiver takes over
    args.verbose += getattr(args, "verbose_after", 0)
    _setup_logging(0 if getattr(args, "json", False) else args.verbose)
    try:
        if args.command == "node":
            if args.node_command in ("approve", "pending"):
                return _cmd_node_admission(args)
            return _cmd_node_start(args) if args.node_command == "start" else _cmd_node_control(args)
        if args.command == "demo":
            from opengrid.cli.demo import run_demo

            return run_demo(args)
        if args.command == "submit":
            return _cmd_submit(args)
        if args.command == "status":
            return _cmd_status(args)
        if args.command == "peers":
            return _cmd_peers(args)
        if args.command == "sim":
            from opengrid.cli import sim

            return sim.run(args)
        if args.command == "wallet":
            from opengrid.cli import wallet

            return wallet.run(args)
        if args.command == "bench":
            from opengrid.cli import bench as bench_cli

            return bench_cli.run(args)
        if args.command == "doctor":
            from opengrid.cli import doctor as doctor_cli

            return doctor_cli.run(args)
        if args.command in ("models", "config", "ledger"):
            from opengrid.cli import config as config_cli
            from opengrid.cli import ledger as ledger_cli
            from opengrid.cli import models as models_cli

            module: Any = {"models": models_cli, "config": config_cli, "ledger": ledger_cli}[args.command]
            return int(module.run(args))
    except OpenGridError as exc:
        print(f"opengrid: error: {exc}", file=sys.stderr)
        return 1
    except ModuleNotFoundError as exc:
        message = missing_extra(exc, " ".join([args.command, getattr(args, "node_command", None) or ""]))
        if message is None:
            raise
        print(f"opengrid: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `opengrid status | head`: the reader left, which is fine
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush does not complain
        return 0
    except BaseExceptionGroup as group:  # trio gathers a node's failure with its tasks' cancellations
        leaves = list(_leaves(group))
        if any(isinstance(leaf, KeyboardInterrupt) for leaf in leaves):
            return 130
        ours = [leaf for leaf in leaves if isinstance(leaf, OpenGridError)]
        if ours and len(ours) == len(leaves):
            print(f"opengrid: error: {ours[0]}", file=sys.stderr)
            return 1
        raise
    return 2


def _leaves(group: BaseExceptionGroup[BaseException]) -> Iterator[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc


if __name__ == "__main__":
    sys.exit(main())

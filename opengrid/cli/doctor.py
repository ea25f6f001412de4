"""``opengrid doctor``: tell a volunteer, in plain words, whether their node can join and be reached.

It reads the settings ``opengrid node start`` would run with (flags > ``OPENGRID_<KEY>`` > config file >
defaults, :mod:`opengrid.settings`) and checks, each as ok / warn / fail with a fix:

1. ``config``, ``data dir``, ``identity``: the settings validate, the data dir is writable, the identity
   key is sound (its peer id shown);
2. ``running node``: whether a node already runs on this data dir (its ``node.json`` addresses answer a
   ``StatusRequest``): its role, the peers it knows, paused or not;
3. ``listen ADDR``: each listen address can be bound, and who can reach it (loopback, LAN, internet);
4. ``bootstrap ADDR``: each bootstrap address answers a status request (best RTT of 3), on which network,
   knowing which peers; a failure is explained (bad address, refused, timeout, handshake / network key);
   a ``/dns4/``, ``/dns6/``, ``/dns/`` or ``/dnsaddr/`` name is resolved first (bounded, as a node does:
   :mod:`opengrid.net.names`) and the addresses it resolves to are named, or why it did not resolve;
5. ``relay``: what relays (taken automatically when peers cannot dial the node) and hole punching mean
   for this node (spec/discovery.md §8, §9.3);
6. ``discovery``: how the node finds peers (its bootstrap addresses, then gossip announcements and the
   DHT's ``role:coordinator`` records through the peers it reaches, relays for peers it cannot dial) and,
   when a node runs here, the peers it knows by role (a node does not record which path found a peer);
   advice when nothing is found.

Facts are gathered first (files, sockets, one ``trio.run`` for the network, every operation bounded by
``trio.fail_after``, only the addresses given are dialled), then turned into checks by pure functions.

Wiring, in ``opengrid/cli/main.py``: ``doctor.register(commands)`` while building the parser, and
``return doctor.run(args)`` when ``args.command == "doctor"``.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import ipaddress
import json
import logging
import math
import os
import pathlib
import secrets
import socket
import sys
import tempfile
from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TextIO

import msgspec
import trio

from opengrid.errors import ConfigError, NameResolutionError, OpenGridError
from opengrid.net.names import Resolver, dns_protocol
from opengrid.node.config import NodeConfig
from opengrid.settings import (
    CONFIG_ENV,
    default_data_dir,
    flags_from_namespace,
    load_settings,
    resolve_config_file,
)

if TYPE_CHECKING:  # for annotations only: the functions below import these where they use them
    from opengrid.net.host import Host
    from opengrid.wire.messages import DialBackResult, NodeStatus

Status = Literal["ok", "warn", "fail"]
HostClass = Literal["loopback", "private", "public", "any"]

CONNECT_TIMEOUT_S = 6.0
"""Bound on one libp2p dial (TCP + pnet + Noise + yamux)."""
UPGRADE_TIMEOUT_S = 4.0
"""Bound on the security handshake: a network-key mismatch does not fail fast (spec/discovery.md §3)."""
REQUEST_TIMEOUT_S = 5.0
"""Bound on one status request round trip."""
TCP_PROBE_TIMEOUT_S = 3.0
"""Bound on the plain TCP connect that explains a failed dial."""
RTT_SAMPLES = 3
EXAMPLE_PORT = 4001


@dataclass(frozen=True)
class Check:
    """One line of the report: what was checked, how it went, and what to do about it."""

    name: str
    status: Status
    detail: str
    fix: str = ""


@dataclass(frozen=True)
class Probe:
    """What dialling one address found: the node's status and the best RTT, or why it failed."""

    address: str
    status: NodeStatus | None = None
    """The :class:`~opengrid.wire.messages.NodeStatus` it answered, None when it did not."""
    rtt_s: float | None = None
    error: str = ""
    fix: str = ""
    resolved: tuple[str, ...] = ()
    """For a DNS bootstrap name: the addresses it resolved to (empty when it names none or no DNS)."""


@dataclass(frozen=True)
class TcpAddress:
    """The host and port of a TCP multiaddr (``/ip4|ip6|dns|dns4|dns6/HOST/tcp/PORT[/p2p/ID]``)."""

    kind: str
    host: str
    port: int
    peer_id: str = ""


# ── argparse ─────────────────────────────────────────────────────────────────────────────────────────


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Add the ``doctor`` command to the ``opengrid`` parser's subcommands."""
    doctor = subparsers.add_parser(
        "doctor",
        help="check that a node can start, be reached and join its network, and say what to change",
        description=(
            "Check the settings `opengrid node start` would run with (the same flags, OPENGRID_<KEY> "
            "variables and config file): the data dir and identity, a node already running there, whether "
            "each listen address can be bound and who can reach it, the RTT to each bootstrap node (a DNS "
            "name resolved first), and how the node finds peers (the nodes of its network that answer on the "
            "LAN; a running node: its peers by role). "
            "Exit status 1 when a check fails."
        ),
    )
    doctor.add_argument(
        "--data-dir", type=pathlib.Path, default=None, metavar="DIR", help="the node's data dir"
    )
    doctor.add_argument(
        "--listen", action="append", default=None, metavar="MULTIADDR", help="listen address, repeatable"
    )
    doctor.add_argument(
        "--bootstrap",
        action="append",
        default=None,
        metavar="MULTIADDR",
        help="a bootstrap node's full multiaddr (.../p2p/12D3KooW...), repeatable",
    )
    doctor.add_argument("--network", default=None, help="network name")
    doctor.add_argument(
        "--network-key",
        default=None,
        metavar="SECRET",
        help="the private network's key (default: $OPENGRID_NETWORK_KEY)",
    )
    doctor.add_argument(
        "--role", choices=("worker", "coordinator", "edge", "auto"), default=None, help="the node's role"
    )
    doctor.add_argument(
        "--lan",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="look for the network's nodes on the LAN (mDNS, 2 s) as `node start` would (default: on)",
    )
    doctor.add_argument(
        "--config",
        type=pathlib.Path,
        metavar="PATH",
        help=f"config file (default: ${CONFIG_ENV}, else the user config dir's)",
    )
    doctor.add_argument("--json", action="store_true", help="print one JSON object with every check")
    doctor.set_defaults(command="doctor")
    return doctor


def run(args: argparse.Namespace) -> int:
    """Run every check, print the report; returns 0 when no check failed, else 1."""
    from opengrid.net.host import quiet_libp2p_logging

    verbose = getattr(args, "verbose", 1)
    # The dials below are expected to fail sometimes; the report explains them, the library's logs do not.
    quiet_libp2p_logging(logging.DEBUG if verbose > 2 else logging.CRITICAL)
    if verbose <= 1:
        logging.getLogger("opengrid").setLevel(logging.WARNING)
    report = diagnose(args, dict(os.environ))
    failed = has_failures(report["checks"])
    if args.json:
        doc = dict(report, checks=[dataclasses.asdict(check) for check in report["checks"]], ok=not failed)
        print(json.dumps(doc, indent=2))
    else:
        _print_report(report)
    return 1 if failed else 0


def has_failures(checks: Sequence[Check]) -> bool:
    """Whether any check failed (the exit status is 1 then)."""
    return any(check.status == "fail" for check in checks)


def diagnose(
    args: argparse.Namespace, env: Mapping[str, str], *, resolver: Resolver | None = None
) -> dict[str, Any]:
    """Gather the facts and build the checks: ``{"role", "network", "data_dir", "config_file", "checks"}``.
    ``resolver`` turns DNS bootstrap names into addresses (default: the system's DNS, bounded)."""
    config, problem, file = load_effective_settings(args, env)
    role = resolved_role(config)
    checks = [config_check(config, role, problem)]
    checks.append(data_dir_check(config.data_dir))
    own_peer_id, identity = identity_check(config.data_dir)
    checks.append(identity)

    info = _read_node_info(config.data_dir)
    running, bootstraps, dial_back = trio.run(_gather_network_facts, config, info, resolver or Resolver())
    checks.append(running_node_check(config, info, running, own_peer_id, bootstraps))
    running_addrs = running.status.addrs if running is not None and running.status is not None else []
    listen = [listen_check(text, running_addrs) for text in config.listen]
    checks.extend(listen)
    checks.extend(bootstrap_checks(config, role, bootstraps))
    checks.append(reachability_check(config.listen, dial_back))
    checks.append(relay_check(config.listen, running_addrs))
    checks.append(discovery_check(config, role, running, bootstraps, lan=_look_on_the_lan(config)))
    return {
        "role": role,
        "network": config.network,
        "private_network": bool(config.network_key),
        "data_dir": str(config.data_dir),
        "config_file": str(file) if file is not None else None,
        "checks": checks,
    }


# ── settings ─────────────────────────────────────────────────────────────────────────────────────────


def load_effective_settings(
    args: argparse.Namespace, env: Mapping[str, str]
) -> tuple[NodeConfig, str | None, pathlib.Path | None]:
    """The settings ``node start`` would use, the reason it would refuse them (or None), the config file.

    When the strict load fails the rest of the report still runs, on the values it could read: the
    flags doctor was given (unchecked: each address is checked on its own later) over the file and the
    environment, or over the defaults when those are broken too.
    """
    flags = flags_from_namespace(args)
    file: pathlib.Path | None = None
    try:
        file = resolve_config_file(getattr(args, "config", None), env)
        config, _ = load_settings(flags, env, file)
    except ConfigError as exc:
        return _lenient_settings(flags, env, file), str(exc), file
    try:
        return config.validated(), None, file
    except ConfigError as exc:
        return config, str(exc), file


def _lenient_settings(
    flags: Mapping[str, Any], env: Mapping[str, str], file: pathlib.Path | None
) -> NodeConfig:
    try:
        base, _ = load_settings({}, env, file)
    except ConfigError:
        base = NodeConfig(data_dir=default_data_dir())
    raw = {
        key: flags[key]
        for key in ("data_dir", "listen", "bootstrap", "network", "network_key")
        if key in flags
    }
    if isinstance(raw.get("data_dir"), str):
        raw["data_dir"] = pathlib.Path(raw["data_dir"])
    return msgspec.structs.replace(base, **raw)


def resolved_role(config: NodeConfig) -> str:
    """The role ``auto`` resolves to (coordinator without a bootstrap address, worker with one)."""
    if config.role != "auto":
        return config.role
    return "worker" if config.bootstrap else "coordinator"


def config_check(config: NodeConfig, role: str, problem: str | None) -> Check:
    if problem is not None:
        return Check(
            "config",
            "fail",
            f"`opengrid node start` would refuse these settings: {problem}",
            "fix the value named above (flag, OPENGRID_<KEY> variable or config file); "
            "`opengrid config show` prints every value and where it comes from",
        )
    private = "private (network key set)" if config.network_key else "public (no network key)"
    return Check(
        "config",
        "ok",
        f"valid: a {role} on network {config.network!r}, {private}, data dir {config.data_dir}",
    )


# ── data dir and identity ────────────────────────────────────────────────────────────────────────────


def data_dir_check(data_dir: pathlib.Path) -> Check:
    """Whether the node can write its identity, ledger and node.json into ``data_dir``."""
    fix = f"pick a data dir you own (--data-dir DIR), or make {data_dir} writable for this user"
    if data_dir.exists():
        if not data_dir.is_dir():
            return Check("data dir", "fail", f"{data_dir} exists but is not a directory", fix)
        try:
            with tempfile.NamedTemporaryFile(dir=data_dir, prefix=".doctor-"):
                pass
        except OSError as exc:
            return Check("data dir", "fail", f"cannot write in {data_dir}: {exc.strerror or exc}", fix)
        return Check("data dir", "ok", f"{data_dir} is writable")
    parent = data_dir.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if os.access(parent, os.W_OK | os.X_OK):
        return Check("data dir", "ok", f"{data_dir} does not exist yet; `node start` creates it")
    return Check("data dir", "fail", f"{data_dir} does not exist and {parent} is not writable", fix)


def identity_check(data_dir: pathlib.Path) -> tuple[str, Check]:
    """(this node's peer id or "", the check): the identity key exists and is sound, or will be created."""
    from opengrid.net.keys import keypair_from_seed, peer_id_of
    from opengrid.node.identity import IDENTITY_FILE

    path = data_dir / IDENTITY_FILE
    if not path.exists():
        return "", Check(
            "identity",
            "ok",
            f"no identity yet: `node start` creates one in {path} (a new peer id and ledger account)",
        )
    try:
        seed = path.read_bytes()
    except OSError as exc:
        return "", Check(
            "identity",
            "fail",
            f"cannot read {path}: {exc.strerror or exc}",
            "run doctor and the node as the user who owns the data dir",
        )
    if len(seed) != 32:
        return "", Check(
            "identity",
            "fail",
            f"{path} holds {len(seed)} bytes, not a 32-byte identity",
            f"move {path} away: the next start creates a new identity (a new peer id, an empty account)",
        )
    peer_id = peer_id_of(keypair_from_seed(seed).public_key.to_bytes())
    if os.name == "posix" and path.stat().st_mode & 0o077:
        return peer_id, Check(
            "identity",
            "warn",
            f"peer id {peer_id}; but {path} can be read by other users (it is the key to your points)",
            f"chmod 600 {path}",
        )
    return peer_id, Check("identity", "ok", f"peer id {peer_id} ({path})")


def _read_node_info(data_dir: pathlib.Path) -> dict[str, Any] | None:
    from opengrid.node.service import NODE_INFO_FILE

    try:
        info = json.loads((data_dir / NODE_INFO_FILE).read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (one of another user's counts)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


# ── the network part: one trio.run ───────────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class DialBack:
    """What a bootstrap node found when it dialled our listen addresses back on fresh connections."""

    checker: str
    """The bootstrap address that dialled."""
    whose: str
    """``the running node's`` or ``a test listener's`` (when no node runs on this data dir)."""
    results: list[DialBackResult]
    """:class:`~opengrid.wire.messages.DialBackResult`, one per address; empty when the request failed."""
    error: str = ""


async def _gather_network_facts(
    config: NodeConfig, info: dict[str, Any] | None, resolver: Resolver
) -> tuple[Probe | None, list[Probe], DialBack | None]:
    """(the node running on this data dir, or None if node.json names none; one probe per bootstrap;
    a dial-back of the listen addresses by the first bootstrap node that answered, if any)."""
    running: Probe | None = None
    if info is not None:
        addrs = [a for a in info.get("addrs", []) if isinstance(a, str)]
        network = info.get("network") if isinstance(info.get("network"), str) else config.network
        pid = info.get("pid")
        if isinstance(pid, int) and not pid_alive(pid):
            running = Probe("", error=f"its process {pid} is gone")
        elif not addrs:
            running = Probe("", error="node.json lists no address")
        else:
            async with _dialer(network or config.network, config.network_key) as host:
                for address in addrs:
                    running = await probe(host, address, private=bool(config.network_key))
                    if running.status is not None:
                        break
    bootstraps: list[Probe] = []
    if config.bootstrap:
        async with _dialer(config.network, config.network_key) as host:
            for address in config.bootstrap:
                bootstraps.append(
                    await probe_bootstrap(host, address, resolver, private=bool(config.network_key))
                )
    checker = next((b.address for b in bootstraps if b.status is not None), None)
    dial_back = None
    if checker is not None and config.listen:
        running_addrs = running.status.addrs if running is not None and running.status is not None else []
        dial_back = await ask_dial_back(config, checker, running_addrs)
    return running, bootstraps, dial_back


async def ask_dial_back(config: NodeConfig, checker: str, running_addrs: Sequence[str]) -> DialBack:
    """Ask ``checker`` to dial our addresses back: the running node's, else those of a throwaway listener
    on the configured listen addresses (what `node start` would open). Never raises."""
    from opengrid.net.host import derive_psk, open_host
    from opengrid.net.reachability import ip_and_port
    from opengrid.wire.messages import DialBackReport, DialBackRequest

    psk = derive_psk(config.network, config.network_key) if config.network_key else None

    async def ask(host: Host, addrs: list[str], whose: str) -> DialBack:
        try:
            with trio.fail_after(CONNECT_TIMEOUT_S + REQUEST_TIMEOUT_S):
                reply = await host.request(await host.connect(checker), DialBackRequest(addrs=addrs[:8]))
        except (OpenGridError, trio.TooSlowError) as exc:
            return DialBack(checker, whose, [], error=_plain(exc))
        if not isinstance(reply, DialBackReport):
            return DialBack(
                checker, whose, [], error=f"it answered {type(reply).__name__}: an older version?"
            )
        return DialBack(checker, whose, list(reply.results))

    direct = [a for a in running_addrs if ip_and_port(a)]
    if direct:
        async with _dialer(config.network, config.network_key) as host:
            return await ask(host, direct, "the running node's")
    try:
        async with open_host(secrets.token_bytes(32), list(config.listen), psk=psk) as host:
            return await ask(host, [a for a in host.addrs() if ip_and_port(a)], "a test listener's")
    except OpenGridError as exc:  # the listen check explains a port that cannot be bound
        return DialBack(checker, "a test listener's", [], error=f"could not listen: {_plain(exc)}")


def _dialer(network: str, network_key: str | None) -> AbstractAsyncContextManager[Host]:
    """A throwaway libp2p host (a fresh identity on a loopback port) that only dials out."""
    from opengrid.net.host import derive_psk, open_host

    psk = derive_psk(network, network_key) if network_key else None
    return open_host(secrets.token_bytes(32), psk=psk, upgrade_timeout_s=UPGRADE_TIMEOUT_S)


MAX_RESOLVED_PROBES = 4
"""Addresses of one DNS bootstrap name dialled at most (each bounded by ``CONNECT_TIMEOUT_S``)."""


async def probe_bootstrap(host: Host, address: str, resolver: Resolver, *, private: bool) -> Probe:
    """``probe`` a bootstrap address; a DNS name is resolved first with ``resolver`` (bounded by its own
    ``timeout_s``), then its addresses are dialled in order until one answers. Never raises."""
    protocol = dns_protocol(address)
    if protocol is None:
        return await probe(host, address, private=private)
    name = address.split("/")[2] if address.count("/") >= 2 else address
    try:
        resolved = tuple(await resolver.resolve(address))
    except NameResolutionError as exc:
        return Probe(
            address,
            error=f"name {name} does not resolve: {exc}",
            fix=(
                f"check the name (`dig TXT _dnsaddr.{name}` must list dnsaddr=/ip4/.../tcp/PORT/p2p/PEER_ID)"
                if protocol == "dnsaddr"
                else f"check the name (`getent hosts {name}`)"
            )
            + " and this machine's DNS, or pass --bootstrap with the node's /ip4/ address",
        )
    failures: list[Probe] = []
    for candidate in resolved[:MAX_RESOLVED_PROBES]:
        found = await probe(host, candidate, private=private)
        if found.status is not None:
            return dataclasses.replace(found, address=address, resolved=resolved)
        failures.append(found)
    first = failures[0]
    return Probe(
        address,
        error=f"{name} resolves to {', '.join(resolved)}, but none answered: {first.error}",
        fix=first.fix,
        resolved=resolved,
    )


async def probe(host: Host, address: str, *, private: bool) -> Probe:
    """Dial ``address`` with ``host`` (an :class:`opengrid.net.host.Host`), then time status requests.

    Never raises for the peer's sake: every failure becomes a Probe with an error and a fix.
    """
    from opengrid.wire.messages import NodeStatus, StatusRequest

    relayed = "/p2p-circuit" in address
    try:
        # A relayed (circuit) address is dialled as it is: only its relay's part is plain TCP.
        target = parse_tcp_multiaddr(address.split("/p2p-circuit")[0])
    except ValueError as exc:
        return Probe(address, error=str(exc), fix="copy the full address the node prints at start")
    if not target.peer_id:
        return Probe(
            address,
            error="the address has no /p2p/PEER_ID part",
            fix="copy the full address the node prints at start (…/tcp/PORT/p2p/12D3KooW…)",
        )
    try:
        with trio.fail_after(CONNECT_TIMEOUT_S):
            peer = await host.connect(address)
    except ConfigError as exc:
        return Probe(address, error=str(exc), fix="copy the full address the node prints at start")
    except (OpenGridError, trio.TooSlowError) as exc:
        if relayed:
            return Probe(
                address,
                error=f"could not connect through the relay ({_plain(exc)})",
                fix="check that the relay runs; a direct address of the node works better when it has one",
            )
        error, fix = await explain_dial_failure(target, exc, private=private)
        return Probe(address, error=error, fix=fix)
    best = math.inf
    status: NodeStatus | None = None
    for _ in range(RTT_SAMPLES):
        started = trio.current_time()
        try:
            with trio.fail_after(REQUEST_TIMEOUT_S):
                reply = await host.request(peer, StatusRequest())
        except (OpenGridError, trio.TooSlowError) as exc:
            if status is not None:
                break  # one answer is enough to report; the RTT is the best of those that came
            await host.disconnect(peer)
            return Probe(
                address,
                error=f"connected, but it did not answer a status request ({_plain(exc)})",
                fix="is it an OpenGrid node of the same version? try `opengrid status ADDRESS`",
            )
        if not isinstance(reply, NodeStatus):
            await host.disconnect(peer)
            return Probe(
                address,
                error=f"connected, but it answered {type(reply).__name__} to a status request",
                fix="is it an OpenGrid node of the same version?",
            )
        best = min(best, trio.current_time() - started)
        status = reply
    await host.disconnect(peer)
    return Probe(address, status=status, rtt_s=best)


async def explain_dial_failure(target: TcpAddress, exc: BaseException, *, private: bool) -> tuple[str, str]:
    """(what happened, what to do) after a failed libp2p dial, from a plain TCP connect to the same port.

    The library's own error says only that no address worked; the TCP attempt tells a refused port
    (nothing listens, or a firewall rejects) from a silent one (a firewall drops, or no route) from a
    port that answers but fails the handshake (wrong peer id, not OpenGrid, or a network-key mismatch).
    """
    where = f"{target.host}:{target.port}"
    firewall = (
        f"if it runs on another machine, its firewall must allow inbound TCP port {target.port} "
        f"(and its router must forward that port when it is behind NAT)"
    )
    try:
        with trio.fail_after(TCP_PROBE_TIMEOUT_S):
            await _tcp_connect(target.host, target.port)
    except trio.TooSlowError:
        return (
            f"no answer from {where} within {TCP_PROBE_TIMEOUT_S:.0f} s: a firewall drops the packets, or "
            "the machine is off or unreachable",
            f"check the address; {firewall}",
        )
    except socket.gaierror as lookup:
        return (
            f"cannot resolve {target.host!r}: {lookup.strerror or lookup}",
            "check the host name in the address",
        )
    except OSError as tcp:
        if tcp.errno == errno.ECONNREFUSED:
            return (
                f"connection refused at {where}: nothing listens on TCP port {target.port} there (the node "
                "is down or listens on another port), or a firewall rejects the connection",
                f"start that node, or take the port from the address it prints at start; {firewall}",
            )
        if tcp.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
            return (
                f"no route to {target.host}: {tcp.strerror}",
                "check the address and this machine's network connection (a private address is reachable "
                "only inside its own LAN)",
            )
        return (f"cannot connect to {where}: {tcp.strerror or tcp}", f"check the address; {firewall}")
    key_hint = (
        "start doctor with the same --network and --network-key as that node (a private network's key)"
        if private
        else "if that network is private, pass its --network-key (or $OPENGRID_NETWORK_KEY)"
    )
    return (
        f"TCP port {target.port} at {target.host} answers, but the libp2p handshake failed ({_plain(exc)})",
        f"{key_hint}; check the peer id in the address (a node whose data dir was reset has a new one), and "
        "that it is an OpenGrid node",
    )


async def _tcp_connect(host: str, port: int) -> None:
    infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    if not infos:
        raise OSError(errno.EHOSTUNREACH, "no address")
    family, kind, proto, _, sockaddr = infos[0]
    with trio.socket.socket(family, kind, proto) as sock:
        await sock.connect(sockaddr)


def _plain(exc: BaseException) -> str:
    if isinstance(exc, trio.TooSlowError):
        return "timed out"
    return str(exc) or type(exc).__name__


# ── addresses ────────────────────────────────────────────────────────────────────────────────────────


def parse_tcp_multiaddr(text: str) -> TcpAddress:
    """Host, port and peer id of a TCP multiaddr; ValueError in plain words for anything else."""
    from multiaddr import Multiaddr

    try:
        canonical = str(Multiaddr(text))
    except Exception as exc:  # multiaddr raises several types
        raise ValueError(
            f"{text!r} is not a multiaddr ({exc}); expected e.g. "
            f"/ip4/203.0.113.7/tcp/{EXAMPLE_PORT}/p2p/12D3KooW…"
        ) from None
    parts = canonical.strip("/").split("/")
    if len(parts) < 4 or parts[0] not in ("ip4", "ip6", "dns", "dns4", "dns6") or parts[2] != "tcp":
        raise ValueError(
            f"{text!r} is not a TCP address; OpenGrid nodes speak TCP: /ip4/HOST/tcp/PORT[/p2p/PEER_ID]"
        )
    peer_id = ""
    rest = parts[4:]
    if rest[:1] == ["p2p"] and len(rest) >= 2:
        peer_id = rest[1]
    elif rest:
        raise ValueError(f"{text!r} has unexpected parts after the port: /{'/'.join(rest)}")
    return TcpAddress(kind=parts[0], host=parts[1], port=int(parts[3]), peer_id=peer_id)


def classify_host(host: str) -> HostClass:
    """Who can reach an address: this machine, the LAN, the internet, or "any" for 0.0.0.0 / ::."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return "loopback" if host == "localhost" else "public"  # a DNS name: assume it is published
    if ip.is_unspecified:
        return "any"
    if ip.is_loopback:
        return "loopback"
    if ip.is_global:
        return "public"
    return "private"  # RFC 1918, link-local, CGNAT, unique-local


def try_bind(host: str, port: int) -> OSError | None:
    """Bind and listen on ``host:port`` like the node would (SO_REUSEADDR), then let go: None if it worked."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(1)
    except OSError as exc:
        return exc
    return None


def listen_check(text: str, running_addrs: Sequence[str] = ()) -> Check:
    """Can the node listen on ``text``, and who can reach it there."""
    name = f"listen {text}"
    try:
        target = parse_tcp_multiaddr(text)
    except ValueError as exc:
        return Check(name, "fail", str(exc), f"use e.g. /ip4/0.0.0.0/tcp/{EXAMPLE_PORT}")
    if target.kind not in ("ip4", "ip6"):
        return Check(
            name,
            "fail",
            "a node listens on an IP address, not a name",
            f"use /ip4/0.0.0.0/tcp/{EXAMPLE_PORT}",
        )
    if target.peer_id:
        return Check(name, "fail", "a listen address has no /p2p/ part", "drop the /p2p/… suffix")
    port, host = target.port, target.host
    held = port != 0 and any(
        _same_listener(target, a) for a in running_addrs
    )  # the running node holds it: that is fine
    problem = None if held else try_bind(host, port)
    if problem is not None:
        return Check(name, "fail", *_bind_failure(host, port, problem))
    kind = classify_host(host)
    reach = _reachability(kind, host, port)
    bound = "held by the node running on this data dir" if held else "can be bound"
    if port == 0:
        return Check(
            name,
            "warn",
            f"{bound}; port 0 means a new free port at every start, so addresses others saved stop working "
            f"after a restart and no firewall rule or port forward can follow it. {reach}",
            f"pick a fixed port, e.g. /ip4/{host}/tcp/{EXAMPLE_PORT}"
            + ("" if kind != "loopback" else f" (and /ip4/0.0.0.0/tcp/{EXAMPLE_PORT} to be reachable)"),
        )
    status: Status = "warn" if kind == "loopback" else "ok"
    fix = f"to join other machines listen on /ip4/0.0.0.0/tcp/{port}" if kind == "loopback" else ""
    if kind in ("private", "any"):
        fix = (
            f"to be reachable from outside your LAN, forward TCP port {port} on your router to this machine "
            "and allow it in the firewall"
        )
    elif kind == "public":
        fix = f"allow inbound TCP port {port} in this machine's firewall (and your cloud security group)"
    return Check(name, status, f"{bound}. {reach}", fix)


def _same_listener(target: TcpAddress, addr: str) -> bool:
    try:
        other = parse_tcp_multiaddr(addr)
    except ValueError:
        return False
    return other.port == target.port and (other.host == target.host or classify_host(target.host) == "any")


def _bind_failure(host: str, port: int, exc: OSError) -> tuple[str, str]:
    if exc.errno == errno.EADDRINUSE:
        return (
            f"TCP port {port} on {host} is already in use by another program (or another node)",
            f"stop that program (`ss -ltnp 'sport = :{port}'` shows it) or pick another port",
        )
    if exc.errno in (errno.EACCES, errno.EPERM):
        return (
            f"not allowed to listen on port {port} ({exc.strerror})",
            f"ports below 1024 need root: pick a port above 1024, e.g. {EXAMPLE_PORT}",
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return (
            f"this machine has no address {host}",
            "use one of this machine's addresses (`ip addr`), or 0.0.0.0 for all of them",
        )
    return (f"cannot listen on {host}:{port}: {exc.strerror or exc}", "pick another address or port")


def _reachability(kind: HostClass, host: str, port: int) -> str:
    shown = "PORT" if port == 0 else str(port)
    if kind == "loopback":
        return "Loopback: only programs on this machine can reach it."
    if kind == "private":
        return (
            f"{host} is a private (LAN) address: only machines on your LAN can reach it, unless your router "
            f"forwards TCP port {shown} to it."
        )
    if kind == "public":
        return (
            f"{host} is a public address: reachable from the internet if the firewall allows TCP port "
            f"{shown}."
        )
    return (
        f"All interfaces: reachable at this machine's LAN and public addresses if the firewall allows TCP "
        f"port {shown}; behind a home router, only from the LAN unless it forwards that port."
    )


# ── checks from the facts ────────────────────────────────────────────────────────────────────────────


def running_node_check(
    config: NodeConfig,
    info: dict[str, Any] | None,
    running: Probe | None,
    own_peer_id: str,
    bootstraps: Sequence[Probe] = (),
) -> Check:
    """Whether a node already runs on this data dir, and how it is doing."""
    name = "running node"
    if info is None:
        return Check(name, "ok", f"no node runs on {config.data_dir} (no node.json)")
    if running is None or running.status is None:
        why = running.error if running is not None else "it does not answer"
        if "handshake failed" in why or "did not answer a status request" in why:
            return Check(
                name,
                "warn",
                f"something listens at the address in node.json but does not answer as expected ({why})",
                running.fix if running is not None else "",
            )
        return Check(
            name,
            "ok",
            f"no node answers on this data dir: node.json is left from an earlier run ({why})",
        )
    status = running.status
    detail = [f"a {status.role} is running: {status.peer_id}, answering at {running.address}"]
    if own_peer_id and status.peer_id != own_peer_id:
        return Check(
            name,
            "warn",
            f"{detail[0]}, but its peer id is not this data dir's identity ({own_peer_id})",
            "node.json was written by another node: is another data dir's node listening there?",
        )
    online = [p for p in status.peers if p.online]
    coordinators = [p for p in online if "coordinator" in p.roles]
    detail.append(
        f"knows {len(status.peers)} peer(s), {len(online)} online, {len(coordinators)} coordinator(s)"
    )
    level: Status = "ok"
    fix = ""
    if status.role == "worker":
        registered = [
            b.status.peer_id
            for b in bootstraps
            if b.status is not None
            and b.status.role == "coordinator"
            and any(w.peer_id == status.peer_id and w.online for w in b.status.workers)
        ]
        if registered:
            detail.append(f"registered with {len(registered)} bootstrap coordinator(s)")
        if not coordinators and not registered:
            level = "warn"
            detail.append("no coordinator online: it gets no jobs")
            fix = "check its --bootstrap address and that a coordinator of the network runs"
    if status.paused:
        level = "warn"
        detail.append("PAUSED: it takes no new work")
        fix = f"opengrid node resume --data-dir {config.data_dir}"
    else:
        detail.append("taking work" if status.role != "coordinator" else "accepting jobs")
    if status.network and status.network != config.network:
        level = "warn"
        detail.append(f"on network {status.network!r}, not {config.network!r} as these settings say")
        fix = f"use --network {status.network} here, or restart the node with these settings"
    return Check(name, level, "; ".join(detail), fix)


def bootstrap_checks(config: NodeConfig, role: str, probes: Sequence[Probe]) -> list[Check]:
    """One check per bootstrap address (or one saying there is none)."""
    if not config.bootstrap:
        if role == "coordinator":
            return [
                Check(
                    "bootstrap",
                    "ok",
                    "none: this coordinator starts its own network; others join with the address it prints",
                )
            ]
        return [
            Check(
                "bootstrap",
                "fail",
                f"no bootstrap configured: a {role} needs a bootstrap address to join a network",
                "pass --bootstrap with any node's full multiaddr (or a /dns4/ or /dnsaddr/ name a grid "
                'publishes), or set bootstrap = ["..."] in config.toml',
            )
        ]
    checks = []
    for found in probes:
        name = f"bootstrap {found.address}"
        if found.status is None:
            checks.append(Check(name, "fail", found.error, found.fix))
            continue
        status = found.status
        resolves = f"resolves to {', '.join(found.resolved)}; " if found.resolved else ""
        rtt = f"{found.rtt_s * 1000:.1f} ms" if found.rtt_s is not None else "?"
        online = [p for p in status.peers if p.online]
        coordinators = sum("coordinator" in p.roles for p in online) + (status.role == "coordinator")
        itself = " (itself included)" if status.role == "coordinator" else ""
        detail = (
            f"{resolves}reachable, RTT {rtt} (best of {RTT_SAMPLES}): a {status.role} on network "
            f"{status.network or '?'!r} that knows {len(status.peers)} peer(s), {len(online)} online; "
            f"{coordinators} coordinator(s) online{itself}"
        )
        if status.network and status.network != config.network:
            checks.append(
                Check(
                    name,
                    "fail",
                    f"{detail}; but it is on network {status.network!r} and this node would use "
                    f"{config.network!r}",
                    f"use --network {status.network} (or OPENGRID_NETWORK)",
                )
            )
        elif coordinators == 0:
            checks.append(
                Check(
                    name,
                    "warn",
                    f"{detail}: a worker would hear of no coordinator to register with",
                    "start a coordinator, or bootstrap from one",
                )
            )
        else:
            checks.append(Check(name, "ok", detail))
    return checks


def peers_by_role(status: NodeStatus) -> dict[str, int]:
    """Online peers a node's status lists, counted by announced role (a peer with two roles counts in
    each), sorted by role."""
    counts: dict[str, int] = {}
    for peer in status.peers:
        if peer.online:
            for role in peer.roles:
                counts[role] = counts.get(role, 0) + 1
    return dict(sorted(counts.items()))


LAN_LOOK_S = 2.0
"""How long ``doctor`` listens for nodes of the network on the LAN (mDNS)."""


def _look_on_the_lan(config: NodeConfig) -> LanLook | None:
    """The nodes of the network that answer on the LAN (mDNS, where the node would use it); None when
    LAN discovery is off or the node listens on no IPv4 address."""
    from opengrid.net.host import derive_psk
    from opengrid.net.lan import lan_scope, look_for_grid

    scope = lan_scope(() if config.no_listen else config.listen)
    if not config.lan or scope is None:
        return None
    psk = derive_psk(config.network, config.network_key) if config.network_key else None
    try:
        found = trio.run(
            lambda: look_for_grid(network=config.network, scope=scope, wait_s=LAN_LOOK_S, psk=psk)
        )
    except OpenGridError as exc:
        return LanLook(scope, [], error=str(exc))
    return LanLook(scope, [peer.peer_id for peer in found])


@dataclass(frozen=True)
class LanLook:
    """What ``doctor`` heard on the LAN: where it listened, the peers of the network that answered."""

    scope: tuple[str, ...]
    peers: list[str]
    error: str = ""

    def describe(self) -> str:
        where = ", ".join(self.scope) or "every interface"
        if self.error:
            return f"LAN (mDNS on {where}): unusable, {self.error}"
        return (
            f"LAN (mDNS on {where}): {len(self.peers)} node(s) of this network answered in {LAN_LOOK_S:.0f} s"
        )


def discovery_check(
    config: NodeConfig,
    role: str,
    running: Probe | None,
    bootstraps: Sequence[Probe],
    *,
    lan: LanLook | None = None,
) -> Check:
    """How this node finds (or would find) peers, and what a running node has found (spec/discovery.md):
    the bootstrap addresses first, and the nodes of the network that answer on the LAN (mDNS, ``lan``);
    through the peers they lead to, gossip announcements and the DHT's ``role:coordinator`` provider
    records; relays for peers it cannot dial. The node does not record which of these found each peer,
    so a running node's peers are counted by role."""
    name = "discovery"
    reached = [b for b in bootstraps if b.status is not None]
    paths = (
        f"{len(config.bootstrap)} bootstrap address(es), {len(reached)} answering; "
        + (f"{lan.describe()}; " if lan is not None else "LAN discovery off; ")
        + "then gossip announcements and the DHT's role:coordinator records through the peers they lead "
        "to; relays for peers it cannot dial"
    )
    status = running.status if running is not None else None
    if status is not None:
        counts = peers_by_role(status)
        known = ", ".join(f"{n} {r}(s)" for r, n in counts.items()) or "no peer online"
        detail = (
            f"paths: {paths}. The running node knows {len(status.peers)} peer(s): {known} online (it does "
            "not record which path found each)"
        )
        lonely = not counts and not (status.role == "coordinator" and not config.bootstrap)
        if lonely:
            return Check(name, "warn", detail, _discovery_fix(config, bootstraps))
        return Check(name, "ok", detail)
    detail = f"paths: {paths}; no node runs on this data dir to say what it found"
    if not config.bootstrap:
        if lan is not None and lan.peers and role != "coordinator":
            return Check(name, "ok", f"{detail}; it would join the grid it finds on the LAN")
        if role == "coordinator":
            return Check(name, "ok", f"{detail}; a coordinator without bootstrap starts its own network")
        return Check(
            name, "fail", f"{detail}: this {role} would find no peer", _discovery_fix(config, bootstraps)
        )
    if not reached:
        return Check(name, "fail", f"{detail}: no bootstrap answered, so it would find no peer",
                     _discovery_fix(config, bootstraps))  # fmt: skip
    return Check(name, "ok", detail)


def _discovery_fix(config: NodeConfig, bootstraps: Sequence[Probe]) -> str:
    if not config.bootstrap:
        fix = "no bootstrap configured: pass --bootstrap or set bootstrap in config.toml"
        if config.lan:
            fix += ", or start a node of this network on the LAN first (none answered)"
        return fix
    unresolved = [b.address for b in bootstraps if b.status is None and "does not resolve" in b.error]
    if unresolved:
        return f"{', '.join(unresolved)} does not resolve: fix the name or pass an /ip4/ address"
    if not any(b.status is not None for b in bootstraps):
        return "no bootstrap address answers: see the bootstrap lines above"
    return "the bootstrap nodes answer but know no peer online: start a coordinator, or bootstrap from one"


def reachability_check(listen: Sequence[str], found: DialBack | None) -> Check:
    """Could a bootstrap node dial this node on a fresh connection (spec/discovery.md §9)?"""
    if not listen:
        return Check("reachability", "ok", "relayed only: this node listens on no address")
    if found is None:
        return Check(
            "reachability", "warn", "not checked: no bootstrap node answered to dial this node back",
            "fix the bootstrap address first; a running node checks itself once joined (opengrid peers)",
        )  # fmt: skip
    if found.error:
        return Check("reachability", "warn", f"not checked: asking {found.checker} failed ({found.error})")
    reached = [r.addr for r in found.results if r.reachable]
    told = "; ".join(f"{r.addr}: {r.reason}" for r in found.results)
    if reached:
        return Check(
            "reachability",
            "ok",
            f"{found.checker} dialled {found.whose} {', '.join(reached)} on a fresh connection",
        )
    if found.results and not any(r.dialled for r in found.results):
        return Check(
            "reachability", "warn", f"{found.checker} would not dial {found.whose} addresses ({told})"
        )
    ports = sorted(
        {a.rsplit("/tcp/", 1)[1].split("/")[0] for a in (r.addr for r in found.results) if "/tcp/" in a}
    )
    return Check(
        "reachability",
        "fail",
        f"{found.checker} could not dial {found.whose} addresses ({told}): peers cannot reach this node",
        f"open TCP port {', '.join(ports) or 'PORT'} in the firewall (and forward it on your router), or "
        "start with --relay-via RELAY_ADDRESS to be reached through a relay",
    )


def relay_check(listen: Sequence[str], running_addrs: Sequence[str] = ()) -> Check:
    """Circuit relays (spec/discovery.md §8), taken automatically when peers cannot dial a node (§9.3):
    through which relay the running node is reached, if any, else what relays mean for this node."""
    from opengrid.net.relay import is_circuit, relays_of

    relays = relays_of(running_addrs)
    if relays:
        through = ", ".join(f"{peer} ({address})" for peer, address in relays)
        direct = [a for a in running_addrs if not is_circuit(a)]
        also = (
            "; peers that can dial it use its direct address(es) first"
            if direct
            else "; it has no direct address: every connection goes through the relay"
        )
        return Check("relay", "ok", f"the running node is reachable through relay {through}{also}")
    kinds = set()
    for text in listen:
        try:
            kinds.add(classify_host(parse_tcp_multiaddr(text).host))
        except ValueError:
            continue
    detail = (
        "a node that others cannot dial (see reachability; a running node checks it with its peers) takes a "
        "relay by itself, or uses --relay-via RELAY (or --no-listen, to be relayed by its bootstrap nodes; "
        "coordinators relay by default); hole punching to a direct connection is tried but not assured"
    )
    if not listen:
        return Check("relay", "ok", "this node listens on no address: it is reachable only through relays")
    if kinds <= {"loopback"}:
        return Check(
            "relay",
            "warn",
            f"{detail}; it listens on loopback only, so only nodes on this machine can reach it directly",
            f"to join other machines listen on /ip4/0.0.0.0/tcp/{EXAMPLE_PORT} and open that port, or add "
            "--relay-via with a reachable node's address",
        )
    return Check("relay", "ok", detail)


# ── output ───────────────────────────────────────────────────────────────────────────────────────────

_MARKS = {"ok": "[ ok ]", "warn": "[warn]", "fail": "[FAIL]"}


def _print_report(report: dict[str, Any], out: TextIO | None = None) -> None:
    out = out or sys.stdout
    file = report["config_file"] or "none"
    print(
        f"opengrid doctor: the settings `node start` would use (a {report['role']} on network "
        f"{report['network']!r}; config file: {file})",
        file=out,
    )
    checks: list[Check] = report["checks"]
    for check in checks:
        print(f"{_MARKS[check.status]} {check.name}: {check.detail}", file=out)
        if check.fix and check.status != "ok":
            print(f"       fix: {check.fix}", file=out)
    failed = sum(c.status == "fail" for c in checks)
    warned = sum(c.status == "warn" for c in checks)
    if failed:
        print(
            f"{failed} check(s) failed, {warned} warning(s): fix the failures before `node start`.", file=out
        )
    else:
        print(f"no check failed ({warned} warning(s)).", file=out)

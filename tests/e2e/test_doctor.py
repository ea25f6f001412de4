"""`opengrid doctor` against a real coordinator on 127.0.0.1: reachable and unreachable bootstraps, bad
addresses, a listen port already taken, a node already running on the data dir, and ``--json``; how the
node finds peers (issue 19): DNS bootstrap names resolved (through an injected resolver) or named as not
resolving, no bootstrap at all, and a running worker's peers by role.

The coordinator is a real node (real libp2p on loopback) in this process, on its own trio loop on a
thread (doctor runs trio on the test's); the command runs in this process too (fixture ``cli``). Only the
running worker is an OS process (``slow``)."""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import queue
import secrets
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import trio
from nacl.signing import SigningKey

from opengrid.cli import doctor
from opengrid.net.keys import peer_id_of
from opengrid.net.names import Resolver
from opengrid.node.config import NodeConfig
from opengrid.node.service import Node
from opengrid.wire.messages import DialBackResult
from tests.e2e.conftest import Cli
from tests.e2e.test_node_cli import wait_for_line


def _clean_env(tmp: pathlib.Path) -> dict[str, str]:
    """The environment without OPENGRID_* settings, and with a config dir that holds no config file."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENGRID_")}
    env["XDG_CONFIG_HOME"] = str(tmp / "xdg-config")
    env["OPENGRID_LAN"] = "false"  # grids of two doctor tests must not find each other (mDNS)
    env["OPENGRID_LISTEN"] = "/ip4/127.0.0.1/tcp/0"  # node start's own default is every interface
    return env


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, pathlib.Path]]:
    """A coordinator on a free loopback port, in this process on a thread of its own: (its full multiaddr,
    its data dir)."""
    data_dir = tmp_path_factory.mktemp("doctor") / "coordinator"
    started: queue.Queue[tuple[str, trio.lowlevel.TrioToken, trio.CancelScope] | BaseException] = (
        queue.Queue()
    )

    async def serve() -> None:
        node = Node(NodeConfig(data_dir=data_dir, role="coordinator"))  # loopback, LAN discovery off
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                await nursery.start(node.run)
                assert node.host is not None
                started.put((node.host.addrs()[0], trio.lowlevel.current_trio_token(), scope))

    def run() -> None:
        try:
            trio.run(serve)
        except BaseException as exc:  # the test's thread raises it
            started.put(exc)

    thread = threading.Thread(target=run, name="doctor-coordinator")
    thread.start()
    got = started.get(timeout=60)
    if isinstance(got, BaseException):
        raise got
    address, token, scope = got
    try:
        yield address, data_dir
    finally:
        trio.from_thread.run_sync(scope.cancel, trio_token=token)
        thread.join(timeout=30)
        assert not thread.is_alive(), "the coordinator did not stop"


def _doctor_env(tmp: pathlib.Path) -> dict[str, str]:
    """``_clean_env`` for the command line in this process: the suite's environment has no other
    OPENGRID_* variable (tests/conftest.py drops them)."""
    return {k: v for k, v in _clean_env(tmp).items() if k.startswith("OPENGRID_") or k == "XDG_CONFIG_HOME"}


def _diagnose(tmp: pathlib.Path, *argv: str, resolver: Resolver | None = None) -> dict[str, Any]:
    """Run doctor in this process on an empty config file, with no OPENGRID_* variables (and DNS names
    resolved by ``resolver`` when given: tests never use real DNS)."""
    config = tmp / "config.toml"
    config.touch()
    parser = argparse.ArgumentParser()
    doctor.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["doctor", "--config", str(config), *argv])
    # LAN discovery off unless a test passes --lan: other tests' nodes announce on loopback too.
    env = {"OPENGRID_LAN": "false", "OPENGRID_LISTEN": "/ip4/127.0.0.1/tcp/0"}
    return doctor.diagnose(args, env, resolver=resolver)


def _check(report: dict[str, Any], prefix: str) -> doctor.Check:
    found: list[doctor.Check] = [c for c in report["checks"] if c.name.startswith(prefix)]
    assert len(found) == 1, report["checks"]
    return found[0]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ── the command as a user runs it (main(argv), in this process) ──────────────────────────────────────


def test_reachable_bootstrap_gives_its_rtt_role_and_exit_status_0(
    coordinator: tuple[str, pathlib.Path], tmp_path: pathlib.Path, cli: Cli
) -> None:
    address, _ = coordinator
    result = cli(
        "doctor",
        "--json",
        "--data-dir",
        str(tmp_path / "w"),
        "--bootstrap",
        address,
        env=_doctor_env(tmp_path),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is True and report["role"] == "worker"
    checks = {c["name"]: c for c in report["checks"]}
    assert {"config", "data dir", "identity", "running node", "relay"} <= set(checks)
    assert all(set(c) == {"name", "status", "detail", "fix"} for c in checks.values())
    bootstrap = checks[f"bootstrap {address}"]
    assert bootstrap["status"] == "ok"
    assert "RTT" in bootstrap["detail"] and " ms" in bootstrap["detail"]
    assert "a coordinator on network 'opengrid-local'" in bootstrap["detail"]
    assert "--relay-via" in checks["relay"]["detail"]


def test_closed_bootstrap_port_fails_with_exit_status_1_and_a_firewall_fix(
    coordinator: tuple[str, pathlib.Path], tmp_path: pathlib.Path, cli: Cli
) -> None:
    peer_id = coordinator[0].split("/p2p/")[1]
    port = _free_port()
    address = f"/ip4/127.0.0.1/tcp/{port}/p2p/{peer_id}"
    result = cli(
        "doctor", "--data-dir", str(tmp_path / "w"), "--bootstrap", address, env=_doctor_env(tmp_path)
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith(f"[FAIL] bootstrap {address}"))
    assert "connection refused" in line
    fix = result.stdout.split(line, 1)[1].splitlines()[1]
    assert "fix:" in fix and "firewall" in fix and f"TCP port {port}" in fix


# ── the checks, in this process ──────────────────────────────────────────────────────────────────────


def test_bad_bootstrap_multiaddrs_are_explained(tmp_path: pathlib.Path) -> None:
    report = _diagnose(
        tmp_path, "--data-dir", str(tmp_path / "w"), "--bootstrap", "not-a-multiaddr",
        "--bootstrap", "/ip4/127.0.0.1/tcp/4001",
    )  # fmt: skip
    config = _check(report, "config")
    assert config.status == "fail" and "'not-a-multiaddr' is not a multiaddr" in config.detail
    bad = _check(report, "bootstrap not-a-multiaddr")
    assert bad.status == "fail" and "is not a multiaddr" in bad.detail and "/p2p/" in bad.detail
    no_peer = _check(report, "bootstrap /ip4/127.0.0.1/tcp/4001")
    assert no_peer.status == "fail" and "no /p2p/PEER_ID" in no_peer.detail
    assert doctor.has_failures(report["checks"])


def test_a_listen_port_in_use_fails(tmp_path: pathlib.Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        report = _diagnose(
            tmp_path, "--data-dir", str(tmp_path / "c"), "--listen", f"/ip4/127.0.0.1/tcp/{port}"
        )
    listen = _check(report, "listen ")
    assert listen.status == "fail" and "already in use" in listen.detail
    assert "another port" in listen.fix
    assert doctor.has_failures(report["checks"])


def test_a_free_fixed_port_on_all_interfaces_is_ok_and_says_what_to_forward(tmp_path: pathlib.Path) -> None:
    port = _free_port()
    report = _diagnose(tmp_path, "--data-dir", str(tmp_path / "c"), "--listen", f"/ip4/0.0.0.0/tcp/{port}")
    listen = _check(report, "listen ")
    assert listen.status == "ok" and f"TCP port {port}" in listen.detail
    assert f"forward TCP port {port}" in listen.fix
    assert _check(report, "relay").status == "ok"
    assert _check(report, "bootstrap").status == "ok"  # a coordinator needs none
    assert not doctor.has_failures(report["checks"])


def test_a_node_running_on_the_data_dir_is_reported(
    coordinator: tuple[str, pathlib.Path], tmp_path: pathlib.Path
) -> None:
    address, data_dir = coordinator
    peer_id = address.split("/p2p/")[1]
    report = _diagnose(tmp_path, "--data-dir", str(data_dir))
    assert f"peer id {peer_id}" in _check(report, "identity").detail
    running = _check(report, "running node")
    assert running.status == "ok"
    assert f"a coordinator is running: {peer_id}" in running.detail and "peer(s)" in running.detail
    assert not doctor.has_failures(report["checks"])


def test_a_bootstrap_on_another_network_fails_and_names_it(
    coordinator: tuple[str, pathlib.Path], tmp_path: pathlib.Path
) -> None:
    report = _diagnose(
        tmp_path, "--data-dir", str(tmp_path / "w"), "--network", "elsewhere", "--bootstrap", coordinator[0]
    )
    check = _check(report, "bootstrap ")
    assert check.status == "fail" and "'opengrid-local'" in check.detail
    assert "--network opengrid-local" in check.fix


def test_the_bootstrap_dials_a_listener_back_on_a_fresh_connection(
    coordinator: tuple[str, pathlib.Path], tmp_path: pathlib.Path
) -> None:
    report = _diagnose(tmp_path, "--data-dir", str(tmp_path / "w"), "--bootstrap", coordinator[0])
    check = _check(report, "reachability")
    assert check.status == "ok", check
    assert f"{coordinator[0]} dialled a test listener's /ip4/127.0.0.1/tcp/" in check.detail


def test_an_unreachable_node_is_told_which_port_to_open_or_to_use_a_relay() -> None:
    checker = "/ip4/127.0.0.1/tcp/4002/p2p/12D3KooWExample"
    failed = DialBackResult("/ip4/192.168.1.5/tcp/4001", False, "connection failed: Connection refused")
    check = doctor.reachability_check(
        ["/ip4/0.0.0.0/tcp/4001"], doctor.DialBack(checker, "the running node's", [failed])
    )
    assert check.status == "fail" and "Connection refused" in check.detail
    assert "TCP port 4001" in check.fix and "--relay-via" in check.fix
    refused = DialBackResult("/ip4/192.168.1.5/tcp/4001", False, "not dialled: came through a relay", False)
    check = doctor.reachability_check(["/ip4/0.0.0.0/tcp/4001"], doctor.DialBack(checker, "x", [refused]))
    assert check.status == "warn" and "would not dial" in check.detail
    assert doctor.reachability_check([], None).status == "ok"
    assert doctor.reachability_check(["/ip4/0.0.0.0/tcp/4001"], None).status == "warn"


def test_a_stale_node_json_is_not_a_running_node(tmp_path: pathlib.Path) -> None:
    data_dir = tmp_path / "old"
    data_dir.mkdir()
    (data_dir / "node.json").write_text(
        json.dumps({"peer_id": "x", "role": "worker", "addrs": [], "network": "opengrid-local"})
    )
    running = _check(_diagnose(tmp_path, "--data-dir", str(data_dir)), "running node")
    assert running.status == "ok" and "earlier run" in running.detail


# ── pure parts ───────────────────────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize(
    ("host", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("192.168.1.20", "private"),
        ("10.0.0.5", "private"),
        ("169.254.3.4", "private"),
        ("fe80::1", "private"),
        ("8.8.8.8", "public"),
        ("0.0.0.0", "any"),
        ("::", "any"),
    ],
)
def test_hosts_are_classified_by_who_can_reach_them(host: str, kind: str) -> None:
    assert doctor.classify_host(host) == kind


def test_port_zero_warns_and_suggests_a_fixed_port() -> None:
    check = doctor.listen_check("/ip4/127.0.0.1/tcp/0")
    assert check.status == "warn" and "new free port at every start" in check.detail
    assert "tcp/4001" in check.fix


def test_tcp_multiaddrs_are_parsed_and_others_refused() -> None:
    parsed = doctor.parse_tcp_multiaddr(
        "/ip4/10.0.0.1/tcp/4001/p2p/12D3KooWFXwpFXm2Hezt1fv3kke7tw1V9KQZcngJPLFGtupyF8hN"
    )
    assert (parsed.host, parsed.port, parsed.peer_id[:8]) == ("10.0.0.1", 4001, "12D3KooW")
    for bad in ("garbage", "/ip4/10.0.0.1/udp/4001", "/ip4/10.0.0.1"):
        with pytest.raises(ValueError):
            doctor.parse_tcp_multiaddr(bad)


def test_the_relay_a_running_node_is_reached_through_is_named() -> None:
    relay = "12D3KooWRe1ayPeerAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
    me = "12D3KooWMyPeerBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB"
    relay_address = f"/ip4/203.0.113.7/tcp/4001/p2p/{relay}"
    direct = f"/ip4/192.168.1.5/tcp/4001/p2p/{me}"
    circuit = f"{relay_address}/p2p-circuit/p2p/{me}"

    check = doctor.relay_check(["/ip4/0.0.0.0/tcp/4001"], [direct, circuit])
    assert check.status == "ok"
    assert f"reachable through relay {relay} ({relay_address})" in check.detail
    assert "direct address" in check.detail and "first" in check.detail

    relayed_only = doctor.relay_check([], [circuit])
    assert f"through relay {relay}" in relayed_only.detail and "no direct address" in relayed_only.detail

    # no circuit address: what relays would mean for this node, as before
    assert "takes a relay by itself" in doctor.relay_check(["/ip4/0.0.0.0/tcp/4001"], [direct]).detail


# ── discovery: DNS names, no bootstrap, a running node's peers (issue 19) ───────────────────────────


def _resolver(hosts: dict[str, list[str]], txt: dict[str, list[str]]) -> Resolver:
    """DNS as a table: a name not in it does not exist (as ``getaddrinfo`` says of a ``.invalid`` name)."""

    async def lookup_host(name: str, family: int) -> list[str]:
        if name not in hosts:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return hosts[name]

    async def lookup_txt(name: str) -> list[str]:
        return txt.get(name, [])

    return Resolver(lookup_host=lookup_host, lookup_txt=lookup_txt, timeout_s=5.0)


def test_dns_bootstrap_names_are_resolved_then_dialled(
    coordinator: tuple[str, pathlib.Path], tmp_path: pathlib.Path
) -> None:
    address, _ = coordinator
    port, peer_id = address.split("/tcp/")[1].split("/p2p/")
    by_host = f"/dns4/boot.grid.test/tcp/{port}/p2p/{peer_id}"
    resolver = _resolver({"boot.grid.test": ["127.0.0.1"]}, {"_dnsaddr.grid.test": [f"dnsaddr={by_host}"]})
    report = _diagnose(
        tmp_path, "--data-dir", str(tmp_path / "w"), "--role", "worker", "--listen", "/ip4/127.0.0.1/tcp/0",
        "--bootstrap", by_host, "--bootstrap", "/dnsaddr/grid.test", resolver=resolver,
    )  # fmt: skip
    for name in (by_host, "/dnsaddr/grid.test"):
        check = _check(report, f"bootstrap {name}")
        assert check.status == "ok", check
        assert check.detail.startswith(f"resolves to {address}; reachable, RTT"), check.detail
        assert "a coordinator on network 'opengrid-local'" in check.detail
    discovery = _check(report, "discovery")
    assert discovery.status == "ok", discovery
    assert (
        "2 bootstrap address(es), 2 answering" in discovery.detail and "role:coordinator" in discovery.detail
    )
    assert not doctor.has_failures(report["checks"])


def test_an_unresolvable_name_and_an_unreachable_address_are_each_explained(tmp_path: pathlib.Path) -> None:
    peer = "12D3KooWN5TM5CbW1QRMfb4Rui58doGzeD2AvdHtagrxTSGtCyCo"
    invalid = f"/dns4/bootstrap.invalid/tcp/4001/p2p/{peer}"  # RFC 6761: .invalid never resolves
    closed = f"/ip4/127.0.0.1/tcp/{_free_port()}/p2p/{peer}"
    empty = "/dnsaddr/no-records.test"
    resolver = _resolver({}, {})
    report = _diagnose(
        tmp_path, "--data-dir", str(tmp_path / "w"), "--role", "worker", "--bootstrap", invalid,
        "--bootstrap", closed, "--bootstrap", empty, resolver=resolver,
    )  # fmt: skip
    unresolved = _check(report, f"bootstrap {invalid}")
    assert unresolved.status == "fail"
    assert unresolved.detail.startswith("name bootstrap.invalid does not resolve:"), unresolved.detail
    assert "Name or service not known" in unresolved.detail
    assert "getent hosts bootstrap.invalid" in unresolved.fix and "/ip4/" in unresolved.fix
    no_txt = _check(report, f"bootstrap {empty}")
    assert no_txt.status == "fail" and "_dnsaddr.no-records.test has no dnsaddr= TXT record" in no_txt.detail
    assert "dig TXT _dnsaddr.no-records.test" in no_txt.fix
    refused = _check(report, f"bootstrap {closed}")
    assert refused.status == "fail" and "connection refused" in refused.detail
    discovery = _check(report, "discovery")
    assert discovery.status == "fail" and "3 bootstrap address(es), 0 answering" in discovery.detail
    assert "no bootstrap answered, so it would find no peer" in discovery.detail
    assert f"{invalid}, {empty} does not resolve" in discovery.fix


def test_no_bootstrap_for_a_worker_says_where_to_set_one(tmp_path: pathlib.Path) -> None:
    report = _diagnose(tmp_path, "--data-dir", str(tmp_path / "w"), "--role", "worker")
    bootstrap = _check(report, "bootstrap")
    assert bootstrap.status == "fail" and bootstrap.detail.startswith("no bootstrap configured")
    assert "--bootstrap" in bootstrap.fix and "config.toml" in bootstrap.fix
    discovery = _check(report, "discovery")
    assert discovery.status == "fail" and "this worker would find no peer" in discovery.detail
    assert discovery.fix == "no bootstrap configured: pass --bootstrap or set bootstrap in config.toml"
    lone = _check(_diagnose(tmp_path, "--data-dir", str(tmp_path / "c")), "discovery")  # auto: coordinator
    assert lone.status == "ok" and "starts its own network" in lone.detail


@pytest.mark.slow
def test_a_running_worker_reports_the_peers_it_found_by_role(
    coordinator: tuple[str, pathlib.Path], tmp_path: pathlib.Path
) -> None:
    address, _ = coordinator
    data_dir = tmp_path / "w"
    env = _clean_env(tmp_path) | {
        "HOME": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path / "cache"), "OPENGRID_SKIP_SPEED_TEST": "true",
    }  # fmt: skip
    cmd = [sys.executable, "-m", "opengrid", "node", "start", "--role", "worker", "--model", "tiny"]
    cmd += ["--listen", "/ip4/127.0.0.1/tcp/0", "--data-dir", str(data_dir), "--bootstrap", address]
    worker = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        wait_for_line(worker, "ready on")
        # The worker hears the coordinator's gossip announcement within a few heartbeats; each diagnosis
        # dials it afresh (a few hundred ms on loopback), at most 30 of them.
        seen = ""
        for _ in range(30):
            discovery = _check(_diagnose(tmp_path, "--data-dir", str(data_dir)), "discovery")
            seen = discovery.detail
            if "1 coordinator(s) online" in seen:
                break
        assert discovery.status == "ok", discovery
        assert "The running node knows 1 peer(s): 1 coordinator(s) online" in seen, seen
        assert "it does not record which path found each" in seen
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.communicate(timeout=30)
        finally:
            worker.kill()


def _announce_until(network: str, peer: str, announced: threading.Event, done: threading.Event) -> None:
    """On its own thread: announce ``peer`` of ``network`` on loopback (mDNS) until ``done``."""
    from opengrid.net.lan import LanDiscovery

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            lan = await nursery.start(
                LanDiscovery(peer_id=peer, network=network, scope=("127.0.0.1",), port=4001).run
            )
            with trio.fail_after(20):
                while not lan.announced:
                    await trio.sleep(0.05)
            announced.set()
            while not done.is_set():
                await trio.sleep(0.05)
            nursery.cancel_scope.cancel()

    trio.run(run)


def test_doctor_reports_the_nodes_of_the_network_it_hears_on_the_lan(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    network = f"doctor-lan-{secrets.token_hex(4)}"
    argv = ("--data-dir", str(tmp_path / "w"), "--role", "worker", "--lan", "--network", network)
    with monkeypatch.context() as quick:  # nobody announces this fresh network: a shorter look hears
        quick.setattr(doctor, "LAN_LOOK_S", 0.5)  # the same silence (the look that must hear keeps 2 s)
        discovery = _check(_diagnose(tmp_path, *argv), "discovery")
    assert "LAN (mDNS on 127.0.0.1): 0 node(s) of this network answered" in discovery.detail
    assert discovery.status == "fail" and "on the LAN first (none answered)" in discovery.fix
    announced, done = threading.Event(), threading.Event()
    # A peer id of its own: the mDNS service name is made of it, and another test process on this machine
    # (tests/net/test_lan.py announces a fixed one) would make the registration fail as a duplicate name.
    peer = peer_id_of(bytes(SigningKey.generate().verify_key))
    announcer = threading.Thread(target=_announce_until, args=(network, peer, announced, done))
    announcer.start()
    try:
        assert announced.wait(timeout=30)
        discovery = _check(_diagnose(tmp_path, *argv), "discovery")
    finally:
        done.set()
        announcer.join(timeout=30)
    assert "LAN (mDNS on 127.0.0.1): 1 node(s) of this network answered" in discovery.detail
    assert discovery.status == "ok" and "it would join the grid it finds on the LAN" in discovery.detail

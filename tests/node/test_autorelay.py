"""Automatic relay (spec/discovery.md §9.3) and hole punching (§8.5) on real nodes in one process.

A worker that listens, but that peers cannot dial, takes a relay by itself, announces and registers with
its relayed address, receives a job through the relay, then gets a direct connection by hole punching,
and drops the relay when peers can dial it again.

NAT is simulated the way tests/node/test_membership.py does: the worker's host reports a listen address
on a closed port (through the libp2p host's address factory, so identify, announcements, registrations
and DCUtR all report it). The coordinator also forgets the worker's real address it learned before the
"NAT" (as it never would have learned it behind one).
"""

from __future__ import annotations

import logging
import pathlib
import secrets
import socket

import multiaddr
import pytest
import trio
from libp2p.peer.id import ID

from opengrid.cli.main import peers_headline
from opengrid.core.coordinator import CoordinatorConfig
from opengrid.engines import LlamaEngine, ModelInfo, sha256_file
from opengrid.net.host import Host
from opengrid.net.relay import is_circuit, relays_of
from opengrid.node.config import NodeConfig
from opengrid.node.service import Node
from opengrid.wire.messages import JobAccepted, Message, RegisterWorker, SubmitJob
from tests.node.workers import client_host
from tests.waiting import until


def circuits(host: Host) -> list[str]:
    return [a for a in host.addrs() if is_circuit(a)]


async def test_a_private_worker_takes_a_relay_by_itself_is_reached_through_it_and_drops_it_when_public(
    tmp_path: pathlib.Path, tiny_model_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="opengrid")
    plain = CoordinatorConfig.plain(heartbeat_s=30)
    async with trio.open_nursery() as nursery:
        # C dispatches jobs and does not relay; R is a coordinator that relays (the default).
        c = Node(
            NodeConfig(data_dir=tmp_path / "c", role="coordinator", relay=False, heartbeat_s=30),
            coordinator_config=plain,
        )
        await nursery.start(c.run)
        assert c.host is not None
        r = Node(
            NodeConfig(
                data_dir=tmp_path / "r", role="coordinator", bootstrap=(c.host.addrs()[0],), heartbeat_s=30
            ),
            coordinator_config=plain,
        )
        await nursery.start(r.run)
        assert r.host is not None
        w = Node(
            NodeConfig(
                data_dir=tmp_path / "w",
                role="worker",
                bootstrap=(c.host.addrs()[0],),
                heartbeat_s=30,  # no heartbeat re-dials C before the job (test_relay.py explains)
                announce_s=0.3,
            ),
            engine=LlamaEngine(
                ModelInfo(name="tiny", path=tiny_model_path, sha256=sha256_file(tiny_model_path)), n_threads=1
            ),
        )
        await nursery.start(w.run)
        assert w.host is not None and w.membership is not None and w.auto_relay is not None
        me = w.host.peer_id
        await until(lambda: r.host is not None and me in {p.peer_id for p in r.status().peers}, 20)
        await until(lambda: {c.host.peer_id, r.host.peer_id} <= {p.peer_id for p in w.status().peers}, 20)  # type: ignore[union-attr]
        assert await w.membership.check_reachability() == "public"
        assert circuits(w.host) == [] and w.auto_relay.keeper is None

        # "behind NAT": the worker listens on a port nobody can reach
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            closed = f"/ip4/127.0.0.1/tcp/{s.getsockname()[1]}"
        w.host.libp2p._addrs_factory = lambda _: [multiaddr.Multiaddr(closed)]  # type: ignore[attr-defined]
        assert await w.membership.check_reachability() == "private"

        # 1. it takes R (C refuses: it does not relay) and says so
        await until(lambda: bool(circuits(w.host)), 30)  # type: ignore[union-attr]
        assert w.auto_relay.keeper is not None and w.auto_relay.keeper.relay_peer == r.host.peer_id
        assert circuits(w.host)[0].startswith(f"{r.host.addrs()[0]}/p2p-circuit/p2p/{me}")
        said = [m.getMessage() for m in caplog.records if "reachable through relay" in m.getMessage()]
        assert any("peers cannot dial this node" in m and r.host.peer_id in m for m in said), said
        # the choice measured how near R is, and said it; `opengrid peers` and doctor name R
        rtt = w.auto_relay.rtt_of(r.host.peer_id)
        assert rtt is not None and 0 < rtt < 3, rtt
        assert any(f"RTT {rtt * 1000:.1f} ms" in m for m in said), said
        assert relays_of(w.status().addrs) == [(r.host.peer_id, r.host.addrs()[0])]
        assert f"(private, through relay {r.host.peer_id})" in peers_headline(w.status())

        # 2. its announcements and registrations carry the relayed address
        c.host.libp2p.get_peerstore().clear_addrs(ID.from_base58(me))  # forget the pre-"NAT" address
        await until(lambda: any(is_circuit(a) for a in c.host.known_addrs(me)), 10)  # type: ignore[union-attr]
        heard = {p.peer_id: p for p in c.status().peers}[me]
        assert heard.reachability == "private" and any(is_circuit(a) for a in heard.addrs)
        assert f"{closed}/p2p/{me}" in heard.addrs
        registered: list[RegisterWorker] = []
        on_register = c.coordinator_requests.on_register

        def spy(peer: str, message: RegisterWorker, operator: str = "") -> Message:
            registered.append(message)
            return on_register(peer, message, operator)

        c.coordinator_requests.on_register = spy  # type: ignore[method-assign]
        await w.registration.register_once(c.host.addrs()[0])  # a heartbeat, now rather than in 30 s
        assert registered and any(is_circuit(a) for a in registered[-1].listen_addrs), registered

        # 3. with its direct connection dropped, a job reaches it through R
        relayed_before = r.host.circuits.statistics().circuits_opened
        await c.host.disconnect(me)
        client = await nursery.start(client_host)
        peer = await client.connect(c.host.addrs()[0])
        job = SubmitJob(job_id=secrets.token_bytes(16), model="tiny", prompt="Hi", max_tokens=4, replicas=1)
        with trio.fail_after(60):
            reply = await client.request(peer, job)
        assert isinstance(reply, JobAccepted) and reply.workers == [me], reply
        assert r.host.circuits.statistics().circuits_opened == relayed_before + 1

        # 4. hole punching then replaces the relayed connection by a direct one (the worker dialled C)
        assert c.host.hole_punch is not None
        await until(lambda: c.host.is_connected(me) and not c.host.is_relayed(me), 30)  # type: ignore[union-attr]
        assert c.host.hole_punch.statistics().upgraded == 1
        await until(lambda: r.host.circuits.statistics().circuits_active == 0, 70)  # type: ignore[union-attr]
        job2 = SubmitJob(job_id=secrets.token_bytes(16), model="tiny", prompt="Hi", max_tokens=4, replicas=1)
        with trio.fail_after(60):
            reply = await client.request(peer, job2)
        assert isinstance(reply, JobAccepted) and reply.workers == [me], reply
        assert r.host.circuits.statistics().circuits_opened == relayed_before + 1  # not through R
        assert not c.host.is_relayed(me)

        # 5. reachable again: the worker drops the relay
        w.host.libp2p._addrs_factory = None  # type: ignore[attr-defined]
        assert await w.membership.check_reachability() == "public"
        await until(lambda: not circuits(w.host), 10)  # type: ignore[union-attr]
        assert w.auto_relay.keeper is None
        assert any("dropping the reservation on relay" in m.getMessage() for m in caplog.records)
        nursery.cancel_scope.cancel()

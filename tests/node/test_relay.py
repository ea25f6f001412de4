"""Circuit relay v2: a worker that listens on no address at all is reached through a relay.

Real nodes in one process on 127.0.0.1 (libp2p hosts, gossipsub, llama.cpp on the tiny model). The relay
is a bare host opened with ``relay=True`` (what ``opengrid node start --relay`` adds to a node), so that
nothing but relaying happens on it.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
import secrets

import pytest
import trio
from opengrid_ledger import Receipt, decode_entry, open_entry

from opengrid.core.coordinator import CoordinatorConfig
from opengrid.engines import LlamaEngine, ModelInfo, sha256_file
from opengrid.errors import ConfigError
from opengrid.net.host import Host, open_host
from opengrid.net.relay import RELAY_TIMING, RelayTiming, is_circuit
from opengrid.net.transport import LIBP2P, Libp2pTransport, Transport
from opengrid.node.config import NodeConfig
from opengrid.node.service import Node
from opengrid.wire.commitment import commit_output
from opengrid.wire.messages import JobAccepted, SubmitJob
from tests.node.workers import client_host
from tests.waiting import until


class RelayProcess:
    """A relay host that the test can stop and start again on the same address, with the same identity."""

    def __init__(self) -> None:
        self.seed = secrets.token_bytes(32)
        self.listen = "/ip4/127.0.0.1/tcp/0"
        self.host: Host | None = None
        self._scope: trio.CancelScope | None = None

    async def start(self, nursery: trio.Nursery) -> str:
        self.host = await nursery.start(self._run)
        address = self.host.addrs()[0]
        self.listen = address.rsplit("/p2p/", 1)[0]  # a restart binds the same port
        return address

    def stop(self) -> None:
        assert self._scope is not None
        self._scope.cancel()

    async def _run(self, *, task_status: trio.TaskStatus[Host]) -> None:
        with trio.CancelScope() as self._scope:
            async with open_host(self.seed, (self.listen,), relay=True) as host:
                task_status.started(host)
                await trio.sleep_forever()


PROMPT = RelayTiming(retry_s=0.1, retry_max_s=0.25, check_s=0.1, step_s=0.25)
"""A keeper that lost its relay retries every 0.25 s at most rather than backing off to 10 s (and notices
the loss within 0.1 s rather than 1 s), and the auto-relay steps every 0.25 s rather than every 5 s: the
tests below wait for a relay to go and come back, and these pauses (tuning, not what is tested) made most
of their time."""
ONE_TRY = Libp2pTransport(dial_retries=0)
"""Hosts that dial once: a keeper whose relay is down otherwise spends 0.7 s of library retries on every
attempt (with PROMPT's retries)."""


def online_workers(node: Node) -> set[str]:
    assert node.coordinator is not None
    return {r.peer for r in node.coordinator.workers.values() if r.online}


async def start_grid(
    nursery: trio.Nursery,
    tmp_path: pathlib.Path,
    model: pathlib.Path,
    relay_address: str,
    heartbeat_s: float,
    coordinator_relays: bool = False,
    timing: RelayTiming = RELAY_TIMING,
    transport: Transport = LIBP2P,
) -> tuple[Node, Node]:
    coordinator = Node(
        NodeConfig(
            data_dir=tmp_path / "c", role="coordinator", relay=coordinator_relays, heartbeat_s=heartbeat_s
        ),
        coordinator_config=CoordinatorConfig.plain(heartbeat_s=heartbeat_s),
        transport=transport,
    )
    await nursery.start(coordinator.run)
    assert coordinator.host is not None
    worker = Node(
        NodeConfig(
            data_dir=tmp_path / "w",
            role="worker",
            listen=(),  # no listen address: nobody can dial this node directly
            bootstrap=(coordinator.host.addrs()[0],),
            relay_via=(relay_address,),
            heartbeat_s=heartbeat_s,
            announce_s=0.3,
        ),
        engine=LlamaEngine(ModelInfo(name="tiny", path=model, sha256=sha256_file(model)), n_threads=1),
        relay_timing=timing,
        transport=transport,
    )
    await nursery.start(worker.run)
    return coordinator, worker


async def test_a_worker_reachable_only_through_a_relay_receives_and_completes_a_job(
    tmp_path: pathlib.Path, tiny_model_path: pathlib.Path
) -> None:
    """The worker listens on no address, so the only way anyone can open a connection *to* it is the
    relay. It registers by dialling *out* to the coordinator, and a job would ride that connection if it
    were still open — which would prove nothing about the relay. So, once the worker is registered, the
    coordinator drops every connection to it; the worker's next heartbeat is 30 s away (it must not dial
    out again before the job), and gossip does not re-dial while the worker still holds its connection to
    the relay. The coordinator must then dial the worker's announced circuit address to dispatch the job.
    We check that it did: the relay opened exactly one circuit, the coordinator's only connection to the
    worker is relayed (``/p2p/RELAY/p2p-circuit``), and the client gets a verified answer whose receipt
    pays that worker."""
    relay = RelayProcess()
    async with trio.open_nursery() as nursery:
        relay_address = await relay.start(nursery)
        assert relay.host is not None
        coordinator, worker = await start_grid(
            nursery, tmp_path, tiny_model_path, relay_address, heartbeat_s=30
        )
        assert coordinator.host is not None and worker.host is not None
        me = worker.host.peer_id
        with trio.fail_after(20):
            await worker.registered.wait()

        # what the worker announces and registers: its relayed address only
        assert worker.host.addrs() == [f"{relay_address}/p2p-circuit/p2p/{me}"]
        known = coordinator.host.known_addrs(me)
        assert known and all(is_circuit(a) for a in known), known
        assert relay.host.circuits.statistics().reservations_granted >= 1
        assert relay.host.circuits.statistics().circuits_opened == 0

        await coordinator.host.disconnect(me)  # the registration's direct connection must not carry the job
        assert not coordinator.host.is_connected(me)

        client = await nursery.start(client_host)
        peer = await client.connect(coordinator.host.addrs()[0])
        job = SubmitJob(job_id=secrets.token_bytes(16), model="tiny", prompt="Hi", max_tokens=4, replicas=1)
        with trio.fail_after(30):
            reply = await client.request(peer, job)

        assert isinstance(reply, JobAccepted), reply
        assert reply.workers == [me]
        receipt = open_entry(decode_entry(reply.receipt), coordinator.config.network)
        assert receipt.author == coordinator.public_key
        assert isinstance(receipt.payload, Receipt)
        assert receipt.payload.output_commitment == commit_output(reply.tokens, reply.text)
        # ... and the job travelled through the relay
        assert relay.host.circuits.statistics().circuits_opened == 1
        assert coordinator.host.is_relayed(me)
        assert worker.host.is_relayed(coordinator.host.peer_id)
        nursery.cancel_scope.cancel()


async def test_a_relayed_worker_goes_offline_when_its_relay_is_gone_and_returns_with_it(
    tmp_path: pathlib.Path,
    tiny_model_path: pathlib.Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Without a relay the worker cannot be reached, so it stops registering (with a warning saying why)
    and its coordinator marks it offline after three missed beats; when the relay restarts (same identity
    and port, no reservations) the worker reserves again, announces the address again and is back."""
    caplog.set_level(logging.WARNING, logger="opengrid")
    relay = RelayProcess()
    async with trio.open_nursery() as nursery:
        relay_address = await relay.start(nursery)
        coordinator, worker = await start_grid(
            nursery,
            tmp_path,
            tiny_model_path,
            relay_address,
            heartbeat_s=0.5,
            timing=PROMPT,
            transport=ONE_TRY,
        )
        assert coordinator.host is not None and worker.host is not None
        me = worker.host.peer_id
        await until(lambda: me in online_workers(coordinator), timeout=20)

        relay.stop()
        await until(lambda: me not in online_workers(coordinator), timeout=30)
        assert worker.host.addrs() == []  # nothing to announce: no listen address, no reservation
        warnings = [r.getMessage() for r in caplog.records if "not registering" in r.getMessage()]
        assert warnings and "no relay reservation" in warnings[0] and relay.host is not None
        assert relay.host.peer_id in warnings[0] and "--relay-via" in warnings[0]

        await relay.start(nursery)

        def state() -> str:
            keepers = "; ".join(f"held={k.held} problem={k.problem!r}" for k in worker.relay_keepers)
            return f"worker addrs {worker.host.addrs() if worker.host else None}, keepers: {keepers}"

        await until(lambda: me in online_workers(coordinator), timeout=75, state=state)
        # (after 60 s without its relay the worker looks for another; the coordinator does not relay)
        await until(lambda: worker.host.addrs() == [f"{relay_address}/p2p-circuit/p2p/{me}"], 10, state=state)  # type: ignore[union-attr]
        nursery.cancel_scope.cancel()


async def test_a_worker_whose_given_relay_is_gone_takes_another_and_returns_to_its_own(
    tmp_path: pathlib.Path,
    tiny_model_path: pathlib.Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A worker that listens on nothing, given one relay (--relay-via): when that relay is gone for longer
    than the grace (``SWITCH_AFTER_S``, 60 s, 1 s here) it reserves on a relay it knows of by itself
    (its coordinator, which relays) and is reachable again; when its own relay is back and holds a
    reservation, it lets the other one go (spec/discovery.md §9.3)."""
    caplog.set_level(logging.INFO, logger="opengrid")
    relay = RelayProcess()
    async with trio.open_nursery() as nursery:
        relay_address = await relay.start(nursery)
        coordinator, worker = await start_grid(
            nursery, tmp_path, tiny_model_path, relay_address, heartbeat_s=1, coordinator_relays=True,
            timing=dataclasses.replace(PROMPT, switch_after_s=1.0), transport=ONE_TRY,
        )  # fmt: skip
        assert coordinator.host is not None and worker.host is not None and worker.auto_relay is not None
        me = worker.host.peer_id
        given = f"{relay_address}/p2p-circuit/p2p/{me}"
        through_coordinator = f"{coordinator.host.addrs()[0]}/p2p-circuit/p2p/{me}"
        await until(lambda: me in online_workers(coordinator), timeout=20)
        assert worker.host.addrs() == [given] and worker.auto_relay.keeper is None

        def state() -> str:
            assert worker.host is not None and worker.auto_relay is not None
            taken = worker.auto_relay.keeper.relay_peer if worker.auto_relay.keeper else None
            keepers = "; ".join(f"held={k.held} problem={k.problem!r}" for k in worker.relay_keepers)
            verdict = worker.membership.reachability if worker.membership else None
            return f"addrs {worker.host.addrs()}, given: {keepers}, taken: {taken} ({verdict})"

        relay.stop()
        await until(lambda: worker.host.addrs() == [through_coordinator], 30, state=state)  # type: ignore[union-attr]
        assert worker.auto_relay.keeper is not None
        assert worker.auto_relay.keeper.relay_peer == coordinator.host.peer_id
        said = " | ".join(r.getMessage() for r in caplog.records)
        assert "none of the relays this node was given" in said and "reachable through relay" in said
        await until(lambda: me in online_workers(coordinator), timeout=20, state=state)

        await relay.start(nursery)
        # its keeper re-reserves within a retry (≤ 0.25 s here) on a quiet machine, much later on a loaded one
        # (the test above allows 75 s for it); the relay taken meanwhile goes at the next step after that
        await until(lambda: worker.host.addrs() == [given], 75, state=state)  # type: ignore[union-attr]
        assert worker.auto_relay.keeper is None
        assert any("holds a reservation again" in r.getMessage() for r in caplog.records)
        nursery.cancel_scope.cancel()


def test_relaying_defaults_and_relay_only_nodes(tmp_path: pathlib.Path) -> None:
    boot = "/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWA4Xop1JaT3MHxwYMkCepYsv4iPVopMXwCz5iHYdBfeSB"
    assert NodeConfig(data_dir=tmp_path, role="coordinator").validated().relay is True
    assert NodeConfig(data_dir=tmp_path, role="coordinator", relay=False).validated().relay is False
    worker = NodeConfig(data_dir=tmp_path, role="worker", bootstrap=(boot,)).validated()
    assert worker.relay is False and worker.relays == ()
    # no listen address and no --relay-via: reachable through the bootstrap nodes
    assert NodeConfig(data_dir=tmp_path, role="worker", bootstrap=(boot,), listen=()).validated().relays == (
        boot,
    )
    with pytest.raises(ConfigError, match="must listen"):
        NodeConfig(data_dir=tmp_path, role="coordinator", listen=()).validated()
    with pytest.raises(ConfigError, match="must listen"):
        NodeConfig(data_dir=tmp_path, role="worker", bootstrap=(boot,), listen=(), relay=True).validated()

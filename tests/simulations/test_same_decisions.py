"""The same core gives the same decisions under the simulator, fed by hand, and under the trio node.

One scripted sequence: 3 workers register; job 1 is submitted and settled; job 2 is submitted and one
fixed worker (the *cheater*) answers it wrongly, so the coordinator asks a third worker and outvotes it.
It is played by three drivers:

1. the simulator's engine and coordinator wrapper (``SimCoordinator``), which records its trace;
2. a plain ``Coordinator`` fed the trace's exact inputs: every effect identical, receipts byte for byte;
3. the trio node: a real in-process coordinator ``Node`` and three real worker ``Node``s talking libp2p on
   127.0.0.1, the workers registering and answering through the real wire path (``_serve_stream`` →
   ``WorkerLogic``), and a client submitting over a real stream. The coordinator node gets the same key
   (identity file), the same random stream (``Node(rng=...)``) and the same config; its workers get the
   simulated workers' keys, and their engine is the simulator's "inference" (``honest_tokens``).

Why whole nodes rather than feeding ``CoordinatorDriver.feed`` by hand: the claim is about the trio
driver, which turns wire messages into core events and executes effects, so the narrowest seam that still
includes it is the effects ``CoordinatorDriver.execute`` carries out (recorded by a subclass of ``Node``).
Why a scripted engine and not the tiny GGUF model: the simulator's outputs must be the node's outputs for
the attestations to be the same bytes; a real model would only add a dependency. What the node
legitimately does differently, and the comparison leaves out: a receipt carries the client's wall-clock
submission time (``issued_at_ms``), so its entry signature, entry id and the next entry's ``prev`` differ;
entries are compared by author, seq and receipt content minus that one field. Decisions must not depend on
the wall clock, so the config is ``CoordinatorConfig.plain`` (no speed weighting, which measures real
time), and job 2 is submitted after job 1 is settled in both drivers (the order of inputs is part of the
script; within a job, the order in which concurrent replicas answer does not change the effects).
"""

from __future__ import annotations

import functools
import pathlib
import random
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
import trio
from opengrid_ledger import Entry, LedgerState, Receipt, decode_entry, open_entry

from opengrid.core.coordinator import Coordinator, CoordinatorConfig
from opengrid.core.effects import AppendEntry, DispatchReplica, Effect, FinishJob, SendReceipt
from opengrid.core.events import Event, JobSubmitted, ReplicaReturned, WorkerRegistered
from opengrid.core.refusal import Refusal
from opengrid.core.worker import Output, WorkerLogic
from opengrid.engines.base import Generation, GenerationRequest, ModelInfo
from opengrid.net.host import open_host
from opengrid.net.keys import peer_id_of
from opengrid.node.config import NodeConfig
from opengrid.node.service import Node
from opengrid.wire.messages import JobAccepted, ModelOffer, RegisterWorker, SubmitJob
from simulations.engine import NS_PER_S, Engine, seconds_to_ns
from simulations.network import Place
from simulations.nodes import NETWORK_ID, Beat, SimCoordinator, derive_key, make_coordinator
from simulations.outputs import honest_tokens
from simulations.simulation import contract_for

SEED = 5
CONFIG = CoordinatorConfig.plain(heartbeat_s=30.0, replica_timeout_s=10.0)
CONTRACT = contract_for("m")
OFFERS = (ModelOffer(name="m", contract=CONTRACT),)
KEYS = [derive_key(SEED, f"w{i}") for i in range(3)]
PEERS = [peer_id_of(bytes(key.verify_key)) for key in KEYS]
"""The workers' libp2p peer ids: the simulator uses them as names, so both drivers sort peers alike."""
SUBMIT_AT_S = {1: 1.0, 2: 10.0}
"""Simulated submission times: job 1 is settled (at ~2.25 s) before job 2 arrives."""


def job_id(n: int) -> bytes:
    return n.to_bytes(16, "big")


def request(n: int) -> SubmitJob:
    return SubmitJob(job_id=job_id(n), model="m", prompt=f"prompt {n}", max_tokens=8, replicas=2)


def output(peer: str, prompt: str, max_tokens: int, cheater: str | None) -> tuple[int, ...]:
    """What ``peer`` answers: the honest tokens, except the cheater on job 2."""
    tokens = honest_tokens(prompt, CONTRACT.digest(), max_tokens)
    if peer == cheater and prompt == request(2).prompt:
        return tuple(t + 1 for t in tokens)
    return tokens


# ── driver 1: the simulator ──────────────────────────────────────────────────────────────────────────
def scripted_through_the_simulator(cheater: str | None) -> list[tuple[int, Event | None, list[Effect]]]:
    """Play the script on the engine; return the wrapper's trace (time, input, effects)."""
    engine = Engine()
    coordinator = SimCoordinator(0, make_coordinator(SEED, 0, CONFIG), Place(0, 0, 0, 1e9), trace=True)
    workers = {
        peer: WorkerLogic(network=NETWORK_ID, signing_key=key, offers=OFFERS, ledger=LedgerState(NETWORK_ID))
        for peer, key in zip(PEERS, KEYS, strict=True)
    }

    def to_coordinator(node: int, tag: int | str, event: Event) -> None:
        for effect in coordinator.handle(event, engine.now_ns):
            if isinstance(effect, DispatchReplica):
                engine.after(NS_PER_S, answer, 0, effect.peer, effect)

    def answer(node: int, peer: int | str, effect: Any) -> None:
        run, worker = effect.run, workers[str(peer)]
        tokens = output(str(peer), run.prompt, run.max_tokens, cheater)
        result = worker.attest(run, Output(tokens, "", "length"))
        engine.after(
            seconds_to_ns(0.25), deliver, 0, f"result/{peer}", ReplicaReturned(run.job_id, str(peer), result)
        )

    deliver = engine.kind("coord", to_coordinator)
    answer = engine.kind("answer", answer)  # type: ignore[assignment]
    for i, (peer, worker) in enumerate(sorted(workers.items())):
        engine.at(i, deliver, 0, f"register/{peer}", WorkerRegistered(peer, worker.public_key, OFFERS))
    for n, at_s in SUBMIT_AT_S.items():
        event = JobSubmitted("client", request(n), wall_ms=n)
        engine.at(seconds_to_ns(at_s), deliver, 0, f"submit/{n}", event)
    engine.run(seconds_to_ns(60))
    assert coordinator.trace is not None
    return coordinator.trace


@functools.cache
def cheater() -> str:
    """The first worker job 2 is dispatched to (found by an all-honest run; dispatch comes before any
    answer, so the cheating does not change who is asked)."""
    for _, _, effects in scripted_through_the_simulator(None):
        for effect in effects:
            if isinstance(effect, DispatchReplica) and effect.run.job_id == job_id(2):
                return effect.peer
    raise AssertionError("job 2 was never dispatched")


def simulated_effects() -> list[Effect]:
    return [e for _, _, effects in scripted_through_the_simulator(cheater()) for e in effects]


def receipts(effects: Sequence[Effect]) -> list[Receipt]:
    out = []
    for effect in effects:
        if isinstance(effect, FinishJob) and isinstance(effect.reply, JobAccepted):
            payload = open_entry(decode_entry(effect.reply.receipt), NETWORK_ID).payload
            assert isinstance(payload, Receipt)
            out.append(payload)
    return out


def check_the_script_did_what_it_says(effects: Sequence[Effect]) -> None:
    """Two accepted jobs, the second with the cheater outvoted."""
    accepted = receipts(effects)
    assert [r.job_id for r in accepted] == [job_id(1), job_id(2)]
    assert len(accepted[0].dissenters) == 0
    assert accepted[1].dissenters == (bytes(KEYS[PEERS.index(cheater())].verify_key),)
    assert any(isinstance(e, SendReceipt) for e in effects)


# ── driver 2: a plain coordinator fed the same inputs ────────────────────────────────────────────────
def test_simulator_and_plain_coordinator_make_identical_decisions() -> None:
    trace = scripted_through_the_simulator(cheater())
    plain = Coordinator(
        network=NETWORK_ID,
        signing_key=derive_key(SEED, "coordinator/0"),
        ledger=LedgerState(NETWORK_ID),
        rng=random.Random(f"opengrid-sim/{SEED}/coordinator/0"),
        config=CONFIG,
    )
    sim_effects: list[Effect] = []
    plain_effects: list[Effect] = []
    for now_ns, event, effects in trace:
        assert event is not None  # the script never fires timers
        sim_effects += effects
        plain_effects += plain.handle(event, now_ns / NS_PER_S)

    assert [type(e).__name__ for e in sim_effects] == [type(e).__name__ for e in plain_effects]
    assert [getattr(e, "peer", None) for e in sim_effects] == [
        getattr(e, "peer", None) for e in plain_effects
    ]
    assert sim_effects == plain_effects
    assert [msgspec.msgpack.encode(r) for r in receipts(sim_effects)] == [
        msgspec.msgpack.encode(r) for r in receipts(plain_effects)
    ]
    check_the_script_did_what_it_says(sim_effects)


def test_the_simulator_decides_registrations_with_the_nodes_code() -> None:
    """A worker's RegisterWorker reaches the simulated coordinator and is decided by
    ``Coordinator.registration``, the call the node's handler makes: the same refusal for a worker that
    claims another's key, the same event fed for an honest one."""
    coordinator = SimCoordinator(0, make_coordinator(SEED, 0, CONFIG), Place(0, 0, 0, 1e9), trace=True)
    beat = RegisterWorker(
        network=NETWORK_ID, public_key=bytes(KEYS[0].verify_key), listen_addrs=[], models=list(OFFERS)
    )
    impostor = Beat(PEERS[1], bytes(KEYS[1].verify_key), beat)  # w1's connection, w0's key
    refusal = coordinator.register(impostor, 0)
    assert refusal == coordinator.core.registration(PEERS[1], beat, peer_key=bytes(KEYS[1].verify_key))
    assert isinstance(refusal, Refusal) and refusal.code == "malformed" and not coordinator.core.workers
    coordinator.register(Beat(PEERS[0], bytes(KEYS[0].verify_key), beat), 0)
    assert coordinator.trace is not None
    assert [event for _, event, _ in coordinator.trace] == [
        WorkerRegistered(PEERS[0], beat.public_key, OFFERS)
    ]


# ── driver 3: the trio node ──────────────────────────────────────────────────────────────────────────
@dataclass
class ScriptedEngine:
    """The simulator's inference behind the node's engine seam (``opengrid.engines.base.Engine``)."""

    peer: str
    model: ModelInfo = field(default_factory=lambda: ModelInfo("m", pathlib.Path("m"), CONTRACT.model_sha256))
    contract: Any = CONTRACT

    def generate(self, request: GenerationRequest) -> Generation:
        return Generation(output(self.peer, request.prompt, request.max_tokens, cheater()), "", "length")

    def close(self) -> None:
        pass


class RecordingNode(Node):
    """A coordinator node that keeps a copy of every effect its driver executes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.executed: list[Effect] = []
        execute = self.coordinator_driver.execute

        def recorded(effects: Sequence[Effect]) -> None:
            self.executed += effects
            execute(effects)

        self.coordinator_driver.execute = recorded  # type: ignore[method-assign]


def with_identity(data_dir: pathlib.Path, label: str) -> pathlib.Path:
    """A data dir holding the simulated node ``label``'s key as the node identity."""
    data_dir.mkdir(parents=True)
    (data_dir / "identity.key").write_bytes(bytes(derive_key(SEED, label)))
    (data_dir / "identity.key").chmod(0o600)
    return data_dir


def comparable(effects: Sequence[Effect]) -> list[object]:
    """The effects, with each entry reduced to what does not depend on the driver's wall clock."""

    def entry(e: Entry) -> tuple[bytes, int, object]:
        body = open_entry(e, NETWORK_ID)
        payload = body.payload
        if isinstance(payload, Receipt):
            payload = msgspec.structs.replace(payload, issued_at_ms=0)
        return body.author, body.seq, payload

    out: list[object] = []
    for effect in effects:
        if isinstance(effect, AppendEntry):
            out.append(("append", entry(effect.entry)))
        elif isinstance(effect, SendReceipt):
            out.append(("receipt", effect.peer, [entry(decode_entry(d)) for d in effect.notice.entries]))
        elif isinstance(effect, FinishJob) and isinstance(effect.reply, JobAccepted):
            reply = msgspec.structs.replace(effect.reply, receipt=b"")
            out.append(("finish", effect.job_id, reply, entry(decode_entry(effect.reply.receipt))))
        else:
            out.append(effect)
    return out


async def scripted_through_the_trio_node(tmp_path: pathlib.Path) -> list[Effect]:
    """Play the script on real nodes; return the effects the coordinator node executed."""
    coordinator = RecordingNode(
        NodeConfig(
            data_dir=with_identity(tmp_path / "c", "coordinator/0"),
            role="coordinator",
            network=NETWORK_ID,
            heartbeat_s=CONFIG.heartbeat_s,
        ),
        coordinator_config=CONFIG,
        rng=random.Random(f"opengrid-sim/{SEED}/coordinator/0"),
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(coordinator.run)
        assert coordinator.host is not None
        address = coordinator.host.addrs()[0]
        workers = []
        for i, peer in enumerate(PEERS):
            config = NodeConfig(
                data_dir=with_identity(tmp_path / f"w{i}", f"w{i}"),
                role="worker",
                bootstrap=(address,),
                network=NETWORK_ID,
                heartbeat_s=CONFIG.heartbeat_s,
            )
            worker = Node(config, engine=ScriptedEngine(peer))
            await nursery.start(worker.run)
            workers.append(worker)
        with trio.fail_after(30):
            for worker in workers:
                await worker.registered.wait()
            async with open_host(secrets.token_bytes(32)) as client:
                server = await client.connect(address)
                for n in SUBMIT_AT_S:  # in order, each settled before the next: the script's inputs
                    reply = await client.request(server, request(n))
                    assert isinstance(reply, JobAccepted), reply
        nursery.cancel_scope.cancel()
    return coordinator.executed


async def test_simulator_and_trio_node_make_identical_decisions(tmp_path: pathlib.Path) -> None:
    node_effects = await scripted_through_the_trio_node(tmp_path)
    sim_effects = simulated_effects()
    assert [type(e).__name__ for e in node_effects] == [type(e).__name__ for e in sim_effects]
    assert [getattr(e, "peer", None) for e in node_effects] == [getattr(e, "peer", None) for e in sim_effects]
    assert comparable(node_effects) == comparable(sim_effects)
    # Same worker signatures: the attestations inside the receipts are the same bytes.
    assert [r.attestations for r in receipts(node_effects)] == [r.attestations for r in receipts(sim_effects)]
    check_the_script_did_what_it_says(node_effects)

"""The same core gives the same decisions inside the simulator and fed by hand.

A scripted sequence (3 workers register, 2 jobs, one worker disagrees on the second) is played through
the simulator's engine and coordinator wrapper; its exact inputs are then fed to a plain Coordinator
built from the same seed. Every effect must be identical: types, peers, job ids, receipts byte for byte.
(The trio node will be the third driver of this test.)
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import msgspec
from opengrid_ledger import LedgerState, Receipt, decode_entry, open_entry

from opengrid.core.coordinator import Coordinator, CoordinatorConfig
from opengrid.core.effects import DispatchReplica, Effect, FinishJob, SendReceipt
from opengrid.core.events import Event, JobSubmitted, ReplicaReturned, WorkerRegistered
from opengrid.core.worker import Output, WorkerLogic
from opengrid.wire.messages import JobAccepted, ModelOffer, SubmitJob
from simulations.engine import NS_PER_S, Engine, seconds_to_ns
from simulations.network import Place
from simulations.nodes import NETWORK_ID, SimCoordinator, derive_key, make_coordinator
from simulations.outputs import honest_tokens
from simulations.simulation import contract_for

SEED = 5
# Replication policy is not under test here: where the core has adaptive replication and canaries, turn
# them off so the script reliably exercises a disagreement.
_OFF = {"adaptive": False, "canary_rate": 0.0}
_KNOWN = {f.name for f in dataclasses.fields(CoordinatorConfig)}
CONFIG = CoordinatorConfig(
    heartbeat_s=30.0, replica_timeout_s=10.0, **{k: v for k, v in _OFF.items() if k in _KNOWN}
)
CONTRACT = contract_for("m")
OFFERS = (ModelOffer(name="m", contract=CONTRACT),)


def scripted_through_the_simulator() -> list[tuple[int, Event | None, list[Effect]]]:
    """Play the script on the engine; return the wrapper's trace (time, input, effects)."""
    engine = Engine()
    coordinator = SimCoordinator(0, make_coordinator(SEED, 0, CONFIG), Place(0, 0, 0, 1e9), trace=True)
    workers = {
        f"w{i}": WorkerLogic(
            network=NETWORK_ID,
            signing_key=derive_key(SEED, f"w{i}"),
            offers=OFFERS,
            ledger=LedgerState(NETWORK_ID),
        )
        for i in range(3)
    }
    cheater = {"w": ""}  # the first worker dispatched job 2 answers wrongly

    def to_coordinator(node: int, tag: int | str, event: Event) -> None:
        for effect in coordinator.handle(event, engine.now_ns):
            if isinstance(effect, DispatchReplica):
                engine.after(NS_PER_S, answer, 0, effect.peer, effect)

    def answer(node: int, peer: int | str, effect: Any) -> None:
        run, worker = effect.run, workers[str(peer)]
        tokens = honest_tokens(run.prompt, CONTRACT.digest(), run.max_tokens)
        if run.job_id == job_id(2) and cheater["w"] in ("", peer):
            cheater["w"] = str(peer)
            tokens = tuple(t + 1 for t in tokens)
        result = worker.attest(run, Output(tokens, "", "length"))
        engine.after(
            seconds_to_ns(0.25), deliver, 0, f"result/{peer}", ReplicaReturned(run.job_id, str(peer), result)
        )

    deliver = engine.kind("coord", to_coordinator)
    answer = engine.kind("answer", answer)  # type: ignore[assignment]
    for i, (peer, worker) in enumerate(sorted(workers.items())):
        engine.at(i, deliver, 0, f"register/{peer}", WorkerRegistered(peer, worker.public_key, OFFERS))
    for n in (1, 2):
        request = SubmitJob(job_id=job_id(n), model="m", prompt=f"prompt {n}", max_tokens=8, replicas=2)
        engine.at(seconds_to_ns(n), deliver, 0, f"submit/{n}", JobSubmitted("client", request, wall_ms=n))
    engine.run(seconds_to_ns(60))
    assert coordinator.trace is not None
    return coordinator.trace


def job_id(n: int) -> bytes:
    return n.to_bytes(16, "big")


def receipts(effects: list[Effect]) -> list[Receipt]:
    out = []
    for effect in effects:
        if isinstance(effect, FinishJob) and isinstance(effect.reply, JobAccepted):
            payload = open_entry(decode_entry(effect.reply.receipt), NETWORK_ID).payload
            assert isinstance(payload, Receipt)
            out.append(payload)
    return out


def test_simulator_and_plain_coordinator_make_identical_decisions() -> None:
    trace = scripted_through_the_simulator()
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
    # The script did what it says: two accepted jobs, the second with a dissenter outvoted.
    accepted = receipts(sim_effects)
    assert [r.job_id for r in accepted] == [job_id(1), job_id(2)]
    assert len(accepted[1].dissenters) == 1 and len(accepted[0].dissenters) == 0
    assert any(isinstance(e, SendReceipt) for e in sim_effects)

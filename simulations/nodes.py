"""The simulated nodes: real Coordinators behind a thin wrapper, and workers (real or light).

A *full* worker holds a real ``WorkerLogic`` and ``LedgerState``: it checks jobs with ``accept``, signs
with ``attest``, sends its result through the real wire codec and applies pushed receipts with
``receive_entries`` (every signature verified). A *light* worker skips the ledger and the codec but
still signs its attestation, because the real coordinator verifies it. Every signature goes through the
run's ``SignatureScheme``: real Ed25519, or stubs with a sampled real check (simulations/signatures.py).
"""

from __future__ import annotations

import hashlib
from collections import Counter, deque
from dataclasses import dataclass, field

from nacl.signing import SigningKey
from opengrid_ledger import ED25519, LedgerState, SignatureScheme

from opengrid.core.coordinator import Coordinator, CoordinatorConfig
from opengrid.core.effects import Effect
from opengrid.core.events import Event
from opengrid.core.refusal import Refusal
from opengrid.core.worker import WorkerLogic
from opengrid.wire.messages import AuditJob, RegisterWorker, RunJob
from simulations.behaviours import Behaviour
from simulations.engine import NS_PER_S
from simulations.network import Place
from simulations.rng import stream
from simulations.scenario import HardwareClass

NETWORK_ID = "opengrid-sim"


def derive_key(seed: int, label: str) -> SigningKey:
    """A reproducible Ed25519 key for node ``label`` of run ``seed``."""
    return SigningKey(hashlib.sha256(f"opengrid-sim key/{seed}/{label}".encode()).digest())


def make_coordinator(
    seed: int, index: int, config: CoordinatorConfig, scheme: SignatureScheme = ED25519
) -> Coordinator:
    """The real coordinator ``index`` of run ``seed``: fixed key, its own random stream, empty ledger."""
    return Coordinator(
        network=NETWORK_ID,
        signing_key=derive_key(seed, f"coordinator/{index}"),
        ledger=LedgerState(NETWORK_ID, scheme=scheme),
        rng=stream(seed, f"coordinator/{index}"),
        config=config,
        scheme=scheme,
    )


class SimCoordinator:
    """Feeds the real Coordinator with engine time; optionally keeps a trace of what went in and out."""

    def __init__(self, index: int, core: Coordinator, place: Place, *, trace: bool = False) -> None:
        self.index = index
        self.core = core
        self.place = place
        self.trace: list[tuple[int, Event | None, list[Effect]]] | None = [] if trace else None
        self.unknown_effects: Counter[str] = Counter()
        """Effect types this simulator does not execute (new core features), by type name."""

    def handle(self, event: Event, now_ns: int) -> list[Effect]:
        """``Coordinator.handle`` at engine time (seconds, as the core expects)."""
        effects = self.core.handle(event, now_ns / NS_PER_S)
        if self.trace is not None:
            self.trace.append((now_ns, event, list(effects)))
        return effects

    def register(self, beat: Beat, now_ns: int) -> list[Effect] | Refusal:
        """A worker's registration, decided by the same core call as on a node
        (``Coordinator.registration``), then fed to ``handle``; or the refusal."""
        decision = self.core.registration(beat.peer, beat.message, peer_key=beat.peer_key)
        if isinstance(decision, Refusal):
            return decision
        return self.handle(decision, now_ns)

    def on_timer(self, now_ns: int) -> list[Effect]:
        """``Coordinator.on_timer`` at engine time."""
        effects = self.core.on_timer(now_ns / NS_PER_S)
        if self.trace is not None and effects:
            self.trace.append((now_ns, None, list(effects)))
        return effects


@dataclass(frozen=True)
class Beat:
    """A worker's registration (or heartbeat) as it reaches a coordinator: the wire message and the key
    its connection authenticates (what the node derives from the libp2p peer id)."""

    peer: str
    peer_key: bytes
    message: RegisterWorker


@dataclass(slots=True, eq=False)
class SimWorker:
    """One volunteer: identity, place, hardware, behaviour, and what it is doing right now."""

    index: int
    peer: str
    key: SigningKey
    public_key: bytes
    coordinator: int
    place: Place
    hardware: HardwareClass
    behaviour: Behaviour
    logic: WorkerLogic | None
    """The real worker machine (full fidelity), or None for a light agent."""
    joined_ns: int = 0
    online: bool = False
    session: int = 0
    """Bumped whenever the worker goes on or offline, so stale timers of an old session are ignored."""
    queue: deque[RunJob | AuditJob] = field(default_factory=deque)
    """Replicas and audits (audit mode) waiting for the worker's one slot."""
    running: RunJob | AuditJob | None = None
    run_started_ns: int = 0
    run_epoch: int = 0
    """Bumped when a run is aborted, so its completion event is ignored."""
    compute_s: float = 0.0
    """Seconds of inference actually spent (the 'contributed compute' of the Gini comparison)."""
    answered: int = 0

    @property
    def full(self) -> bool:
        """Whether this worker runs the real WorkerLogic and ledger."""
        return self.logic is not None

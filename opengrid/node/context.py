"""What a node's parts share: its settings and identity, and the runtime objects ``Node.run`` opens.

``Node`` (opengrid/node/service.py) owns one ``NodeContext`` and hands it to each of its parts (router,
coordinator and worker drivers, registration, ledger service). The runtime fields are ``None`` until
``Node.run`` opens them, and again once it returns; a part asserts the ones it needs, as the node did.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, BinaryIO

import trio
from nacl.signing import SigningKey

from opengrid.node.config import NodeConfig
from opengrid.node.timing import TimingTrace
from opengrid.wire.codec import encode_frame
from opengrid.wire.messages import Message

if TYPE_CHECKING:  # for types only: the parts import this module, never the other way round
    from opengrid_ledger import ChainWriter, LedgerState

    from opengrid.core.coordinator import Coordinator
    from opengrid.core.worker import WorkerLogic
    from opengrid.engines import Engine
    from opengrid.net.relay import ReservationKeeper
    from opengrid.net.transport import StreamHost
    from opengrid.node.coordinator_admission import CoordinatorAdmission
    from opengrid.node.membership import Membership
    from opengrid.store.ledger_store import LedgerStore

if TYPE_CHECKING:
    # trio-typing 0.10 (a dependency of py-libp2p and multiaddr) installs stubs for trio that shadow trio's
    # own inline types and do not export ``trio.TaskStatus``; its ``TaskStatus`` is the one they expect.
    # Drop this alias for ``trio.TaskStatus`` once trio-typing is no longer installed.
    from trio_typing import TaskStatus as TaskStatus
else:
    TaskStatus = trio.TaskStatus
"""What ``nursery.start`` hands a task (``task_status``), for annotations in opengrid/node."""

PROGRESS_BUFFER = 256  # preview frames buffered per job before the oldest news is dropped


@dataclass
class NodeContext:
    """A node's shared state (one per ``Node``)."""

    config: NodeConfig
    """Validated settings."""
    key: SigningKey
    """The node's identity key: signs receipts, registrations, ledger entries."""
    timing: TimingTrace = field(default_factory=lambda: TimingTrace(None))
    """Where this node's jobs spend their time (``--trace-timing``); records nothing by default."""
    engine: Engine | None = None
    """Nodes that serve a model: the engine (given, or loaded at start)."""
    host: StreamHost | None = None
    """The node's network endpoint (a libp2p ``Host`` unless the node was given another transport)."""
    ledger: LedgerState | None = None
    store: LedgerStore | None = None
    chain: ChainWriter | None = None
    """The one writer of this node's own chain (``key``'s, on ``ledger``): the coordinator core, FRAUD
    proofs and our ADMIT all append through it, so the chain has one head (spec/ledger.md §4)."""
    chain_reserved: bool = False
    """Set while a HOLD this node signed outside its ChainWriter (a worker's API paying its coordinator,
    opengrid/node/api_payment.py) may hold the chain's next seq: the node's other writes to its chain
    wait, or they would fork it."""
    nursery: trio.Nursery | None = None
    """The node's task nursery, while it runs: every task the parts start lives in it."""
    membership: Membership | None = None
    coordinator: Coordinator | None = None
    """Coordinators: the sans-IO coordinator machine."""
    worker: WorkerLogic | None = None
    """Nodes that serve a model: the sans-IO worker logic."""
    admission: CoordinatorAdmission | None = None
    """Coordinators of a network with a genesis file: admission of new coordinators, ours included."""
    relay_keepers: list[ReservationKeeper] = field(default_factory=list)
    """Reservations on the relays we are reachable through (``NodeConfig.relays``)."""
    tier: str = ""
    """Set at start from the hardware probe and the measured speed (opengrid/node/probe.py)."""
    tokens_per_s: float = 0.0
    trace_file: BinaryIO | None = None
    """``--trace-frames``: every received message is appended here."""

    @property
    def public_key(self) -> bytes:
        """The node's Ed25519 public key (its ledger account)."""
        return bytes(self.key.verify_key)

    def trace(self, message: Message) -> None:
        """Append a received message to the trace file (``--trace-frames``): an audit of what we saw."""
        if self.trace_file is not None:
            self.trace_file.write(encode_frame(message))
            self.trace_file.flush()

    def points(self) -> int:
        """This node's balance in its own ledger."""
        return self.ledger.balance(self.public_key) if self.ledger is not None else 0


def short(peer: str) -> str:
    """A peer id as logs show it: its last eight characters (a ``/dnsaddr/`` name not yet reached, whole)."""
    return peer if peer.startswith("/") else peer[-8:]


def peer_of(address: str) -> str:
    """The peer id at the end of a ``/.../p2p/<id>`` multiaddr (the whole text if it has none)."""
    return address.rsplit("/p2p/", 1)[-1]

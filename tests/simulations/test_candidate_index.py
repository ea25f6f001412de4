"""The coordinator's candidate index gives exactly what a scan of every worker gives.

White-box on purpose: ``Coordinator._candidates`` reads the index kept by ``_on_registered``; here it is
compared with the scan it replaced, through ``choose_class`` (which every caller applies), over random
registrations that add, change and drop offers while workers go offline and come back.
"""

from __future__ import annotations

import random

from opengrid_ledger import LedgerState

from opengrid.core.coordinator import Coordinator, CoordinatorConfig
from opengrid.core.events import WorkerRegistered
from opengrid.core.scheduler import Candidate, choose_class
from opengrid.wire.contract import DecodingContract
from opengrid.wire.messages import ModelOffer
from simulations.nodes import NETWORK_ID, derive_key

MODELS = ("alpha", "Beta", "gamma")


def offer(model: str, backend: str) -> ModelOffer:
    return ModelOffer(
        name=model, contract=DecodingContract(model_sha256=f"{model.lower():0>64}", backend_version=backend)
    )


def scan(coordinator: Coordinator, model: str) -> list[Candidate]:
    """The pre-index ``_candidates``: every registered worker, in registration order."""
    wanted = model.lower()
    return [
        coordinator._candidate(r, o)
        for r in coordinator.workers.values()
        if r.online
        for o in r.offers
        if wanted in (o.name.lower(), o.contract.model_sha256.lower())
    ]


def test_the_index_matches_a_full_scan_through_registrations_and_offline_changes() -> None:
    rng = random.Random(3)
    coordinator = Coordinator(
        network=NETWORK_ID,
        signing_key=derive_key(0, "coordinator"),
        ledger=LedgerState(NETWORK_ID),
        rng=random.Random(0),
        config=CoordinatorConfig(),
    )
    for step in range(600):
        peer = f"w{rng.randrange(40)}"
        if rng.random() < 0.2 and peer in coordinator.workers:
            coordinator.workers[peer].online = False  # as on_timer and failures do
            continue
        offers = tuple(offer(m, rng.choice(("b1", "b2"))) for m in MODELS if rng.random() < 0.5)
        coordinator.handle(WorkerRegistered(peer, derive_key(0, peer).verify_key.encode(), offers), step)
        for model in (*MODELS, "BETA", f"{'gamma':0>64}", "missing"):
            assert choose_class(coordinator._candidates(model)) == choose_class(scan(coordinator, model))
            allowed = {f"w{i}" for i in range(0, 40, 3)}
            assert choose_class(coordinator._candidates(model, allowed=allowed)) == choose_class(
                [c for c in scan(coordinator, model) if c.peer in allowed]
            )

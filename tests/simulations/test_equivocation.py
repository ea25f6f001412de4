"""An equivocating coordinator is caught by the real ledger's fork handling and its later receipts do not
count: honest coordinators see both branches through ledger sync, freeze it, publish a FRAUD entry, and
every worker's ledger freezes it too (scenario: simulations/scenarios/equivocation.toml)."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import small
from opengrid_ledger import Receipt, decode_body

from opengrid.errors import ConfigError
from simulations.engine import NS_PER_S
from simulations.simulation import Simulation

AT_S = 12.0
SYNC_S = 1.0
FORKER = 1


def run(**changes: Any) -> Simulation:
    scenario = small(
        duration_s=40,
        fidelity="full",
        workers=18,
        coordinators=3,
        ledger_sync_s=SYNC_S,
        real_signatures=0.1,
        **changes,
    )
    simulation = Simulation(scenario, 2)
    simulation.run()
    return simulation


def test_honest_nodes_freeze_an_equivocating_coordinator_and_stop_counting_its_receipts() -> None:
    sim = run(adversaries=[{"kind": "equivocating_coordinator", "coordinator": FORKER, "at_s": AT_S}])
    forker = sim.coordinators[FORKER].core.public_key
    honest = [c for c in sim.coordinators if c.index != FORKER]

    # Both honest coordinators froze it, soon after it forked, and each published the proof once.
    assert sorted(c for _, c, author in sim.frauds if author == forker) == [c.index for c in honest]
    first = min(t for t, _, _ in sim.frauds)
    assert AT_S * NS_PER_S <= first <= (AT_S + SYNC_S + 5) * NS_PER_S
    cuts = {c.core.ledger.frozen().get(forker) for c in honest}
    assert len(cuts) == 1
    cut = cuts.pop()
    assert cut is not None

    # Every worker's real ledger froze it too (the FRAUD entry), including those it kept on each branch.
    assert all(w.logic is not None and w.logic.ledger.is_frozen(forker) for w in sim.workers)
    assert sim.counters["ledger_entries_refused_frozen_author"] > 0

    # It kept minting on its own ledger, but nothing from the fork on counts in an honest one.
    own = sim.coordinators[FORKER].core.ledger.entries_by_author(forker)
    assert len(own) > cut
    for c in honest:
        kept = c.core.ledger.entries_by_author(forker)
        assert kept and len(kept) == cut - 1
    after_cut = [decode_body(e.body).payload for e in own[cut - 1 :]]
    credited_after = {credit.account for p in after_cut if isinstance(p, Receipt) for credit in p.credits}
    assert credited_after  # its workers did work after the fork ...
    view = honest[0].core.ledger
    minted_by_forker = sum(
        credit.points
        for e in view.entries_by_author(forker)
        if isinstance(p := decode_body(e.body).payload, Receipt)
        for credit in p.credits
    )
    forker_points_own_view = sum(
        credit.points
        for e in own
        if isinstance(p := decode_body(e.body).payload, Receipt)
        for credit in p.credits
    )
    assert minted_by_forker < forker_points_own_view  # ... which no honest ledger credits


def test_without_an_equivocator_sync_freezes_nobody_and_points_match() -> None:
    sim = run()
    assert sim.frauds == [] and sim.counters["ledger_entries_refused"] == 0
    view = sim.coordinators[0].core.ledger
    for c in sim.coordinators:  # every receipt reached the first coordinator's view, apart from the last few
        assert (
            len(c.core.ledger.entries_by_author(c.core.public_key))
            - len(view.entries_by_author(c.core.public_key))
            <= 3
        )


def test_equivocation_needs_ledger_sync() -> None:
    with pytest.raises(ConfigError, match="ledger_sync_s > 0"):
        small(coordinators=2, adversaries=[{"kind": "equivocating_coordinator", "coordinator": 1}])

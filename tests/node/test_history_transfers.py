"""An account's History holds the transfers it sent and the ones it received (spec/job-protocol.md §5.10),
and the SDK describes each from the account's side: the wallet's History tab shows them beside receipts."""

from __future__ import annotations

import pathlib

from opengrid_ledger import Transfer, encode_entry, sign_entry
from opengrid_sdk.receipts import history_item

from opengrid.core.coordinator import CoordinatorConfig
from opengrid.node.config import NodeConfig
from opengrid.node.context import NodeContext
from opengrid.node.lookups import Lookups
from opengrid.wire.messages import JobAccepted
from tests.core.grid_harness import Grid, finished, honest, signing_key


def test_history_shows_transfers_both_ways_and_the_sdk_reads_them(tmp_path: pathlib.Path) -> None:
    grid = Grid(n=3, config=CoordinatorConfig.plain(verify="replicate"))
    grid.register()
    for n in range(1, 4):
        assert isinstance(finished(grid.run_job(n, honest, replicas=3)), JobAccepted)
    ledger = grid.coordinator.ledger
    network = grid.coordinator.network
    sender, recipient, stranger = (bytes(signing_key(name).verify_key) for name in ("w0", "w1", "w2"))
    spend = ledger.balance(sender) // 2
    assert spend > 0
    transfer = Transfer(to=recipient, amount=spend, memo="for the docs")
    entry = sign_entry(signing_key("w0"), ledger.next_body(sender, transfer))
    ledger.apply(entry)
    assert ledger.balance(recipient) > spend  # applied: it earned too

    ctx = NodeContext(config=NodeConfig(data_dir=tmp_path), key=signing_key("coordinator"))
    ctx.ledger = ledger
    lookups = Lookups(ctx, coordinator=None)  # type: ignore[arg-type]  # history() needs no driver

    def items(account: bytes) -> list[str]:
        found = [history_item(e, account, network) for e in lookups.history(account, limit=100).entries]
        return [f"{i.outcome} {i.points} {i.memo}".strip() for i in found if i is not None]

    assert items(sender)[-1] == f"sent {-spend} for the docs"
    assert items(recipient)[-1] == f"received {spend} for the docs"  # found though w1 did not write it
    assert all(line.startswith("paid") for line in items(stranger))  # another's transfer is not its own
    (received,) = (
        item
        for item in (history_item(e, recipient, network) for e in lookups.history(recipient, 100).entries)
        if item is not None and item.is_transfer
    )
    assert received.counterparty == sender and received.job_id == b"" and received.issued_at_ms == 0
    assert history_item(encode_entry(entry), stranger, network) is None

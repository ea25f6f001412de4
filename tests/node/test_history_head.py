"""A node's History of an account always holds the account's chain head (spec/job-protocol.md §5.10): a
volunteer paying with its node key learns its chain head from it, and its many receipts must not push
its last HOLD out, or the client would sign a second entry at that seq (a fork)."""

from __future__ import annotations

import pathlib

from opengrid_ledger import EntryBody, Hold, Receipt, decode_body, decode_entry, encode_entry, sign_entry

from opengrid.core.coordinator import CoordinatorConfig
from opengrid.core.events import JobSubmitted
from opengrid.node.config import NodeConfig
from opengrid.node.context import NodeContext
from opengrid.node.lookups import Lookups
from opengrid.wire.messages import JobAccepted, SubmitJob, job_cost
from tests.core.grid_harness import Grid, finished, honest, job_id, signing_key


def _earn(grid: Grid, first: int, jobs: int) -> None:
    for n in range(first, first + jobs):
        assert isinstance(finished(grid.run_job(n, honest, replicas=3)), JobAccepted)


def test_the_history_of_an_account_keeps_its_chain_head_past_the_limit(tmp_path: pathlib.Path) -> None:
    grid = Grid(n=3, config=CoordinatorConfig.plain(verify="replicate"))
    grid.register()
    _earn(grid, 1, 4)
    payer = signing_key("w0")
    me = bytes(payer.verify_key)
    hold = Hold(job_id=job_id(100), amount=job_cost(8, 2), coordinator=grid.coordinator.public_key)
    body = EntryBody(network=grid.coordinator.network, author=me, seq=1, prev=b"", payload=hold)
    request = SubmitJob(
        job_id=job_id(100), model="tiny", prompt="paid", max_tokens=8, replicas=2,
        hold=encode_entry(sign_entry(payer, body)),
    )  # fmt: skip
    first = grid.coordinator.handle(JobSubmitted(client="volunteer", request=request), 0.0)
    assert isinstance(finished([*first, *grid.drive(first, honest)]), JobAccepted)
    _earn(grid, 200, 4)  # newer receipts crediting w0

    ctx = NodeContext(config=NodeConfig(data_dir=tmp_path), key=signing_key("coordinator"))
    ctx.ledger = grid.coordinator.ledger
    lookups = Lookups(ctx, coordinator=None)  # type: ignore[arg-type]  # history() needs no driver
    bodies = [decode_body(decode_entry(e).body) for e in lookups.history(me, limit=3).entries]
    assert len(bodies) == 3
    assert bodies[0].author == me and bodies[0].payload == hold  # the head, where the oldest was
    assert all(isinstance(b.payload, Receipt) for b in bodies[1:])  # then the newest receipts
    newest = [decode_body(decode_entry(e).body) for e in lookups.history(me, limit=2).entries]
    assert newest[0].payload == hold and newest[1] == bodies[2]

    whole = [decode_body(decode_entry(e).body) for e in lookups.history(me, limit=1024).entries]
    assert sum(1 for b in whole if b.author == me) == 1  # no duplicate when it is found anyway

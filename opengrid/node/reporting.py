"""What a node says about itself: its ``NodeStatus`` (answered to StatusRequest, shown by ``opengrid
status``, the wallet and the dashboard) and the one log line a minute that shows a volunteer it is alive."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import msgspec
import trio

from opengrid.wire.messages import (
    NodeStatus,
    SplitGroupStatus,
    SplitMemberStatus,
    WorkerSummary,
    bounded_status,
)

if TYPE_CHECKING:
    from opengrid.node.service import Node
    from opengrid.node.split_group import SplitGroup

log = logging.getLogger("opengrid.node")

STATUS_LINE_PERIOD_S = 60.0


def node_status(node: Node) -> NodeStatus:
    """``node``'s status; its points come from its own ledger, lists are cut to their wire limits."""
    assert node.host is not None and node.ledger is not None
    workers: list[WorkerSummary] = []
    balances: dict[str, int] = {}
    if node.coordinator is not None:
        split_members = node.coordinator_requests.split_members
        workers = [
            WorkerSummary(
                peer_id=r.peer,
                public_key=r.key,
                models=[o.name for o in r.offers],
                online=r.online,
                split_members=split_members.get(r.peer) or msgspec.UNSET,
            )
            for r in sorted(node.coordinator.workers.values(), key=lambda r: r.peer)
        ]
        balances = {key.hex(): points for key, points in sorted(node.ledger.balances().items())}
    membership = node.membership
    status = NodeStatus(
        peer_id=node.host.peer_id,
        public_key=node.public_key,
        role=node.config.role,
        addrs=node.host.addrs(),
        points=node.points(),
        jobs_done=node.ledger.jobs_done(node.public_key),
        models=[o.name for o in node.worker.offers] if node.worker is not None else [],
        workers=workers,
        balances=balances,
        ledger_entries=len(node.ledger),
        paused=node.paused,
        peers=membership.peers(node.coordinator_requests.rtt.get) if membership is not None else [],
        network=node.config.network,
        candidate=node.admission is not None and node.admission.candidate,
        reachability=membership.reachability if membership is not None else "unknown",
        split_group=split_group_status(node.split_group),
    )
    return bounded_status(status)  # lists cut to their wire limits (spec/limits.md)


def split_group_status(group: SplitGroup | None) -> SplitGroupStatus | msgspec.UnsetType:
    """The split group a worker heads, once formed (spec/split.md §7); unset otherwise."""
    view = group.view() if group is not None else None
    if view is None or group is None:
        return msgspec.UNSET
    return SplitGroupStatus(
        model=group.model,
        n_layers=view.n_layers,
        head_layers=view.head_layers,
        members=[SplitMemberStatus(peer, first, count) for peer, first, count in view.members],
        formed=view.formed,
    )


async def status_line_loop(node: Node) -> None:
    """One line a minute saying what the node is doing, so a volunteer's log shows it is alive."""
    while True:
        await trio.sleep(STATUS_LINE_PERIOD_S)
        state = f"not working: {node.pause_reason}" if node.paused else "working"
        if node.coordinator is not None:
            online = sum(1 for r in node.coordinator.workers.values() if r.online)
            log.info(
                "status: %s; %d worker(s) online, %d job(s) running, ledger %d entries",
                state,
                online,
                len(node.coordinator_driver.jobs),
                len(node.ledger or ()),
            )
        else:
            worker = node.worker_driver
            speed = worker.tokens_out / worker.busy_s if worker.busy_s else 0.0
            log.info(
                "status: %s; %d job(s) run, %d point(s), %d running, %.0f tokens/s while busy",
                state,
                worker.jobs_run,
                node.points(),
                worker.running,
                speed,
            )

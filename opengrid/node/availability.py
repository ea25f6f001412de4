"""Whether a node takes work now: its owner's signed pause/resume (``ControlRequest``), the owner's
availability policy (working hours, machine busy; the decision is opengrid/core/availability.py's), and,
for a coordinator of a closed network, whether it is admitted yet."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

import trio

from opengrid.core.availability import Decision, Policy, decide
from opengrid.core.control import OwnerControl
from opengrid.core.refusal import Refusal
from opengrid.node.context import NodeContext
from opengrid.wire.messages import ControlRequest, Message, NodeStatus

log = logging.getLogger("opengrid.node")
_AVAILABILITY_PERIOD_S = 5.0


class Availability:
    """The node's answer to "do you take work now?", and why not."""

    def __init__(self, ctx: NodeContext) -> None:
        self._ctx = ctx
        self.owner_paused = False
        self._decision = Decision(True, "available")
        """The working-hours / idle policy's latest decision (workers with such a policy)."""
        self._control: OwnerControl | None = None
        """The owner's control requests, decided in the core (made once the host, so the peer id, is up)."""

    @property
    def paused(self) -> bool:
        """True while the node takes no new work: paused by its owner, draining, or outside the owner's
        availability policy (working hours, machine busy), or a coordinator not admitted yet."""
        admission = self._ctx.admission
        candidate = admission is not None and admission.candidate
        return self.owner_paused or not self._decision.work or candidate

    @property
    def pause_reason(self) -> str:
        """Why the node takes no work ("" when it does)."""
        admission = self._ctx.admission
        if self.owner_paused:
            return "paused by its owner"
        if admission is not None and admission.candidate:
            return admission.why_no_jobs()
        return "" if self._decision.work else self._decision.reason

    def on_control(self, message: ControlRequest, status: Callable[[], NodeStatus]) -> Message:
        """The owner pauses or resumes the node: checked by the core (``OwnerControl``: the node's own
        key, fresh, not replayed); answered with the node's ``status()``."""
        ctx = self._ctx
        assert ctx.host is not None
        if self._control is None:
            self._control = OwnerControl(
                network=ctx.config.network, peer_id=ctx.host.peer_id, public_key=ctx.public_key
            )
        decision = self._control.decide(message, now_ms=time.time_ns() // 1_000_000)
        if isinstance(decision, Refusal):
            return decision.reply()
        self.owner_paused = decision == "pause"
        log.info("%s by the owner", "paused: taking no new work" if self.owner_paused else "resumed")
        return status()

    async def policy_loop(self, policy: Policy, running: Callable[[], int]) -> None:
        """Re-decide every few seconds whether this worker takes work; log each change and its reason.
        ``running``: how many jobs this node generates now (its own load must not pause it)."""
        cores = os.cpu_count() or 1
        while True:
            now = time.localtime()
            own = min(running(), 1) * (self._ctx.config.threads or max(1, cores // 2))
            other = max(0.0, os.getloadavg()[0] - own) / cores  # our own jobs must not pause us
            decision = decide(
                policy,
                minute_of_day=now.tm_hour * 60 + now.tm_min,
                other_load_per_core=other,
                paused_by_owner=False,
            )
            if decision != self._decision:
                log.info(
                    "availability: %s", "taking work" if decision.work else f"not working: {decision.reason}"
                )
                self._decision = decision
            await trio.sleep(_AVAILABILITY_PERIOD_S)

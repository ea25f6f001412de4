"""Which waiting job goes next: a pure policy over plain data (spec/job-protocol.md §8.1).

A coordinator dispatches a job's replicas only to workers with a free slot. A job that cannot get all
the replicas it needs waits here until slots free up. The order in which waiting jobs are offered the
free slots:

- **Standing.** A *preferred* job — paid (it carries a HOLD), or submitted by a volunteer in good
  standing (``in_good_standing``) — comes before any *open* one (free, from anyone else): those who pay
  or give compute go first when the coordinator is busy. Bounded so that open jobs never starve: while
  open jobs wait, at most ``PREFERRED_RUN`` turns in a row go to preferred jobs; the next turn goes to an
  open one. So open jobs get at least one turn in ``PREFERRED_RUN + 1`` however many paying clients
  queue, and with no open job waiting preferred jobs take every turn.
- **Classes.** Within a standing, every waiting ``interactive`` job comes before any ``batch`` job
  (strict priority: batch work uses the capacity interactive work leaves).
- **Fairness.** Within a standing and class, clients take turns (round robin): the client served last
  goes to the back of the rotation, and a new client joins at the back. So a client with a hundred
  waiting jobs delays another client's single job by at most one of its own, not by a hundred.
- **Order within a client.** First in, first out; a job that already started (it lost a replica, or
  needs one more after a disagreement) goes ahead of that client's jobs that have not.

A *turn* is one job getting one or more free slots in a drain (``served``). The queue is bounded, per
client and in total (``admit``): a coordinator refuses a job over the bounds with ``busy``. Iteration
order depends only on the order of calls, never on hashing.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from typing import Final, Generic, Literal, TypeVar

from opengrid.core.reputation import Reputation, required_streak
from opengrid.wire.messages import Priority

K = TypeVar("K", bound=Hashable)

Standing = Literal["preferred", "open"]
"""A waiting job's standing: ``preferred`` (paid, or a volunteer's in good standing) or ``open``."""

STANDINGS: Final[tuple[Standing, ...]] = ("preferred", "open")
"""Standings in the order they are served (``PREFERRED_RUN`` bounds the first one's lead)."""
PRIORITIES: Final[tuple[Priority, ...]] = ("interactive", "batch")
"""Classes in the order they are served, within a standing."""
PREFERRED_RUN: Final = 3
"""Turns in a row preferred jobs may take while open jobs wait; the next goes to an open job (so open
jobs get at least a quarter of the turns when both wait)."""
MAX_QUEUED: Final = 1024
"""Jobs a coordinator keeps waiting at most, all clients together."""
MAX_QUEUED_PER_CLIENT: Final = 64
"""Jobs one client may have waiting at once (an API node submits for all its users as one client)."""


def in_good_standing(reputation: Reputation, *, min_trust_streak: int) -> bool:
    """Whether a volunteer with ``reputation`` gets its own jobs preferred: it has the streak of verified
    valid results that adaptive replication trusts (``required_streak``: ``min_trust_streak``, doubled per
    offence ever) and is not on probation. ``min_trust_streak <= 0`` (trust off) prefers nobody."""
    return (
        min_trust_streak > 0
        and reputation.probation == 0
        and reputation.streak >= required_streak(reputation, min_trust_streak)
    )


class FairQueue(Generic[K]):
    """Waiting jobs (any hashable key) by standing, class and client; ``order()`` says who goes next."""

    def __init__(self, *, max_total: int = MAX_QUEUED, max_per_client: int = MAX_QUEUED_PER_CLIENT) -> None:
        self.max_total = max_total
        self.max_per_client = max_per_client
        self._rotation: dict[tuple[Standing, Priority], dict[str, deque[K]]] = {
            (s, p): {} for s in STANDINGS for p in PRIORITIES
        }
        """(standing, class) -> client -> its waiting jobs, first in first out; the dict's order is the
        rotation."""
        self._where: dict[K, tuple[Standing, Priority, str]] = {}
        self._per_client: dict[str, int] = {}
        self._open = 0
        """Open jobs waiting."""
        self._run = 0
        """Turns preferred jobs took in a row while open jobs waited (reset by an open job's turn)."""

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, key: object) -> bool:
        return key in self._where

    def waiting(self, client: str) -> int:
        """How many jobs ``client`` has waiting, every standing and class together."""
        return self._per_client.get(client, 0)

    def standing(self, key: K) -> Standing | None:
        """The standing ``key`` waits with (None: not waiting)."""
        where = self._where.get(key)
        return where[0] if where is not None else None

    def admit(self, client: str) -> str:
        """Why one more job of ``client`` may not wait here ("" if it may)."""
        if len(self._where) >= self.max_total:
            return f"{len(self._where)} jobs are already waiting for a free worker (the limit)"
        if self.waiting(client) >= self.max_per_client:
            return f"you already have {self.waiting(client)} jobs waiting for a free worker (the limit)"
        return ""

    def push(
        self, key: K, client: str, priority: Priority, *, front: bool = False, preferred: bool = False
    ) -> None:
        """Queue ``key`` for ``client`` (``front``: ahead of that client's other jobs of its standing and
        class; ``preferred``: paid, or a volunteer's in good standing).

        Bounds are the caller's to check with ``admit`` first: a job that already started and needs one
        more replica must never be refused, so ``push`` itself always takes the job.
        """
        if key in self._where:
            return
        standing: Standing = "preferred" if preferred else "open"
        jobs = self._rotation[standing, priority].setdefault(client, deque())
        if front:
            jobs.appendleft(key)
        else:
            jobs.append(key)
        self._where[key] = (standing, priority, client)
        self._per_client[client] = self._per_client.get(client, 0) + 1
        if standing == "open":
            self._open += 1

    def remove(self, key: K) -> bool:
        """Take ``key`` out of the queue, whatever the reason; False if it was not waiting."""
        where = self._where.pop(key, None)
        if where is None:
            return False
        standing, priority, client = where
        clients = self._rotation[standing, priority]
        clients[client].remove(key)
        if not clients[client]:
            del clients[client]
        left = self._per_client[client] - 1
        if left:
            self._per_client[client] = left
        else:
            del self._per_client[client]
        if standing == "open":
            self._open -= 1
            if not self._open:
                self._run = 0  # nobody left to starve
        return True

    def served(self, key: K, *, done: bool) -> None:
        """``key`` got a slot (a turn): its client goes to the back of its rotation, the run of preferred
        turns grows (or ends, on an open job's turn), and the job leaves the queue if ``done`` (it got
        every replica it was waiting for)."""
        where = self._where.get(key)
        if where is None:
            return
        standing, priority, client = where
        if standing == "open":
            self._run = 0
        elif self._open:
            self._run += 1
        if done:
            self.remove(key)
        clients = self._rotation[standing, priority]
        jobs = clients.pop(client, None)
        if jobs:
            clients[client] = jobs

    def order(self) -> list[K]:
        """Every waiting job, in the order free slots are offered: preferred jobs, with an open job after
        every ``PREFERRED_RUN`` of them (counting the run so far) while open jobs wait; within a standing,
        classes by priority; within a class, round robin over the clients in rotation order (each
        client's first job, then each one's second, and so on)."""
        preferred = deque(self._ordered("preferred"))
        open_ = deque(self._ordered("open"))
        ordered: list[K] = []
        run = self._run
        while preferred and open_:
            if run >= PREFERRED_RUN:
                ordered.append(open_.popleft())
                run = 0
            else:
                ordered.append(preferred.popleft())
                run += 1
        return ordered + list(preferred) + list(open_)

    def _ordered(self, standing: Standing) -> list[K]:
        ordered: list[K] = []
        for priority in PRIORITIES:
            queues = list(self._rotation[standing, priority].values())
            depth = max((len(q) for q in queues), default=0)
            for i in range(depth):
                ordered += [q[i] for q in queues if i < len(q)]
        return ordered

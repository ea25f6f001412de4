"""Which waiting job goes next: a pure policy over plain data (spec/job-protocol.md §8.1).

A coordinator dispatches a job's replicas only to workers with a free slot. A job that cannot get all
the replicas it needs waits here until slots free up. The order in which waiting jobs are offered the
free slots:

- **Classes.** Every waiting ``interactive`` job comes before any ``batch`` job (strict priority: batch
  work uses the capacity interactive work leaves).
- **Fairness.** Within a class, clients take turns (round robin): the client served last goes to the
  back of the rotation, and a new client joins at the back. So a client with a hundred waiting jobs
  delays another client's single job by at most one of its own, not by a hundred.
- **Order within a client.** First in, first out; a job that already started (it lost a replica, or
  needs one more after a disagreement) goes ahead of that client's jobs that have not.

The queue is bounded, per client and in total (``admit``): a coordinator refuses a job over the bounds
with ``busy``. Iteration order depends only on the order of calls, never on hashing.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from typing import Final, Generic, TypeVar

from opengrid.wire.messages import Priority

K = TypeVar("K", bound=Hashable)

PRIORITIES: Final[tuple[Priority, ...]] = ("interactive", "batch")
"""Classes in the order they are served."""
MAX_QUEUED: Final = 1024
"""Jobs a coordinator keeps waiting at most, all clients together."""
MAX_QUEUED_PER_CLIENT: Final = 64
"""Jobs one client may have waiting at once (an API node submits for all its users as one client)."""


class FairQueue(Generic[K]):
    """Waiting jobs (any hashable key) by class and client; ``order()`` says who goes next."""

    def __init__(self, *, max_total: int = MAX_QUEUED, max_per_client: int = MAX_QUEUED_PER_CLIENT) -> None:
        self.max_total = max_total
        self.max_per_client = max_per_client
        self._rotation: dict[Priority, dict[str, deque[K]]] = {p: {} for p in PRIORITIES}
        """class -> client -> its waiting jobs, first in first out; the dict's order is the rotation."""
        self._where: dict[K, tuple[Priority, str]] = {}
        self._per_client: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, key: object) -> bool:
        return key in self._where

    def waiting(self, client: str) -> int:
        """How many jobs ``client`` has waiting, both classes together."""
        return self._per_client.get(client, 0)

    def admit(self, client: str) -> str:
        """Why one more job of ``client`` may not wait here ("" if it may)."""
        if len(self._where) >= self.max_total:
            return f"{len(self._where)} jobs are already waiting for a free worker (the limit)"
        if self.waiting(client) >= self.max_per_client:
            return f"you already have {self.waiting(client)} jobs waiting for a free worker (the limit)"
        return ""

    def push(self, key: K, client: str, priority: Priority, *, front: bool = False) -> None:
        """Queue ``key`` for ``client`` (``front``: ahead of that client's other jobs of the class).

        Bounds are the caller's to check with ``admit`` first: a job that already started and needs one
        more replica must never be refused, so ``push`` itself always takes the job.
        """
        if key in self._where:
            return
        jobs = self._rotation[priority].setdefault(client, deque())
        if front:
            jobs.appendleft(key)
        else:
            jobs.append(key)
        self._where[key] = (priority, client)
        self._per_client[client] = self._per_client.get(client, 0) + 1

    def remove(self, key: K) -> bool:
        """Take ``key`` out of the queue, whatever the reason; False if it was not waiting."""
        where = self._where.pop(key, None)
        if where is None:
            return False
        priority, client = where
        clients = self._rotation[priority]
        clients[client].remove(key)
        if not clients[client]:
            del clients[client]
        left = self._per_client[client] - 1
        if left:
            self._per_client[client] = left
        else:
            del self._per_client[client]
        return True

    def served(self, key: K, *, done: bool) -> None:
        """``key`` got a slot: its client goes to the back of its class's rotation, and the job leaves the
        queue if ``done`` (it got every replica it was waiting for)."""
        where = self._where.get(key)
        if where is None:
            return
        priority, client = where
        if done:
            self.remove(key)
        clients = self._rotation[priority]
        jobs = clients.pop(client, None)
        if jobs:
            clients[client] = jobs

    def order(self) -> list[K]:
        """Every waiting job, in the order free slots are offered: classes by priority; within a class,
        round robin over the clients in rotation order (each client's first job, then each one's second,
        and so on)."""
        ordered: list[K] = []
        for priority in PRIORITIES:
            queues = list(self._rotation[priority].values())
            depth = max((len(q) for q in queues), default=0)
            for i in range(depth):
                ordered += [q[i] for q in queues if i < len(q)]
        return ordered

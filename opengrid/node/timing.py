"""A node's timing trace: where a job's time goes, for operators and benchmarks (``--trace-timing FILE``).

Off by default. When on, the node appends one JSON line per point a job passes, stamped with
``time.monotonic()`` — CLOCK_MONOTONIC on Linux, one clock for every process of the machine — so the traces
of a coordinator and a worker on the same machine can be merged to time the dispatch of a replica from the
coordinator's decision to the worker's engine start (issue 3). Nothing of it leaves the node: it is a local
file, never sent to peers, so no peer has to trust it.

A line is ``{"t": 1234.567891, "node": PEER_ID, "point": POINT, "job": HEX, "peer": PEER_ID}`` where
``peer`` is the other side (the worker on a coordinator, the coordinator on a worker). The points, in the
order a replica passes them:

==================  ===========  ===========================================================================
point               written by   when
==================  ===========  ===========================================================================
``dispatch``        coordinator  the core's ``DispatchReplica`` effect is executed: the dispatch decision
``stream_ready``    coordinator  a stream to the worker is ready (opened and negotiated, or reused)
``sent``            coordinator  the RunJob frame is written
``received``        worker       the RunJob frame is read and decoded
``engine_start``    worker       the engine's thread starts generating the job
``first_frame``     worker       its first progress frame (or sealed chunk) of a streamed job is written
``audit_received``  worker       as an auditor: a chunked AuditJob is read
``audit_ready``     worker       as an auditor: its scoring session for a chunked audit is open (the
                                 prompt evaluated, spec/verification.md §14.2)
``first_position``  worker       as an auditor: its FirstPositionVerdict is written (open streams)
``chunk_verdict``   worker       as an auditor: a ChunkVerdict is written (one per chunk)
``forwarded``       coordinator  verified text is handed to the client's stream (one per chunk); no peer
``engine_end``      worker       the engine returned (or failed)
``reply``           coordinator  the worker's final frame is read
==================  ===========  ===========================================================================
"""

from __future__ import annotations

import json
import pathlib
import statistics
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TextIO

POINTS = (
    "dispatch",
    "stream_ready",
    "sent",
    "received",
    "engine_start",
    "first_frame",
    "audit_received",
    "audit_ready",
    "first_position",
    "chunk_verdict",
    "forwarded",
    "engine_end",
    "reply",
)


class TimingTrace:
    """Appends timing points to a file; ``TimingTrace(None)`` records nothing (the default, at no cost)."""

    def __init__(self, path: pathlib.Path | None, node: str = "") -> None:
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        self._file: TextIO | None = path.open("a", buffering=1) if path is not None else None  # line-buffered
        self.node = node
        """This node's peer id (set once the host is up)."""

    @property
    def enabled(self) -> bool:
        return self._file is not None

    def mark(self, point: str, job_id: bytes, peer: str, *, t: float | None = None) -> None:
        """Record that ``job_id`` passed ``point`` now (or at ``t``, a ``time.monotonic()`` reading)."""
        if self._file is None:
            return
        when = time.monotonic() if t is None else t
        line = {"t": round(when, 6), "node": self.node, "point": point, "job": job_id.hex(), "peer": peer}
        self._file.write(json.dumps(line) + "\n")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


@dataclass(frozen=True)
class Mark:
    """One line of a timing trace."""

    t: float
    node: str
    point: str
    job: str
    peer: str


def read_trace(path: pathlib.Path) -> Iterator[Mark]:
    """The marks in a trace file (a torn last line, from a node still writing, is skipped)."""
    with path.open() as f:
        for line in f:
            try:
                row = json.loads(line)
                yield Mark(float(row["t"]), row["node"], row["point"], row["job"], row["peer"])
            except (ValueError, KeyError, TypeError):
                continue


@dataclass(frozen=True)
class Dispatch:
    """One replica's way from the coordinator's decision to the worker's engine, in seconds per stage."""

    job: str
    worker: str
    stages: dict[str, float]
    """``point -> seconds since dispatch`` for every point both traces hold for this replica."""

    @property
    def to_engine_s(self) -> float:
        """Coordinator decision → worker engine start: issue 3's dispatch overhead."""
        return self.stages["engine_start"]


def dispatches(marks: Iterable[Mark]) -> list[Dispatch]:
    """Pair each coordinator ``dispatch`` with the same replica's points on its worker (merged traces of
    processes on one machine); replicas whose worker never started the engine are left out. A job id that
    was dispatched to the same worker twice (a retry) pairs with the first of each point after it."""
    by_replica: dict[tuple[str, str], list[Mark]] = {}
    for mark in marks:
        # On a coordinator ``peer`` is the worker; on a worker, ``node`` is the worker.
        worker = mark.peer if mark.point in ("dispatch", "stream_ready", "sent", "reply") else mark.node
        by_replica.setdefault((mark.job, worker), []).append(mark)
    out = []
    for (job, worker), group in sorted(by_replica.items()):
        group.sort(key=lambda m: m.t)
        start = next((m.t for m in group if m.point == "dispatch"), None)
        if start is None:
            continue
        stages: dict[str, float] = {}
        for mark in group:
            if mark.t >= start and mark.point not in stages:
                stages[mark.point] = mark.t - start
        if "engine_start" in stages:
            out.append(Dispatch(job, worker, stages))
    return out


def stage_medians(found: Iterable[Dispatch]) -> dict[str, float]:
    """Median seconds from dispatch to each point, in the order a replica passes them."""
    values: dict[str, list[float]] = {}
    for d in found:
        for point, seconds in d.stages.items():
            values.setdefault(point, []).append(seconds)
    return {p: statistics.median(values[p]) for p in POINTS if p in values}

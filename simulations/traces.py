"""Trace replay: churn and workload read from CSV files instead of drawn from distributions.

Churn trace (``[churn] trace = "file.csv"``), one online session per row::

    node,t_on,t_off
    0,0,120.5        worker 0 is online from 0 s to 120.5 s
    0,300,           ... and again from 300 s to the end (empty t_off: never leaves)

``node`` is the worker's index (0 .. workers-1, the order the scenario builds them in). A worker with no
row never comes online. One node's sessions must not overlap. Traces from the Failure Trace Archive or a
BOINC host log convert to this with one line of pandas.

Workload trace (``[workload] trace = "file.csv"``), one job per row::

    t,model,max_tokens
    0.5,sim-model,32

Rows may come in any order (they are replayed by time, ties in file order). Every model named in the trace
is served by every worker (one offer per model, each its own numerical class), so a multi-model trace
exercises the coordinator's per-model candidate index.

Relative paths are resolved against the scenario file's folder (``scenario.load``), else the current one.
"""

from __future__ import annotations

import csv
import itertools
import math
from dataclasses import dataclass
from pathlib import Path

from opengrid.errors import ConfigError

CHURN_COLUMNS = ("node", "t_on", "t_off")
WORKLOAD_COLUMNS = ("t", "model", "max_tokens")


@dataclass(frozen=True)
class Session:
    """One online period of a worker, in seconds; ``off_s`` is inf when it never leaves."""

    on_s: float
    off_s: float


@dataclass(frozen=True)
class Arrival:
    """One job of a workload trace."""

    t_s: float
    model: str
    max_tokens: int


def _rows(path: Path, columns: tuple[str, ...]) -> list[tuple[int, dict[str, str]]]:
    """(line number, row) for each data row; ConfigError if the file or its header is wrong."""
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            header = tuple(name.strip() for name in reader.fieldnames or ())
            if header[: len(columns)] != columns:
                raise ConfigError(f"trace {path}: header must start with {','.join(columns)}, got {header}")
            reader.fieldnames = list(header)
            return [
                (reader.line_num, {k: (v or "").strip() for k, v in row.items() if k is not None})
                for row in reader
                if any((v or "").strip() for v in row.values() if isinstance(v, str))
            ]
    except FileNotFoundError as exc:
        raise ConfigError(
            f"trace file {path} not found (relative paths start at the scenario's folder)"
        ) from exc


def _number(path: Path, line: int, name: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError as exc:
        raise ConfigError(
            f"trace {path} line {line}: {name} must be a number of seconds, got {text!r}"
        ) from exc
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"trace {path} line {line}: {name} must be finite and >= 0, got {text!r}")
    return value


def load_churn(path: Path, workers: int) -> dict[int, list[Session]]:
    """Worker index -> its sessions in time order; ConfigError naming the line of any bad row."""
    sessions: dict[int, list[Session]] = {}
    for line, row in _rows(path, CHURN_COLUMNS):
        try:
            node = int(row["node"])
        except ValueError as exc:
            raise ConfigError(
                f"trace {path} line {line}: node must be a worker index, got {row['node']!r}"
            ) from exc
        if not 0 <= node < workers:
            raise ConfigError(
                f"trace {path} line {line}: node {node} is not a worker of this scenario (0..{workers - 1}); "
                "raise `workers` or drop the row"
            )
        on = _number(path, line, "t_on", row["t_on"])
        off = _number(path, line, "t_off", row["t_off"]) if row["t_off"] else math.inf
        if off <= on:
            raise ConfigError(f"trace {path} line {line}: t_off {off} is not after t_on {on}")
        sessions.setdefault(node, []).append(Session(on, off))
    for node, periods in sessions.items():
        periods.sort(key=lambda s: s.on_s)
        for before, after in itertools.pairwise(periods):
            if after.on_s < before.off_s:
                raise ConfigError(
                    f"trace {path}: sessions of node {node} overlap ({before.on_s}-{before.off_s} and "
                    f"{after.on_s}-{after.off_s}); merge them"
                )
    return dict(sorted(sessions.items()))


def load_workload(path: Path) -> list[Arrival]:
    """The trace's jobs by time (ties in file order); ConfigError naming the line of any bad row."""
    arrivals: list[Arrival] = []
    for line, row in _rows(path, WORKLOAD_COLUMNS):
        t = _number(path, line, "t", row["t"])
        if not row["model"]:
            raise ConfigError(f"trace {path} line {line}: model is empty")
        try:
            tokens = int(row["max_tokens"])
        except ValueError as exc:
            raise ConfigError(
                f"trace {path} line {line}: max_tokens must be an integer, got {row['max_tokens']!r}"
            ) from exc
        if tokens < 1:
            raise ConfigError(f"trace {path} line {line}: max_tokens must be >= 1, got {tokens}")
        arrivals.append(Arrival(t, row["model"], tokens))
    return sorted(arrivals, key=lambda a: a.t_s)

"""Which nodes run a model too big for one, and which layers each holds: a pure policy (spec/split.md §3).

A *split group* is a head (which holds the input embeddings, the output layer and, optionally, the first
layers) and *members* (each holds a contiguous run of the remaining layers). The output layer stays on the
head so that only one hidden state per token crosses to and from each member, never the logits (a whole
vocabulary per token, and a logits buffer of n_batch x n_vocab floats on the member: 96 MiB for SmolLM2).
llama.cpp's RPC backend routes every activation through the head (a star: the head reads a member's output
and writes it into the next member), so the round trip that matters is head <-> member, once per member per
token; a member farther than ``max_rtt_ms`` from the head is never chosen.

The policy, in order:

1. only candidates with a round trip to the head of at most ``max_rtt_ms`` (80 ms, as mesh-llm uses) and
   room for at least one layer are considered;
2. the fewest members that fit: candidates sorted by free memory, largest first (ties: lower RTT, then
   peer id, so the plan is reproducible), and the first k whose memory, with the head's, holds the model;
3. layers in proportion to each participant's free memory, then repaired so that nobody is given more
   bytes than it announced.

Re-planning when a member leaves is the same function over the candidates that are left
(:func:`replan`). Memory is in bytes; all values are plain numbers so the simulator can drive it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from opengrid.errors import NoCapacityError

__all__ = [
    "MAX_NEIGHBOUR_RTT_MS",
    "MemberShare",
    "ModelFootprint",
    "SplitCandidate",
    "SplitPlan",
    "plan_split",
    "replan",
]

MAX_NEIGHBOUR_RTT_MS = 80.0
"""A member's round trip to the head may be at most this (mesh-llm's bound): every generated token crosses
each hop at least twice, so 80 ms per hop already caps a 2-way split near 6 tokens/s."""


@dataclass(frozen=True)
class ModelFootprint:
    """What a model needs in memory, by layer (from its GGUF: tensor sizes and the KV cache at n_ctx)."""

    input_bytes: int
    """The token embeddings: always on the head (llama.cpp keeps the input layer on the CPU)."""
    layer_bytes: tuple[int, ...]
    """Per repeating layer: weights plus its share of the KV cache."""
    output_bytes: int
    """The output layer (final norm and output matrix, or the tied embeddings again) and its logits
    scratch: always on the head."""
    overhead_bytes: int = 64 * 1024 * 1024
    """Scratch (compute buffers) each participant needs on top of its layers."""

    def __post_init__(self) -> None:
        if not self.layer_bytes:
            raise ValueError("a model footprint needs at least one layer")
        if (
            min(self.layer_bytes) < 0
            or self.input_bytes < 0
            or self.output_bytes < 0
            or self.overhead_bytes < 0
        ):
            raise ValueError("a model footprint's sizes must be >= 0 bytes")

    @property
    def n_layers(self) -> int:
        """Repeating layers (the output layer is not counted)."""
        return len(self.layer_bytes)

    @property
    def total_bytes(self) -> int:
        """Everything in one process: what a node needs to run the model alone."""
        return self.input_bytes + sum(self.layer_bytes) + self.output_bytes + self.overhead_bytes

    def unit_bytes(self, unit: int) -> int:
        """Bytes of placement unit (layer) ``unit``."""
        return self.layer_bytes[unit]


@dataclass(frozen=True)
class SplitCandidate:
    """A node that offers memory to split groups (announced: free memory capped by its ``--max-memory``)."""

    peer: str
    free_bytes: int
    rtt_ms: float = 0.0
    """Round trip to the head, measured by the head (0 for the head itself)."""


@dataclass(frozen=True)
class MemberShare:
    """One member's part of a plan: layers ``first .. first + count - 1``."""

    peer: str
    first: int
    count: int
    bytes: int
    """Bytes the member is asked to hold: its units plus the scratch overhead (what it must accept)."""


@dataclass(frozen=True)
class SplitPlan:
    """Where every layer of a model runs: the head's first ``head_layers`` layers, then each member's."""

    head: str
    head_layers: int
    head_bytes: int
    members: tuple[MemberShare, ...]
    n_layers: int

    @property
    def peers(self) -> tuple[str, ...]:
        """Members, in layer order."""
        return tuple(m.peer for m in self.members)

    @property
    def tensor_split(self) -> tuple[float, ...]:
        """llama.cpp's ``tensor_split`` over the members' devices: layers per member, the last one + 1
        for the output layer, which llama.cpp assigns to the last device and the split runner keeps on
        the head's CPU by a tensor override (its layer split gives device j exactly these counts)."""
        counts = [float(m.count) for m in self.members]
        if counts:
            counts[-1] += 1.0
        return tuple(counts)

    @property
    def offloaded(self) -> int:
        """llama.cpp's ``n_gpu_layers``: the members' layers, + 1 for the output layer (see
        ``tensor_split``); 0 when the head holds everything."""
        total = sum(m.count for m in self.members)
        return total + 1 if total else 0

    def layer_share(self, peer: str) -> int:
        """Layers ``peer`` runs in this plan (what it is credited for; the head's input and output layers
        are not counted)."""
        if peer == self.head:
            return self.head_layers
        return sum(m.count for m in self.members if m.peer == peer)


def plan_split(
    footprint: ModelFootprint,
    head: SplitCandidate,
    candidates: Sequence[SplitCandidate],
    *,
    max_rtt_ms: float = MAX_NEIGHBOUR_RTT_MS,
    max_members: int = 16,
) -> SplitPlan:
    """The plan with the fewest members that holds ``footprint`` (module docstring); raises
    :class:`NoCapacityError` saying how much memory is missing when no subset fits.

    ``max_members`` is llama.cpp's limit on RPC servers (GGML_RPC_MAX_SERVERS, 16)."""
    n_units = footprint.n_layers
    cheapest = min(footprint.unit_bytes(u) for u in range(n_units)) + footprint.overhead_bytes
    usable = sorted(
        (
            c
            for c in candidates
            if c.peer != head.peer and c.rtt_ms <= max_rtt_ms and c.free_bytes >= cheapest
        ),
        key=lambda c: (-c.free_bytes, c.rtt_ms, c.peer),
    )
    # The head holds the input and output layers (and scratch) whatever else it runs.
    fixed = footprint.input_bytes + footprint.output_bytes + footprint.overhead_bytes
    head_room = max(0, head.free_bytes - fixed)
    if head.free_bytes < fixed:
        raise NoCapacityError(
            f"the head ({head.peer}) offers {_mib(head.free_bytes)} but must hold the model's input and "
            f"output layers and scratch ({_mib(fixed)}); give it more --max-memory"
        )
    needed = sum(footprint.unit_bytes(u) for u in range(n_units))
    for k in range(0, min(len(usable), max_members) + 1):  # 0: the head holds it alone
        chosen = usable[:k]
        rooms = [head_room] + [c.free_bytes - footprint.overhead_bytes for c in chosen]
        if sum(rooms) < needed:
            continue
        counts = _place(footprint, rooms)
        if counts is None or (k and any(c == 0 for c in counts[1:])):
            continue
        members = []
        first = counts[0]
        for cand, count in zip(chosen, counts[1:], strict=True):
            used = sum(footprint.unit_bytes(u) for u in range(first, first + count))
            members.append(MemberShare(cand.peer, first, count, used + footprint.overhead_bytes))
            first += count
        head_bytes = fixed + sum(footprint.layer_bytes[: counts[0]])
        return SplitPlan(head.peer, counts[0], head_bytes, tuple(members), footprint.n_layers)
    offered = head_room + sum(c.free_bytes - footprint.overhead_bytes for c in usable[:max_members])
    far = sum(1 for c in candidates if c.peer != head.peer and c.rtt_ms > max_rtt_ms)
    raise NoCapacityError(
        f"the model needs {_mib(footprint.total_bytes)} in all; the head and {len(usable)} usable members "
        f"offer {_mib(offered + fixed)}"
        + (f" ({far} more are over the {max_rtt_ms:.0f} ms round-trip bound)" if far else "")
        + "; wait for more members, or raise their --max-memory"
    )


def replan(
    plan: SplitPlan,
    footprint: ModelFootprint,
    head: SplitCandidate,
    candidates: Sequence[SplitCandidate],
    gone: set[str],
    *,
    max_rtt_ms: float = MAX_NEIGHBOUR_RTT_MS,
) -> SplitPlan:
    """A new plan after the members in ``gone`` left ``plan``: the same policy over the candidates that
    remain (members still present keep their place in the order of free memory, so most keep layers)."""
    if plan.head in gone:
        raise NoCapacityError(f"the head {plan.head} of the split group left; the job must move elsewhere")
    left = [c for c in candidates if c.peer not in gone]
    return plan_split(footprint, head, left, max_rtt_ms=max_rtt_ms)


def _place(footprint: ModelFootprint, rooms: Sequence[int]) -> list[int] | None:
    """Units per participant (head first), contiguous, in proportion to ``rooms``, none over its room;
    None when no such placement exists."""
    n_units = footprint.n_layers
    total_room = sum(rooms)
    if total_room <= 0:
        return None
    # Proportional targets by the largest-remainder method: sums to n_units exactly.
    raw = [n_units * r / total_room for r in rooms]
    counts = [int(x) for x in raw]
    for i in sorted(range(len(rooms)), key=lambda i: raw[i] - counts[i], reverse=True)[
        : n_units - sum(counts)
    ]:
        counts[i] += 1
    # Repair: move a boundary unit from a participant over its room to its neighbour with the most spare,
    # until everyone fits. Each move shifts one unit; bounded by units x participants moves.
    for _ in range(n_units * len(rooms) + 1):
        used = _used(footprint, counts)
        over = [i for i in range(len(rooms)) if used[i] > rooms[i]]
        if not over:
            return counts
        i = over[0]
        spare = [(rooms[j] - used[j], j) for j in (i - 1, i + 1) if 0 <= j < len(rooms)]
        spare.sort(reverse=True)
        moved = False
        for _room, j in spare:
            if counts[i] == 0:
                break
            # Moving left gives away i's first unit, moving right its last: ranges stay contiguous.
            unit = sum(counts[:i]) if j < i else sum(counts[: i + 1]) - 1
            if used[j] + footprint.unit_bytes(unit) <= rooms[j]:
                counts[i] -= 1
                counts[j] += 1
                moved = True
                break
        if not moved:
            # No neighbour takes it whole: push one unit outward anyway toward the side with more spare,
            # and let the next round carry it further (bounded by the loop).
            if not spare or counts[i] == 0:
                return None
            j = spare[0][1]
            counts[i] -= 1
            counts[j] += 1
    return None


def _used(footprint: ModelFootprint, counts: Sequence[int]) -> list[int]:
    used = []
    first = 0
    for count in counts:
        used.append(sum(footprint.unit_bytes(u) for u in range(first, first + count)))
        first += count
    return used


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):.0f} MiB"

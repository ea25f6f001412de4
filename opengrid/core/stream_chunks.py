"""How a streaming prover's claim is cut into chunks for its auditors (spec/verification.md §14.2).

A pure policy over plain numbers. The first chunk is small, because the client's first verified text
waits for it to fill and for its audit; each later chunk doubles the one before, up to a cap, so a long
answer costs few audit round trips (``log2(cap / first)`` + ``n / cap`` of them) while every token still
waits at most about one chunk's generation for its verdict.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from opengrid.core.audit import AuditPolicy, PositionEvidence, judge
from opengrid.errors import ConfigError
from opengrid.wire.messages import MAX_PROGRESS_TOKENS, ChunkVerdict

__all__ = ["ChunkPolicy", "chunk_verdict", "cut"]

_MAX_WIRE_GAP = 1e30  # AuditGap's bound: an infinite or NaN gap (a broken engine) is sent as this


@dataclass(frozen=True)
class ChunkPolicy:
    """Chunk sizes: ``first`` tokens, then doubling up to ``largest`` (``CoordinatorConfig``'s
    ``stream_chunk_first`` and ``stream_chunk_max``)."""

    first: int = 1
    largest: int = 16

    def __post_init__(self) -> None:
        if not 1 <= self.first <= self.largest <= MAX_PROGRESS_TOKENS:
            raise ConfigError(
                f"stream chunk sizes must satisfy 1 <= stream_chunk_first ({self.first}) <= "
                f"stream_chunk_max ({self.largest}) <= {MAX_PROGRESS_TOKENS} (an AuditChunk's token limit)"
            )

    def size(self, index: int) -> int:
        """Tokens in chunk number ``index`` (0 = the first)."""
        if index < 0:
            raise ValueError(f"a chunk index is >= 0, got {index}")
        if index >= self.largest.bit_length():  # already doubled past the cap; avoid huge shifts
            return self.largest
        return min(self.largest, self.first << index)


def cut(policy: ChunkPolicy, ends: list[int], available: int, *, final: bool) -> list[tuple[int, int]]:
    """The new chunks ``(start, end)`` to cut from a claim of which ``available`` tokens have arrived,
    after the chunks ending at ``ends`` (appended to in place). Only full chunks, unless ``final`` (the
    claim is complete): then the rest too, in chunks of at most the policy's size."""
    new: list[tuple[int, int]] = []
    start = ends[-1] if ends else 0
    while available > start:
        size = policy.size(len(ends))
        if available - start < size and not final:
            break
        end = min(available, start + size)
        ends.append(end)
        new.append((start, end))
        start = end
    return new


def chunk_verdict(
    job_id: bytes,
    offset: int,
    evidence: Sequence[PositionEvidence],
    tolerance: float,
    *,
    problem: str = "",
    problem_at: int = -1,
) -> ChunkVerdict:
    """An auditor's verdict on one chunk (claim positions ``offset ..``, ``evidence[i]`` for ``offset +
    i``), judged by the rule of a whole audit (``opengrid.core.audit.judge``, spec §12.2). ``problem``:
    why the chunk fails whatever its evidence says (a piece that is not its token's text), at claim
    position ``problem_at``; the earlier of it and the first gap over ``tolerance`` is reported."""
    verdict = judge(evidence, AuditPolicy(gap_tolerance=tolerance))
    end = offset + len(evidence)
    max_gap = _wire_gap(verdict.max_gap)
    failing = offset + verdict.first_failure if verdict.first_failure is not None else -1
    if not problem and verdict.accepted:
        return ChunkVerdict(job_id=job_id, end=end, verdict="pass", max_gap=max_gap)
    if problem and (failing < 0 or problem_at < failing):
        at = problem_at if offset <= problem_at < end else offset
        return ChunkVerdict(
            job_id=job_id, end=end, verdict="fail", max_gap=max_gap, first_failure=at, reason=problem[:1024]
        )
    gap = verdict.failure.gap if verdict.failure is not None else 0.0
    return ChunkVerdict(
        job_id=job_id,
        end=end,
        verdict="fail",
        max_gap=max_gap,
        first_failure=max(failing, offset),
        failure_gap=_wire_gap(gap),
        reason=(verdict.reason or "no positions were scored")[:1024],
    )


def _wire_gap(gap: float) -> float:
    return gap if math.isfinite(gap) and 0.0 <= gap <= _MAX_WIRE_GAP else _MAX_WIRE_GAP

"""How replica outputs are judged: a pure function (spec/verification.md §Quorum).

Outputs are compared by their token commitment. A group of identical outputs wins when it holds at least
``quorum(replicas)`` results *and* a strict majority of the results received so far; otherwise the
coordinator asks more workers, up to a limit, or gives up.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


def quorum(replicas: int) -> int:
    """Results that must agree: a strict majority of the requested replicas (1→1, 2→2, 3→2, 4→3)."""
    return replicas // 2 + 1


@dataclass(frozen=True)
class Agreement:
    """A winning group: the commitment and the peers that produced it (sorted)."""

    commitment: bytes
    peers: tuple[str, ...]
    dissenters: tuple[str, ...]


def judge(commitments: Mapping[str, bytes], replicas: int) -> Agreement | None:
    """Return the winning group among ``peer -> commitment``, or None if no group wins yet."""
    groups: dict[bytes, list[str]] = {}
    for peer in sorted(commitments):
        groups.setdefault(commitments[peer], []).append(peer)
    if not groups:
        return None
    winner = min(groups, key=lambda c: (-len(groups[c]), c))
    size = len(groups[winner])
    if size < quorum(replicas) or size * 2 <= len(commitments):
        return None
    dissenters = tuple(sorted(p for p, c in commitments.items() if c != winner))
    return Agreement(commitment=winner, peers=tuple(groups[winner]), dissenters=dissenters)

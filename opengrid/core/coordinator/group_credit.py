"""A split group's credit: the points a worker earns for a job, divided among the group that ran it by
the layers each participant ran (spec/split.md §8). Pure functions over plain data.

The head's weight is its layers + 1: it also holds the input and output layers and runs the sampling loop.
Each member's weight is its layers. Shares are floored and the remainder goes to the head, so the shares
add up to the points exactly and the head always gets at least one (the members' floored fractions never
add up to a whole number when the points are fewer than the weights; otherwise the head's own floor is
at least one). A member whose floored share is 0 is not credited (receipts credit positive points).
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec
from opengrid_ledger import Attestation, Credit, SignatureScheme, verify_attestation

from opengrid.errors import InvalidEntryError
from opengrid.wire.messages import ReplicaResult

__all__ = ["group_problem", "member_keys", "merged", "split_points", "worker_credits"]


def split_points(points: int, head_layers: int, member_layers: Sequence[int]) -> list[int]:
    """Points per participant, head first (module docstring): they add up to ``points``."""
    weights = [head_layers + 1, *member_layers]
    total = sum(weights)
    shares = [points * w // total for w in weights]
    shares[0] += points - sum(shares)
    return shares


def group_problem(
    result: ReplicaResult, head: Attestation, network: str, scheme: SignatureScheme
) -> str | None:
    """Why ``result``'s split-group shares are not acceptable (None if it has none or they are fine): each
    member's attestation must verify and attest the head's job, contract, output and length; members are
    distinct and none is the head."""
    if isinstance(result.group, msgspec.UnsetType):
        return None
    seen = {head.worker}
    for share in result.group.members:
        try:
            att = msgspec.msgpack.decode(share.attestation, type=Attestation)
            verify_attestation(att, network, scheme=scheme)
        except (msgspec.DecodeError, UnicodeDecodeError, InvalidEntryError) as exc:
            return f"bad split-group member attestation: {exc}"
        if (att.job_id, att.contract_hash, att.output_commitment, att.n_tokens) != (
            head.job_id,
            head.contract_hash,
            head.output_commitment,
            head.n_tokens,
        ):
            return f"split-group member {att.worker.hex()[:16]} attests another output than the head's"
        if att.worker in seen:
            return f"split-group member {att.worker.hex()[:16]} is listed twice, or is the head"
        seen.add(att.worker)
    return None


def worker_credits(
    result: ReplicaResult, attestation: Attestation, points: int
) -> list[tuple[Credit, Attestation, bool]]:
    """What one accepted worker's ``points`` credit: itself alone, or its split group by layers (checked
    by ``group_problem`` when the result arrived), each with the attestation the receipt must carry and
    whether it is a group member (True) or the worker itself (False)."""
    if isinstance(result.group, msgspec.UnsetType):
        return [(Credit(account=attestation.worker, points=points), attestation, False)]
    members = [msgspec.msgpack.decode(s.attestation, type=Attestation) for s in result.group.members]
    shares = split_points(points, result.group.head_layers, [s.layers for s in result.group.members])
    out = [(Credit(account=attestation.worker, points=shares[0]), attestation, False)]
    for member, share in zip(members, shares[1:], strict=True):
        if share > 0:
            out.append((Credit(account=member.worker, points=share), member, True))
    return out


def member_keys(result: ReplicaResult) -> list[bytes]:
    """The accounts of ``result``'s split-group members (none for an ordinary worker's result)."""
    if isinstance(result.group, msgspec.UnsetType):
        return []
    return [msgspec.msgpack.decode(s.attestation, type=Attestation).worker for s in result.group.members]


def merged(
    pairs: Sequence[tuple[Credit, Attestation, bool]],
) -> tuple[tuple[Credit, ...], tuple[Attestation, ...], tuple[bytes, ...]]:
    """Credits, attestations and split-group members for a receipt: one credit per account (a key
    credited twice, e.g. a member of two replicas' groups, gets the sum, with its first attestation), in
    first-seen order; an account is a member only if it is never credited as a worker itself."""
    points: dict[bytes, int] = {}
    atts: dict[bytes, Attestation] = {}
    workers: set[bytes] = set()
    for credit, att, member in pairs:
        points[credit.account] = points.get(credit.account, 0) + credit.points
        atts.setdefault(credit.account, att)
        if not member:
            workers.add(credit.account)
    return (
        tuple(Credit(account=a, points=p) for a, p in points.items()),
        tuple(atts[a] for a in points),
        tuple(a for a in points if a not in workers),
    )

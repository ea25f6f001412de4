"""Coordinator admission (spec/ledger.md §5.8, §7.1): who co-signs a candidate, and when it has enough.

Pure policy over plain data: the node asks ``check_request`` whether a request is well formed (its
network, the candidate's signature, its age), reads its ledger, its operator's approvals and the votes it
gave, and asks ``decide_vote`` whether to co-sign; the candidate asks ``votes_needed`` how many
co-signatures its ADMIT entry must carry, and ``vote_problem`` whether a vote it received is one. A "no" is
a :class:`~opengrid.core.refusal.Refusal` (``Refuse`` adds whether the operator should hear of it).

A minting coordinator co-signs the admission of ``candidate`` at ``epoch`` only if

1. it is itself in the coordinator set, and the candidate is not;
2. ``epoch`` is the admission epoch of its own ledger (the number of ADMIT entries applied): a candidate
   behind or ahead syncs and asks again;
3. it has not co-signed another candidate at that epoch (honest coordinators MUST NOT co-sign two
   admissions for one epoch, which is what makes the coordinator set independent of arrival order);
4. its operator approved the candidate, or the automatic rule admits it: the candidate's key has earned
   at least ``auto_min_jobs`` verified jobs (receipts crediting it as a worker) in the voter's ledger.

Otherwise the candidate is told why, and what its operator or the voter's operator should do.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import nacl.exceptions
import nacl.signing
from opengrid_ledger import admit_signing_bytes

from opengrid.core.refusal import Refusal
from opengrid.wire.admit import admit_request_signing_bytes
from opengrid.wire.control import MAX_CLOCK_SKEW_MS
from opengrid.wire.messages import AdmitRequest, AdmitVote


@dataclass(frozen=True)
class Ballot:
    """What a voter knows when a candidate asks it for a co-signature."""

    candidate: bytes
    epoch: int
    """The epoch the candidate asks for."""
    ledger_epoch: int
    """The voter's admission epoch: ADMIT entries applied in its ledger."""
    voter_is_minter: bool
    candidate_is_minter: bool
    approved: bool
    """The voter's operator approved the candidate (``opengrid node approve --coordinator``)."""
    candidate_jobs: int = 0
    """Verified jobs the candidate's key has been credited for as a worker, in the voter's ledger."""
    auto_min_jobs: int = 0
    """The automatic rule: co-sign a candidate with at least this many jobs; 0 turns it off."""
    cosigned: Mapping[int, bytes] | None = None
    """The candidate this voter already co-signed at each epoch (kept across restarts)."""


@dataclass(frozen=True)
class Cosign:
    """Co-sign the admission of ``Ballot.candidate`` at ``Ballot.epoch``."""

    why: str


class Refuse(Refusal, frozen=True):
    """Do not co-sign now: ``code`` and ``message`` go to the candidate (``reply()``); ``pending``: record
    it for the operator (``opengrid node pending``)."""

    pending: bool = False


def check_request(
    network: str, voter: bytes, request: AdmitRequest, *, sender: bytes, now_ms: int
) -> Refusal | None:
    """Why ``request``, sent by the peer whose key is ``sender``, cannot be voted on by ``voter`` on
    ``network`` at ``now_ms`` (None: it can): sent by another node than the candidate's own (else anyone
    could fill the voter's pending list), another network, not signed by the candidate's key for this
    voter, or older/newer than the clock skew allows."""
    if sender != request.candidate:
        return Refusal("admission_refused", "a candidate asks for its own admission, from its own node")
    if request.network != network:
        return Refusal("malformed", f"this coordinator runs network {network!r}, not {request.network!r}")
    signed = admit_request_signing_bytes(
        network, voter, request.epoch, request.candidate, request.issued_at_ms
    )
    try:
        nacl.signing.VerifyKey(request.candidate).verify(signed, request.signature)
    except (nacl.exceptions.BadSignatureError, ValueError):
        return Refusal(
            "malformed", "admission request not signed by the candidate's key for this coordinator"
        )
    if abs(now_ms - request.issued_at_ms) > MAX_CLOCK_SKEW_MS:
        return Refusal("malformed", "admission request is stale; check this machine's clock and ask again")
    return None


def decide_vote(ballot: Ballot) -> Cosign | Refuse:
    """The voter's decision on one request (rules in the module docstring, in that order)."""
    if not ballot.voter_is_minter:
        return Refuse(
            "admission_refused", "this coordinator is not in the coordinator set itself; ask a minting one"
        )
    if ballot.candidate_is_minter:
        return Refuse("admission_refused", "the candidate is already a coordinator on this network")
    if ballot.epoch != ballot.ledger_epoch:
        return Refuse(
            "admission_refused",
            f"this coordinator's ledger is at admission epoch {ballot.ledger_epoch}, not {ballot.epoch}; "
            "sync the ledger and ask again for the current epoch",
        )
    earlier = (ballot.cosigned or {}).get(ballot.epoch)
    if earlier == ballot.candidate:
        return Cosign("co-signed before at this epoch")
    if earlier is not None:
        return Refuse(
            "admission_refused",
            f"this coordinator already co-signed the admission of {earlier.hex()[:16]}… at epoch "
            f"{ballot.epoch}; ask again once that admission is in the ledger (the next epoch)",
        )
    if ballot.approved:
        return Cosign("approved by the operator")
    if ballot.auto_min_jobs > 0 and ballot.candidate_jobs >= ballot.auto_min_jobs:
        return Cosign(f"earned {ballot.candidate_jobs} verified jobs as a worker (automatic rule)")
    needs = (
        f"; it would be admitted automatically after {ballot.auto_min_jobs} verified jobs as a worker "
        f"(it has {ballot.candidate_jobs})"
        if ballot.auto_min_jobs > 0
        else ""
    )
    return Refuse(
        "admission_pending",
        f"awaiting approval by this coordinator's operator (opengrid node approve --coordinator){needs}",
        pending=True,
    )


def votes_needed(set_size: int) -> int:
    """Co-signatures an ADMIT needs from a coordinator set of ``set_size``: ⌈2/3⌉ of it (at least 1)."""
    return max(1, -(-2 * set_size // 3))


def vote_problem(network: str, epoch: int, candidate: bytes, signer: bytes, vote: AdmitVote) -> str:
    """Why ``vote`` is not ``signer``'s co-signature of ``candidate`` at ``epoch`` ("" if it is one)."""
    if (vote.epoch, vote.candidate, vote.signer) != (epoch, candidate, signer):
        return "the vote is for another epoch, candidate or signer than asked"
    try:
        nacl.signing.VerifyKey(signer).verify(admit_signing_bytes(network, epoch, candidate), vote.signature)
    except (nacl.exceptions.BadSignatureError, ValueError):
        return "the vote's signature does not verify"
    return ""

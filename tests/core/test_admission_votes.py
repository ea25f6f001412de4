"""Who co-signs a candidate coordinator's admission, and how many co-signatures it needs (ledger.md §7.1)."""

from __future__ import annotations

import dataclasses

import pytest
from nacl.signing import SigningKey
from opengrid_ledger import sign_admit

from opengrid.core.admission_votes import (
    Ballot,
    Cosign,
    Refuse,
    check_request,
    decide_vote,
    vote_problem,
    votes_needed,
)
from opengrid.core.refusal import Refusal
from opengrid.wire.admit import admit_request_signing_bytes
from opengrid.wire.control import MAX_CLOCK_SKEW_MS
from opengrid.wire.messages import AdmitRequest, AdmitVote

CANDIDATE, OTHER = b"\x0c" * 32, b"\x0d" * 32
BALLOT = Ballot(
    candidate=CANDIDATE,
    epoch=2,
    ledger_epoch=2,
    voter_is_minter=True,
    candidate_is_minter=False,
    approved=False,
)


def vote(**changes: object) -> Cosign | Refuse:
    return decide_vote(dataclasses.replace(BALLOT, **changes))  # type: ignore[arg-type]


def test_by_default_the_candidate_waits_for_the_operator_and_is_listed_as_pending() -> None:
    decision = vote()
    assert isinstance(decision, Refuse) and decision.code == "admission_pending" and decision.pending
    assert "opengrid node approve --coordinator" in decision.message


def test_an_approved_candidate_is_cosigned() -> None:
    assert isinstance(vote(approved=True), Cosign)


def test_the_automatic_rule_admits_a_candidate_that_earned_enough_jobs_as_a_worker() -> None:
    assert isinstance(vote(auto_min_jobs=10, candidate_jobs=10), Cosign)
    short = vote(auto_min_jobs=10, candidate_jobs=9)
    assert isinstance(short, Refuse) and short.pending and "it has 9" in short.message
    assert isinstance(vote(auto_min_jobs=0, candidate_jobs=1000), Refuse)  # off by default


@pytest.mark.parametrize(
    ("changes", "says"),
    [
        ({"voter_is_minter": False}, "not in the coordinator set"),
        ({"candidate_is_minter": True}, "already a coordinator"),
        ({"epoch": 1}, "epoch 2, not 1"),
        ({"epoch": 3}, "epoch 2, not 3"),
        ({"cosigned": {2: OTHER}}, "already co-signed"),
    ],
)
def test_refusals_that_approval_does_not_lift(changes: dict[str, object], says: str) -> None:
    decision = vote(approved=True, **changes)
    assert isinstance(decision, Refuse) and decision.code == "admission_refused" and not decision.pending
    assert says in decision.message


def test_a_vote_given_is_given_again_even_after_the_approval_is_gone() -> None:
    assert isinstance(vote(cosigned={2: CANDIDATE}), Cosign)
    assert isinstance(vote(approved=True, cosigned={1: OTHER}), Cosign)  # another epoch: no conflict


@pytest.mark.parametrize(("size", "needed"), [(1, 1), (2, 2), (3, 2), (4, 3), (5, 4), (6, 4), (7, 5)])
def test_votes_needed_is_two_thirds_rounded_up(size: int, needed: int) -> None:
    assert votes_needed(size) == needed
    assert 3 * needed >= 2 * size and 3 * (needed - 1) < 2 * size  # the ledger's rule, and no more


def test_a_vote_is_checked_against_what_was_asked() -> None:
    key = SigningKey(b"\x01" * 32)
    signer = bytes(key.verify_key)
    cosig = sign_admit(key, "net", 2, CANDIDATE)
    good = AdmitVote(epoch=2, candidate=CANDIDATE, signer=signer, signature=cosig.signature)
    assert vote_problem("net", 2, CANDIDATE, signer, good) == ""
    assert "another epoch" in vote_problem("net", 3, CANDIDATE, signer, good)
    assert "another epoch" in vote_problem("net", 2, CANDIDATE, OTHER, good)
    assert "does not verify" in vote_problem("other-net", 2, CANDIDATE, signer, good)


def _request(
    candidate: SigningKey, voter: bytes, *, network: str = "net", issued_at_ms: int = 1_000
) -> AdmitRequest:
    key = candidate.verify_key.encode()
    signed = admit_request_signing_bytes(network, voter, 2, key, issued_at_ms)
    return AdmitRequest(network, 2, key, issued_at_ms, candidate.sign(signed).signature)


def test_a_request_is_checked_in_the_core_and_refused_with_a_typed_refusal() -> None:
    candidate, voter = SigningKey.generate(), SigningKey.generate().verify_key.encode()
    good = _request(candidate, voter)
    sender = candidate.verify_key.encode()
    assert check_request("net", voter, good, sender=sender, now_ms=1_000 + MAX_CLOCK_SKEW_MS) is None
    other_node = check_request("net", voter, good, sender=voter, now_ms=1_000)
    assert (
        other_node is not None and other_node.code == "admission_refused" and "own node" in other_node.message
    )
    cases = {
        "runs network 'net', not 'other'": (_request(candidate, voter, network="other"), 1_000),
        "not signed by the candidate's key for this coordinator": (
            _request(candidate, SigningKey.generate().verify_key.encode()),  # signed for another voter
            1_000,
        ),
        "is stale; check this machine's clock": (good, 1_001 + MAX_CLOCK_SKEW_MS),
    }
    for says, (request, now_ms) in cases.items():
        refusal = check_request("net", voter, request, sender=sender, now_ms=now_ms)
        assert isinstance(refusal, Refusal) and refusal.code == "malformed" and says in refusal.message
        assert refusal.reply().message == refusal.message


def test_a_refused_vote_is_a_refusal_whose_reply_the_candidate_gets() -> None:
    decision = vote()
    assert isinstance(decision, Refusal) and decision.reply().code == "admission_pending"

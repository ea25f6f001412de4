"""Reputation follows a split group's members (spec/split.md §6): a group claim that fails its audit, or
is outvoted, marks the head and every member that co-signed it invalid, in memory and in what the ledger
keeps (EVIDENCE, receipt dissenters), and pays none of them; a member's standing then weighs every group
that registers it; a job whose one prover class is used up re-runs on another class of the same weights
in audit mode. Coordinator machines fed real WorkerLogic results, no sockets."""

from __future__ import annotations

import msgspec
from grid_harness import (
    HONEST,
    NETWORK,
    Grid,
    audits,
    cheat,
    dispatches,
    finished,
    open_receipt,
    signing_key,
)
from opengrid_ledger import Attestation, Evidence, LedgerState, decode_body, sign_attestation
from test_group_credit import co_signed, member_key

from opengrid.core.coordinator import CoordinatorConfig
from opengrid.core.effects import AppendEntry, DispatchReplica, Effect, Penalize
from opengrid.core.events import WorkerRegistered
from opengrid.core.reputation import Reputation, receipt_outcomes, reputation_from_ledger
from opengrid.core.worker import WorkerLogic
from opengrid.wire.contract import DecodingContract
from opengrid.wire.messages import GroupShare, JobAccepted, ModelOffer, ReplicaResult, SplitShares

AUDIT = CoordinatorConfig(verify="audit", audit_full_rate=1.0, canary_rate=0.0)
MEMBERS = (member_key("m0"), member_key("m1"))


def evidence(effects: list[Effect]) -> list[Evidence]:
    bodies = [decode_body(e.entry.body) for e in effects if isinstance(e, AppendEntry)]
    return [b.payload for b in bodies if isinstance(b.payload, Evidence)]


def rebuilt(grid: Grid) -> dict[bytes, Reputation]:
    """Reputations as a restarted coordinator rebuilds them from its ledger."""
    return reputation_from_ledger(grid.coordinator.ledger, author=grid.coordinator.public_key)


def test_a_group_claim_that_fails_its_audit_marks_head_and_members_and_pays_none() -> None:
    grid = Grid(n=3, config=AUDIT)
    grid.register()
    (first,) = dispatches(grid.submit(replicas=1, max_tokens=16))
    head = grid.key(first.peer)
    claim = co_signed(grid.result(first, cheat()), head_layers=0, layers=[1, 1])  # members m0, m1
    (audit,) = audits(grid.deliver(first, claim))
    effects = grid.audit(audit)  # the auditor finds the claim's tokens far below its own choice
    assert first.peer in [p.peer for p in effects if isinstance(p, Penalize)]
    for key in (head, *MEMBERS):
        assert grid.coordinator.reputation[key].invalid == 1, key.hex()[:8]
    # the job re-runs on another worker; its honest claim, audited, is the client's answer
    (rerun,) = dispatches(effects)
    assert rerun.peer != first.peer
    (audit2,) = audits(grid.answer(rerun, HONEST))
    done = grid.audit(audit2, gap=0.0)
    reply = finished(done)
    assert isinstance(reply, JobAccepted) and reply.tokens == list(HONEST.tokens)
    _, receipt = open_receipt(reply.receipt)
    credited = {c.account for c in receipt.credits}
    assert not credited & {head, *MEMBERS}  # nothing for the group that failed
    assert all(grid.coordinator.ledger.balance(k) == 0 for k in (head, *MEMBERS))
    # the ledger keeps it: EVIDENCE names head and members invalid, so a restart rebuilds the same
    (entry,) = evidence(done)
    assert set(entry.invalid) == {head, *MEMBERS}
    table = rebuilt(grid)
    assert all(table[k].invalid == 1 and table[k].valid == 0 for k in (head, *MEMBERS))


def test_an_outvoted_group_and_its_members_are_the_receipts_dissenters() -> None:
    grid = Grid(n=3)  # exact replication
    grid.register()
    first, second = dispatches(grid.submit(replicas=2))
    grid.deliver(first, co_signed(grid.result(first, cheat()), 0, [1, 1]))  # the group lies
    (third,) = dispatches(grid.answer(second, HONEST))  # disagreement: one more worker decides
    reply = finished(grid.answer(third, HONEST))
    assert isinstance(reply, JobAccepted) and reply.dissenters == [first.peer]
    _, receipt = open_receipt(reply.receipt)
    head = grid.key(first.peer)
    assert set(receipt.dissenters) == {head, *MEMBERS}
    assert not {c.account for c in receipt.credits} & set(receipt.dissenters)
    assert {k for k, o in receipt_outcomes(receipt) if o == "invalid"} == {head, *MEMBERS}
    for key in (head, *MEMBERS):
        assert grid.coordinator.reputation[key].invalid == 1
        assert rebuilt(grid)[key].invalid == 1


def test_a_member_caught_once_weighs_on_every_group_that_registers_it() -> None:
    grid = Grid(n=3, config=AUDIT)
    grid.register()
    (first,) = dispatches(grid.submit(replicas=1, max_tokens=16))
    (audit,) = audits(grid.deliver(first, co_signed(grid.result(first, cheat()), 0, [1, 1])))
    grid.audit(audit)
    # Another head registers a group with the caught member m1 and an unknown one: it ranks as m1 does.
    other = next(p for p in sorted(grid.workers) if p != first.peer)
    worker = grid.workers[other]
    members = (member_key("m1"), member_key("x"))
    grid.coordinator.handle(WorkerRegistered(other, worker.public_key, worker.offers, members=members), 3.0)
    record = grid.coordinator.workers[other]
    assert record.members == (member_key("m1"), member_key("x"))
    standing = grid.coordinator._standing(record)
    assert standing.invalid == 1 and standing.score < 0  # on probation: audited in full, ranked low
    (candidate,) = [c for c in grid.coordinator._candidates("tiny") if c.peer == other]
    assert candidate.reputation == standing.score
    # Registered again without the member, the group ranks by its own record again.
    grid.coordinator.handle(WorkerRegistered(other, worker.public_key, worker.offers), 4.0)
    assert grid.coordinator._standing(grid.coordinator.workers[other]) == Reputation()


def test_a_later_group_with_an_honest_member_is_credited_normally() -> None:
    grid = Grid(n=3, config=AUDIT)
    grid.register()
    (first,) = dispatches(grid.submit(replicas=1, max_tokens=16))
    (audit,) = audits(grid.deliver(first, co_signed(grid.result(first, cheat()), 0, [1, 1])))
    (rerun,) = dispatches(grid.audit(audit))
    # The next prover is another group, whose member "honest" ran one layer of two.
    head = grid.key(rerun.peer)
    share = _co_signed_by(grid, rerun, "honest")
    (audit2,) = audits(grid.deliver(rerun, share))
    reply = finished(grid.audit(audit2, gap=0.0))
    assert isinstance(reply, JobAccepted)
    _, receipt = open_receipt(reply.receipt)
    credits = {c.account: c.points for c in receipt.credits}
    honest = bytes(signing_key("honest").verify_key)
    # 5 points over weights head 0+1 and member 1: 2 to the member, the remainder 3 to the head
    assert (credits[head], credits[honest]) == (3, 2)
    assert grid.coordinator.reputation[honest] == Reputation().update("valid")
    assert rebuilt(grid)[honest].valid == 1 and rebuilt(grid)[honest].invalid == 0
    assert grid.coordinator.ledger.balance(honest) == 2


def _co_signed_by(grid: Grid, dispatch: DispatchReplica, member: str) -> ReplicaResult:
    """``dispatch``'s honest result co-signed by one member named ``member`` holding 1 layer."""
    result = grid.result(dispatch, HONEST)
    head = msgspec.msgpack.decode(result.attestation, type=Attestation)
    att = sign_attestation(
        signing_key(member),
        NETWORK,
        job_id=head.job_id,
        contract_hash=head.contract_hash,
        output_commitment=head.output_commitment,
        n_tokens=head.n_tokens,
    )
    return msgspec.structs.replace(result, group=SplitShares(0, [GroupShare(msgspec.msgpack.encode(att), 1)]))


def test_a_failed_group_job_reruns_on_a_plain_worker_of_the_same_weights() -> None:
    """Audit mode: the group is the only prover serving the asked name (its class is ``llama.cpp+rpc``);
    two plain workers hold the same GGUF under another name. They audit the group's claim (audits work
    across classes), and when it fails, the job runs again on one of them (another class: its contract
    becomes theirs) and the other audits it."""
    grid = Grid(n=3, config=AUDIT)
    group_class = DecodingContract(model_sha256="ab" * 32, backend="llama.cpp+rpc")
    plain = DecodingContract(model_sha256="ab" * 32)
    for peer, offer in (
        ("w0", ModelOffer(name="tiny", contract=group_class)),
        ("w1", ModelOffer(name="tiny-b", contract=plain)),
        ("w2", ModelOffer(name="tiny-b", contract=plain)),
    ):
        grid.workers[peer] = WorkerLogic(
            network=NETWORK, signing_key=signing_key(peer), offers=(offer,), ledger=LedgerState(NETWORK)
        )
        grid.workers[peer].trust_coordinator(grid.coordinator.public_key)
    grid.register()
    (first,) = dispatches(grid.submit(replicas=1, max_tokens=16))
    assert first.peer == "w0" and first.run.contract == group_class
    (audit,) = audits(grid.deliver(first, co_signed(grid.result(first, cheat()), 0, [1, 1])))
    assert audit.peer in ("w1", "w2")  # a plain worker of the same weights audits the group
    (rerun,) = dispatches(grid.audit(audit))
    assert rerun.peer in ("w1", "w2") and rerun.run.contract == plain
    (audit2,) = audits(grid.answer(rerun, HONEST))
    assert audit2.peer != rerun.peer and audit2.audit.contract == plain
    reply = finished(grid.audit(audit2, gap=0.0))
    assert isinstance(reply, JobAccepted) and reply.tokens == list(HONEST.tokens)
    _, receipt = open_receipt(reply.receipt)
    assert receipt.contract_hash == plain.digest()
    assert {c.account for c in receipt.credits} == {grid.key("w1"), grid.key("w2")}


def test_a_streamed_group_claim_whose_chunk_fails_after_its_result_marks_the_members() -> None:
    """Verified streaming in audit mode: the group's result (co-signed) is in when its last chunk fails its
    audit, so the claim is rejected as a failed audit, members and all (spec/split.md §6)."""
    from test_chunked_audits import CONFIG, LIE, LIE_PIECES, chunks, progress, verdict

    from opengrid.core.worker import Output

    grid = Grid(n=4, config=CONFIG)
    grid.register()
    (run,) = dispatches(grid.submit(1, replicas=1, stream=True))
    first = progress(grid, run, 0, 2, tokens=LIE, pieces=LIE_PIECES)
    verdict(grid, chunks(first)[0])  # its true beginning passes
    progress(grid, run, 2, 5, tokens=LIE, pieces=LIE_PIECES)
    claim = Output(tokens=LIE, text="".join(LIE_PIECES), finish_reason="length")
    rest = chunks(grid.deliver(run, co_signed(grid.result(run, claim), 0, [1, 1])))
    rejected = verdict(grid, rest[0])  # the auditor fails position 2
    assert [p.peer for p in rejected if isinstance(p, Penalize)] == [run.peer]
    for key in (grid.key(run.peer), *MEMBERS):
        assert grid.coordinator.reputation[key].invalid == 1

"""Verified streaming in audit mode (spec/verification.md §14.2): a streaming prover's claim is cut into
chunks for its auditors as it arrives; a chunk's text reaches the client once every auditor passed it; a
failing chunk rejects the claim exactly as a failed audit (the prover stopped, penalised, replaced), and
the re-run must reproduce what was already forwarded. No network: the machine fed events directly."""

from __future__ import annotations

from collections.abc import Sequence

import msgspec
import pytest
from grid_harness import HONEST, Grid, audits, dispatches, evidence_for, finished, of_type, open_receipt

from opengrid.core.audit import PositionEvidence
from opengrid.core.coordinator import CoordinatorConfig
from opengrid.core.effects import (
    CancelReplica,
    DispatchAudit,
    DispatchReplica,
    Effect,
    ForwardVerified,
    Penalize,
    SendAuditChunk,
)
from opengrid.core.events import AuditReturned, ChunkAudited, ReplicaProgressed
from opengrid.core.stream_chunks import ChunkPolicy, chunk_verdict, cut
from opengrid.core.worker import Output
from opengrid.errors import ConfigError
from opengrid.wire.codec import decode_message, encode_message
from opengrid.wire.messages import AuditReport, ChunkVerdict, ErrorReply, JobAccepted

# Chunks of 2 tokens, then 4 (so HONEST's 5 tokens are [0, 2) while it streams, then [2, 5) at the end).
CONFIG = CoordinatorConfig(
    verify="audit", canary_rate=0.0, adaptive=False, stream_chunk_first=2, stream_chunk_max=4
)
PIECES = (" the", " quick", " brown", " fox", "")
LIE = (101, 202, 999, 998, 997)
LIE_PIECES = (" the", " quick", " red", " hen", "")


def progress(
    grid: Grid,
    run: DispatchReplica,
    start: int,
    end: int,
    *,
    tokens: Sequence[int] = HONEST.tokens,
    pieces: Sequence[str] = PIECES,
    now: float = 0.5,
) -> list[Effect]:
    event = ReplicaProgressed(run.run.job_id, run.peer, tuple(tokens[start:end]), tuple(pieces[start:end]))
    return grid.coordinator.handle(event, now)


def chunks(effects: Sequence[Effect], peer: str | None = None) -> list[SendAuditChunk]:
    return [e for e in of_type(effects, SendAuditChunk) if peer is None or e.peer == peer]


def forwarded(effects: Sequence[Effect]) -> str:
    return "".join(e.text for e in of_type(effects, ForwardVerified))


def verdict(grid: Grid, sent: SendAuditChunk, gap: float = 12.0, *, now: float = 0.6) -> list[Effect]:
    """The auditor's verdict on ``sent``, from evidence where the claim departs from HONEST (``gap``
    there, 0.05 elsewhere), as it would arrive over the wire."""
    chunk = sent.chunk
    honest = HONEST.tokens[chunk.offset :]
    evidence = [
        PositionEvidence(
            token=t,
            logprob=-0.05,
            gap=0.05 if i < len(honest) and honest[i] == t else gap,
            rank=0,
            mask_margin=0.0,
        )
        for i, t in enumerate(chunk.tokens)
    ]
    answer = chunk_verdict(chunk.job_id, chunk.offset, evidence, CONFIG.audit_tolerance)
    decoded = decode_message(encode_message(answer))
    assert isinstance(decoded, ChunkVerdict)
    return grid.coordinator.handle(ChunkAudited(chunk.job_id, sent.peer, decoded), now)


def final_report(grid: Grid, opening: DispatchAudit, sent: Sequence[SendAuditChunk]) -> AuditReport:
    """What a worker answers to the final chunk: the report over the whole claim it was sent."""
    tokens = [t for s in sent for t in s.chunk.tokens]
    final = sent[-1].chunk
    assert final.final
    whole = msgspec.structs.replace(
        opening.audit, tokens=tokens, text=final.text, finish_reason=final.finish_reason, chunked=False
    )
    report = grid.workers[opening.peer].report(whole, evidence_for(whole, 12.0))
    decoded = decode_message(encode_message(report))
    assert isinstance(decoded, AuditReport)
    return decoded


def started(grid: Grid) -> tuple[DispatchReplica, list[DispatchAudit]]:
    """The streaming job's prover and the chunked audits opened with it: its auditors are drawn when it
    is dispatched, so they evaluate the prompt while it does (spec/verification.md §14.2)."""
    grid.register()
    effects = grid.submit(1, replicas=2, stream=True)
    runs = dispatches(effects)
    assert len(runs) == 1, "audit mode: one prover, streaming or not"
    return runs[0], audits(effects)


def test_chunks_are_audited_as_they_stream_and_forwarded_once_passed() -> None:
    grid = Grid(n=3, config=CONFIG)
    run, opened = started(grid)
    assert len(opened) == 1 and opened[0].audit.chunked and opened[0].audit.tokens == []
    assert opened[0].peer != run.peer
    first = progress(grid, run, 0, 1)
    assert not audits(first) and not chunks(first), "one token: no full chunk yet"
    auditor = opened[0].peer

    second = progress(grid, run, 1, 3)
    sent = chunks(second)
    assert [(s.peer, s.chunk.offset, s.chunk.tokens, s.chunk.pieces) for s in sent] == [
        (auditor, 0, [101, 202], [" the", " quick"])
    ]
    assert forwarded(second) == "", "nothing is verified before the auditor passed it"
    assert forwarded(verdict(grid, sent[0])) == " the quick"

    assert chunks(progress(grid, run, 3, 5)) == [], "5 tokens: the second chunk (4) is not full"
    claimed = grid.answer(run, HONEST)
    rest = chunks(claimed)
    assert [(s.chunk.offset, s.chunk.tokens, s.chunk.final) for s in rest] == [
        (2, [303, 404, 505], False),
        (5, [], True),
    ]
    assert rest[1].chunk.text == HONEST.text and rest[1].chunk.finish_reason == "length"
    assert forwarded(verdict(grid, rest[0])) == " brown fox"
    report = final_report(grid, opened[0], [*sent, *rest])
    done = grid.coordinator.handle(AuditReturned(run.run.job_id, auditor, report), 2.0)
    reply = finished(done)
    assert isinstance(reply, JobAccepted) and reply.text == HONEST.text
    assert reply.workers == [run.peer, auditor]
    _, receipt = open_receipt(reply.receipt)
    assert {c.account: c.points for c in receipt.credits} == {grid.key(run.peer): 5, grid.key(auditor): 3}
    assert grid.coordinator.active_jobs == 0 and grid.coordinator.free_slots() == 3


def test_a_result_longer_than_its_frames_is_audited_but_only_streamed_pieces_are_forwarded() -> None:
    grid = Grid(n=3, config=CONFIG)
    run, _ = started(grid)
    effects = progress(grid, run, 0, 3)
    assert forwarded(verdict(grid, chunks(effects)[0])) == " the quick"
    rest = chunks(grid.answer(run, HONEST))  # two tokens it never reported in a frame
    assert [(s.chunk.offset, s.chunk.tokens, s.chunk.pieces) for s in rest[:2]] == [
        (2, [303], [" brown"]),
        (3, [404, 505], []),
    ]
    assert forwarded(verdict(grid, rest[0])) == " brown"
    assert forwarded(verdict(grid, rest[1])) == "", "no piece was audited: the answer carries the text"


def test_a_prover_lying_mid_stream_is_caught_at_that_chunk_and_never_forwarded() -> None:
    grid = Grid(n=4, config=CONFIG)
    run, opened = started(grid)
    liar, auditor = run.peer, opened[0].peer
    effects = progress(grid, run, 0, 2, tokens=LIE, pieces=LIE_PIECES)
    assert forwarded(verdict(grid, chunks(effects)[0])) == " the quick"  # its true beginning
    later = progress(grid, run, 2, 5, tokens=LIE, pieces=LIE_PIECES)
    lie = chunks(later)
    assert [s.chunk.offset for s in lie] == []  # 3 more tokens: the next chunk needs 4
    rejected: list[Effect] = []
    # The prover returns its (lying) claim: the rest goes out, and the auditor fails position 2.
    claim = Output(tokens=LIE, text="".join(LIE_PIECES), finish_reason="length")
    rest = chunks(grid.answer(run, claim))
    rejected = verdict(grid, rest[0])
    assert forwarded(rejected) == "", "the lie is never forwarded"
    assert [p.peer for p in of_type(rejected, Penalize)] == [liar]
    assert CancelReplica(peer=auditor, job_id=run.run.job_id) in rejected
    assert finished(rejected) is None, "the client gets no answer from the liar"
    rerun = dispatches(rejected)
    assert len(rerun) == 1 and rerun[0].peer not in (liar, auditor)
    assert grid.coordinator.reputation[grid.key(liar)].invalid == 1


def test_a_failing_chunk_stops_a_prover_still_generating() -> None:
    """The lie is caught while the prover still generates: it is cancelled at once and replaced; the
    re-run reproduces the verified prefix, only the rest is forwarded, and the answer extends it."""
    grid = Grid(n=4, config=CONFIG)
    run, opened = started(grid)
    liar, auditor = run.peer, opened[0].peer
    effects = progress(grid, run, 0, 2)
    assert forwarded(verdict(grid, chunks(effects)[0])) == " the quick"
    lie = [*LIE, 996]  # 6 tokens: the second chunk, [2, 6), is full while it still generates
    pieces = [*LIE_PIECES, " x"]
    second = chunks(progress(grid, run, 2, 6, tokens=lie, pieces=pieces))
    assert [(s.chunk.offset, len(s.chunk.tokens)) for s in second] == [(2, 4)]
    rejected = verdict(grid, second[0])
    assert forwarded(rejected) == ""
    assert CancelReplica(peer=liar, job_id=run.run.job_id) in rejected, "stopped mid-generation"
    assert [p.peer for p in of_type(rejected, Penalize)] == [liar]
    assert "failed the chunked audit" in of_type(rejected, Penalize)[0].why
    rerun = dispatches(rejected)
    assert len(rerun) == 1 and rerun[0].peer not in (liar, auditor)

    opened = audits(rejected)  # the re-run's auditor is drawn with it
    again = progress(grid, rerun[0], 0, 5, now=3.0)
    assert not audits(again)
    assert len(opened) == 1 and opened[0].peer not in (liar, rerun[0].peer)
    new_auditor = opened[0].peer
    first_chunks = chunks(again)
    assert [(s.chunk.offset, len(s.chunk.tokens)) for s in first_chunks] == [(0, 2)]
    assert forwarded(verdict(grid, first_chunks[0], now=3.1)) == "", "already forwarded: not again"
    rest = chunks(grid.answer(rerun[0], HONEST, now=3.2))
    assert forwarded(verdict(grid, rest[0], now=3.3)) == " brown fox"
    report = final_report(grid, opened[0], [*first_chunks, *rest])
    reply = finished(grid.coordinator.handle(AuditReturned(run.run.job_id, new_auditor, report), 3.4))
    assert isinstance(reply, JobAccepted) and reply.text == HONEST.text
    assert reply.failed == [liar] and reply.workers == [rerun[0].peer, new_auditor]


def test_a_rerun_that_does_not_reproduce_the_verified_text_fails_the_job() -> None:
    grid = Grid(n=4, config=CONFIG)
    run, _ = started(grid)
    effects = progress(grid, run, 0, 2)
    assert forwarded(verdict(grid, chunks(effects)[0])) == " the quick"
    failed = grid.fail(run)  # the prover crashes; another one runs the job
    rerun = dispatches(failed)
    assert len(rerun) == 1
    other = progress(grid, rerun[0], 0, 2, tokens=(101, 555), pieces=(" the", " slow"), now=2.0)
    reply = finished(other)
    assert isinstance(reply, ErrorReply) and reply.code == "verification_failed"
    assert "did not reproduce the 2 tokens" in reply.message
    # Every slot is free again (the crashed prover is offline until its next heartbeat).
    assert grid.coordinator.active_jobs == 0 and grid.coordinator.free_slots() == 3


def test_a_prover_that_fails_mid_stream_frees_its_auditors() -> None:
    grid = Grid(n=4, config=CONFIG)
    run, opened = started(grid)
    auditor = opened[0].peer
    progress(grid, run, 0, 1)
    failed = grid.fail(run)
    assert CancelReplica(peer=auditor, job_id=run.run.job_id) in failed
    assert len(dispatches(failed)) == 1 and len(audits(failed)) == 1
    # 4 workers: the crashed prover offline, the new one and its own auditor busy; one slot free again.
    assert grid.coordinator.free_slots() == 1


def test_auditors_open_at_dispatch_and_close_when_the_prover_fails_before_any_chunk() -> None:
    """The chunked audit opens with the prover (its auditors evaluate the prompt meanwhile); a prover
    that fails before its first frame takes its auditors down with it, and the re-run draws its own."""
    grid = Grid(n=4, config=CONFIG)
    run, opened = started(grid)
    assert [a.audit.job_id for a in opened] == [run.run.job_id] and not opened[0].audit.tokens
    failed = grid.fail(run)
    assert CancelReplica(peer=opened[0].peer, job_id=run.run.job_id) in failed
    rerun, again = dispatches(failed), audits(failed)
    assert len(rerun) == 1 and len(again) == 1 and again[0].peer not in (run.peer, rerun[0].peer)
    assert grid.coordinator.free_slots() == 1, "4 workers: one offline, a prover and its auditor busy"
    ended = grid.fail(rerun[0], now=1.0)
    assert CancelReplica(peer=again[0].peer, job_id=run.run.job_id) in ended


def test_an_inconsistent_verdict_costs_the_auditor_and_its_replacement_catches_up() -> None:
    grid = Grid(n=4, config=CONFIG)
    run, opened = started(grid)
    liar = opened[0].peer
    effects = progress(grid, run, 0, 3)
    sent = chunks(effects)[0]
    # A pass that claims to cover more than the chunk it was sent.
    bogus = ChunkVerdict(job_id=sent.chunk.job_id, end=3, verdict="pass", max_gap=0.0)
    replaced = grid.coordinator.handle(ChunkAudited(sent.chunk.job_id, liar, bogus), 0.6)
    assert [p.peer for p in of_type(replaced, Penalize)] == [liar]
    assert forwarded(replaced) == ""
    fresh = audits(replaced)
    assert len(fresh) == 1 and fresh[0].peer not in (liar, run.peer) and fresh[0].audit.chunked
    caught_up = chunks(replaced, fresh[0].peer)
    assert [(s.chunk.offset, s.chunk.tokens) for s in caught_up] == [(0, [101, 202])]
    assert forwarded(verdict(grid, caught_up[0])) == " the quick"
    assert grid.coordinator.reputation[grid.key(liar)].invalid == 1


def test_two_auditors_must_both_pass_a_chunk() -> None:
    grid = Grid(
        n=3,
        config=CoordinatorConfig(
            verify="audit", canary_rate=0.0, adaptive=False, auditors=2, stream_chunk_first=2
        ),
    )
    run, opened = started(grid)
    effects = progress(grid, run, 0, 2)
    sent = chunks(effects)
    assert len(sent) == 2 and {s.peer for s in sent} == {a.peer for a in opened}
    assert forwarded(verdict(grid, sent[0])) == ""
    assert forwarded(verdict(grid, sent[1])) == " the quick"


def test_replicated_streaming_is_unchanged() -> None:
    grid = Grid(n=2, config=CoordinatorConfig(verify="replicate", canary_rate=0.0, adaptive=False))
    grid.register()
    runs = dispatches(grid.submit(1, replicas=2, stream=True))
    effects = progress(grid, runs[0], 0, 5) + progress(grid, runs[1], 0, 5)
    assert not audits(effects) and not chunks(effects)
    assert forwarded(effects) == " the quick brown fox"


def test_chunk_policy() -> None:
    policy = ChunkPolicy(first=4, largest=64)
    assert [policy.size(i) for i in range(7)] == [4, 8, 16, 32, 64, 64, 64]
    assert policy.size(10_000) == 64
    ends: list[int] = []
    assert cut(policy, ends, 3, final=False) == []
    assert cut(policy, ends, 13, final=False) == [(0, 4), (4, 12)]
    assert cut(policy, ends, 20, final=True) == [(12, 20)]
    assert ends == [4, 12, 20]
    for first, largest in [(0, 4), (8, 4), (4, 1025)]:
        with pytest.raises(ConfigError, match="stream_chunk_first"):
            ChunkPolicy(first=first, largest=largest)
    with pytest.raises(ConfigError, match="stream_chunk_max"):
        Grid(config=CoordinatorConfig(verify="audit", stream_chunk_first=8, stream_chunk_max=4))


def test_chunk_verdict_reports_the_earliest_failure() -> None:
    job = bytes(16)
    good = PositionEvidence(token=1, logprob=-0.1, gap=0.1, rank=0, mask_margin=0.0)
    bad = PositionEvidence(token=2, logprob=-9.0, gap=9.0, rank=5, mask_margin=0.0)
    assert chunk_verdict(job, 4, [good, good], 0.75).verdict == "pass"
    failing = chunk_verdict(job, 4, [good, bad], 0.75)
    assert (failing.verdict, failing.end, failing.first_failure, failing.failure_gap) == ("fail", 6, 5, 9.0)
    piece = chunk_verdict(job, 4, [good, bad], 0.75, problem="piece wrong", problem_at=4)
    assert (piece.first_failure, piece.reason) == (4, "piece wrong")


def test_an_auditor_that_times_out_after_the_final_chunk_is_replaced_by_one_that_gets_it_all() -> None:
    grid = Grid(n=4, config=CONFIG)
    run, opened = started(grid)
    slow = opened[0].peer
    effects = progress(grid, run, 0, 5)
    assert forwarded(verdict(grid, chunks(effects)[0])) == " the quick"
    assert [s.chunk.final for s in chunks(grid.answer(run, HONEST, now=1.0))] == [False, True]
    grid.register(now=CONFIG.replica_timeout_s)  # heartbeats keep everyone online
    late = grid.coordinator.on_timer(1.0 + CONFIG.replica_timeout_s + 1.0)
    assert CancelReplica(peer=slow, job_id=run.run.job_id) in late
    fresh = audits(late)
    assert len(fresh) == 1 and fresh[0].peer not in (slow, run.peer) and fresh[0].audit.chunked
    sent = chunks(late, fresh[0].peer)
    assert [(s.chunk.offset, s.chunk.tokens, s.chunk.final) for s in sent] == [
        (0, [101, 202], False),
        (2, [303, 404, 505], False),
        (5, [], True),
    ]
    now = 2.0 + CONFIG.replica_timeout_s
    assert forwarded(verdict(grid, sent[0], now=now)) == "", "already forwarded"
    assert forwarded(verdict(grid, sent[1], now=now)) == " brown fox"
    report = final_report(grid, fresh[0], sent)
    reply = finished(grid.coordinator.handle(AuditReturned(run.run.job_id, fresh[0].peer, report), now))
    assert isinstance(reply, JobAccepted) and reply.workers == [run.peer, fresh[0].peer]
    assert slow in reply.failed


def test_a_claim_waits_for_a_free_auditor_and_it_catches_up() -> None:
    grid = Grid(n=2, config=CONFIG)
    grid.register()
    (plain,) = dispatches(grid.submit(2, replicas=1))  # a job that does not stream takes one worker
    (run,) = dispatches(grid.submit(1, replicas=1, stream=True))  # the streaming job takes the other
    waiting = progress(grid, run, 0, 3)
    assert not audits(waiting) and not chunks(waiting), "no free auditor: the chunk waits"
    freed = grid.answer(plain, HONEST)  # its prover is free now; its own claim waits for an auditor
    joined = [a for a in audits(freed) if a.audit.job_id == run.run.job_id]
    assert len(joined) == 1 and joined[0].peer == plain.peer and joined[0].audit.chunked
    caught_up = chunks(freed, plain.peer)
    assert [(s.chunk.offset, s.chunk.tokens) for s in caught_up] == [(0, [101, 202])]
    assert forwarded(verdict(grid, caught_up[0])) == " the quick"

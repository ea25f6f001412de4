"""The first position judged in advance (spec/verification.md §14.2): an auditor whose session is open
lists every (token, piece) it would pass at claim position 0; a one-token first chunk every auditor
listed goes to the client when the prover's frame brings it, before any ChunkVerdict. A token no list
holds waits for the verdicts as before; an auditor that fails position 0 after listing it is
inconsistent (penalised, replaced). No network: the machine fed events directly."""

from __future__ import annotations

from collections.abc import Sequence

import msgspec
import pytest
from grid_harness import HONEST, Grid, audits, dispatches, of_type

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
from opengrid.core.events import ChunkAudited, FirstPositionJudged, ReplicaProgressed
from opengrid.core.stream_chunks import chunk_verdict
from opengrid.errors import MalformedMessageError
from opengrid.wire.codec import decode_message, encode_message
from opengrid.wire.messages import ChunkVerdict, FirstPositionVerdict

# The node's chunk policy starts with one token (stream_chunk_first=1); two auditors per claim.
CONFIG = CoordinatorConfig(
    verify="audit", canary_rate=0.0, adaptive=False, stream_chunk_first=1, stream_chunk_max=4, auditors=2
)
PIECES = (" the", " quick", " brown", " fox", "")


def started(grid: Grid) -> tuple[DispatchReplica, list[DispatchAudit]]:
    grid.register()
    effects = grid.submit(1, replicas=1, stream=True)
    runs = dispatches(effects)
    assert len(runs) == 1
    return runs[0], audits(effects)


def progress(grid: Grid, run: DispatchReplica, start: int, end: int, *, now: float = 0.5) -> list[Effect]:
    event = ReplicaProgressed(
        run.run.job_id, run.peer, tuple(HONEST.tokens[start:end]), tuple(PIECES[start:end])
    )
    return grid.coordinator.handle(event, now)


def judged_in_advance(
    grid: Grid, opening: DispatchAudit, options: Sequence[tuple[int, str]], *, now: float = 0.4
) -> list[Effect]:
    """The auditor's FirstPositionVerdict as it would arrive over the wire."""
    message = FirstPositionVerdict(
        job_id=opening.audit.job_id, tokens=[t for t, _ in options], pieces=[p for _, p in options]
    )
    decoded = decode_message(encode_message(message))
    assert isinstance(decoded, FirstPositionVerdict)
    return grid.coordinator.handle(FirstPositionJudged(opening.audit.job_id, opening.peer, decoded), now)


def verdict(grid: Grid, sent: SendAuditChunk, gap: float, *, now: float = 0.6) -> list[Effect]:
    chunk = sent.chunk
    evidence = [
        PositionEvidence(token=t, logprob=-0.05, gap=gap, rank=0, mask_margin=0.0) for t in chunk.tokens
    ]
    answer = chunk_verdict(chunk.job_id, chunk.offset, evidence, CONFIG.audit_tolerance)
    decoded = decode_message(encode_message(answer))
    assert isinstance(decoded, ChunkVerdict)
    return grid.coordinator.handle(ChunkAudited(chunk.job_id, sent.peer, decoded), now)


def forwarded(effects: Sequence[Effect]) -> str:
    return "".join(e.text for e in of_type(effects, ForwardVerified))


def first_token() -> tuple[int, str]:
    return HONEST.tokens[0], PIECES[0]


def test_a_first_token_every_auditor_listed_is_forwarded_with_the_provers_frame() -> None:
    grid = Grid(n=4, config=CONFIG)
    run, opened = started(grid)
    assert len(opened) == 2
    for opening in opened:  # the auditors' sessions open before the prover's first token
        assert forwarded(judged_in_advance(grid, opening, [first_token(), (7, " a")])) == ""
    first = progress(grid, run, 0, 1)
    assert forwarded(first) == " the", "forwarded at once: no ChunkVerdict was needed"
    sent = of_type(first, SendAuditChunk)
    assert sorted(s.peer for s in sent) == sorted(o.peer for o in opened), "each auditor still judges it"
    for s in sent:  # their verdicts on it change nothing: the text went out already
        assert forwarded(verdict(grid, s, 0.05)) == ""
    second = progress(grid, run, 1, 3)
    chunk = [s for s in of_type(second, SendAuditChunk)]
    assert [s.chunk.tokens for s in chunk] == [[202, 303]] * 2
    assert forwarded(verdict(grid, chunk[0], 0.05)) == ""
    assert forwarded(verdict(grid, chunk[1], 0.05)) == " quick brown", "later chunks wait for every verdict"


def test_the_provers_frame_first_then_the_lists_forwards_on_the_last_list() -> None:
    grid = Grid(n=4, config=CONFIG)
    run, opened = started(grid)
    assert forwarded(progress(grid, run, 0, 1)) == ""
    assert forwarded(judged_in_advance(grid, opened[0], [first_token()])) == ""
    assert forwarded(judged_in_advance(grid, opened[1], [first_token()])) == " the"


def test_a_token_one_auditor_did_not_list_waits_for_its_verdict() -> None:
    grid = Grid(n=4, config=CONFIG)
    run, opened = started(grid)
    judged_in_advance(grid, opened[0], [first_token()])
    judged_in_advance(grid, opened[1], [(7, " a")])  # another token: the claim's is not in this list
    first = progress(grid, run, 0, 1)
    assert forwarded(first) == ""
    by_peer = {s.peer: s for s in of_type(first, SendAuditChunk)}
    assert forwarded(verdict(grid, by_peer[opened[1].peer], 0.05)) == " the"


def test_a_listed_token_with_another_piece_is_not_passed_in_advance() -> None:
    grid = Grid(n=4, config=CONFIG)
    run, opened = started(grid)
    for opening in opened:
        judged_in_advance(grid, opening, [(HONEST.tokens[0], " THE")])
    assert forwarded(progress(grid, run, 0, 1)) == "", "the prover's piece is not the auditors' text"


def test_an_auditor_that_fails_a_position_it_listed_is_inconsistent_and_replaced() -> None:
    grid = Grid(n=5, config=CONFIG)
    run, opened = started(grid)
    for opening in opened:
        judged_in_advance(grid, opening, [first_token()])
    first = progress(grid, run, 0, 1)
    assert forwarded(first) == " the"
    liar = opened[0].peer
    sent = next(s for s in of_type(first, SendAuditChunk) if s.peer == liar)
    effects = verdict(grid, sent, 12.0)
    assert any(
        isinstance(e, Penalize) and e.peer == liar and "FirstPositionVerdict" in e.why for e in effects
    )
    assert any(isinstance(e, CancelReplica) and e.peer == liar for e in effects)
    replacement = audits(effects)
    assert len(replacement) == 1 and replacement[0].peer not in {liar, run.peer, opened[1].peer}
    assert not any(isinstance(e, Penalize) and e.peer == run.peer for e in effects), "the prover did nothing"


def test_lists_that_do_not_pair_tokens_with_pieces_are_the_auditors_fault() -> None:
    grid = Grid(n=5, config=CONFIG)
    _, opened = started(grid)
    message = FirstPositionVerdict(job_id=opened[0].audit.job_id, tokens=[1, 2], pieces=[" a"])
    effects = grid.coordinator.handle(FirstPositionJudged(message.job_id, opened[0].peer, message), 0.4)
    assert any(isinstance(e, Penalize) and e.peer == opened[0].peer for e in effects)


def test_a_second_list_changes_nothing_and_a_stranger_list_is_ignored() -> None:
    grid = Grid(n=5, config=CONFIG)
    run, opened = started(grid)
    judged_in_advance(grid, opened[0], [(7, " a")])
    judged_in_advance(grid, opened[0], [first_token()])  # after the fact: too late to widen the list
    judged_in_advance(grid, opened[1], [first_token()])
    stranger = next(p for p in sorted(grid.workers) if p not in {run.peer, *(o.peer for o in opened)})
    message = FirstPositionVerdict(job_id=run.run.job_id, tokens=[HONEST.tokens[0]], pieces=[PIECES[0]])
    assert grid.coordinator.handle(FirstPositionJudged(run.run.job_id, stranger, message), 0.4) == []
    assert forwarded(progress(grid, run, 0, 1)) == "", "the first auditor's first list did not hold it"


def test_a_first_chunk_of_two_tokens_is_never_passed_in_advance() -> None:
    config = CoordinatorConfig(
        verify="audit", canary_rate=0.0, adaptive=False, stream_chunk_first=2, stream_chunk_max=4, auditors=2
    )
    grid = Grid(n=4, config=config)
    run, opened = started(grid)
    for opening in opened:
        judged_in_advance(grid, opening, [first_token()])
    assert forwarded(progress(grid, run, 0, 2)) == "", "a list judges position 0 only, not a whole chunk"


def test_a_list_longer_than_sixteen_tokens_is_refused_on_the_wire() -> None:
    """The bound an auditor cannot pass (spec/limits.md): 16 tokens and 16 pieces at most, checked when
    the coordinator decodes the frame, before the machine sees it."""
    fits = FirstPositionVerdict(job_id=bytes(16), tokens=list(range(16)), pieces=["x"] * 16)
    assert decode_message(encode_message(fits)) == fits
    for tokens, pieces in ((list(range(17)), ["x"] * 16), (list(range(16)), ["x"] * 17)):
        too_many = msgspec.msgpack.encode(
            {"type": "first_position_verdict", "job_id": bytes(16), "tokens": tokens, "pieces": pieces}
        )
        with pytest.raises(MalformedMessageError, match="length"):
            decode_message(too_many)

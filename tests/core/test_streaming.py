"""Verified streaming (spec/verification.md §14): the coordinator forwards only the prefix a quorum of
replicas reported token by token, never one replica's word, and never anything the answer contradicts."""

from __future__ import annotations

from collections.abc import Sequence

from opengrid.core.coordinator import CoordinatorConfig
from opengrid.core.effects import DispatchReplica, Effect, ForwardVerified
from opengrid.core.events import ReplicaProgressed
from opengrid.core.worker import Output
from opengrid.wire.messages import ErrorReply, JobAccepted
from tests.core.grid_harness import HONEST, Grid, audits, dispatches, finished, of_type

# HONEST's tokens with one text piece each; the pieces join to its text.
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
) -> list[Effect]:
    """``run``'s worker reports tokens ``start:end`` of its output."""
    event = ReplicaProgressed(run.run.job_id, run.peer, tuple(tokens[start:end]), tuple(pieces[start:end]))
    return grid.coordinator.handle(event, 0.5)


def forwarded(effects: Sequence[Effect]) -> str:
    return "".join(e.text for e in of_type(effects, ForwardVerified))


def started(grid: Grid, replicas: int, **kwargs: object) -> list[DispatchReplica]:
    grid.register()
    runs = dispatches(grid.submit(replicas=replicas, stream=True, **kwargs))  # type: ignore[arg-type]
    assert len(runs) == replicas
    return runs


def test_two_replicas_verify_what_both_reported() -> None:
    grid = Grid(n=2)
    a, b = started(grid, 2)
    assert forwarded(progress(grid, a, 0, 3)) == ""  # one worker's word verifies nothing
    assert forwarded(progress(grid, b, 0, 2)) == " the quick"  # both agree on two tokens
    assert forwarded(progress(grid, b, 2, 4)) == " brown"  # a reported three: the quorum reaches three
    assert forwarded(progress(grid, a, 3, 5)) == " fox"
    effects = grid.answer(a, HONEST) + grid.answer(b, HONEST)
    reply = finished(effects)
    assert isinstance(reply, JobAccepted) and reply.text.startswith(" the quick brown fox")


def test_three_replicas_need_two_and_outvote_a_liar() -> None:
    grid = Grid(n=3)
    a, b, c = started(grid, 3)
    assert forwarded(progress(grid, a, 0, 5, tokens=LIE, pieces=LIE_PIECES)) == ""
    # b agrees with the liar on its first two (true) tokens: those are verified, the lie is not.
    assert forwarded(progress(grid, b, 0, 5)) == " the quick"
    assert forwarded(progress(grid, c, 0, 5)) == " brown fox"  # b and c outvote a from token 2
    # The liar is out of the prefix for good, even if it now reports the truth.
    assert forwarded(progress(grid, a, 0, 0)) == ""


def test_a_lying_replica_is_never_forwarded_alone() -> None:
    """Two replicas, one lies from token 2: nothing past the common part is ever verified, and the liar's
    final answer, which matches its frames, loses the vote like any wrong answer."""
    grid = Grid(n=3)
    a, b = started(grid, 2)
    effects = progress(grid, a, 0, 5, tokens=LIE, pieces=LIE_PIECES) + progress(grid, b, 0, 5)
    assert forwarded(effects) == " the quick"
    assert "red" not in forwarded(effects)


def test_a_result_that_contradicts_its_frames_is_rejected() -> None:
    grid = Grid(n=3)
    a, _b = started(grid, 2)
    progress(grid, a, 0, 5, tokens=LIE, pieces=LIE_PIECES)
    effects = grid.answer(a, HONEST)  # its frames said LIE, its result says HONEST
    assert a.peer in grid.coordinator._jobs[a.run.job_id].invalid  # penalised like an invalid result
    assert any(d.peer == "w2" for d in dispatches(effects))  # and replaced


def test_a_replica_that_fails_mid_stream_loses_its_say() -> None:
    grid = Grid(n=3)
    a, b, c = started(grid, 3)
    progress(grid, a, 0, 3)
    grid.fail(a)
    assert forwarded(progress(grid, b, 0, 3)) == ""  # a's frames no longer count: one voter left
    assert forwarded(progress(grid, c, 0, 2)) == " the quick"


def test_forwarded_text_is_never_taken_back() -> None:
    """A quorum lies in its frames, then fails; the replacements agree on another answer: the job fails
    rather than deliver an answer that does not start with what the client already has as verified."""
    grid = Grid(n=4, config=CoordinatorConfig(verify="replicate", max_failovers=4))
    a, b = started(grid, 2)
    progress(grid, a, 0, 5, tokens=LIE, pieces=LIE_PIECES)
    assert forwarded(progress(grid, b, 0, 5, tokens=LIE, pieces=LIE_PIECES)) == " the quick red hen"
    c = dispatches(grid.fail(a))[0]
    d = dispatches(grid.fail(b))[0]
    grid.answer(c, HONEST)
    reply = finished(grid.answer(d, HONEST))
    assert isinstance(reply, ErrorReply) and reply.code == "verification_failed"
    assert "already streamed" in reply.message


def test_bounds_frames_past_max_tokens_or_malformed_are_ignored() -> None:
    grid = Grid(n=2)
    a, b = started(grid, 2, max_tokens=4)
    assert progress(grid, a, 0, 5) == []  # five tokens for a four-token job: a has no say any more
    assert forwarded(progress(grid, b, 0, 4)) == ""
    stream = grid.coordinator._jobs[a.run.job_id].streams[a.peer]
    assert not stream.agrees and stream.tokens == []
    # pieces that do not match the tokens one to one
    bad = ReplicaProgressed(b.run.job_id, b.peer, (505,), ())
    assert grid.coordinator.handle(bad, 0.6) == []
    assert len(grid.coordinator._jobs[b.run.job_id].verified_tokens) == 0


def test_a_job_that_did_not_ask_to_stream_tracks_nothing() -> None:
    grid = Grid(n=2)
    grid.register()
    a, b = dispatches(grid.submit(replicas=2))
    assert progress(grid, a, 0, 5) == [] and progress(grid, b, 0, 5) == []
    assert grid.coordinator._jobs[a.run.job_id].streams == {}


def test_a_multibyte_character_split_across_tokens_is_forwarded_whole() -> None:
    """The worker's pieces hold back a character's first bytes (empty piece) until its last token."""
    grid = Grid(n=2)
    a, b = started(grid, 2)
    tokens, pieces = (1, 2, 3), (" caf", "", "é!")
    for run in (a, b):
        out = forwarded(progress(grid, run, 0, 2, tokens=tokens, pieces=pieces))
    assert out == " caf"
    for run in (a, b):
        out = forwarded(progress(grid, run, 2, 3, tokens=tokens, pieces=pieces))
    assert out == "é!"
    reply = finished(
        grid.answer(a, Output(tokens, " café!", "length"))
        + grid.answer(b, Output(tokens, " café!", "length"))
    )
    assert isinstance(reply, JobAccepted) and reply.text == " café!"


def test_audit_mode_forwards_nothing_on_the_provers_word_alone() -> None:
    """One prover has no one to agree with: its frames verify nothing by themselves; they go to its
    auditors in chunks (spec/verification.md §14.2, tests/core/test_chunked_audits.py)."""
    grid = Grid(n=3, config=CoordinatorConfig(verify="audit", canary_rate=0.0, adaptive=False))
    grid.register()
    submitted = grid.submit(replicas=2, stream=True)
    (prover,) = dispatches(submitted)
    assert len(audits(submitted)) == 1, "its auditor is drawn with it"
    effects = progress(grid, prover, 0, 5)
    assert forwarded(effects) == ""
    # 5 tokens, chunks of 1 then 2 (the defaults): two full chunks to the auditor, nothing forwarded
    assert [type(e).__name__ for e in effects] == ["SendAuditChunk", "SendAuditChunk"]


def test_a_one_replica_job_streams_its_workers_text_as_its_answer_is_trusted() -> None:
    """replicas=1: the quorum is one, as for the final check; verified means what it means there."""
    grid = Grid(n=2)
    (only,) = started(grid, 1)
    assert forwarded(progress(grid, only, 0, 2)) == " the quick"

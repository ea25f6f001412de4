"""A worker's progress frames (spec/job-protocol.md §5.6): every token once, in order, within the wire's
limits, each frame's text the join of its pieces."""

from __future__ import annotations

from opengrid.node.worker_driver import _progress_frames
from opengrid.wire.codec import decode_message, encode_message
from opengrid.wire.messages import MAX_PROGRESS_CHARS, MAX_PROGRESS_TOKENS, ReplicaProgress

JOB = b"\x01" * 16


def test_a_backlog_is_split_into_frames_within_the_limits_and_nothing_is_lost() -> None:
    generated = [(i, "x" * (i % 7)) for i in range(2500)] + [(9, "y" * 1000)] * 200
    frames = _progress_frames(JOB, generated)
    assert len(frames) > 2
    for frame in frames:
        assert len(frame.tokens) <= MAX_PROGRESS_TOKENS and len(frame.text) <= MAX_PROGRESS_CHARS
        assert frame.text == "".join(frame.pieces) and len(frame.pieces) == len(frame.tokens)
        assert decode_message(encode_message(frame)) == frame  # the codec takes it: within every bound
    assert [t for f in frames for t in f.tokens] == [t for t, _ in generated]
    assert [p for f in frames for p in f.pieces] == [p for _, p in generated]


def test_nothing_new_sends_nothing() -> None:
    assert _progress_frames(JOB, []) == []
    one = _progress_frames(JOB, [(5, "")])
    assert one == [ReplicaProgress(job_id=JOB, text="", tokens=[5], pieces=[""])]

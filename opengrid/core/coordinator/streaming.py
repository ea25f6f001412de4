"""Verified streaming: the prefix of a job's answer that a quorum of its replicas agreed on, forwarded to
the client as it grows (spec/verification.md §14).

Each running replica of an open, replicated streaming job reports progress (``ReplicaProgressed``): the
tokens it generated since its last frame, with one text piece per token. The machine keeps each replica's
tokens and pieces (``JobRecord.streams``) and the verified prefix (``JobRecord.verified_tokens`` and
``verified_pieces``). Position by position past the verified prefix, the replicas still in the running
(dispatched and not failed, or returned with a valid result) whose progress reaches that position and
agrees with the prefix so far are grouped by their (token, piece) there; a group of at least
``quorum(replicas)`` extends the prefix by one position, and every replica outside it stops counting.
Whenever the prefix grows, ``ForwardVerified`` sends its new text to the client.

Why this never has to be taken back: a replica's final result must start with the tokens its frames
reported (``progress_contradiction``: else the result is rejected like any invalid one), so the members
of the group that verified a prefix all return answers that start with it; and an answer that a quorum
accepts but that does not start with what was forwarded (possible only if a whole quorum lied in its
frames and then failed, or honest replicas diverged in rounding before the point a quorum agreed on) is
not delivered: the job fails (``stream_contradiction``). Verified chunks are as strong as the final
verdict: the same quorum of the same numerical class, never one worker's word.

Not streamed here: audit mode (one prover: nothing to agree with until the audit passes) and sealed jobs
(the coordinator cannot read the text). Their answer arrives whole, at the end, as before.

Bounds: a replica's stored progress never exceeds the job's ``max_tokens`` (a frame that would pass it,
or whose pieces do not match its tokens, ends that replica's say in the prefix); the prefix grows by at
most one position per stored token, each step looking at the job's replicas once.
"""

from __future__ import annotations

from opengrid.core.coordinator.records import JobRecord, ReplicaStream
from opengrid.core.coordinator.shared import CoordinatorParts
from opengrid.core.coordinator.state import JobState
from opengrid.core.effects import Effect, ForwardVerified
from opengrid.core.events import ReplicaProgressed
from opengrid.core.verifier import Agreement, quorum


class StreamingPart(CoordinatorParts):
    """Replica progress tracked, the verified prefix grown and forwarded. A mixin of ``Coordinator``."""

    def _on_progressed(self, event: ReplicaProgressed) -> list[Effect]:
        job = self._jobs.get(event.job_id)
        if job is None or event.peer not in job.pending or not streams_verified(job):
            return []  # late, unsolicited, or a job whose text is not verified as it streams
        stream = job.streams.setdefault(event.peer, ReplicaStream())
        if not stream.agrees:
            return []
        if (
            len(event.tokens) != len(event.pieces)
            or len(stream.tokens) + len(event.tokens) > job.request.max_tokens
        ):
            stream.agrees = False  # malformed or past the job's length: it has no further say
            return []
        start = len(stream.tokens)
        stream.tokens.extend(event.tokens)
        stream.pieces.extend(event.pieces)
        verified = len(job.verified_tokens)
        if start < verified:  # the new tokens overlap the prefix already verified: they must match it
            end = min(verified, len(stream.tokens))
            if (
                stream.tokens[start:end] != job.verified_tokens[start:end]
                or stream.pieces[start:end] != job.verified_pieces[start:end]
            ):
                stream.agrees = False
                return []
        return self._grow_verified(job)

    def _grow_verified(self, job: JobRecord) -> list[Effect]:
        """Extend the job's verified prefix as far as a quorum agrees; forward the new text, if any."""
        need = quorum(job.replicas)
        voters = {peer: s for peer, s in job.streams.items() if s.agrees and _running(job, peer)}
        before = len(job.verified_pieces)
        while len(job.verified_tokens) < job.request.max_tokens:
            at = len(job.verified_tokens)
            groups: dict[tuple[int, str], list[str]] = {}
            for peer in sorted(voters):
                stream = voters[peer]
                if len(stream.tokens) > at:
                    groups.setdefault((stream.tokens[at], stream.pieces[at]), []).append(peer)
            if not groups:
                break
            key = min(groups, key=lambda k: (-len(groups[k]), k))
            if len(groups[key]) < need:
                break
            for peer, stream in voters.items():
                if len(stream.tokens) > at and peer not in groups[key]:
                    stream.agrees = False  # it left the verified prefix: it never counts again
            voters = {peer: s for peer, s in voters.items() if s.agrees}
            job.verified_tokens.append(key[0])
            job.verified_pieces.append(key[1])
        text = "".join(job.verified_pieces[before:])
        return [ForwardVerified(job.job_id, text)] if text else []

    def progress_contradiction(self, job_id: bytes, peer: str, tokens: list[int]) -> str | None:
        """Why ``peer``'s final ``tokens`` contradict the progress it reported (None: they extend it).

        Such a result is rejected like any invalid one: the worker told the coordinator one thing while
        it generated and another at the end."""
        job = self._jobs.get(job_id)
        stream = job.streams.get(peer) if job is not None else None
        if stream is None or list(tokens[: len(stream.tokens)]) == stream.tokens:
            return None
        first = next(
            (i for i, (a, b) in enumerate(zip(tokens, stream.tokens, strict=False)) if a != b),
            min(len(tokens), len(stream.tokens)),
        )
        return (
            f"result contradicts its progress frames: {len(tokens)} tokens returned, "
            f"{len(stream.tokens)} reported while generating, first difference at token {first}"
        )

    def stream_contradiction(self, job: JobRecord, agreement: Agreement) -> str | None:
        """Why the answer a quorum agreed on cannot be delivered after what was forwarded as verified
        (None: it starts with the verified prefix, tokens and text)."""
        if not job.verified_tokens:
            return None
        result = job.results[agreement.peers[0]][0]
        text = "".join(job.verified_pieces)
        if result.tokens[: len(job.verified_tokens)] == job.verified_tokens and result.text.startswith(text):
            return None
        return (
            f"the answer {len(agreement.peers)} workers agreed on does not start with the "
            f"{len(job.verified_tokens)} tokens already streamed to you as verified (a quorum of workers "
            "reported one thing while generating and the majority answered another); discard the "
            "streamed text and retry"
        )


def streams_verified(job: JobRecord) -> bool:
    """True for a job whose text is verified as it streams: open, replicated, asked to stream."""
    return (
        job.request.stream
        and not job.sealed
        and not job.audit
        and job.state in (JobState.QUEUED, JobState.RUNNING)
    )


def _running(job: JobRecord, peer: str) -> bool:
    """Still has a say: dispatched and not failed, or returned with a result that passed its checks."""
    return peer in job.pending or peer in job.results

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

Audit mode (spec/verification.md §14.2): a streaming job has one prover and nothing to agree with, so its
claim is audited in chunks as it streams. The prover's dispatch makes its claim a ``ChunkedClaim``
(``_open_streamed_claim``): auditors are drawn at once (``_start_audits``, full window, no second audit)
and sent a chunked AuditJob, whose prompt they evaluate while the prover does; as tokens arrive they are
cut into chunks (``stream_chunks.ChunkPolicy``: small first, doubling after) and each chunk goes to every
auditor (``SendAuditChunk``). An auditor answers each chunk with a ``ChunkVerdict`` (``ChunkAudited``);
once every auditor passed a chunk, its text extends the verified prefix and goes to the client. The first
chunk (one token) need not wait for that round trip: an auditor whose session is open lists every token it
would pass at position 0 (``FirstPositionJudged``), and a first token every auditor listed goes to the
client as soon as the prover's frame brings it (``_passed_in_advance``); the auditor's own verdict on it
follows, and a fail there contradicts its list (the auditor's fault). A failing
chunk rejects the claim exactly as a failed audit (§13.2): the prover is stopped, penalised and replaced,
its auditors stopped. When the prover's result arrives the rest of the claim and a final chunk (finish
reason, whole text) go out, and the auditors' AuditReports over the whole claim are judged as any
(``audits.py``). A re-run after a rejection must reproduce the verified prefix (its frames and result are
checked against it) or the job fails.

Sealed jobs in audit mode (spec/verification.md §14.3) stream too, without the coordinator reading them:
the prover cuts its output by the coordinator's chunk policy (``RunJob.chunk_first``) and sends each chunk
sealed to the client and to every possible auditor, with a salted commitment (``SealedProgress``,
``SealedChunkReported``). The coordinator relays each auditor its own ciphertext with the commitment; an
auditor's verdict must name that commitment (its auditors are drawn at dispatch too, among the prover's
readers); once every auditor passed a chunk, the client's ciphertext goes to it as verified
(``ForwardVerified.sealed``). A re-run must repeat the verified chunks' cuts and commitments (the same
salt, the same tokens and text), else the job fails. Sealed replicated jobs still answer whole, at the
end.

Bounds: a replica's stored progress never exceeds the job's ``max_tokens`` (a frame that would pass it,
or whose pieces do not match its tokens, ends that replica's say in the prefix); the prefix grows by at
most one position per stored token, each step looking at the job's replicas once.
"""

from __future__ import annotations

from opengrid.core.audit_policy import AuditPlan
from opengrid.core.coordinator.records import ChunkedClaim, JobRecord, ReplicaStream, audit_job_for
from opengrid.core.coordinator.shared import CoordinatorParts
from opengrid.core.coordinator.state import JobState
from opengrid.core.effects import CancelReplica, Effect, ForwardVerified, Penalize, SendAuditChunk
from opengrid.core.events import ChunkAudited, FirstPositionJudged, ReplicaProgressed, SealedChunkReported
from opengrid.core.stream_chunks import cut
from opengrid.core.verifier import Agreement, quorum
from opengrid.wire.messages import AuditChunk, AuditJob, AuditReport, Sealed, SealedProgress


class StreamingPart(CoordinatorParts):
    """Replica progress tracked, the verified prefix grown and forwarded. A mixin of ``Coordinator``."""

    def _on_progressed(self, event: ReplicaProgressed, now: float) -> list[Effect]:
        job = self._jobs.get(event.job_id)
        if job is not None and event.peer in job.pending and audit_streamed(job):
            return self._on_prover_progressed(job, event, now)
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

    # ── audit mode: chunked audits (spec/verification.md §14.2) ─────────────────────────────────────────

    def _on_prover_progressed(self, job: JobRecord, event: ReplicaProgressed, now: float) -> list[Effect]:
        """The streaming prover reported more tokens: keep them and send every full chunk to its
        auditors (drawn at its dispatch)."""
        peer, job_id = event.peer, job.request.job_id
        stream = job.streams.setdefault(peer, ReplicaStream())
        if len(event.tokens) != len(event.pieces) or len(stream.tokens) + len(event.tokens) > (
            job.request.max_tokens
        ):  # it broke the frame rules (job-protocol.md §5.6): its claim cannot be audited as it streams
            why = (
                f"malformed progress frames: {len(event.tokens)} tokens with {len(event.pieces)} pieces, "
                f"{len(stream.tokens)} reported before, max_tokens {job.request.max_tokens}"
            )
            stop: list[Effect] = [CancelReplica(peer=peer, job_id=job_id)]
            return stop + self._on_failed(job_id, peer, why, now, penalize=True)
        start = len(stream.tokens)
        stream.tokens.extend(event.tokens)
        stream.pieces.extend(event.pieces)
        verified = len(job.verified_tokens)
        if start < verified:  # a re-run: what an earlier claim had verified must come again
            end = min(verified, len(stream.tokens))
            if (
                stream.tokens[start:end] != job.verified_tokens[start:end]
                or stream.pieces[start:end] != job.verified_pieces[start:end]
            ):
                return self._fail(job_id, "verification_failed", _rerun_contradiction(verified))
        effects: list[Effect] = []
        claim = job.chunked
        if claim is None or claim.prover != peer:  # opened at dispatch (``_open_streamed_claim``) as a rule
            effects += self._open_streamed_claim(job, peer, now)
            if job_id not in self._jobs:
                return effects  # no auditor left at all: the job failed
        for auditor in job.audits:  # the prover is alive, so are the reasons to wait for its auditors
            job.audits[auditor] = max(job.audits[auditor], now + self.config.replica_timeout_s)
        effects += self._send_chunks(job, final=False)
        claim = job.chunked
        if claim is not None and claim.first_options and not job.verified_tokens:
            effects += self._forward_audited(job)  # the first chunk may have passed in advance (§14.2)
        return effects

    def _open_streamed_claim(self, job: JobRecord, peer: str, now: float) -> list[Effect]:
        """Make ``peer``'s claim on a streaming job in audit mode (open or sealed) a ``ChunkedClaim`` and
        draw its auditors now (a sealed job's among the readers ``peer`` seals its chunks to).

        Called when the prover is dispatched, before it produced anything: each auditor opens its
        scoring session (a context, the prompt evaluated) while the prover evaluates the same prompt, so
        the first chunk's audit costs only its own tokens (spec/verification.md §14.2). Auditors of a
        prover that fails before its first frame are cancelled with it (``_drop_chunked``)."""
        job.chunked = ChunkedClaim(prover=peer)
        job.prover = peer
        # Every position of a streamed claim is scored: its text is forwarded as verified chunk by
        # chunk, so no window (§13.5) and no second audit (the auditors are drawn before the claim).
        positions = job.request.max_tokens + 1
        job.plan = AuditPlan(auditors=self._auditors, end=positions, n_positions=positions, reason="full")
        return self._start_audits(job, now)

    def _send_chunks(self, job: JobRecord, *, final: bool) -> list[Effect]:
        """Cut what the prover reported into chunks (all of it when ``final``) and send the new ones, and
        the final chunk when ``final``, to every auditor of the claim."""
        claim = job.chunked
        assert claim is not None  # callers check
        if job.sealed:  # the prover cut and sealed its chunks itself: only the final one is ours to send
            if not final:
                return []
            claim.final = True
            return [
                SendAuditChunk(peer=p, chunk=self._sealed_final_chunk(job, p)) for p in sorted(job.audits)
            ]
        stream = job.streams.get(claim.prover, ReplicaStream())
        new = cut(self._chunk_policy, claim.ends, len(stream.tokens), final=final)
        claim.pieced = claim.ends[-1] if claim.ends else 0
        if final:  # a result may carry tokens its frames did not (it is checked to start with them)
            result, _ = job.results[job.prover]
            new += cut(self._chunk_policy, claim.ends, len(result.tokens), final=True)
        chunks = [self._chunk(job, start, end) for start, end in new]
        if final:
            claim.final = True
            chunks.append(self._final_chunk(job))
        return [SendAuditChunk(peer=peer, chunk=c) for peer in sorted(job.audits) for c in chunks]

    def _chunk(self, job: JobRecord, start: int, end: int) -> AuditChunk:
        """Claim positions ``start .. end - 1`` as an AuditChunk: with their pieces if the prover streamed
        them (``ChunkedClaim.pieced``), else its result's tokens alone."""
        claim = job.chunked
        assert claim is not None
        stream = job.streams[claim.prover]
        if end <= claim.pieced:
            return AuditChunk(
                job_id=job.request.job_id,
                offset=start,
                tokens=stream.tokens[start:end],
                pieces=stream.pieces[start:end],
            )
        result, _ = job.results[job.prover]
        return AuditChunk(
            job_id=job.request.job_id, offset=start, tokens=list(result.tokens[start:end]), pieces=[]
        )

    def _final_chunk(self, job: JobRecord) -> AuditChunk:
        result, _ = job.results[job.prover]
        return AuditChunk(
            job_id=job.request.job_id,
            offset=len(result.tokens),
            tokens=[],
            pieces=[],
            final=True,
            finish_reason=result.finish_reason,
            text=result.text,
        )

    def _chunks_for(self, job: JobRecord, peer: str) -> list[Effect]:
        """Everything of a chunked claim sent so far, for an auditor that joins it now (a replacement,
        or one that was waiting for a free slot): the chunks cut, and the final chunk if it went out."""
        claim = job.chunked
        if claim is None or claim.prover != job.prover:
            return []
        if job.sealed:
            sealed: list[Effect] = [
                SendAuditChunk(peer=peer, chunk=self._sealed_chunk_for(job, peer, c)) for c in claim.sealed
            ]
            if claim.final:
                sealed.append(SendAuditChunk(peer=peer, chunk=self._sealed_final_chunk(job, peer)))
            return sealed
        starts = [0, *claim.ends][: len(claim.ends)]
        chunks = [self._chunk(job, start, end) for start, end in zip(starts, claim.ends, strict=True)]
        if claim.final:
            chunks.append(self._final_chunk(job))
        return [SendAuditChunk(peer=peer, chunk=c) for c in chunks]

    def _chunked_audit_job(self, job: JobRecord) -> AuditJob | None:
        """The AuditJob that opens a chunked audit of the job's streaming claim (None: the claim is not
        chunked; it is audited whole). The claim itself follows in AuditChunks."""
        claim = job.chunked
        if claim is None or claim.prover != job.prover:
            return None
        return audit_job_for(
            job, tolerance=self.config.audit_tolerance, tokens=[], text="", finish_reason="", chunked=True
        )

    def _audit_claim(self, job: JobRecord, now: float) -> list[Effect]:
        """The prover's result is in (audit mode): check it extends the text already forwarded as verified,
        then finish its chunked audit (the rest of the claim and the final chunk to its auditors), or start
        a whole audit of a claim that did not stream."""
        result, _ = job.results[job.prover]
        verified = len(job.verified_tokens)
        if verified and (
            list(result.tokens[:verified]) != job.verified_tokens
            or not result.text.startswith("".join(job.verified_pieces))
        ):
            return self._fail(job.request.job_id, "verification_failed", _rerun_contradiction(verified))
        claim = job.chunked
        if job.sealed_verified and (
            claim is None
            or claim.prover != job.prover
            or not claim.ends
            or (claim.ends[-1] < job.sealed_verified[-1][1])
        ):  # a sealed re-run that stopped short of the chunks already forwarded as verified
            return self._fail(
                job.request.job_id, "verification_failed", _rerun_contradiction(job.sealed_verified[-1][1])
            )
        if claim is None or claim.prover != job.prover:
            job.chunked = None
            return self._start_audits(job, now)
        for auditor in job.audits:  # the last chunks take their own time to score
            job.audits[auditor] = now + self.config.replica_timeout_s
        return self._send_chunks(job, final=True) + self._start_audits(job, now)

    def _on_chunk_audited(self, event: ChunkAudited, now: float) -> list[Effect]:
        """An auditor's verdict on one chunk: checked against what it was sent; a pass may extend the
        verified prefix, a fail rejects the claim, an inconsistent verdict is the auditor's fault."""
        job = self._jobs.get(event.job_id)
        claim = job.chunked if job is not None else None
        if job is None or claim is None or event.peer not in job.audits or claim.prover != job.prover:
            return []  # late or unsolicited
        peer, verdict = event.peer, event.verdict
        before = claim.passed.get(peer, 0)
        expected = next((end for end in claim.ends if end > before), None)
        problem = ""
        if verdict.job_id != job.request.job_id:
            problem = "the verdict names another job"
        elif expected is None:
            problem = f"a verdict after position {before}, but no chunk was sent beyond it"
        elif job.sealed and verdict.commitment != claim.sealed[claim.ends.index(expected)].commitment:
            problem = "the verdict does not name the commitment of the sealed chunk it was sent"
        elif verdict.verdict == "pass":
            if verdict.end != expected:
                problem = f"a pass up to position {verdict.end}, but the chunk sent ends at {expected}"
            elif verdict.first_failure != -1 or verdict.max_gap > self.config.audit_tolerance:
                problem = (
                    f"a pass with a gap of {verdict.max_gap:.3f} logits (tolerance "
                    f"{self.config.audit_tolerance}) or a failing position ({verdict.first_failure})"
                )
        elif not verdict.reason:
            problem = "a failing verdict must say why"
        elif not before <= verdict.first_failure < expected:
            problem = f"a fail at {verdict.first_failure}, outside the chunk {before}..{expected - 1}"
        elif verdict.first_failure == 0 and self._passed_in_advance(job, peer):
            problem = "a fail at position 0, whose token and text its FirstPositionVerdict passed"
        if problem:
            return self._inconsistent_auditor(job, peer, f"chunk verdict: {problem}", now)
        if verdict.verdict == "fail":
            return self._reject_chunk(job, peer, verdict.end, verdict.max_gap, verdict.reason, now)
        claim.passed[peer] = verdict.end
        job.audits[peer] = now + self.config.replica_timeout_s  # it answered: its wait starts again
        return self._forward_audited(job)

    def _inconsistent_auditor(self, job: JobRecord, peer: str, why: str, now: float) -> list[Effect]:
        """As an inconsistent report (§13.2): the auditor is penalised and replaced."""
        claim = job.chunked
        assert claim is not None
        del job.audits[peer]
        claim.passed.pop(peer, None)
        claim.first_options.pop(peer, None)
        self._release(peer)
        job.invalid.append(peer)
        if peer in self.workers:
            self._record(self.workers[peer].key, "invalid")
        effects: list[Effect] = [
            CancelReplica(peer=peer, job_id=job.request.job_id),
            Penalize(peer=peer, why=why),
        ]
        return effects + self._replace_auditor(job, now)

    def _forward_audited(self, job: JobRecord) -> list[Effect]:
        """Extend the verified prefix to where every auditor of the claim passed it; forward its text."""
        claim = job.chunked
        assert claim is not None
        needed = job.plan.auditors if job.plan is not None else self._auditors
        if len(job.audits) < needed:
            return []  # an auditor is being replaced: the text waits for the full count
        upto = min(
            claim.pieced,
            *(max(claim.passed.get(peer, 0), int(self._passed_in_advance(job, peer))) for peer in job.audits),
        )
        if job.sealed:
            return self._forward_sealed(job, upto)
        before = len(job.verified_tokens)
        if upto <= before:
            return []
        stream = job.streams[claim.prover]
        job.verified_tokens += stream.tokens[before:upto]
        job.verified_pieces += stream.pieces[before:upto]
        text = "".join(job.verified_pieces[before:])
        return [ForwardVerified(job.request.job_id, text)] if text else []

    def _on_first_position_judged(self, event: FirstPositionJudged, now: float) -> list[Effect]:
        """An auditor listed in advance what it would pass at position 0 (spec/verification.md §14.2): kept
        (its first list only), and the first chunk forwarded if the prover's frame is in and every
        auditor passed it, in advance or by verdict. Malformed lists are the auditor's fault."""
        job = self._jobs.get(event.job_id)
        claim = job.chunked if job is not None else None
        if job is None or claim is None or event.peer not in job.audits or claim.prover != job.prover:
            return []  # late or unsolicited
        if job.sealed or event.peer in claim.first_options:
            return []  # a sealed job's tokens are not the coordinator's to see; a second list changes nothing
        verdict = event.verdict
        if len(verdict.tokens) != len(verdict.pieces):
            return self._inconsistent_auditor(
                job,
                event.peer,
                f"a FirstPositionVerdict with {len(verdict.tokens)} tokens and {len(verdict.pieces)} pieces",
                now,
            )
        claim.first_options[event.peer] = frozenset(zip(verdict.tokens, verdict.pieces, strict=True))
        return self._forward_audited(job)

    def _passed_in_advance(self, job: JobRecord, peer: str) -> bool:
        """Whether ``peer``'s FirstPositionVerdict passes the claim's first chunk: a chunk of one token
        (the chunk policy's first, 1 by default) whose token and piece it listed."""
        claim = job.chunked
        if claim is None or not claim.ends or claim.ends[0] != 1 or claim.pieced < 1:
            return False
        options = claim.first_options.get(peer)
        stream = job.streams.get(claim.prover)
        if not options or stream is None or not stream.tokens:
            return False
        return (stream.tokens[0], stream.pieces[0]) in options

    # ── sealed chunked audits (spec/verification.md §14.3) ──────────────────────────────────────────────

    def _on_sealed_chunk(self, event: SealedChunkReported, now: float) -> list[Effect]:
        """The sealed streaming prover sent its next chunk: check its shape (contiguous, cut by our policy,
        within ``max_tokens``, sealed to the client and to exactly the readers it was given), that a re-run
        repeats the chunks already forwarded, then relay it to the claim's auditors (drawn at dispatch)."""
        job = self._jobs.get(event.job_id)
        if job is None or event.peer not in job.pending or not sealed_streamed(job):
            return []  # late, unsolicited, or a job whose chunks are not audited as they stream
        peer, chunk, job_id = event.peer, event.chunk, job.request.job_id
        claim = job.chunked if job.chunked is not None and job.chunked.prover == peer else None
        index = len(claim.sealed) if claim is not None else 0
        offset = claim.ends[-1] if claim is not None and claim.ends else 0
        keys = [c.reader for c in chunk.to_readers]
        held = claim.sealed_bytes if claim is not None else 0
        size = len(chunk.to_client) + sum(len(c.ciphertext) for c in chunk.to_readers)
        problem = ""
        if chunk.job_id != job_id:
            problem = "it names another job"
        elif chunk.offset != offset:
            problem = f"it starts at {chunk.offset}, but {offset} tokens were sent before"
        elif (
            claim is not None
            and claim.sealed
            and claim.sealed[-1].n_tokens < self._chunk_policy.size(index - 1)
        ):
            problem = f"chunk {index} follows a short chunk, which only the last one may be"
        elif chunk.n_tokens > self._chunk_policy.size(index):
            problem = f"chunk {index} has {chunk.n_tokens} tokens, more than {self._chunk_policy.size(index)}"
        elif held + size > MAX_SEALED_STREAM_BYTES:
            problem = f"its chunks' ciphertexts pass {MAX_SEALED_STREAM_BYTES} bytes"
        elif chunk.offset + chunk.n_tokens > job.request.max_tokens:
            problem = f"it ends at {chunk.offset + chunk.n_tokens}, past max_tokens {job.request.max_tokens}"
        elif len(set(keys)) != len(keys) or set(keys) != set(job.readers.get(peer, ())):
            problem = "it is not sealed once to each of the workers the job's claim goes to"
        if problem:  # it broke the chunk rules: its claim cannot be audited as it streams
            stop: list[Effect] = [CancelReplica(peer=peer, job_id=job_id)]
            return stop + self._on_failed(
                job_id, peer, f"malformed sealed chunk: {problem}", now, penalize=True
            )
        end = chunk.offset + chunk.n_tokens
        if index < len(job.sealed_verified) and job.sealed_verified[index] != (
            chunk.offset,
            end,
            chunk.commitment,
        ):
            return self._fail(job_id, "verification_failed", _rerun_contradiction(job.sealed_verified[-1][1]))
        effects: list[Effect] = []
        if claim is None:
            claim = job.chunked = ChunkedClaim(prover=peer)
        claim.sealed.append(chunk)
        claim.sealed_bytes += size
        claim.ends.append(end)
        claim.pieced = end
        if job.prover != peer:  # its first chunk: draw its auditors, who get every chunk so far
            job.prover = peer
            positions = job.request.max_tokens + 1  # every position is scored, as for an open stream
            job.plan = AuditPlan(auditors=self._auditors, end=positions, n_positions=positions, reason="full")
            return self._start_audits(job, now)
        for auditor in job.audits:  # the prover is alive, so are the reasons to wait for its auditors
            job.audits[auditor] = max(job.audits[auditor], now + self.config.replica_timeout_s)
        return effects + [
            SendAuditChunk(peer=a, chunk=self._sealed_chunk_for(job, a, chunk)) for a in sorted(job.audits)
        ]

    def _sealed_chunk_for(self, job: JobRecord, auditor: str, chunk: SealedProgress) -> AuditChunk:
        """``chunk`` as sent to ``auditor``: its own ciphertext (auditors are drawn among the readers the
        chunk is sealed to) and the commitment its verdict must name."""
        key = self.workers[auditor].key
        ciphertext = next(c.ciphertext for c in chunk.to_readers if c.reader == key)
        return AuditChunk(
            job_id=job.request.job_id,
            offset=chunk.offset,
            tokens=[],
            pieces=[],
            sealed_chunk=ciphertext,
            commitment=chunk.commitment,
            end=chunk.offset + chunk.n_tokens,
        )

    def _sealed_final_chunk(self, job: JobRecord, auditor: str) -> AuditChunk:
        """The final chunk of a sealed claim for ``auditor``: the prover's whole claim sealed to it and the
        prover's attestation (its tokens must be the chunks' tokens; it reports as a sealed audit does)."""
        result, attestation = job.results[job.prover]
        key = self.workers[auditor].key
        claim = next(c.ciphertext for c in result.sealed_claims if c.reader == key)  # checked on arrival
        return AuditChunk(
            job_id=job.request.job_id,
            offset=attestation.n_tokens,
            tokens=[],
            pieces=[],
            final=True,
            sealed_claim=claim,
            claim_attestation=result.attestation,
        )

    def _forward_sealed(self, job: JobRecord, upto: int) -> list[Effect]:
        """Forward the client's ciphertext of every sealed chunk that every auditor passed (up to
        ``upto``) and that was not forwarded before (a re-run repeats the chunks already sent)."""
        claim = job.chunked
        assert claim is not None
        effects: list[Effect] = []
        for chunk in claim.sealed:
            end = chunk.offset + chunk.n_tokens
            done = job.sealed_verified[-1][1] if job.sealed_verified else 0
            if done < end <= upto:
                job.sealed_verified.append((chunk.offset, end, chunk.commitment))
                sealed = Sealed(peer_id=claim.prover, ciphertext=chunk.to_client)
                effects.append(
                    ForwardVerified(job.request.job_id, "", sealed=sealed, commitment=chunk.commitment)
                )
        return effects

    def sealed_chunks_contradiction(self, job_id: bytes, peer: str, n_tokens: int) -> str | None:
        """Why a sealed streaming prover's result contradicts the chunks it sent (None: they held exactly
        the ``n_tokens`` it attested, or its claim is not chunked). Its auditors check the tokens."""
        job = self._jobs.get(job_id)
        claim = job.chunked if job is not None else None
        if job is None or not job.sealed or claim is None or claim.prover != peer:
            return None
        streamed = claim.ends[-1] if claim.ends else 0  # its claim was opened at dispatch: chunks due
        if streamed == n_tokens:
            return None
        return f"its result attests {n_tokens} tokens, but its sealed chunks held {streamed}"

    def _reject_chunk(
        self, job: JobRecord, auditor: str, end: int, max_gap: float, reason: str, now: float
    ) -> list[Effect]:
        """An auditor failed a chunk: the claim is rejected as after a failed audit (§13.2). A prover still
        generating is stopped first; its text beyond the verified prefix never reaches the client."""
        job_id = job.request.job_id
        del job.audits[auditor]
        self._release(auditor)
        effects: list[Effect] = [CancelReplica(peer=auditor, job_id=job_id)]
        prover = job.prover
        if job.state is JobState.AUDITING:  # its result is in: exactly a failed audit report
            report = AuditReport(
                job_id=job_id,
                verdict="fail",
                n_scored=end,
                max_gap=max_gap,
                evidence_commitment=bytes(32),
                reason=reason,
            )
            job.chunked = None
            return effects + self._reject_claim(job, auditor, report, now)
        why = (
            f"its streamed output failed the chunked audit by {auditor} (max gap {max_gap:.3f} logits, "
            f"tolerance {self.config.audit_tolerance}): {reason}"
        )
        effects.append(CancelReplica(peer=prover, job_id=job_id))
        return effects + self._on_failed(job_id, prover, why, now, penalize=True)

    def _drop_chunked(self, job: JobRecord, peer: str) -> list[Effect]:
        """``peer``'s replica failed or was rejected: if it was the streaming prover, its chunked audit
        stops (auditors cancelled and freed). The verified prefix stays: it was forwarded."""
        claim = job.chunked
        if claim is None or claim.prover != peer:
            return []
        job.chunked = None
        job.prover = ""
        job.plan = None
        job.audited.clear()
        self._audit_wait.pop(job.request.job_id, None)
        return self._cancel_audits(job)


MAX_SEALED_STREAM_BYTES = 64 * 1024 * 1024
"""Most ciphertext bytes one sealed streaming claim may make the coordinator hold (every chunk to the
client and to each reader, kept for auditors that join later). An honest 8,192-token claim sealed to 16
readers holds about 2 MB (some 11 bytes a token a copy); with chunks cut by the policy (only the last one
short) a prover cannot make it hold more than this by sending many small chunks or bloated ciphertexts."""


def _rerun_contradiction(verified: int) -> str:
    return (
        f"the prover that re-ran this job did not reproduce the {verified} tokens already streamed to you "
        "as verified (the rejected prover's verified text was within the audit's tolerance but not what "
        "this worker generates); discard the streamed text and retry"
    )


def audit_streamed(job: JobRecord) -> bool:
    """True for a job whose claim is audited in chunks as it streams: open, audit mode, asked to stream,
    its prover still generating."""
    return job.request.stream and job.audit and not job.sealed and job.state is JobState.RUNNING


def sealed_streamed(job: JobRecord) -> bool:
    """True for a job whose sealed claim is audited in chunks as it streams (spec/verification.md §14.3):
    sealed, audit mode, asked to stream, its prover still generating."""
    return job.request.stream and job.audit and bool(job.sealed) and job.state is JobState.RUNNING


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

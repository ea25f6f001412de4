"""Incremental audits on llama.cpp: a claim scored chunk by chunk as the prover streams it, the KV cache
kept between chunks (spec/verification.md §14.2, chunked audits).

A :class:`ScoringSession` belongs to one audit of one job. At start it evaluates the job's prompt once, in
a llama.cpp context of its own (sharing the weights the engine scores with — its scoring copy's when it
has one — so generations on the engine's context neither disturb nor are disturbed by it) with the
engine's contract settings (n_batch, KV-cache type, flash attention): the same numerical class as
:meth:`LlamaEngine.score`. Each chunk of claimed tokens is then appended to the cache, and every output
position of the chunk is scored by the same per-position rule as the one-shot score (spec §12.1; the
Gumbel rule of §11 for sampled jobs, through :mod:`opengrid.core.sampling`).
``tests/engines/test_scoring_session.py`` shows the evidence equal, value for value, to one
:meth:`LlamaEngine.score` of the whole claim on the same build.

How rows line up: the row that predicts output position ``j`` is the logits after evaluating the prompt
and claimed tokens ``0 .. j - 1``. The prompt is evaluated with its last two rows out, the last of which
predicts position 0 (kept, ``_ahead``): a first chunk of one token is then scored without evaluating
anything, so the auditor's first verdict costs no forward pass once its session is open. Each chunk's
last token is kept back (``_pending``) and evaluated with the next chunk (or for the end-of-generation
position of a claim that stops there): a chunk of ``m`` tokens at offset ``k`` evaluates tokens
``k - 1 .. k + m - 2``, ``m`` rows, those for positions ``k .. k + m - 1``; every claimed token is
evaluated once, and a batch that would have one row evaluates the token before it again (``_rows``
says why).

The session also recomputes the text each token completes (the same UTF-8-safe pieces the prover's engine
reports, ``llama._TextPreview``), so a chunk whose pieces are not what its tokens say fails: verified text
forwarded to a client is the auditor's word, not the prover's.

Bounds: one context per session (its KV cache is the engine's ``n_ctx``), at most ``max_tokens`` claimed
tokens, chunks in order and contiguous. Blocking; run it in the engine's worker thread (the worker driver
uses the same limiter as generation). ``close`` clears the context and gives it to the engine for its
next session (one spare, freed with the engine), or frees it; the driver closes a session when its
stream ends, is idle too long, or is cancelled.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import llama_cpp
import numpy as np
import numpy.typing as npt

from opengrid.core.audit import PositionEvidence, SamplingParams
from opengrid.core.sampling import passing_tokens, perturbed_scores, score_position, score_positions
from opengrid.engines.llama import LlamaEngine, _TextPreview
from opengrid.errors import BadRequestError, EngineError, VerificationError

__all__ = ["ChunkScore", "ScoringSession"]


@dataclass(frozen=True)
class ChunkScore:
    """The evidence for one chunk's positions, and why the chunk fails whatever its evidence says."""

    evidence: tuple[PositionEvidence, ...]
    """``evidence[i]`` is output position ``offset + i`` of the claim."""
    problem: str = ""
    """Non-empty when the chunk's pieces are not the text its tokens complete on this tokenizer."""
    problem_at: int = -1
    """The claim position of the first such piece (-1: none)."""


class ScoringSession:
    """One job's incremental audit on a :class:`LlamaEngine` (see the module docstring)."""

    def __init__(
        self,
        engine: LlamaEngine,
        *,
        prompt: str,
        sampling: SamplingParams,
        job_id: bytes,
        add_bos: bool = True,
        max_tokens: int | None = None,
    ) -> None:
        """Open a context over ``engine``'s weights and evaluate ``prompt`` (blocking).

        ``max_tokens`` bounds the claim (the job's own limit): prompt tokens + ``max_tokens`` (a stopped
        claim's end position needs no evaluation) must fit the engine's ``n_ctx``, else
        :class:`BadRequestError`, as a generation of that job would have been refused. None: as many as
        the context holds after the prompt."""
        if max_tokens is not None and max_tokens < 1:
            raise EngineError(f"max_tokens must be >= 1, got {max_tokens}")
        self._engine = engine
        self._sampling = sampling
        self._job_id = job_id
        self.tokens: list[int] = []
        """Claimed tokens scored so far."""
        self.evidence: list[PositionEvidence] = []
        """Evidence of every position scored so far (position ``i`` at index ``i``)."""
        self._preview = _TextPreview()
        self._ahead: npt.NDArray[np.float32] | None = None
        """The row predicting position ``len(self.tokens)``, when it was computed (then ``_pending`` is
        empty)."""
        self._pending: list[int] = []
        """Claimed tokens not in the KV cache yet: at most the last one (evaluated with the next chunk)."""
        self._ctx: llama_cpp.llama_context_p | None = None
        self._scorer: llama_cpp.Llama | None = None
        self._batch: llama_cpp.llama_batch | None = None
        with engine._lock:  # the engine's own: it must not close under us
            llm = engine._require_open()
            prompt_tokens = engine._tokenize_prompt(llm, prompt, add_bos)
            room = engine.n_ctx - len(prompt_tokens)
            self._max_tokens = room if max_tokens is None else max_tokens
            needed = len(prompt_tokens) + self._max_tokens
            if needed > engine.n_ctx or room < 1:
                raise BadRequestError(
                    f"prompt ({len(prompt_tokens)} tokens) + max_tokens ({max_tokens}) = {needed} exceeds "
                    f"the context window of {engine.n_ctx} tokens; load the auditor with a larger n_ctx"
                )
            self.prompt_tokens = len(prompt_tokens)
            try:
                # The engine's own context parameters: the same n_ctx, n_batch, KV type, flash attention
                # and threads, so the arithmetic is the engine's (its numerical class); on the weights the
                # engine scores with (its scoring copy, if it has one: spec/verification.md §12.5).
                scorer = engine._scoring_llm()
                self._scorer = scorer
                self._ctx = engine._take_scoring_context(scorer) or llama_cpp.llama_init_from_model(
                    scorer.model, scorer.context_params
                )
            except Exception as exc:  # llama.cpp reports failure as a NULL context or an exception
                raise EngineError(f"llama.cpp could not open a scoring context: {exc}") from exc
            if not self._ctx:
                self._ctx = None
                raise EngineError(
                    f"llama.cpp could not open a scoring context for {engine.model.name!r} (out of memory?); "
                    "retry when fewer audits run"
                )
            self._n_batch = int(llm.n_batch)
            self._batch = llama_cpp.llama_batch_init(self._n_batch, 0, 1)
            self._seq = list(prompt_tokens)
            """Every token in the session's KV cache, in order: the prompt, then the claimed tokens."""
            # The last two rows out: the row predicting position 0 then comes from a batch of two output
            # rows, as in the one-shot score (a prompt whose last token is alone in its batch of n_batch
            # gets it later, evaluated again with another).
            alone = len(prompt_tokens) < 2 or len(prompt_tokens) % self._n_batch == 1
            try:
                rows = self._eval(prompt_tokens, 0, outputs=1 if alone else 2)
            except Exception:
                self._free()
                raise
            self._ahead = None if alone else rows[-1].copy()

    @property
    def n_scored(self) -> int:
        """Positions scored so far."""
        return len(self.evidence)

    def score_chunk(
        self, offset: int, tokens: Sequence[int], pieces: Sequence[str] | None = None
    ) -> ChunkScore:
        """Append ``tokens`` (claimed output positions ``offset ..``) and score each of their positions.

        ``pieces`` (one per token, the text each token completed as the prover reported it) are checked
        against this tokenizer's; a mismatch is the chunk's ``problem``. Raises
        :class:`VerificationError` for a token outside the vocabulary (nothing of the chunk is kept) and
        :class:`EngineError` for an offset that is not where the claim stands, or a claim past
        ``max_tokens``."""
        if offset != len(self.tokens):
            raise EngineError(f"chunk at offset {offset}, but {len(self.tokens)} tokens were scored so far")
        if not tokens:
            raise EngineError("an empty chunk: there is nothing to score")
        if len(self.tokens) + len(tokens) > self._max_tokens:
            raise EngineError(
                f"the claim would have {len(self.tokens) + len(tokens)} tokens, above the job's "
                f"max_tokens of {self._max_tokens}"
            )
        if pieces is not None and len(pieces) != len(tokens):
            raise EngineError(f"{len(pieces)} pieces for {len(tokens)} tokens")
        engine = self._engine
        n_vocab = engine.n_vocab
        bad = [t for t in tokens if not 0 <= t < n_vocab]
        if bad:
            raise VerificationError(
                f"claimed tokens {bad[:5]} are outside the vocabulary of {engine.model.name!r} "
                f"(0..{n_vocab - 1}): the claim is not an output of this model"
            )
        with engine._lock:
            llm = engine._require_open()
            logits = self._rows(list(tokens))
            problem, problem_at = "", -1
            for i, token in enumerate(tokens):
                self.tokens.append(token)
                piece = self._preview.feed(llm.detokenize(self.tokens))
                if pieces is not None and not problem and piece != pieces[i]:
                    problem_at = offset + i
                    problem = (
                        f"position {offset + i}: the claimed text piece {pieces[i]!r} is not what token "
                        f"{token} completes here ({piece!r})"
                    )
        evidence = score_positions(logits, list(tokens), self._sampling, self._job_id, offset)
        self.evidence += evidence
        return ChunkScore(evidence=tuple(evidence), problem=problem, problem_at=problem_at)

    def first_position_options(self, tolerance: float, limit: int) -> list[tuple[int, str]] | None:
        """The tokens that pass at claim position 0 among the ``limit`` best by score, best first, each
        with the text it completes there (``opengrid.core.sampling.passing_tokens`` on the row the
        prompt left: what a one-token first chunk is judged by, spec §12.2). None when a chunk was
        scored already, or when the row was not computed in advance (a one-token prompt)."""
        row = self._ahead
        if row is None or self.tokens:
            return None
        passed = passing_tokens(row, self._sampling, self._job_id, 0, tolerance, limit)
        engine = self._engine
        with engine._lock:
            llm = engine._require_open()
            return [(token, _TextPreview().feed(llm.detokenize([token]))) for token in passed]

    def score_stop(self) -> PositionEvidence:
        """Score the end-of-generation position of a claim that stopped after the tokens fed so far: its
        claimed token is the best end-of-generation token (spec §12.1), as :meth:`LlamaEngine.score`."""
        if len(self.evidence) > len(self.tokens):
            raise EngineError("the end position was scored already")
        engine = self._engine
        eog = engine._eog
        if eog.size == 0:
            raise VerificationError(
                f"the claim stopped, but model {engine.model.name!r} has no end-of-generation token"
            )
        position = len(self.tokens)
        with engine._lock:
            engine._require_open()
            row = self._rows([])[-1]
        scores = perturbed_scores(row, self._sampling, self._job_id, position)
        stop_token = int(eog[int(np.argmax(scores[eog]))])
        evidence = score_position(row, stop_token, self._sampling, self._job_id, position)
        self.evidence.append(evidence)
        return evidence

    def _rows(self, tokens: list[int]) -> npt.NDArray[np.float32]:
        """The rows predicting the positions of ``tokens`` (claimed positions ``len(self.tokens) ..``),
        one per token; for no tokens, the one row predicting position ``len(self.tokens)`` (the end
        position of a claim that stopped). ``tokens`` are not appended to ``self.tokens`` here.

        What is evaluated: the token kept back from the last chunk and all of ``tokens`` but the last
        (kept back in turn); the row already computed for the first position (``_ahead``) is used as is.
        Why a token already in the cache is sometimes evaluated again, in the same batch: llama.cpp's
        arithmetic differs in the last bits between a batch with one output row and a batch with several
        (measured on the tiny model: a one-row evaluation moved log-probabilities by up to 6e-4), so a
        batch that would have one row takes the token before it too (its KV cell dropped first), as
        does a row that was never computed from a batch of two (``_ahead`` unset with nothing pending: a
        one-token prompt). Every scored row then comes from a batch of at least two rows, as in the
        one-shot score, whose evidence it equals bit for bit."""
        ctx = self._ctx
        if ctx is None:
            raise EngineError("the scoring session is closed")
        wanted = max(len(tokens), 1)
        ahead = [self._ahead] if self._ahead is not None else []
        todo = self._pending + tokens[: wanted - 1]
        back = 0 if ahead or self._pending else 1
        if len(todo) + back == 1:
            back += 1
        back = min(back, len(self._seq))
        rows: list[npt.NDArray[np.float32]] = list(ahead)
        if todo or back:
            start = len(self._seq) - back
            memory = llama_cpp.llama_get_memory(ctx)
            if memory is not None:
                llama_cpp.llama_memory_seq_rm(memory, 0, start, -1)
            evaluated = self._eval(self._seq[start:] + todo, start)
            self._seq += todo
            rows += list(evaluated[len(evaluated) - (wanted - len(ahead)) :])
        if len(rows) != wanted:  # only an empty prompt (no token to evaluate first) leaves a row out
            raise EngineError("an empty prompt: there is no row to score the claim's first position on")
        if tokens:
            self._pending, self._ahead = tokens[-1:], None
        else:  # the row predicting what follows every claimed token: all of them are in the cache now
            self._pending, self._ahead = [], rows[-1].copy()
        return np.stack(rows)

    def _eval(self, tokens: list[int], start: int, *, outputs: int | None = None) -> npt.NDArray[np.float32]:
        """Evaluate ``tokens`` at positions ``start ..`` in batches of n_batch; return every row's logits
        (``outputs``: the last ``outputs`` rows' only; the prompt's other rows predict nothing scored)."""
        ctx, batch = self._ctx, self._batch
        if ctx is None or batch is None:
            raise EngineError("the scoring session is closed")
        n_vocab = self._engine.n_vocab
        skip = 0 if outputs is None else max(0, len(tokens) - outputs)  # rows with no logits out
        out = np.empty((len(tokens) - skip, n_vocab), dtype=np.float32)
        for first in range(0, len(tokens), self._n_batch):
            part = tokens[first : first + self._n_batch]
            batch.n_tokens = len(part)
            for i, token in enumerate(part):
                batch.token[i] = token
                batch.pos[i] = start + first + i  # type: ignore[call-overload]  # int32 array, mistyped stubs
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = first + i >= skip
            code = llama_cpp.llama_decode(ctx, batch)
            if code != 0:
                raise EngineError(f"llama_decode returned {code} at position {start + first}")
            for i in range(len(part)):
                if first + i < skip:
                    continue
                pointer = llama_cpp.llama_get_logits_ith(ctx, i)
                out[first + i - skip] = np.ctypeslib.as_array(pointer, shape=(n_vocab,))
        return out

    def close(self) -> None:
        """Free the session's context (or keep it, cleared, as the engine's spare); idempotent."""
        with self._engine._lock:
            self._free()

    def _free(self) -> None:
        batch, self._batch = self._batch, None
        ctx, self._ctx = self._ctx, None
        if batch is not None:
            llama_cpp.llama_batch_free(batch)
        if ctx is not None:
            # Cleared and kept for the engine's next session (an empty cache computes as a new one), or
            # freed when the engine has one already.
            memory = llama_cpp.llama_get_memory(ctx)
            if memory is not None:
                llama_cpp.llama_memory_clear(memory, True)
            scorer = self._scorer
            if memory is None or scorer is None or not self._engine._keep_scoring_context(scorer, ctx):
                llama_cpp.llama_free(ctx)

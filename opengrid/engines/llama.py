"""In-process llama.cpp engine (llama-cpp-python) under the pinned deterministic decoding contract.

Every setting that changes the arithmetic (spec/verification.md, :class:`DecodingContract`) is taken from
the contract: n_batch 512 (never 1), flash attention off and an f16 KV cache. Each
:meth:`LlamaEngine.generate` call clears the KV cache and evaluates the whole prompt afresh, so a result
never depends on what the engine ran before.

Tokens are chosen by :mod:`opengrid.core.sampling` from the logits llama.cpp returns (spec §11), never by
llama.cpp's sampler or RNG: greedy is the argmax (bit-identical to llama.cpp's greedy sampler, which
``Llama.create_completion(prompt, temperature=0.0, top_k=1, repeat_penalty=1.0)`` uses), and seeded
sampling is Gumbel-max with noise derived from the job id and the client's seed, so an auditor on other
hardware can recompute it. The tokens and text are those of llama.cpp's completion path, with two
deliberate differences in corner cases:

- exactly ``max_tokens`` tokens at most: ``create_completion`` keeps generating past ``max_tokens`` while
  the text ends in an incomplete UTF-8 character;
- the text is decoded once with ``errors="replace"`` (``create_completion`` drops invalid bytes), so a
  character cut by ``max_tokens`` shows up as U+FFFD instead of vanishing.

:meth:`LlamaEngine.score` audits a claimed output (spec §12): one forward pass over prompt + claimed
tokens in batches of n_batch, with logits requested only for the rows that predict output positions. With
a scoring copy (:mod:`opengrid.engines.scoring_copy`, spec §12.5) that pass runs on the copy's weights,
which llama.cpp's CPU backend multiplies in batches (Q4_1 has no batched kernel): generation always runs
on the original file.
"""

from __future__ import annotations

import codecs
import threading
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Self

import llama_cpp
import msgspec
import numpy as np
import numpy.typing as npt

from opengrid.core.audit import PositionEvidence, SamplingParams
from opengrid.core.sampling import choose, perturbed_scores, score_position, score_positions
from opengrid.engines.base import (
    DEFAULT_N_CTX,
    ChatTemplate,
    FinishReason,
    Generation,
    GenerationRequest,
    ModelInfo,
    ScoreRequest,
    Scoring,
)
from opengrid.engines.scoring_copy import ScoringCopy
from opengrid.errors import BadRequestError, EngineError, VerificationError
from opengrid.wire.contract import DecodingContract

__all__ = ["DEFAULT_N_CTX", "LlamaEngine"]

_KV_CACHE_TYPES = {"f16": llama_cpp.GGML_TYPE_F16, "f32": llama_cpp.GGML_TYPE_F32}

# llama.cpp's LLAMA_FTYPE_MOSTLY_Q4_1, as the GGUF's general.file_type records it: the weights format
# that has no batched matrix kernel on the CPU (spec/verification.md §12.5).
_FTYPE_MOSTLY_Q4_1 = "3"


class LlamaEngine:
    """A GGUF model loaded in this process with llama-cpp-python; implements :class:`Engine`.

    Blocking and not re-entrant: calls from several threads are serialised by a lock. Load it once and
    keep it; loading SmolLM2-135M takes ~0.15 s, the tiny test model ~10 ms.
    """

    def __init__(
        self,
        model: ModelInfo,
        *,
        n_threads: int | None = None,
        n_ctx: int = DEFAULT_N_CTX,
        gpu_layers: int = 0,
        n_batch: int | None = None,
        kv_cache_type: str | None = None,
        scoring_copy: ScoringCopy | None = None,
    ) -> None:
        """Load ``model.path``.

        ``n_threads`` sets both the generation and the prompt-processing threads; ``None`` keeps
        llama.cpp's defaults (half the CPUs for generation, all of them for the prompt). Thread counts do
        not change the output. ``n_ctx`` bounds prompt tokens + ``max_tokens`` of every request.
        ``gpu_layers`` offloads layers to a GPU when llama.cpp was built with one (-1: all); offloading
        changes the arithmetic, so it is a different numerical class (``backend`` "llama.cpp+gpu").
        ``n_batch`` (default the contract's 512) and ``kv_cache_type`` (``"f16"``, default, or ``"f32"``)
        also change the logits: they are written into the contract, so such an engine is a numerical class
        of its own. Tests use them as a stand-in for other hardware (honest engines whose arithmetic
        differs, spec §12).
        ``scoring_copy`` (of this very model: its ``source.sha256`` must be ``model.sha256``) is loaded
        beside the model and :meth:`score` runs on it (see :meth:`use_scoring_copy`).
        """
        if n_ctx < 2:
            raise EngineError(f"n_ctx must be >= 2 tokens, got {n_ctx}; the default is {DEFAULT_N_CTX}")
        if n_threads is not None and n_threads < 1:
            raise EngineError(f"n_threads must be >= 1 or None (llama.cpp's default), got {n_threads}")
        if n_batch is not None and n_batch < 1:
            raise EngineError(f"n_batch must be >= 1 or None (the contract's 512), got {n_batch}")
        contract = DecodingContract(
            model_sha256=model.sha256,
            backend="llama.cpp+gpu" if gpu_layers else "llama.cpp",
            backend_version=llama_cpp.__version__,
        )
        if n_batch is not None:
            contract = msgspec.structs.replace(contract, n_batch=n_batch)
        if kv_cache_type is not None:
            contract = msgspec.structs.replace(contract, kv_cache_type=kv_cache_type)
        kv_type = _KV_CACHE_TYPES.get(contract.kv_cache_type)
        if kv_type is None:
            raise EngineError(f"unsupported KV-cache type {contract.kv_cache_type!r} in the contract")
        self._model = model
        self._contract = contract
        self._n_ctx = n_ctx
        self._n_threads = n_threads
        self._gpu_layers = gpu_layers
        self._kv_type = kv_type
        self._lock = threading.Lock()
        self._scorer: llama_cpp.Llama | None = None
        self._retired: list[llama_cpp.Llama] = []  # scorers replaced by use_scoring_copy, freed by close
        self._scoring_copy: ScoringCopy | None = None
        self._spare: tuple[llama_cpp.Llama, llama_cpp.llama_context_p] | None = None
        """A closed ScoringSession's context (its KV cache cleared) and the weights it is over, kept for
        the next session: creating one costs 30-50 ms on SmolLM2-135M, on an auditor's first verdict."""
        self._llm: llama_cpp.Llama | None = self._load(model.path, f"model {model.name!r}")
        vocab = llama_cpp.llama_model_get_vocab(self._llm.model)
        if vocab is None:
            self.close()
            raise EngineError(f"llama.cpp loaded {model.path} but it has no vocabulary; use another model")
        self._vocab = vocab
        self._n_vocab = int(self._llm.n_vocab())
        # Every end-of-generation id (EOS, EOT, ...): an audit of a stopped claim scores the best of them.
        self._eog = np.array(
            [t for t in range(self._n_vocab) if llama_cpp.llama_vocab_is_eog(vocab, t)], dtype=np.int64
        )
        self._batch: llama_cpp.llama_batch | None = llama_cpp.llama_batch_init(self._llm.n_batch, 0, 1)
        if scoring_copy is not None:
            try:
                self.use_scoring_copy(scoring_copy)
            except EngineError:
                self.close()
                raise

    def _load(self, path: object, what: str) -> llama_cpp.Llama:
        """A llama.cpp model + context at ``path`` with this engine's contract settings."""
        contract = self._contract
        try:
            # n_batch is capped at n_ctx by llama-cpp-python; any n_batch >= 2 gives the same logits
            # (measured, see the llama-cpp notes), so a small n_ctx stays in the contract's class.
            return llama_cpp.Llama(
                model_path=str(path),
                n_ctx=self._n_ctx,
                n_batch=contract.n_batch,
                n_ubatch=contract.n_batch,
                n_threads=self._n_threads,
                n_threads_batch=self._n_threads,
                n_gpu_layers=self._gpu_layers,
                seed=contract.seed,
                flash_attn=contract.flash_attn,
                type_k=self._kv_type,
                type_v=self._kv_type,
                verbose=False,
            )
        except Exception as exc:
            raise EngineError(
                f"llama.cpp {llama_cpp.__version__} could not load {what} from {path}: "
                f"{exc}. Check that the file exists and is a complete GGUF model of a supported architecture."
            ) from exc

    @property
    def prefers_scoring_copy(self) -> bool:
        """True when a scoring copy makes :meth:`score` cheaper here: the weights are mostly Q4_1 (no
        batched CPU kernel) and run on the CPU (spec/verification.md §12.5; GPUs are not measured)."""
        llm = self._require_open()
        return self._gpu_layers == 0 and llm.metadata.get("general.file_type") == _FTYPE_MOSTLY_Q4_1

    @property
    def scoring_copy(self) -> ScoringCopy | None:
        """The scoring copy :meth:`score` runs on, or None (the model itself)."""
        return self._scoring_copy

    def use_scoring_copy(self, copy: ScoringCopy | None) -> None:
        """Score on ``copy`` from now on (None: on the model itself); generation is unchanged.

        The copy must be derived from this engine's model (``copy.source.sha256`` equal to the model's),
        else :class:`VerificationError`; its vocabulary must match. Loading SmolLM2-135M's bf16 copy adds
        ~300 MiB of RSS (file-backed: the weights are mapped)."""
        if copy is not None and copy.source.sha256 != self._model.sha256:
            raise VerificationError(
                f"scoring copy {copy.path} was derived from a model with sha256 {copy.source.sha256}, not "
                f"this engine's {self._model.sha256}; make the copy from this model "
                "(opengrid.engines.scoring_copy.make_scoring_copy)"
            )
        scorer = None if copy is None else self._load(copy.path, f"the {copy.kind} scoring copy")
        if scorer is not None and int(scorer.n_vocab()) != self._n_vocab:
            scorer.close()
            raise EngineError(f"scoring copy {copy and copy.path} has another vocabulary; remake it")
        with self._lock:
            if self._scorer is not None:
                # Not freed yet: an open ScoringSession may hold a context over its weights.
                self._retired.append(self._scorer)
            self._free_spare()  # over the weights scored with until now
            self._scorer, self._scoring_copy = scorer, copy

    def _take_scoring_context(self, scorer: llama_cpp.Llama) -> llama_cpp.llama_context_p | None:
        """The spare scoring context over ``scorer``'s weights, now the caller's (None: there is none;
        call locked)."""
        spare = self._spare
        if spare is None or spare[0] is not scorer:
            return None
        self._spare = None
        return spare[1]

    def _keep_scoring_context(self, scorer: llama_cpp.Llama, ctx: llama_cpp.llama_context_p) -> bool:
        """Keep a closing session's context (its KV cache already cleared) as the spare, if there is
        none yet and ``scorer`` is still what audits score on; False: the caller frees it (call locked)."""
        if self._spare is not None or self._llm is None or scorer is not self._scoring_llm():
            return False
        self._spare = (scorer, ctx)
        return True

    def _free_spare(self) -> None:
        spare, self._spare = self._spare, None
        if spare is not None:
            llama_cpp.llama_free(spare[1])

    def _scoring_llm(self) -> llama_cpp.Llama:
        """What audits evaluate on: the scoring copy when there is one, else the model (call locked)."""
        llm = self._require_open()
        return self._scorer if self._scorer is not None else llm

    @property
    def model(self) -> ModelInfo:
        """The model file this engine runs."""
        return self._model

    @property
    def contract(self) -> DecodingContract:
        """Pinned decoding settings, with this model's sha256 and this llama-cpp-python version."""
        return self._contract

    @property
    def n_params(self) -> int:
        """Parameters in the loaded model, as llama.cpp counts them: what prices a token of it
        (``opengrid.wire.messages.model_weight``)."""
        return int(llama_cpp.llama_model_n_params(self._require_open().model))

    @property
    def chat_template(self) -> ChatTemplate | None:
        """The chat template stored in the GGUF (``tokenizer.chat_template``), with its BOS/EOS strings."""
        llm = self._require_open()
        template = llm.metadata.get("tokenizer.chat_template", "")
        if not template:
            return None
        return ChatTemplate(
            template=template,
            bos_token=self._token_text(llm.token_bos()),
            eos_token=self._token_text(llm.token_eos()),
        )

    def _token_text(self, token: int) -> str:
        if token < 0:
            return ""
        piece = llama_cpp.llama_vocab_get_text(self._vocab, token)
        return piece.decode("utf-8", errors="replace") if piece else ""

    @property
    def n_vocab(self) -> int:
        """Vocabulary size: valid token ids are ``0 .. n_vocab - 1``."""
        return self._n_vocab

    @property
    def n_ctx(self) -> int:
        """Context window: prompt tokens + ``max_tokens`` must fit in it."""
        return self._n_ctx

    def tokenize(self, text: str) -> tuple[int, ...]:
        """Token ids of ``text`` as a prompt: with BOS if the model asks for it, special tokens parsed.

        This is how ``create_completion`` tokenizes a prompt (``add_bos`` follows the GGUF's
        ``tokenizer.ggml.add_bos_token``: yes for llama SPM models, no for SmolLM2).
        """
        with self._lock:
            llm = self._require_open()
            try:
                return tuple(llm.tokenize(text.encode("utf-8"), add_bos=True, special=True))
            except Exception as exc:
                raise EngineError(
                    f"llama.cpp could not tokenize a {len(text)}-character prompt: {exc}"
                ) from exc

    def detokenize(self, tokens: Sequence[int]) -> str:
        """Text of ``tokens``: their bytes joined, then decoded once (invalid UTF-8 becomes U+FFFD)."""
        with self._lock:
            llm = self._require_open()
            n_vocab = llm.n_vocab()
            bad = [t for t in tokens if not 0 <= t < n_vocab]
            if bad:
                # llama.cpp aborts the process on an out-of-range id; refuse them here.
                raise EngineError(
                    f"token ids {bad[:5]} are outside the vocabulary of {self._model.name!r} "
                    f"(0..{n_vocab - 1})"
                )
            return self._detokenize(llm, list(tokens))

    def generate(self, request: GenerationRequest) -> Generation:
        """Completion of ``request.prompt`` under ``request.sampling`` (greedy by default): up to
        ``max_tokens`` tokens, stopping at EOS/EOT."""
        return self.generate_streaming(request, None)

    def generate_streaming(
        self,
        request: GenerationRequest,
        on_text: Callable[[str], None] | None,
        on_token: Callable[[int, str], None] | None = None,
    ) -> Generation:
        """Like ``generate``, calling ``on_text(delta)`` with new text as it is produced, and
        ``on_token(token, piece)`` once per generated token with the text it completed (in this thread).

        The text is a preview: the returned ``Generation.text`` (one decode of all tokens) is the
        authority, and starts with the concatenated deltas except in rare detokenizer corner cases.
        """
        if request.max_tokens < 1:
            raise EngineError(f"max_tokens must be >= 1, got {request.max_tokens}")
        with self._lock:
            llm = self._require_open()
            prompt_tokens = self._tokenize_prompt(llm, request.prompt, request.add_bos)
            needed = len(prompt_tokens) + request.max_tokens
            if needed > self._n_ctx:
                raise BadRequestError(
                    f"prompt ({len(prompt_tokens)} tokens) + max_tokens ({request.max_tokens}) = {needed} "
                    f"exceeds the context window of {self._n_ctx} tokens; shorten the prompt, lower "
                    f"max_tokens, or load the engine with a larger n_ctx"
                )
            try:
                tokens, finish_reason = self._decode(llm, prompt_tokens, request, on_text, on_token)
            except Exception as exc:
                raise EngineError(
                    f"llama.cpp failed while generating with {self._model.name!r}: {exc}"
                ) from exc
            # create_completion detokenizes an empty prompt's completion after BOS, which drops the
            # leading space of an SPM completion; do the same so the texts agree.
            bos = llm.token_bos()
            prefix = [bos] if request.prompt == "" and bos >= 0 else []
            text = self._detokenize(llm, prefix + tokens)
        return Generation(tokens=tuple(tokens), text=text, finish_reason=finish_reason)

    def score(self, request: ScoreRequest) -> Scoring:
        """Audit a claimed output (spec/verification.md §12): evidence per output position.

        One forward pass over prompt + claimed tokens, in batches of the contract's n_batch (as generation
        evaluates a prompt), with logits only for the rows that predict an output position, stopping after
        the last position in the window (``request.end``, a partial audit); the evidence
        is computed by :mod:`opengrid.core.sampling` under ``request.sampling``. Blocking; run it in a
        worker thread, like :meth:`generate`.
        """
        with self._lock:
            llm = self._require_open()
            prompt_tokens = self._tokenize_prompt(llm, request.prompt, request.add_bos)
            claimed = list(request.tokens)
            bad = [t for t in claimed if not 0 <= t < self._n_vocab]
            if bad:
                raise VerificationError(
                    f"claimed tokens {bad[:5]} are outside the vocabulary of {self._model.name!r} "
                    f"(0..{self._n_vocab - 1}): the claim is not an output of this model"
                )
            if not claimed and not request.stopped:
                raise VerificationError("the claim has no tokens and did not stop: there is nothing to score")
            sequence = prompt_tokens + claimed
            # Row prompt-1+j of the sequence predicts output position j; a stopped claim adds one row.
            first_row = len(prompt_tokens) - 1
            n_rows = request.rows
            if n_rows < request.positions:  # a partial audit: the pass stops at the last scored row
                sequence = sequence[: first_row + n_rows]
            if len(sequence) > self._n_ctx:
                raise EngineError(
                    f"prompt ({len(prompt_tokens)} tokens) + claimed output to the last scored position "
                    f"({len(sequence) - len(prompt_tokens)} tokens) = "
                    f"{len(sequence)} exceeds the context window of {self._n_ctx} tokens; load the auditor "
                    "with a larger n_ctx"
                )
            try:
                logits = self._eval_rows(self._scoring_llm(), sequence, first_row, n_rows)
            except Exception as exc:
                raise EngineError(f"llama.cpp failed while scoring with {self._model.name!r}: {exc}") from exc
        params = request.sampling
        scored = min(n_rows, len(claimed))
        evidence = score_positions(logits[:scored], claimed[:scored], params, request.job_id, 0)
        if n_rows > len(claimed):  # the stopped claim's end-of-generation position is in the window
            evidence.append(self._score_stop(logits[len(claimed)], params, request.job_id, len(claimed)))
        return Scoring(evidence=tuple(evidence), prompt_tokens=len(prompt_tokens))

    def _score_stop(
        self, row: npt.NDArray[np.float32], params: SamplingParams, job_id: bytes, position: int
    ) -> PositionEvidence:
        """Evidence that generation ended here: the claimed token is the best end-of-generation token."""
        if self._eog.size == 0:
            raise VerificationError(
                f"the claim stopped, but model {self._model.name!r} has no end-of-generation token"
            )
        scores = perturbed_scores(row, params, job_id, position)
        stop_token = int(self._eog[int(np.argmax(scores[self._eog]))])
        return score_position(row, stop_token, params, job_id, position)

    def _eval_rows(
        self, llm: llama_cpp.Llama, sequence: list[int], first_row: int, n_rows: int
    ) -> npt.NDArray[np.float32]:
        """Evaluate ``sequence`` from position 0; return the logits of rows ``first_row`` onwards (n_rows)."""
        batch = self._batch
        if batch is None:
            raise EngineError(f"the engine for {self._model.name!r} is closed; load a new one")
        ctx = llm.ctx
        memory = llama_cpp.llama_get_memory(ctx)
        llm.reset()  # type: ignore[no-untyped-call]  # llama-cpp-python leaves it unannotated
        if memory is not None:
            llama_cpp.llama_memory_seq_rm(memory, 0, 0, -1)
        out = np.empty((n_rows, self._n_vocab), dtype=np.float32)
        size = llm.n_batch
        for start in range(0, len(sequence), size):
            chunk = sequence[start : start + size]
            batch.n_tokens = len(chunk)
            wanted: list[tuple[int, int]] = []  # (index in this batch, output row)
            for i, token in enumerate(chunk):
                position = start + i
                batch.token[i] = token
                batch.pos[i] = position  # type: ignore[call-overload]  # an int32 array the stubs mistype
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
                row = position - first_row
                want = 0 <= row < n_rows
                batch.logits[i] = want
                if want:
                    wanted.append((i, row))
            code = llama_cpp.llama_decode(ctx, batch)
            if code != 0:
                raise EngineError(f"llama_decode returned {code} at position {start}")
            for i, row in wanted:
                pointer = llama_cpp.llama_get_logits_ith(ctx, i)
                out[row] = np.ctypeslib.as_array(pointer, shape=(self._n_vocab,))
        # The KV cache now holds this sequence; the next generate() resets it (n_tokens is 0).
        return out

    def close(self) -> None:
        """Free the model and its context; idempotent."""
        with self._lock:
            self._free_spare()  # before the weights it is over
            llm, self._llm = self._llm, None
            scorers, self._retired = [self._scorer, *self._retired], []
            self._scorer = None
            batch, self._batch = self._batch, None
            if batch is not None:
                llama_cpp.llama_batch_free(batch)
            for each in (*scorers, llm):
                if each is not None:
                    each.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "open" if self._llm is not None else "closed"
        return (
            f"LlamaEngine(model={self._model.name!r}, sha256={self._model.sha256[:12]}…, "
            f"n_ctx={self._n_ctx}, {state})"
        )

    def _tokenize_prompt(self, llm: llama_cpp.Llama, prompt: str, add_bos: bool) -> list[int]:
        try:
            tokens = llm.tokenize(prompt.encode("utf-8"), add_bos=add_bos, special=True)
        except Exception as exc:
            raise EngineError(
                f"llama.cpp could not tokenize a {len(prompt)}-character prompt: {exc}"
            ) from exc
        if not tokens:
            raise BadRequestError(
                f"the prompt is empty and model {self._model.name!r} adds no BOS token, so there is "
                "nothing to condition on; send a non-empty prompt"
            )
        return tokens

    def _require_open(self) -> llama_cpp.Llama:
        if self._llm is None:
            raise EngineError(f"the engine for {self._model.name!r} is closed; load a new one")
        return self._llm

    def _decode(
        self,
        llm: llama_cpp.Llama,
        prompt_tokens: list[int],
        request: GenerationRequest,
        on_text: Callable[[str], None] | None = None,
        on_token: Callable[[int, str], None] | None = None,
    ) -> tuple[list[int], FinishReason]:
        # Forget the previous request: with n_tokens == 0, Llama.eval drops the stale KV cells and
        # evaluates the whole prompt from position 0, in batches of n_batch, logits for the last row only
        # (exactly what Llama.generate does before sampling).
        llm.reset()  # type: ignore[no-untyped-call]  # llama-cpp-python leaves it unannotated
        out: list[int] = []
        finish_reason: FinishReason = "length"
        preview = _TextPreview() if on_text is not None or on_token is not None else None
        ctx = llm.ctx
        llm.eval(prompt_tokens)
        for position in range(request.max_tokens):
            logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, -1), shape=(self._n_vocab,))
            token = choose(logits, request.sampling, request.job_id, position)
            if llama_cpp.llama_vocab_is_eog(self._vocab, token):
                finish_reason = "stop"
                break
            out.append(token)
            if preview is not None:
                piece = preview.feed(llm.detokenize(out))
                if on_token is not None:
                    on_token(token, piece)
                if on_text is not None and piece:
                    on_text(piece)
            if len(out) >= request.max_tokens:
                break
            llm.eval([token])
        return out, finish_reason

    @staticmethod
    def _detokenize(llm: llama_cpp.Llama, tokens: list[int]) -> str:
        try:
            raw = llm.detokenize(tokens)
        except Exception as exc:
            raise EngineError(f"llama.cpp could not detokenize {len(tokens)} tokens: {exc}") from exc
        # One decode of the whole byte string: a character split across tokens is decoded whole.
        return raw.decode("utf-8", errors="replace")


class _TextPreview:
    """Turns successive detokenizations of a growing token list into UTF-8-safe text deltas: a
    character split across tokens is held back until its last byte arrives, then given whole."""

    def __init__(self) -> None:
        self._seen = b""
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, raw: bytes) -> str:
        """The text the latest token completed ("" while it ends inside a character)."""
        if not raw.startswith(self._seen):
            return ""  # the detokenizer rewrote earlier bytes (rare): the final text stays authoritative
        delta = self._decoder.decode(raw[len(self._seen) :])
        self._seen = raw
        return delta

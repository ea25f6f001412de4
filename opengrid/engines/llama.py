"""In-process llama.cpp engine (llama-cpp-python) under the pinned deterministic decoding contract.

Every setting that changes which tokens come out (spec/verification.md, :class:`DecodingContract`) is
taken from the contract: greedy sampling, repeat penalty 1.0, n_batch 512 (never 1), flash attention off
and an f16 KV cache. Each :meth:`LlamaEngine.generate` call clears the KV cache and evaluates the whole
prompt afresh, so a result never depends on what the engine ran before.

The decoding loop is llama-cpp-python's own ``Llama.generate`` with the sampler that
``Llama.create_completion(prompt, temperature=0.0, top_k=1, repeat_penalty=1.0)`` builds, so the tokens and
text are those of llama.cpp's completion path, with two deliberate differences in corner cases:

- exactly ``max_tokens`` tokens at most: ``create_completion`` keeps generating past ``max_tokens`` while
  the text ends in an incomplete UTF-8 character;
- the text is decoded once with ``errors="replace"`` (``create_completion`` drops invalid bytes), so a
  character cut by ``max_tokens`` shows up as U+FFFD instead of vanishing.
"""

from __future__ import annotations

import codecs
import threading
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Self

import llama_cpp

from opengrid.engines.base import (
    DEFAULT_N_CTX,
    ChatTemplate,
    FinishReason,
    Generation,
    GenerationRequest,
    ModelInfo,
)
from opengrid.errors import BadRequestError, EngineError
from opengrid.wire.contract import DecodingContract

__all__ = ["DEFAULT_N_CTX", "LlamaEngine"]

_KV_CACHE_TYPES = {"f16": llama_cpp.GGML_TYPE_F16, "f32": llama_cpp.GGML_TYPE_F32}


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
    ) -> None:
        """Load ``model.path``.

        ``n_threads`` sets both the generation and the prompt-processing threads; ``None`` keeps
        llama.cpp's defaults (half the CPUs for generation, all of them for the prompt). Thread counts do
        not change the output. ``n_ctx`` bounds prompt tokens + ``max_tokens`` of every request.
        ``gpu_layers`` offloads layers to a GPU when llama.cpp was built with one (-1: all); offloading
        changes the arithmetic, so it is a different numerical class (``backend`` "llama.cpp+gpu").
        """
        if n_ctx < 2:
            raise EngineError(f"n_ctx must be >= 2 tokens, got {n_ctx}; the default is {DEFAULT_N_CTX}")
        if n_threads is not None and n_threads < 1:
            raise EngineError(f"n_threads must be >= 1 or None (llama.cpp's default), got {n_threads}")
        contract = DecodingContract(
            model_sha256=model.sha256,
            backend="llama.cpp+gpu" if gpu_layers else "llama.cpp",
            backend_version=llama_cpp.__version__,
        )
        kv_type = _KV_CACHE_TYPES.get(contract.kv_cache_type)
        if kv_type is None:
            raise EngineError(f"unsupported KV-cache type {contract.kv_cache_type!r} in the contract")
        self._model = model
        self._contract = contract
        self._n_ctx = n_ctx
        self._lock = threading.Lock()
        try:
            # n_batch is capped at n_ctx by llama-cpp-python; any n_batch >= 2 gives the same logits
            # (measured, see the llama-cpp notes), so a small n_ctx stays in the contract's class.
            self._llm: llama_cpp.Llama | None = llama_cpp.Llama(
                model_path=str(model.path),
                n_ctx=n_ctx,
                n_batch=contract.n_batch,
                n_ubatch=contract.n_batch,
                n_threads=n_threads,
                n_threads_batch=n_threads,
                n_gpu_layers=gpu_layers,
                seed=contract.seed,
                flash_attn=contract.flash_attn,
                type_k=kv_type,
                type_v=kv_type,
                verbose=False,
            )
        except Exception as exc:
            raise EngineError(
                f"llama.cpp {llama_cpp.__version__} could not load model {model.name!r} from {model.path}: "
                f"{exc}. Check that the file exists and is a complete GGUF model of a supported architecture."
            ) from exc
        vocab = llama_cpp.llama_model_get_vocab(self._llm.model)
        if vocab is None:
            self.close()
            raise EngineError(f"llama.cpp loaded {model.path} but it has no vocabulary; use another model")
        self._vocab = vocab

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
        """Greedy completion of ``request.prompt``: up to ``max_tokens`` tokens, stopping at EOS/EOT."""
        return self.generate_streaming(request, None)

    def generate_streaming(
        self, request: GenerationRequest, on_text: Callable[[str], None] | None
    ) -> Generation:
        """Like ``generate``, calling ``on_text(delta)`` with new text as it is produced (in this thread).

        The deltas are a preview: the returned ``Generation.text`` (one decode of all tokens) is the
        authority, and equals the concatenated deltas except in rare detokenizer corner cases.
        """
        if request.max_tokens < 1:
            raise EngineError(f"max_tokens must be >= 1, got {request.max_tokens}")
        with self._lock:
            llm = self._require_open()
            try:
                prompt_tokens = llm.tokenize(
                    request.prompt.encode("utf-8"), add_bos=request.add_bos, special=True
                )
            except Exception as exc:
                raise EngineError(
                    f"llama.cpp could not tokenize a {len(request.prompt)}-character prompt: {exc}"
                ) from exc
            if not prompt_tokens:
                raise BadRequestError(
                    f"the prompt is empty and model {self._model.name!r} adds no BOS token, so there is "
                    "nothing to condition on; send a non-empty prompt"
                )
            needed = len(prompt_tokens) + request.max_tokens
            if needed > self._n_ctx:
                raise BadRequestError(
                    f"prompt ({len(prompt_tokens)} tokens) + max_tokens ({request.max_tokens}) = {needed} "
                    f"exceeds the context window of {self._n_ctx} tokens; shorten the prompt, lower "
                    f"max_tokens, or load the engine with a larger n_ctx"
                )
            try:
                tokens, finish_reason = self._decode_greedy(llm, prompt_tokens, request.max_tokens, on_text)
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

    def close(self) -> None:
        """Free the model and its context; idempotent."""
        with self._lock:
            llm, self._llm = self._llm, None
            if llm is not None:
                llm.close()

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

    def _require_open(self) -> llama_cpp.Llama:
        if self._llm is None:
            raise EngineError(f"the engine for {self._model.name!r} is closed; load a new one")
        return self._llm

    def _decode_greedy(
        self,
        llm: llama_cpp.Llama,
        prompt_tokens: list[int],
        max_tokens: int,
        on_text: Callable[[str], None] | None = None,
    ) -> tuple[list[int], FinishReason]:
        c = self._contract
        # Forget the previous request: with n_tokens == 0, Llama.generate skips its prefix-reuse path
        # and evaluates the whole prompt from position 0 (it also drops the stale KV cells).
        llm.reset()  # type: ignore[no-untyped-call]  # llama-cpp-python leaves it unannotated
        out: list[int] = []
        finish_reason: FinishReason = "length"
        preview = _TextPreview(on_text) if on_text is not None else None
        steps = llm.generate(
            prompt_tokens, top_k=c.top_k, temp=c.temperature, repeat_penalty=c.repeat_penalty, reset=True
        )
        try:
            for token in steps:
                if llama_cpp.llama_vocab_is_eog(self._vocab, token):
                    finish_reason = "stop"
                    break
                out.append(int(token))
                if preview is not None:
                    preview.feed(llm.detokenize(out))
                if len(out) >= max_tokens:
                    break
        finally:
            steps.close()
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
    """Turns successive detokenizations of a growing token list into UTF-8-safe text deltas."""

    def __init__(self, on_text: Callable[[str], None]) -> None:
        self._on_text = on_text
        self._seen = b""
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, raw: bytes) -> None:
        if not raw.startswith(self._seen):
            return  # the detokenizer rewrote earlier bytes (rare): the final text stays authoritative
        delta = self._decoder.decode(raw[len(self._seen) :])
        self._seen = raw
        if delta:
            self._on_text(delta)

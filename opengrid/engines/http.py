"""An engine over an OpenAI-compatible HTTP server: ``python -m llama_cpp.server`` or ``vllm serve``.

:class:`HttpEngine` implements :class:`~opengrid.engines.base.Engine` by POSTing ``/v1/completions`` with a
sync :mod:`httpx` client (the node calls ``generate`` in a worker thread). :class:`ManagedServer` starts
such a server as a child process on a free loopback port and stops it again; without it, the engine
attaches to a server someone else runs.

Every decoding field is sent explicitly, because the servers' defaults differ from each other and from
the in-process engine (llama_cpp.server: temperature 0.8, repeat_penalty 1.1; vLLM: repetition_penalty
1.0). Unknown fields are ignored by both servers, so one body carries both spellings.

Token ids, per backend (the node needs ids, the OpenAI API returns text):

``"llama.cpp-server"`` — *verified re-tokenization*. llama_cpp.server returns logprobs only as token
  strings, so the engine asks ``/extras/tokenize`` for the tokens of ``prompt`` and of ``prompt + text``
  and takes the tail. It accepts the result only if (1) the prompt's tokens are a prefix of the whole's,
  (2) the tail has exactly ``usage.completion_tokens`` ids, and (3) ``/extras/detokenize`` of the tail
  gives back ``text``; otherwise it raises :class:`EngineError` rather than return ids the server may not
  have produced (possible when greedy output is not the canonical tokenization of its own text, or for
  empty prompts, refused up front). Two to three extra round trips of ~1-2 ms each.
``"vllm"`` — *ids from the server*. The request asks for ``return_token_ids`` (vLLM >= 0.10.2 returns
  ``choices[0].token_ids``) and ``logprobs=1`` with ``return_tokens_as_token_ids`` (older vLLM returns
  ``"token_id:N"`` strings); prompts may skip BOS via ``add_special_tokens``. vLLM counts the end-of-
  sequence token among the outputs, so when a choice stops on EOS (``finish_reason="stop"`` with no
  ``stop_reason``) its last id is dropped. *Not run in this repository's CI (no GPU)*.

Audits (:meth:`HttpEngine.score`, spec/verification.md §12): greedy claims on llama_cpp.server started
with ``logits_all`` (``ManagedServer(logits_all=True)``), through ``echo`` + ``logprobs``; the method's
docstring lists what that server cannot give and is refused.

Numerical class: the contract's ``backend`` is the HTTP backend name, never ``"llama.cpp"``: an attached
server's batch size, flash-attention and KV-cache type cannot be checked from outside, so its results are
compared only with results of the same backend and version.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import pathlib
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, Literal, Self, TypeVar

import httpx

from opengrid.core.audit import PositionEvidence
from opengrid.engines.base import (
    FinishReason,
    Generation,
    GenerationRequest,
    ModelInfo,
    ScoreRequest,
    Scoring,
)
from opengrid.errors import BadRequestError, EngineError, UnknownModelError, VerificationError
from opengrid.wire.contract import DecodingContract

__all__ = [
    "BACKENDS",
    "STOP_TOKEN_UNKNOWN",
    "HttpBackend",
    "HttpEngine",
    "ManagedServer",
    "free_loopback_port",
    "vllm_available",
]

log = logging.getLogger(__name__)

HttpBackend = Literal["llama.cpp-server", "vllm"]
BACKENDS: tuple[HttpBackend, ...] = ("llama.cpp-server", "vllm")

_UNKNOWN_VERSION = "unknown"
STOP_TOKEN_UNKNOWN = 2**32 - 1
"""The ``token`` of a stop position's evidence when the engine cannot name the end-of-generation id."""
_SCORE_TOP_K = 20
"""Top log-probabilities asked per position when scoring: bounds ranks and the stop position's gap."""
_T = TypeVar("_T")


class HttpEngine:
    """A model served over HTTP by llama_cpp.server or vLLM; implements :class:`Engine`.

    Construction checks that the server answers and serves the model (``GET /v1/models``), so a typo
    fails at start rather than on the first job. Calls are serialised by a lock, like
    :class:`~opengrid.engines.llama.LlamaEngine` (llama_cpp.server runs one request at a time anyway).
    """

    def __init__(
        self,
        base_url: str,
        model: ModelInfo | str,
        *,
        backend: HttpBackend = "llama.cpp-server",
        served_name: str | None = None,
        model_sha256: str | None = None,
        backend_version: str | None = None,
        api_key: str | None = None,
        timeout_s: float = 300.0,
        connect_timeout_s: float = 5.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        """Attach to the server at ``base_url`` (``http://127.0.0.1:8000``, with or without ``/v1``).

        ``model`` is the :class:`ModelInfo` of the file the server loaded, or the served model name
        (then ``model_sha256`` must name the weights: jobs identify models by hash, never by name).
        ``served_name`` is the server's id for the model (``GET /v1/models``); by default the only model
        the server lists, or the name given as ``model``. ``backend_version`` goes into the contract;
        by default vLLM's ``/version`` is asked, and llama_cpp.server (which has no such endpoint) is
        recorded as ``"unknown"``: pass the version when you know it (:class:`ManagedServer` does).
        ``timeout_s`` bounds one generation, ``connect_timeout_s`` a connection attempt.
        """
        if backend not in BACKENDS:
            raise EngineError(f"HTTP backend {backend!r} is not one of {', '.join(BACKENDS)}")
        if isinstance(model, str):
            if not model_sha256:
                raise EngineError(
                    f"the HTTP engine for served model {model!r} needs model_sha256= (the hex sha256 of "
                    "the weights): jobs name models by hash; pass a ModelInfo for a local GGUF instead"
                )
            served_name = served_name or model
            model = ModelInfo(name=model, path=pathlib.Path(model), sha256=model_sha256.lower())
        url = base_url.rstrip("/")
        if url.endswith("/v1"):
            url = url[: -len("/v1")]
        self._base_url = url
        self._backend: HttpBackend = backend
        self._model = model
        self._lock = threading.Lock()
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client: httpx.Client | None = httpx.Client(
            base_url=url,
            headers=headers,
            timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s),
            transport=transport,
            trust_env=False,  # a loopback server must not be reached through $HTTP_PROXY
        )
        try:
            served = self._served_models()
            self._served_name = _pick_served_name(served, served_name, model, url)
            if backend_version is None:
                backend_version = self._ask_version()
        except BaseException:
            self.close()
            raise
        self._contract = DecodingContract(
            model_sha256=model.sha256, backend=backend, backend_version=backend_version
        )
        self._adds_bos: bool | None = None

    @property
    def model(self) -> ModelInfo:
        """The model the server runs (for a served name: ``path`` is that name, not a file)."""
        return self._model

    @property
    def contract(self) -> DecodingContract:
        """Pinned greedy settings; ``backend`` is the HTTP backend name, so its class is its own."""
        return self._contract

    @property
    def base_url(self) -> str:
        """The server's root URL, without ``/v1``."""
        return self._base_url

    @property
    def served_name(self) -> str:
        """The ``model`` field sent with every request."""
        return self._served_name

    @property
    def backend(self) -> HttpBackend:
        return self._backend

    def generate(self, request: GenerationRequest) -> Generation:
        """Greedy completion over HTTP; blocking. Raises :class:`EngineError` on any failure.

        Greedy only: a server samples with its own RNG, which no auditor can recompute (spec §11), so a
        request with ``temperature > 0`` is refused with :class:`BadRequestError` (the worker answers
        ``malformed``: the client's request, not the worker's fault) rather than silently decoded greedily.
        """
        if request.max_tokens < 1:
            raise EngineError(f"max_tokens must be >= 1, got {request.max_tokens}")
        if not request.sampling.greedy:
            # The client's request, not the worker's failure: answered ``malformed``, never blamed on us.
            raise BadRequestError(
                f"this worker's HTTP engine ({self._backend}) decodes greedily only (temperature 0), got "
                f"temperature {request.sampling.temperature}: seeded sampling needs the job's own sampler "
                "(spec/verification.md §11), which only the in-process llama.cpp engine runs; send "
                "temperature 0, or use a network whose workers run the in-process engine"
            )
        with self._lock:
            if self._backend == "vllm":
                return self._generate_vllm(request)
            return self._generate_llama_server(request)

    def score(self, request: ScoreRequest) -> Scoring:
        """Audit a greedy claim with llama_cpp.server's ``echo`` + ``logprobs`` (spec §12); blocking.

        The server takes no token ids as a prompt, so the claimed tokens are sent as text and the engine
        first checks (``/extras/tokenize``) that prompt + text tokenizes to exactly prompt + claimed ids.
        One ``/v1/completions`` with ``echo=True, logprobs=K, max_tokens=1`` returns, per position, the
        claimed token's log-probability (by id) and the top K log-probabilities (keyed by token *text*):
        gap = best - claimed (log-probability differences are logit differences); rank counts the top K
        entries above the claimed one (at most K). A stopped claim's end-of-generation position has gap 0
        when the server's own next token ends generation, else the lower bound best - K-th.

        Limits (llama-cpp-python 0.3.36), each refused with :class:`EngineError` rather than guessed:
        sampled jobs (top tokens come without ids, so their Gumbel noise cannot be recomputed); models
        without a BOS token (the server aligns echoed log-probabilities one row off for them); claims whose
        text does not re-tokenize to the claimed ids; vLLM (not implemented here: its ``prompt_logprobs``
        with token ids would serve). Top entries whose texts collide keep one value, which can only
        understate a gap. The server sorts the whole vocabulary in Python per position: an audit costs
        far more than the generation it checks on large vocabularies.
        """
        if self._backend != "llama.cpp-server":
            raise EngineError(
                f"scoring over HTTP is implemented for llama_cpp.server only, not {self._backend}"
            )
        if not request.sampling.greedy:
            raise EngineError(
                "llama_cpp.server names its top log-probabilities by token text, not id, so a sampled "
                "claim's Gumbel noise cannot be recomputed; audit sampled jobs with the in-process engine"
            )
        if not request.tokens and not request.stopped:
            raise VerificationError("the claim has no tokens and did not stop: there is nothing to score")
        with self._lock:
            if not request.add_bos or not self._server_adds_bos():
                raise EngineError(
                    f"llama_cpp.server aligns echoed log-probabilities correctly only after a BOS token, and "
                    f"model {self._model.name!r} gets none here; audit with the in-process engine"
                )
            if request.prompt == "":
                raise EngineError("llama_cpp.server cannot score an empty prompt; use the in-process engine")
            text = self._detokenize(request.tokens) if request.tokens else ""
            if text is None:
                raise EngineError(
                    "the server could not detokenize the claimed tokens; use the in-process engine"
                )
            prompt_ids = self._tokenize(request.prompt)
            if self._tokenize(request.prompt + text) != prompt_ids + list(request.tokens):
                raise EngineError(
                    "the claimed tokens are not the canonical tokenization of their own text, and "
                    "llama_cpp.server takes prompts as text only; audit this claim with the in-process engine"
                )
            body = self._decoding_fields(GenerationRequest(prompt=request.prompt + text, max_tokens=1), 1)
            body |= {"echo": True, "logprobs": _SCORE_TOP_K}
            choice, _usage = self._complete(body)
        logprobs = choice.get("logprobs")
        if not isinstance(logprobs, dict):
            raise EngineError(f"llama_cpp.server answered without logprobs: {choice!r:.200}")
        claimed_lp = logprobs.get("token_logprobs")
        top = logprobs.get("top_logprobs")
        # Echoed rows: prompt tokens after BOS, then the claimed tokens, then the one generated token.
        first = len(prompt_ids) - 1
        n = len(request.tokens)
        if not isinstance(claimed_lp, list) or not isinstance(top, list) or len(top) < first + n + 1:
            raise EngineError(
                f"llama_cpp.server echoed {len(top) if isinstance(top, list) else 'no'} log-probability "
                f"rows, expected {first + n + 1}"
            )
        evidence = []
        for j, token in enumerate(request.tokens):
            lp = claimed_lp[first + j]
            values = top[first + j]
            if not isinstance(lp, float | int) or not isinstance(values, dict) or not values:
                raise EngineError(f"llama_cpp.server sent no log-probabilities for output position {j}")
            best = max(float(v) for v in values.values())
            evidence.append(
                PositionEvidence(
                    token=token,
                    logprob=float(lp),
                    gap=max(0.0, best - float(lp)),
                    rank=sum(float(v) > float(lp) for v in values.values()),
                    mask_margin=0.0,
                )
            )
        if request.stopped:
            evidence.append(self._stop_evidence(choice, top[first + n]))
        # The server scores the whole text in one request: a partial audit (``request.end``) saves nothing
        # here, and reports only its window so that its report agrees with the plan.
        return Scoring(evidence=tuple(evidence[: request.rows]), prompt_tokens=len(prompt_ids))

    @staticmethod
    def _stop_evidence(choice: Mapping[str, Any], values: object) -> PositionEvidence:
        if not isinstance(values, dict) or not values:
            raise EngineError("llama_cpp.server sent no log-probabilities for the end-of-generation position")
        ranked = sorted((float(v) for v in values.values()), reverse=True)
        if _finish_reason(choice) == "stop":
            # max_tokens=1 and no stop strings: the server's own greedy next token ended generation.
            return PositionEvidence(
                token=STOP_TOKEN_UNKNOWN, logprob=ranked[0], gap=0.0, rank=0, mask_margin=0.0
            )
        # The end-of-generation token is not the best; its value is unknown (texts of special tokens are
        # empty), so report what is certain: it is at most the K-th best.
        return PositionEvidence(
            token=STOP_TOKEN_UNKNOWN,
            logprob=ranked[-1],
            gap=ranked[0] - ranked[-1],
            rank=len(ranked),
            mask_margin=0.0,
        )

    def close(self) -> None:
        """Close the HTTP client (not the server); idempotent."""
        client, self._client = self._client, None
        if client is not None:
            client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "open" if self._client is not None else "closed"
        return (
            f"HttpEngine({self._backend}, {self._base_url}, served_name={self._served_name!r}, "
            f"sha256={self._model.sha256[:12]}…, {state})"
        )

    # -- the two backends -------------------------------------------------------------------------

    def _decoding_fields(self, request: GenerationRequest, max_tokens: int) -> dict[str, Any]:
        c = self._contract
        return {
            "model": self._served_name,
            "prompt": request.prompt,
            "max_tokens": max_tokens,
            "temperature": c.temperature,
            "top_k": c.top_k,
            "top_p": 1.0,
            "min_p": 0.0,
            "repeat_penalty": c.repeat_penalty,  # llama_cpp.server's name (its default is 1.1)
            "repetition_penalty": c.repeat_penalty,  # vLLM's name
            "frequency_penalty": 0.0,
            "presence_penalty": 0.0,
            "mirostat_mode": 0,
            "seed": c.seed,
            "n": 1,
            "echo": False,
            "stream": False,
            "stop": [],
        }

    def _generate_llama_server(self, request: GenerationRequest) -> Generation:
        if request.prompt == "":
            # llama_cpp.server completes an empty prompt from BOS alone, but the ids cannot be recovered:
            # SentencePiece re-tokenization of the bare text adds a leading-space token.
            raise EngineError(
                "llama_cpp.server cannot complete an empty prompt with recoverable token ids; send a "
                "non-empty prompt, or use the in-process llama.cpp engine"
            )
        if not request.add_bos and self._server_adds_bos():
            raise EngineError(
                f"model {self._model.name!r} gets a BOS token on every llama_cpp.server completion and the "
                "server cannot be told otherwise; send this prompt with add_bos=True, or use the "
                "in-process llama.cpp engine or vLLM for prompts that carry their own special tokens"
            )
        body = self._decoding_fields(request, request.max_tokens)
        body["logprobs"] = None  # logprobs carry no ids here, and need the server's logits_all
        choice, usage = self._complete(body)
        text = _field(choice, "text", str)
        finish_reason = _finish_reason(choice)
        n_completion = _field(usage, "completion_tokens", int)
        prompt_ids = self._tokenize(request.prompt)
        all_ids = self._tokenize(request.prompt + text)
        tokens = all_ids[len(prompt_ids) :]
        if all_ids[: len(prompt_ids)] != prompt_ids or len(tokens) != n_completion:
            raise EngineError(
                f"cannot recover the token ids of a llama_cpp.server completion: re-tokenizing its "
                f"{len(text)}-character text gives {len(tokens)} tokens after the prompt, the server "
                f"generated {n_completion}. Greedy output is not always the canonical tokenization of "
                "its own text; use the in-process engine (or vLLM, which returns ids) for this prompt"
            )
        if len(tokens) > request.max_tokens:
            # llama-cpp-python generates past max_tokens while the text ends in an incomplete UTF-8
            # character; the contract is max_tokens at most, like the in-process engine.
            tokens = tokens[: request.max_tokens]
            finish_reason = "length"
            cut = self._detokenize(tokens)
            if cut is None:
                raise EngineError(
                    f"llama_cpp.server generated past max_tokens={request.max_tokens} to finish a UTF-8 "
                    "character and the first max_tokens tokens end inside it; raise max_tokens by one or "
                    "use the in-process engine"
                )
            text = cut
        elif self._detokenize(tokens) != text:
            raise EngineError(
                "cannot recover the token ids of a llama_cpp.server completion: the re-tokenized ids do "
                "not detokenize to the server's text; use the in-process engine for this prompt"
            )
        return Generation(tokens=tuple(tokens), text=text, finish_reason=finish_reason)

    def _generate_vllm(self, request: GenerationRequest) -> Generation:
        body = self._decoding_fields(request, request.max_tokens)
        body |= {
            "logprobs": 1,
            "return_tokens_as_token_ids": True,
            "return_token_ids": True,
            "add_special_tokens": request.add_bos,
            "skip_special_tokens": True,
            "ignore_eos": False,
            "min_tokens": 0,
            "stop_token_ids": [],
        }
        choice, _usage = self._complete(body)
        text = _field(choice, "text", str)
        finish_reason = _finish_reason(choice)
        tokens = _vllm_token_ids(choice)
        if finish_reason == "stop" and choice.get("stop_reason") is None and tokens:
            tokens = tokens[:-1]  # vLLM counts the EOS token among the outputs; Generation does not
        if len(tokens) > request.max_tokens:
            raise EngineError(
                f"vLLM returned {len(tokens)} tokens for max_tokens={request.max_tokens}; refusing the result"
            )
        return Generation(tokens=tuple(tokens), text=text, finish_reason=finish_reason)

    # -- HTTP plumbing ----------------------------------------------------------------------------

    def _request(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        client = self._client
        if client is None:
            raise EngineError(f"the HTTP engine for {self._model.name!r} is closed; create a new one")
        what = f"{method} {self._base_url}{path}"
        try:
            response = client.request(method, path, json=body)
        except httpx.TimeoutException as exc:
            raise EngineError(
                f"{what} timed out ({type(exc).__name__}); the {self._backend} server is overloaded or "
                "stuck: raise the engine's timeout_s or check the server"
            ) from exc
        except httpx.TransportError as exc:
            raise EngineError(
                f"cannot reach the {self._backend} server: {what} failed ({type(exc).__name__}: {exc}); "
                "is it running at that address?"
            ) from exc
        if response.status_code != 200:
            detail = response.text[:300].strip()
            hint = " (check the API key)" if response.status_code in (401, 403) else ""
            raise EngineError(f"{what} answered HTTP {response.status_code}{hint}: {detail}")
        try:
            return response.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise EngineError(f"{what} answered something that is not JSON: {response.text[:200]!r}") from exc

    def _served_models(self) -> list[str]:
        listing = self._request("GET", "/v1/models")
        data = listing.get("data") if isinstance(listing, dict) else None
        if not isinstance(data, list):
            raise EngineError(f"{self._base_url}/v1/models answered without a 'data' list: {listing!r:.200}")
        return [str(m["id"]) for m in data if isinstance(m, dict) and "id" in m]

    def _ask_version(self) -> str:
        if self._backend != "vllm":
            return _UNKNOWN_VERSION
        try:
            answer = self._request("GET", "/version")
        except EngineError:
            return _UNKNOWN_VERSION
        version = answer.get("version") if isinstance(answer, dict) else None
        return str(version) if version else _UNKNOWN_VERSION

    def _complete(self, body: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        answer = self._request("POST", "/v1/completions", body)
        choices = answer.get("choices") if isinstance(answer, dict) else None
        usage = answer.get("usage") if isinstance(answer, dict) else None
        if not isinstance(choices, list) or len(choices) != 1 or not isinstance(choices[0], dict):
            raise EngineError(f"/v1/completions answered without exactly one choice: {answer!r:.300}")
        return choices[0], usage if isinstance(usage, dict) else {}

    def _tokenize(self, text: str) -> list[int]:
        answer = self._request("POST", "/extras/tokenize", {"input": text, "model": self._served_name})
        tokens = answer.get("tokens") if isinstance(answer, dict) else None
        if not isinstance(tokens, list) or not all(isinstance(t, int) for t in tokens):
            raise EngineError(f"/extras/tokenize answered without a list of ids: {answer!r:.200}")
        return tokens

    def _detokenize(self, tokens: Sequence[int]) -> str | None:
        try:
            answer = self._request(
                "POST", "/extras/detokenize", {"tokens": list(tokens), "model": self._served_name}
            )
        except EngineError:
            return None  # the server decodes strictly and fails on a cut UTF-8 character
        text = answer.get("text") if isinstance(answer, dict) else None
        return text if isinstance(text, str) else None

    def _server_adds_bos(self) -> bool:
        if self._adds_bos is None:
            self._adds_bos = bool(self._tokenize(""))
        return self._adds_bos


def _pick_served_name(served: list[str], wanted: str | None, model: ModelInfo, url: str) -> str:
    listed = ", ".join(repr(s) for s in served) or "none"
    if wanted is not None:
        if wanted not in served:
            raise UnknownModelError(
                f"the server at {url} does not serve model {wanted!r} (it serves: {listed}); pass one of "
                "those as the served name, or start the server with that model"
            )
        return wanted
    if model.name in served:
        return model.name
    if len(served) == 1:
        return served[0]
    raise UnknownModelError(
        f"the server at {url} serves {listed}; say which one is {model.name!r} with served_name="
    )


def _field(obj: Mapping[str, Any], key: str, kind: type[_T]) -> _T:
    value = obj.get(key)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise EngineError(f"the server's answer lacks {key!r} of type {kind.__name__}: {dict(obj)!r:.300}")
    return value


def _finish_reason(choice: Mapping[str, Any]) -> FinishReason:
    reason = choice.get("finish_reason")
    if reason == "stop":
        return "stop"
    if reason == "length":
        return "length"
    raise EngineError(f"the server finished with {reason!r}, expected 'stop' or 'length'")


def _vllm_token_ids(choice: Mapping[str, Any]) -> list[int]:
    ids = choice.get("token_ids")
    if isinstance(ids, list) and all(isinstance(t, int) for t in ids):
        return list(ids)
    logprobs = choice.get("logprobs")
    strings = logprobs.get("tokens") if isinstance(logprobs, dict) else None
    if isinstance(strings, list):
        out = []
        for s in strings:
            if not (isinstance(s, str) and s.startswith("token_id:") and s[9:].isdigit()):
                break
            out.append(int(s[9:]))
        else:
            return out
    raise EngineError(
        "vLLM returned no token ids (neither choices[0].token_ids nor 'token_id:N' logprobs); "
        "use vLLM >= 0.5 with the OpenAI-compatible server"
    )


# -- managed servers ------------------------------------------------------------------------------


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def vllm_available() -> bool:
    """Whether ``vllm`` can be imported in this interpreter (without importing it: that takes seconds)."""
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


_live_servers: weakref.WeakSet[ManagedServer] = weakref.WeakSet()
_atexit_registered = False


def _track(server: ManagedServer) -> None:
    """Remember a running server so that interpreter exit stops it (registered on first use)."""
    global _atexit_registered
    if not _atexit_registered:
        atexit.register(_stop_all_at_exit)
        _atexit_registered = True
    _live_servers.add(server)


def _stop_all_at_exit() -> None:
    for server in list(_live_servers):
        server.stop()


class ManagedServer:
    """An OpenAI-compatible server run as a child process on a free 127.0.0.1 port.

    Use it as a context manager: ``start()`` launches ``python -m llama_cpp.server`` (or ``vllm serve``)
    and waits until ``GET /v1/models`` answers; ``stop()`` terminates it (SIGTERM, then SIGKILL after
    ``stop_timeout_s``). The child runs in its own process group so a Ctrl-C at the terminal reaches the
    node first, and an ``atexit`` hook stops servers the program forgot; on Linux the child also gets
    SIGKILL if this process dies (``PR_SET_PDEATHSIG``), so it is never orphaned.

    llama_cpp.server is started with the contract's settings pinned on its command line (n_batch 512,
    flash attention off, f16 KV cache, logits_all off as in-process), so its tokens match the in-process
    engine's on the models measured (see the engine tests).
    """

    def __init__(
        self,
        model: ModelInfo,
        *,
        backend: HttpBackend | None = None,
        n_ctx: int = 2048,
        n_threads: int | None = None,
        gpu_layers: int = 0,
        ready_timeout_s: float = 60.0,
        stop_timeout_s: float = 5.0,
        log_path: pathlib.Path | None = None,
        extra_args: Sequence[str] = (),
        logits_all: bool = False,
    ) -> None:
        """Prepare (not start) a server for ``model``.

        ``backend`` None picks vLLM when it is importable, else llama_cpp.server. ``log_path`` receives
        the server's stdout and stderr (default: discarded). ``ready_timeout_s`` bounds start-up.
        ``logits_all`` keeps every row's logits in llama_cpp.server, which ``echo`` + ``logprobs`` (and so
        :meth:`HttpEngine.score`) need; off by default, as it costs memory (n_ctx x vocabulary floats).
        """
        if backend is None:
            backend = "vllm" if vllm_available() else "llama.cpp-server"
        if backend not in BACKENDS:
            raise EngineError(f"HTTP backend {backend!r} is not one of {', '.join(BACKENDS)}")
        self._model = model
        self._backend: HttpBackend = backend
        self._n_ctx = n_ctx
        self._n_threads = n_threads
        self._gpu_layers = gpu_layers
        self._ready_timeout_s = ready_timeout_s
        self._stop_timeout_s = stop_timeout_s
        self._log_path = log_path
        self._extra_args = tuple(extra_args)
        self._logits_all = logits_all
        self._process: subprocess.Popen[bytes] | None = None
        self._port: int | None = None
        self.ready_after_s: float | None = None
        """Seconds from launch until ``/v1/models`` answered (set by ``start``)."""

    @property
    def backend(self) -> HttpBackend:
        return self._backend

    @property
    def served_name(self) -> str:
        """The model id the server is told to use (``--model_alias`` / ``--served-model-name``)."""
        return self._model.name

    @property
    def base_url(self) -> str:
        if self._port is None:
            raise EngineError(
                "the managed server is not started; call start() or use it as a context manager"
            )
        return f"http://127.0.0.1:{self._port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def backend_version(self) -> str:
        """The server's package version, from this interpreter's installed distribution."""
        from importlib import metadata

        dist = "vllm" if self._backend == "vllm" else "llama_cpp_python"
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return _UNKNOWN_VERSION

    def command(self, port: int) -> list[str]:
        """The command line that starts the server on ``port``."""
        m = self._model
        if self._backend == "vllm":
            cmd = [
                sys.executable, "-m", "vllm.entrypoints.openai.api_server",
                "--model", str(m.path), "--served-model-name", m.name,
                "--host", "127.0.0.1", "--port", str(port),
                "--max-model-len", str(self._n_ctx), "--seed", "0",
                "--generation-config", "vllm",  # ignore the model's generation_config.json defaults
            ]  # fmt: skip
        else:
            cmd = [
                sys.executable, "-m", "llama_cpp.server",
                "--model", str(m.path), "--model_alias", m.name,
                "--host", "127.0.0.1", "--port", str(port),
                "--n_ctx", str(self._n_ctx), "--n_batch", "512", "--n_ubatch", "512",
                "--n_gpu_layers", str(self._gpu_layers), "--flash_attn", "false",
                "--logits_all", "true" if self._logits_all else "false",
                "--cache", "false", "--seed", "0", "--verbose", "false",
            ]  # fmt: skip
            if self._n_threads is not None:
                cmd += ["--n_threads", str(self._n_threads), "--n_threads_batch", str(self._n_threads)]
        return [*cmd, *self._extra_args]

    def start(self) -> Self:
        """Launch the server and wait until it answers; raises :class:`EngineError` if it does not."""
        if self._process is not None:
            raise EngineError("the managed server is already started")
        port = free_loopback_port()
        cmd = self.command(port)
        out: Any = subprocess.DEVNULL
        if self._log_path is not None:
            self._log_path.parent.mkdir(parents=True, exist_ok=True)
            out = self._log_path.open("ab")
        # pydantic-settings reads MODEL, PORT, N_CTX... from the environment: drop those that could
        # contradict the command line.
        env = {k: v for k, v in os.environ.items() if k.upper() not in _SERVER_ENV_KEYS}
        started = time.monotonic()
        try:
            self._process = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT if self._log_path is not None else subprocess.DEVNULL,
                env=env,
                start_new_session=True,
                # PDEATHSIG fires when the *thread* that forked exits, so only the main thread uses it.
                preexec_fn=_die_with_parent if _pdeathsig_usable() else None,
            )
        except OSError as exc:
            raise EngineError(f"could not start {cmd[0]} {' '.join(cmd[1:3])}: {exc}") from exc
        finally:
            if out is not subprocess.DEVNULL:
                out.close()
        self._port = port
        _track(self)
        try:
            self._wait_ready(started)
        except BaseException:
            self.stop()
            raise
        self.ready_after_s = time.monotonic() - started
        log.info("%s for %s ready at %s after %.2f s", self._backend, self._model.name, self.base_url,
                 self.ready_after_s)  # fmt: skip
        return self

    def engine(self, **kwargs: Any) -> HttpEngine:
        """An :class:`HttpEngine` on this server (keyword arguments go to its constructor)."""
        kwargs.setdefault("backend_version", self.backend_version)
        return HttpEngine(
            self.base_url, self._model, backend=self._backend, served_name=self.served_name, **kwargs
        )

    def stop(self) -> None:
        """Terminate the server (SIGTERM, SIGKILL after ``stop_timeout_s``) and reap it; idempotent."""
        process, self._process = self._process, None
        _live_servers.discard(self)
        if process is None:
            return
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(self._stop_timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        else:
            # The server is gone, but helpers it started in its group may not be.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = f"http://127.0.0.1:{self._port}" if self._port is not None else "not started"
        return f"ManagedServer({self._backend}, {self._model.name!r}, {where}, pid={self.pid})"

    def _wait_ready(self, started: float) -> None:
        deadline = started + self._ready_timeout_s
        url = f"{self.base_url}/v1/models"
        delay = 0.02
        with httpx.Client(timeout=httpx.Timeout(2.0), trust_env=False) as client:
            while True:
                process = self._process
                if process is None or process.poll() is not None:
                    code = process.returncode if process is not None else None
                    raise EngineError(
                        f"the {self._backend} server for {self._model.name!r} exited with code {code} "
                        f"before it was ready; run `{' '.join(self.command(self._port or 0))}` by hand "
                        "to see why" + (f" or read {self._log_path}" if self._log_path else "")
                    )
                try:
                    if client.get(url).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() >= deadline:
                    raise EngineError(
                        f"the {self._backend} server for {self._model.name!r} did not answer {url} within "
                        f"{self._ready_timeout_s:g} s; raise ready_timeout_s for large models"
                    )
                time.sleep(delay)  # polling a child process: there is no event to wait for
                delay = min(delay * 1.5, 0.25)


_SERVER_ENV_KEYS = frozenset(
    {"MODEL", "MODEL_ALIAS", "HOST", "PORT", "N_CTX", "N_BATCH", "N_UBATCH", "N_GPU_LAYERS", "FLASH_ATTN",
     "LOGITS_ALL", "CACHE", "SEED", "TYPE_K", "TYPE_V", "CONFIG_FILE", "API_KEY", "CHAT_FORMAT",
     "N_THREADS", "N_THREADS_BATCH", "VERBOSE", "ROOT_PATH"}
)  # fmt: skip


def _pdeathsig_usable() -> bool:
    return sys.platform == "linux" and threading.current_thread() is threading.main_thread()


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux to SIGKILL it when its parent dies."""
    import ctypes

    pr_set_pdeathsig = 1
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)

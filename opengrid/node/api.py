"""The OpenAI-compatible HTTP API a node serves (``opengrid node start --api 127.0.0.1:9337``).

Existing tools (the ``openai`` package, anything that speaks ``/v1/completions`` and
``/v1/chat/completions``) use OpenGrid unchanged: every request becomes a verified OpenGrid job, and the
response carries the job id, the agreeing workers and the signed receipt in an ``opengrid`` extension field
and ``X-OpenGrid-*`` headers.

What differs from OpenAI, on purpose (documented in OpenGrid.md and spec/api.md):
- decoding is **greedy unless the request sets** ``temperature`` > 0 (OpenAI's default is 1.0): an absent
  or null ``temperature`` keeps the deterministic default, the same answer for the same prompt. With
  ``temperature`` > 0 (at most 10), ``top_p`` and ``seed`` (and ``top_k``, an extension) the job samples
  by Gumbel-max with noise fixed by the job's fresh id and the seed (spec/verification.md §11), verified
  like greedy output; the same ``seed`` on another request is another sample, not a repeat. Out-of-range
  values answer 400. The ``opengrid`` extension field says ``"decoding": "greedy"`` or ``"sampled"``;
- ``stream: true`` streams the answer once its replicas agree (never unverified text);
- ``stop`` is applied to the verified text (the receipt still covers the whole generation).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol

import msgspec
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from opengrid.core.audit import SamplingParams
from opengrid.errors import ConfigError, TemplateError
from opengrid.node.chat_template import TemplateRenderer
from opengrid.wire.contract import sampling_problem
from opengrid.wire.messages import MAX_REPLICAS, MAX_TOKENS_LIMIT, ErrorReply, JobAccepted, ModelOffer

log = logging.getLogger("opengrid.api")
DEFAULT_API_ADDRESS = "127.0.0.1:9337"
_LOOPBACK = ("127.", "localhost", "[::1]", "::1")

JobFormat = Literal["text", "chat"]

MAX_BODY_BYTES: Final = 1024 * 1024
"""Largest request body: refused by its Content-Length before reading, and a chunked body is read with a
running count and refused as soon as it passes this (413 either way)."""
MAX_TEMPLATES_TRIED: Final = 3
"""Distinct chat templates (from different workers' offers of one model) tried for one chat request."""


@dataclass(frozen=True)
class ApiSettings:
    """Where and how a node serves the API."""

    address: str = DEFAULT_API_ADDRESS
    api_key: str | None = None
    allow_remote: bool = False


class ApiBackend(Protocol):
    """What the API needs from its node: the models on offer and a way to run a verified job."""

    def api_models(self) -> list[ModelOffer]: ...

    def api_submit(
        self,
        *,
        prompt: str,
        model: str,
        max_tokens: int,
        replicas: int,
        format: JobFormat,
        client: str,
        sampling: SamplingParams = ...,
    ) -> Awaitable[JobAccepted | ErrorReply]:
        """Run one verified job for ``client``: the API user's identity (``api_client``), which the
        coordinator queues fairly against every other client. ``sampling``: greedy by default."""
        ...


class _CompletionBody(msgspec.Struct, forbid_unknown_fields=False):
    model: str
    prompt: str | list[str] = ""
    max_tokens: int | None = None
    temperature: float | None = None
    """Absent or null: 0, greedy (OpenAI's default is 1.0; ours is the deterministic one)."""
    top_p: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    n: int = 1
    replicas: int = 2
    """OpenGrid extension: how many workers must run (and agree on) the job."""
    top_k: int | None = None
    """OpenGrid extension (as llama.cpp's and vLLM's servers take it): 0 or absent keeps every token."""


class _ChatMessage(msgspec.Struct, forbid_unknown_fields=False):
    role: str
    content: str


class _ChatBody(msgspec.Struct, forbid_unknown_fields=False):
    model: str
    messages: list[_ChatMessage]
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    n: int = 1
    replicas: int = 2
    top_k: int | None = None


class ApiError(Exception):
    """An error answered as OpenAI-shaped JSON with an HTTP status."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.type = type
        self.code = code
        self.param = param
        """The request field at fault, as OpenAI names it (``temperature``), or None."""

    def response(self) -> JSONResponse:
        body = {"error": {"message": str(self), "type": self.type, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status)


# OpenGrid error code -> (HTTP status, OpenAI error type)
_STATUS: dict[str, tuple[int, str]] = {
    "malformed": (400, "invalid_request_error"),
    "unknown_model": (404, "invalid_request_error"),
    "no_capacity": (503, "server_error"),
    "busy": (503, "server_error"),
    "verification_failed": (502, "server_error"),
    "engine_error": (502, "server_error"),
    "not_coordinator": (502, "server_error"),
    "internal": (500, "server_error"),
    # The node pays its API's jobs from its own account (Node.api_submit); OpenAI answers 402 the same way
    # when an account cannot pay.
    "payment_required": (402, "insufficient_quota"),
    "grant_refused": (402, "insufficient_quota"),
}


@dataclass(frozen=True)
class _Outcome:
    job: JobAccepted
    text: str
    finish_reason: str
    sampling: SamplingParams


def check_bind(address: str, *, allow_remote: bool) -> tuple[str, int]:
    """Parse ``HOST:PORT``; refuse a non-loopback host unless ``allow_remote`` (the API has no TLS)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"--api {address!r} must be HOST:PORT, e.g. {DEFAULT_API_ADDRESS}")
    if not host.startswith(_LOOPBACK) and not allow_remote:
        raise ConfigError(
            f"--api {address} is not a loopback address; the API speaks plain HTTP, so it binds to 127.0.0.1 "
            "unless you pass --api-allow-remote (and then set --api-key)"
        )
    return host, int(port)


def api_client(request: Request) -> str:
    """Who an API request comes from, for fair queueing: ``api:<remote host>``, plus a hash of the bearer
    token when one is sent. Each is a separate client of the coordinator's queue (per-client cap and
    round robin), so one flooding user cannot take every queue slot from the others. Without API keys the
    remote address is all there is; behind a reverse proxy every user shares the proxy's address."""
    host = request.client.host if request.client is not None else "unknown"
    token = request.headers.get("authorization", "")
    if token:
        return f"api:{host}:{hashlib.sha256(token.encode()).hexdigest()[:12]}"
    return f"api:{host}"


def build_app(
    backend: ApiBackend, *, api_key: str | None = None, renderer: TemplateRenderer | None = None
) -> Starlette:
    """The Starlette app serving ``/v1/models``, ``/v1/completions`` and ``/v1/chat/completions``.

    ``renderer`` renders workers' chat templates (a fresh ``TemplateRenderer`` if None; its child
    processes are killed when the app shuts down)."""
    templates = renderer or TemplateRenderer()

    def guarded(
        handler: Callable[[Request], Awaitable[Response]],
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            if api_key is not None and request.headers.get("authorization") != f"Bearer {api_key}":
                return ApiError(
                    401,
                    "missing or wrong API key (Authorization: Bearer ...)",
                    type="authentication_error",
                    code="invalid_api_key",
                ).response()
            try:
                return await handler(request)
            except ApiError as exc:
                return exc.response()

        return endpoint

    async def models(_: Request) -> Response:
        now = int(time.time())
        names = sorted({offer.name for offer in backend.api_models()})
        data = [{"id": name, "object": "model", "created": now, "owned_by": "opengrid"} for name in names]
        return JSONResponse({"object": "list", "data": data})

    async def completions(request: Request) -> Response:
        body = await _decode(request, _CompletionBody)
        prompt = _single_prompt(body.prompt)
        _check_n(body.n)
        sampling = _sampling(body.temperature, body.top_p, body.top_k, body.seed)
        outcome = await _run(
            backend,
            prompt,
            body.model,
            16 if body.max_tokens is None else body.max_tokens,
            body.replicas,
            body.stop,
            "text",
            api_client(request),
            sampling,
        )
        job_id = f"cmpl-{outcome.job.job_id.hex()}"
        created = int(time.time())
        if body.stream:
            chunks = [
                {"text": outcome.text, "index": 0, "logprobs": None, "finish_reason": None},
                {"text": "", "index": 0, "logprobs": None, "finish_reason": outcome.finish_reason},
            ]
            events = [
                {
                    "id": job_id,
                    "object": "text_completion",
                    "created": created,
                    "model": body.model,
                    "choices": [choice],
                }
                for choice in chunks
            ]
            return _sse(events, outcome)
        return _json(
            {
                "id": job_id,
                "object": "text_completion",
                "created": created,
                "model": body.model,
                "choices": [
                    {
                        "text": outcome.text,
                        "index": 0,
                        "logprobs": None,
                        "finish_reason": outcome.finish_reason,
                    }
                ],
                "usage": _usage(outcome),
                "opengrid": _extension(outcome),
            },
            outcome,
        )

    async def chat(request: Request) -> Response:
        body = await _decode(request, _ChatBody)
        _check_n(body.n)
        sampling = _sampling(body.temperature, body.top_p, body.top_k, body.seed)
        if not body.messages:
            raise ApiError(400, "messages must not be empty")
        prompt = await _format_chat(templates, backend.api_models(), body.model, body.messages)
        max_tokens = next((n for n in (body.max_completion_tokens, body.max_tokens) if n is not None), 256)
        outcome = await _run(
            backend,
            prompt,
            body.model,
            max_tokens,
            body.replicas,
            body.stop,
            "chat",
            api_client(request),
            sampling,
        )
        job_id = f"chatcmpl-{outcome.job.job_id.hex()}"
        created = int(time.time())
        if body.stream:
            deltas = [
                ({"role": "assistant", "content": ""}, None),
                ({"content": outcome.text}, None),
                ({}, outcome.finish_reason),
            ]
            events = [
                {
                    "id": job_id,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": body.model,
                    "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
                }
                for delta, finish in deltas
            ]
            return _sse(events, outcome)
        return _json(
            {
                "id": job_id,
                "object": "chat.completion",
                "created": created,
                "model": body.model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": outcome.text},
                        "logprobs": None,
                        "finish_reason": outcome.finish_reason,
                    }
                ],
                "usage": _usage(outcome),
                "opengrid": _extension(outcome),
            },
            outcome,
        )

    async def http_error(request: Request, exc: Exception) -> Response:
        # Unknown paths and wrong methods answer OpenAI-shaped JSON, like every other error here.
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        if status == 404:
            message, code = (
                f"no such endpoint: {request.url.path}; this API serves /v1/models, "
                "/v1/completions and /v1/chat/completions",
                "unknown_url",
            )
        elif status == 405:
            message, code = f"{request.method} is not allowed on {request.url.path}", "method_not_allowed"
        else:
            message, code = str(getattr(exc, "detail", exc)), None
        response = ApiError(status, message, code=code).response()
        response.headers.update(getattr(exc, "headers", None) or {})  # 405's Allow
        return response

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await templates.aclose()

    return Starlette(
        routes=[
            Route("/v1/models", guarded(models), methods=["GET"]),
            Route("/v1/completions", guarded(completions), methods=["POST"]),
            Route("/v1/chat/completions", guarded(chat), methods=["POST"]),
        ],
        exception_handlers={HTTPException: http_error},
        lifespan=lifespan,
    )


async def _read_body(request: Request) -> bytes:
    """The request body, at most ``MAX_BODY_BYTES``: refused by its Content-Length before reading any of
    it, and a body without one (chunked) is refused as soon as what arrived passes the limit."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise ApiError(400, f"Content-Length {declared[:32]!r} is not a number")
        if int(declared) > MAX_BODY_BYTES:
            raise ApiError(
                413,
                f"request body of {int(declared)} bytes is over the {MAX_BODY_BYTES}-byte limit; "
                "send a shorter prompt",
                code="request_too_large",
            )
    chunks: list[bytes] = []
    size = 0
    async with contextlib.aclosing(request.stream()) as stream:
        async for chunk in stream:
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise ApiError(
                    413,
                    f"request body is over the {MAX_BODY_BYTES}-byte limit; send a shorter prompt",
                    code="request_too_large",
                )
            chunks.append(chunk)
    return b"".join(chunks)


async def _decode(request: Request, kind: type[Any]) -> Any:
    raw = await _read_body(request)
    try:
        return msgspec.json.decode(raw, type=kind)
    except msgspec.DecodeError as exc:
        raise ApiError(400, f"invalid request body: {exc}") from exc


def _single_prompt(prompt: str | list[str]) -> str:
    if isinstance(prompt, str):
        return prompt
    if len(prompt) == 1:
        return prompt[0]
    raise ApiError(400, "send one prompt per request (a list of several prompts is not supported)")


def _sampling(
    temperature: float | None, top_p: float | None, top_k: int | None, seed: int | None
) -> SamplingParams:
    """The job's sampler from a request's fields: absent (or null) ``temperature`` is 0, greedy, the
    deterministic default (OpenAI's is 1.0); absent ``top_p`` 1, ``top_k`` 0 and ``seed`` 0 switch
    nothing off or on. Out of range: 400 naming the field (``param``), as OpenAI answers."""
    values = {
        "temperature": 0.0 if temperature is None else temperature,
        "top_k": 0 if top_k is None else top_k,
        "top_p": 1.0 if top_p is None else top_p,
        "seed": 0 if seed is None else seed,
    }
    problem = sampling_problem(**values)
    if problem:
        raise ApiError(400, problem, param=problem.split(" ", 1)[0])
    return SamplingParams(
        temperature=float(values["temperature"]),
        top_k=int(values["top_k"]),
        top_p=float(values["top_p"]),
        seed=int(values["seed"]),
    )


def _check_n(n: int) -> None:
    if n != 1:
        raise ApiError(400, "n must be 1: OpenGrid returns the one verified answer")


def _offers_for(offers: Sequence[ModelOffer], model: str) -> list[ModelOffer]:
    wanted = model.lower()
    found = [o for o in offers if wanted in (o.name.lower(), o.contract.model_sha256.lower())]
    if not found:
        served = ", ".join(sorted({o.name for o in offers})) or "none yet"
        raise ApiError(404, f"no worker serves model {model!r}; served: {served}", code="model_not_found")
    return found


async def _format_chat(
    templates: TemplateRenderer, offers: Sequence[ModelOffer], model: str, messages: Sequence[_ChatMessage]
) -> str:
    """Render the model's own chat template, as llama.cpp's chat completion does, in ``templates``'
    sandboxed child processes (a worker announced the template: untrusted code). A template found bad
    (too slow, too large, broken) is skipped from then on, and the next worker's template of the same
    model is tried."""
    found = _offers_for(offers, model)
    candidates: dict[str, ModelOffer] = {}
    for offer in found:
        if offer.chat_template and offer.chat_template not in candidates:
            candidates[offer.chat_template] = offer
    if not candidates:
        raise ApiError(400, f"model {found[0].name!r} has no chat template; use /v1/completions")
    rendered = [{"role": m.role, "content": m.content} for m in messages]
    problems: list[str] = []
    for template, offer in list(candidates.items())[:MAX_TEMPLATES_TRIED]:
        known = templates.is_bad(template)
        if known:
            problems.append(f"found bad before: {known}")
            continue
        try:
            return await templates.render(
                template, rendered, bos_token=offer.bos_token, eos_token=offer.eos_token
            )
        except TemplateError as exc:
            if exc.fault == "client":
                raise ApiError(400, str(exc)) from exc
            if exc.fault == "node":
                raise ApiError(500, str(exc), type="server_error", code="internal") from exc
            problems.append(str(exc))
    raise ApiError(
        502,
        f"the chat template the workers serving {model!r} announced cannot be used ({'; '.join(problems)}); "
        "use /v1/completions with your own formatting, or wait for another worker",
        type="server_error",
        code="bad_chat_template",
    )


async def _run(
    backend: ApiBackend,
    prompt: str,
    model: str,
    max_tokens: int,
    replicas: int,
    stop: str | list[str] | None,
    format: JobFormat,
    client: str,
    sampling: SamplingParams,
) -> _Outcome:
    if not 1 <= max_tokens <= MAX_TOKENS_LIMIT:
        raise ApiError(400, f"max_tokens must be 1..{MAX_TOKENS_LIMIT}, got {max_tokens}")
    if not 1 <= replicas <= MAX_REPLICAS:
        raise ApiError(400, f"replicas must be 1..{MAX_REPLICAS}, got {replicas}")
    reply = await backend.api_submit(
        prompt=prompt,
        model=model,
        max_tokens=max_tokens,
        replicas=replicas,
        format=format,
        client=client,
        sampling=sampling,
    )
    if isinstance(reply, ErrorReply):
        status, kind = _STATUS.get(reply.code, (500, "server_error"))
        code = "model_not_found" if reply.code == "unknown_model" else reply.code
        raise ApiError(status, reply.message, type=kind, code=code)
    text, finish = reply.text, reply.finish_reason
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    cut = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=-1)
    if cut >= 0:
        text, finish = text[:cut], "stop"
    return _Outcome(job=reply, text=text, finish_reason=finish, sampling=sampling)


def _usage(outcome: _Outcome) -> dict[str, int]:
    # Workers do not report prompt token counts yet; completion tokens are the verified ones.
    n = len(outcome.job.tokens)
    return {"prompt_tokens": 0, "completion_tokens": n, "total_tokens": n}


def _extension(outcome: _Outcome) -> dict[str, Any]:
    job = outcome.job
    return {
        "job_id": job.job_id.hex(),
        "verified": True,
        **_decoding(outcome.sampling),
        "workers": job.workers,
        "dissenters": job.dissenters,
        "receipt": job.receipt.hex(),
        "tokens": job.tokens,
    }


def _decoding(sampling: SamplingParams) -> dict[str, Any]:
    """How the answer was decoded, for the ``opengrid`` extension field."""
    if sampling.greedy:
        return {"decoding": "greedy"}
    settings = {"temperature": sampling.temperature, "top_k": sampling.top_k, "top_p": sampling.top_p}
    return {"decoding": "sampled", "sampling": {**settings, "seed": sampling.seed}}


def _headers(outcome: _Outcome) -> dict[str, str]:
    return {
        "X-OpenGrid-Job-Id": outcome.job.job_id.hex(),
        "X-OpenGrid-Verified": "true",
        "X-OpenGrid-Workers": ",".join(outcome.job.workers),
    }


def _json(body: dict[str, Any], outcome: _Outcome) -> JSONResponse:
    return JSONResponse(body, headers=_headers(outcome))


def _sse(events: list[dict[str, Any]], outcome: _Outcome) -> StreamingResponse:
    events[-1]["opengrid"] = _extension(outcome)

    async def stream() -> AsyncIterator[str]:
        for event in events:
            yield f"data: {json.dumps(event)}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(stream(), media_type="text/event-stream", headers=_headers(outcome))

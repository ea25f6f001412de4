"""The OpenAI-compatible HTTP API a node serves (``opengrid node start --api 127.0.0.1:9337``).

Existing tools (the ``openai`` package, anything that speaks ``/v1/completions`` and
``/v1/chat/completions``) use OpenGrid unchanged: every request becomes a verified OpenGrid job, and the
response carries the job id, the agreeing workers and the signed receipt in an ``opengrid`` extension field
and ``X-OpenGrid-*`` headers.

What differs from OpenAI, on purpose (documented in OpenGrid.md):
- decoding is greedy whatever ``temperature``/``seed`` say: only deterministic outputs can be verified by
  comparing replicas today (seeded sampling is planned); the response says ``"decoding": "greedy"``;
- ``stream: true`` streams the answer once its replicas agree (never unverified text);
- ``stop`` is applied to the verified text (the receipt still covers the whole generation).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from opengrid.errors import ConfigError
from opengrid.wire.messages import MAX_REPLICAS, MAX_TOKENS_LIMIT, ErrorReply, JobAccepted, ModelOffer

log = logging.getLogger("opengrid.api")
DEFAULT_API_ADDRESS = "127.0.0.1:9337"
_LOOPBACK = ("127.", "localhost", "[::1]", "::1")

JobFormat = Literal["text", "chat"]


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
        self, *, prompt: str, model: str, max_tokens: int, replicas: int, format: JobFormat
    ) -> Awaitable[JobAccepted | ErrorReply]: ...


class _CompletionBody(msgspec.Struct, forbid_unknown_fields=False):
    model: str
    prompt: str | list[str] = ""
    max_tokens: int | None = None
    temperature: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    n: int = 1
    replicas: int = 2
    """OpenGrid extension: how many workers must run (and agree on) the job."""


class _ChatMessage(msgspec.Struct, forbid_unknown_fields=False):
    role: str
    content: str


class _ChatBody(msgspec.Struct, forbid_unknown_fields=False):
    model: str
    messages: list[_ChatMessage]
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    n: int = 1
    replicas: int = 2


class ApiError(Exception):
    """An error answered as OpenAI-shaped JSON with an HTTP status."""

    def __init__(
        self, status: int, message: str, *, type: str = "invalid_request_error", code: str | None = None
    ):
        super().__init__(message)
        self.status = status
        self.type = type
        self.code = code

    def response(self) -> JSONResponse:
        body = {"error": {"message": str(self), "type": self.type, "param": None, "code": self.code}}
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


def build_app(backend: ApiBackend, *, api_key: str | None = None) -> Starlette:
    """The Starlette app serving ``/v1/models``, ``/v1/completions`` and ``/v1/chat/completions``."""

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
        outcome = await _run(
            backend,
            prompt,
            body.model,
            16 if body.max_tokens is None else body.max_tokens,
            body.replicas,
            body.stop,
            "text",
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
        if not body.messages:
            raise ApiError(400, "messages must not be empty")
        offer = _offer_for(backend.api_models(), body.model)
        prompt = _format_chat(offer, body.messages)
        max_tokens = next((n for n in (body.max_completion_tokens, body.max_tokens) if n is not None), 256)
        outcome = await _run(backend, prompt, body.model, max_tokens, body.replicas, body.stop, "chat")
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

    return Starlette(
        routes=[
            Route("/v1/models", guarded(models), methods=["GET"]),
            Route("/v1/completions", guarded(completions), methods=["POST"]),
            Route("/v1/chat/completions", guarded(chat), methods=["POST"]),
        ]
    )


async def _decode(request: Request, kind: type[Any]) -> Any:
    raw = await request.body()
    if len(raw) > 1024 * 1024:
        raise ApiError(413, "request body over 1 MiB")
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


def _check_n(n: int) -> None:
    if n != 1:
        raise ApiError(400, "n must be 1: OpenGrid returns the one verified answer")


def _offer_for(offers: Sequence[ModelOffer], model: str) -> ModelOffer:
    wanted = model.lower()
    for offer in offers:
        if wanted in (offer.name.lower(), offer.contract.model_sha256.lower()):
            return offer
    served = ", ".join(sorted({o.name for o in offers})) or "none yet"
    raise ApiError(404, f"no worker serves model {model!r}; served: {served}", code="model_not_found")


def _format_chat(offer: ModelOffer, messages: Sequence[_ChatMessage]) -> str:
    """Render the model's own chat template, exactly as llama.cpp's chat completion does."""
    if not offer.chat_template:
        raise ApiError(400, f"model {offer.name!r} has no chat template; use /v1/completions")
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    formatter = Jinja2ChatFormatter(offer.chat_template, eos_token=offer.eos_token, bos_token=offer.bos_token)
    try:
        result = formatter(messages=[{"role": m.role, "content": m.content} for m in messages])  # type: ignore[misc]
    except Exception as exc:  # the template may raise on roles it does not support
        raise ApiError(400, f"the model's chat template refused these messages: {exc}") from exc
    return str(result.prompt)


async def _run(
    backend: ApiBackend,
    prompt: str,
    model: str,
    max_tokens: int,
    replicas: int,
    stop: str | list[str] | None,
    format: JobFormat,
) -> _Outcome:
    if not 1 <= max_tokens <= MAX_TOKENS_LIMIT:
        raise ApiError(400, f"max_tokens must be 1..{MAX_TOKENS_LIMIT}, got {max_tokens}")
    if not 1 <= replicas <= MAX_REPLICAS:
        raise ApiError(400, f"replicas must be 1..{MAX_REPLICAS}, got {replicas}")
    reply = await backend.api_submit(
        prompt=prompt, model=model, max_tokens=max_tokens, replicas=replicas, format=format
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
    return _Outcome(job=reply, text=text, finish_reason=finish)


def _usage(outcome: _Outcome) -> dict[str, int]:
    # Workers do not report prompt token counts yet; completion tokens are the verified ones.
    n = len(outcome.job.tokens)
    return {"prompt_tokens": 0, "completion_tokens": n, "total_tokens": n}


def _extension(outcome: _Outcome) -> dict[str, Any]:
    job = outcome.job
    return {
        "job_id": job.job_id.hex(),
        "verified": True,
        "decoding": "greedy",
        "workers": job.workers,
        "dissenters": job.dissenters,
        "receipt": job.receipt.hex(),
        "tokens": job.tokens,
    }


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

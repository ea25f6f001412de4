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
- ``stream: true`` streams the answer as its replicas agree on it, token by token (verified streaming,
  spec/verification.md §14: never unverified text); with ``stop`` set, at the end, in one chunk;
- ``stop`` is applied to the verified text (the receipt still covers the whole generation).

This module is the app (routes, authentication, the bind check); the request side (bodies, field
checks, chat templates, errors) is ``api_requests``, the job side (running a request's job and the JSON
or server-sent events that answer it) is ``api_jobs``.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.abc
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from opengrid.errors import ConfigError
from opengrid.node.api_jobs import (
    ApiBackend,
    ApiJob,
    extension,
    json_response,
    run_job,
    sse_response,
    stream_live,
    usage,
)
from opengrid.node.api_requests import (
    MAX_BODY_BYTES,
    ApiError,
    ChatBody,
    CompletionBody,
    JobFormat,
    check_n,
    decode_body,
    format_chat,
    sampling_from,
    single_prompt,
)
from opengrid.node.chat_template import RENDER_TIMEOUT_S, TemplateRenderer
from opengrid.node.dashboard import DashboardSource, dashboard_routes

__all__ = [
    "DEFAULT_API_ADDRESS",
    "MAX_BODY_BYTES",
    "ApiBackend",
    "ApiError",
    "ApiSettings",
    "JobFormat",
    "api_client",
    "build_app",
    "check_bind",
]

log = logging.getLogger("opengrid.api")


DEFAULT_API_ADDRESS = "127.0.0.1:9337"


_LOOPBACK = ("127.", "localhost", "[::1]", "::1")


@dataclass(frozen=True)
class ApiSettings:
    """Where and how a node serves the API."""

    address: str = DEFAULT_API_ADDRESS
    api_key: str | None = None
    allow_remote: bool = False
    template_timeout_s: float = RENDER_TIMEOUT_S
    """Seconds a worker's chat template may take to render (in its child process) before the request
    fails with ``bad_chat_template`` and the template is marked bad (``chat_template.RENDER_TIMEOUT_S``)."""


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
    backend: ApiBackend,
    *,
    api_key: str | None = None,
    renderer: TemplateRenderer | None = None,
    dashboard: DashboardSource | None = None,
) -> Starlette:
    """The Starlette app serving ``/v1/models``, ``/v1/completions`` and ``/v1/chat/completions``.

    ``renderer`` renders workers' chat templates (a fresh ``TemplateRenderer`` if None; its child
    processes are killed when the app shuts down). ``dashboard``: the node's state for the read-only web
    dashboard at ``/`` (opengrid/node/dashboard.py); None serves no dashboard."""
    templates = renderer or TemplateRenderer()
    jobs: list[anyio.abc.TaskGroup] = []
    """The task group streaming jobs run in (set while the app's lifespan runs): a streamed job outlives
    the handler that started it, until its last chunk is sent or its client leaves."""

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
        body = await decode_body(request, CompletionBody)
        prompt = single_prompt(body.prompt)
        check_n(body.n)
        sampling = sampling_from(body.temperature, body.top_p, body.top_k, body.seed)
        if body.stream and not body.stop and jobs:
            created = int(time.time())

            def text_chunk(job_id: str, text: str, finish: str | None) -> dict[str, Any]:
                choice = {"text": text, "index": 0, "logprobs": None, "finish_reason": finish}
                return {
                    "id": f"cmpl-{job_id}",
                    "object": "text_completion",
                    "created": created,
                    "model": body.model,
                    "choices": [choice],
                }

            return await stream_live(
                jobs[0],
                backend,
                ApiJob(
                    prompt,
                    body.model,
                    16 if body.max_tokens is None else body.max_tokens,
                    body.replicas,
                    "text",
                    api_client(request),
                    sampling,
                ),
                text_chunk,
                opening=[],
            )
        outcome = await run_job(
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
            return sse_response(events, outcome)
        return json_response(
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
                "usage": usage(outcome),
                "opengrid": extension(outcome),
            },
            outcome,
        )

    async def chat(request: Request) -> Response:
        body = await decode_body(request, ChatBody)
        check_n(body.n)
        sampling = sampling_from(body.temperature, body.top_p, body.top_k, body.seed)
        if not body.messages:
            raise ApiError(400, "messages must not be empty")
        prompt = await format_chat(templates, backend.api_models(), body.model, body.messages)
        max_tokens = next((n for n in (body.max_completion_tokens, body.max_tokens) if n is not None), 256)
        if body.stream and not body.stop and jobs:
            created = int(time.time())

            def delta_chunk(
                job_id: str, text: str, finish: str | None, *, role: bool = False
            ) -> dict[str, Any]:
                delta = (
                    {"role": "assistant", "content": text} if role else ({"content": text} if text else {})
                )
                return {
                    "id": f"chatcmpl-{job_id}",
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": body.model,
                    "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
                }

            return await stream_live(
                jobs[0],
                backend,
                ApiJob(prompt, body.model, max_tokens, body.replicas, "chat", api_client(request), sampling),
                lambda job_id, text, finish: delta_chunk(job_id, text, finish),
                opening=[lambda job_id: delta_chunk(job_id, "", None, role=True)],
            )
        outcome = await run_job(
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
            return sse_response(events, outcome)
        return json_response(
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
                "usage": usage(outcome),
                "opengrid": extension(outcome),
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
            async with anyio.create_task_group() as running:
                jobs.append(running)
                yield
                running.cancel_scope.cancel()  # shutting down: streaming jobs still running end here
        finally:
            jobs.clear()
            await templates.aclose()

    return Starlette(
        routes=[
            Route("/v1/models", guarded(models), methods=["GET"]),
            Route("/v1/completions", guarded(completions), methods=["POST"]),
            Route("/v1/chat/completions", guarded(chat), methods=["POST"]),
            *(dashboard_routes(dashboard, guard=guarded) if dashboard is not None else []),
        ],
        exception_handlers={HTTPException: http_error},
        lifespan=lifespan,
    )

"""The request side of the OpenAI-compatible API (opengrid/node/api.py): bodies as msgspec structs, the
bounded body read, field checks (sampling, shape, ``n``), the models a request may name, chat templates
rendered in the sandbox, and OpenAI-shaped errors (``ApiError``, and the map from OpenGrid error codes
to HTTP statuses)."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any, Final, Literal

import msgspec
from starlette.requests import Request
from starlette.responses import JSONResponse

from opengrid.core.audit import SamplingParams
from opengrid.errors import PaymentError, TemplateError
from opengrid.node.chat_template import TemplateRenderer
from opengrid.wire.contract import sampling_problem
from opengrid.wire.messages import MAX_REPLICAS, MAX_TOKENS_LIMIT, ErrorReply, ModelOffer

JobFormat = Literal["text", "chat"]


MAX_BODY_BYTES: Final = 1024 * 1024
"""Largest request body: refused by its Content-Length before reading, and a chunked body is read with a
running count and refused as soon as it passes this (413 either way)."""


MAX_TEMPLATES_TRIED: Final = 3
"""Distinct chat templates (from different workers' offers of one model) tried for one chat request."""


class CompletionBody(msgspec.Struct, forbid_unknown_fields=False):
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


class ChatMessage(msgspec.Struct, forbid_unknown_fields=False):
    role: str
    content: str


class ChatBody(msgspec.Struct, forbid_unknown_fields=False):
    model: str
    messages: list[ChatMessage]
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
        details: Mapping[str, Any] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.type = type
        self.code = code
        self.param = param
        """The request field at fault, as OpenAI names it (``temperature``), or None."""
        self.details = dict(details or {})
        """More fields of the error object, after OpenAI's four (402: ``price`` and ``balance``)."""

    def body(self) -> dict[str, Any]:
        """The OpenAI-shaped error object (``{"error": {...}}``)."""
        error = {"message": str(self), "type": self.type, "param": self.param, "code": self.code}
        return {"error": {**error, **self.details}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)


# OpenGrid error code -> (HTTP status, OpenAI error type)
ERROR_STATUS: dict[str, tuple[int, str]] = {
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


async def read_body(request: Request) -> bytes:
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


async def decode_body(request: Request, kind: type[Any]) -> Any:
    raw = await read_body(request)
    try:
        return msgspec.json.decode(raw, type=kind)
    except msgspec.DecodeError as exc:
        raise ApiError(400, f"invalid request body: {exc}") from exc


def single_prompt(prompt: str | list[str]) -> str:
    if isinstance(prompt, str):
        return prompt
    if len(prompt) == 1:
        return prompt[0]
    raise ApiError(400, "send one prompt per request (a list of several prompts is not supported)")


def sampling_from(
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


def check_n(n: int) -> None:
    if n != 1:
        raise ApiError(400, "n must be 1: OpenGrid returns the one verified answer")


def offers_for(offers: Sequence[ModelOffer], model: str) -> list[ModelOffer]:
    wanted = model.lower()
    found = [o for o in offers if wanted in (o.name.lower(), o.contract.model_sha256.lower())]
    if not found:
        served = ", ".join(sorted({o.name for o in offers})) or "none yet"
        raise ApiError(404, f"no worker serves model {model!r}; served: {served}", code="model_not_found")
    return found


async def format_chat(
    templates: TemplateRenderer, offers: Sequence[ModelOffer], model: str, messages: Sequence[ChatMessage]
) -> str:
    """Render the model's own chat template, as llama.cpp's chat completion does, in ``templates``'
    sandboxed child processes (a worker announced the template: untrusted code). A template found bad
    (too slow, too large, broken) is skipped from then on, and the next worker's template of the same
    model is tried."""
    found = offers_for(offers, model)
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


def check_shape(max_tokens: int, replicas: int) -> None:
    if not 1 <= max_tokens <= MAX_TOKENS_LIMIT:
        raise ApiError(400, f"max_tokens must be 1..{MAX_TOKENS_LIMIT}, got {max_tokens}")
    if not 1 <= replicas <= MAX_REPLICAS:
        raise ApiError(400, f"replicas must be 1..{MAX_REPLICAS}, got {replicas}")


def payment_error(exc: PaymentError) -> ApiError:
    """The node's own account cannot pay for a job: 402 ``insufficient_quota`` (as OpenAI answers an
    account out of credit), with the job's ``price`` and the account's ``balance`` in points when known."""
    figures = {"price": exc.price, "balance": exc.balance} if exc.price is not None else {}
    return ApiError(402, str(exc), type="insufficient_quota", code="payment_required", details=figures)


def api_error(reply: ErrorReply) -> ApiError:
    status, kind = ERROR_STATUS.get(reply.code, (500, "server_error"))
    code = "model_not_found" if reply.code == "unknown_model" else reply.code
    return ApiError(status, reply.message, type=kind, code=code)

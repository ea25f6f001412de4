"""The job side of the OpenAI-compatible API (opengrid/node/api.py): what the API needs from its node
(``ApiBackend``), running one request's job, and answering with its outcome: JSON, server-sent events
of the whole answer, or verified streaming as a quorum agrees on the text (spec/verification.md §14)."""

from __future__ import annotations

import json
import logging
import math
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import anyio
import anyio.abc
from starlette.responses import JSONResponse, Response, StreamingResponse

from opengrid.core.audit import SamplingParams
from opengrid.errors import PaymentError
from opengrid.node.api_requests import (
    ApiError,
    JobFormat,
    api_error,
    check_shape,
    payment_error,
)
from opengrid.wire.messages import ErrorReply, JobAccepted, ModelOffer

log = logging.getLogger("opengrid.api")


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
        job_id: bytes = ...,
        on_verified: Callable[[str], None] | None = ...,
    ) -> Awaitable[JobAccepted | ErrorReply]:
        """Run one verified job for ``client``: the API user's identity (``api_client``), which the
        coordinator queues fairly against every other client. ``sampling``: greedy by default.
        ``job_id``: the job's id (empty: a fresh one). ``on_verified``: called with each chunk of text
        as a quorum of replicas agrees on it (spec/verification.md §14), where the node can stream it;
        the chunks join to a prefix of the answer's text."""
        ...


@dataclass(frozen=True)
class Outcome:
    job: JobAccepted
    text: str
    finish_reason: str
    sampling: SamplingParams


async def run_job(
    backend: ApiBackend,
    prompt: str,
    model: str,
    max_tokens: int,
    replicas: int,
    stop: str | list[str] | None,
    format: JobFormat,
    client: str,
    sampling: SamplingParams,
) -> Outcome:
    check_shape(max_tokens, replicas)
    try:
        reply = await backend.api_submit(
            prompt=prompt,
            model=model,
            max_tokens=max_tokens,
            replicas=replicas,
            format=format,
            client=client,
            sampling=sampling,
        )
    except PaymentError as exc:  # the node's own account cannot pay: 402 with the figures
        raise payment_error(exc) from exc
    if isinstance(reply, ErrorReply):
        raise api_error(reply)
    text, finish = reply.text, reply.finish_reason
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    cut = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=-1)
    if cut >= 0:
        text, finish = text[:cut], "stop"
    return Outcome(job=reply, text=text, finish_reason=finish, sampling=sampling)


@dataclass(frozen=True)
class ApiJob:
    """One API request's job, as ``api_submit`` takes it."""

    prompt: str
    model: str
    max_tokens: int
    replicas: int
    format: JobFormat
    client: str
    sampling: SamplingParams


Chunk = Callable[[str, str, str | None], dict[str, Any]]
"""(job id in hex, text, finish reason or None) -> one server-sent event's JSON body."""


async def stream_live(
    tasks: anyio.abc.TaskGroup,
    backend: ApiBackend,
    job: ApiJob,
    chunk: Chunk,
    *,
    opening: Sequence[Callable[[str], dict[str, Any]]],
) -> Response:
    """Run ``job`` in ``tasks`` and answer with server-sent events as its text is verified.

    The handler waits for the first verified chunk or the answer, so an error found before any text
    (unknown model, no capacity, bad input) is an HTTP error as without streaming; an error after text
    was sent is one ``error`` event, then the stream ends. The chunks are the coordinator's verified
    text (spec/verification.md §14); the rest of the answer, which the replicas agreed on only at the
    end, follows in one chunk, then a chunk with ``finish_reason`` and the ``opengrid`` extension, then
    ``[DONE]``. The client leaving cancels the wait for the job (as a closed non-streaming request does).
    """
    check_shape(job.max_tokens, job.replicas)
    job_id = secrets.token_bytes(16)
    # Unbounded as a channel, bounded in use: each verified chunk holds at least one of the job's
    # max_tokens tokens, then one answer.
    send, receive = anyio.create_memory_object_stream[str | JobAccepted | ErrorReply | ApiError](math.inf)
    scope = anyio.CancelScope()

    async def run() -> None:
        with scope:
            reply: JobAccepted | ErrorReply | ApiError
            try:
                reply = await backend.api_submit(
                    prompt=job.prompt,
                    model=job.model,
                    max_tokens=job.max_tokens,
                    replicas=job.replicas,
                    format=job.format,
                    client=job.client,
                    sampling=job.sampling,
                    job_id=job_id,
                    on_verified=send.send_nowait,
                )
            except PaymentError as exc:  # before any text: answered 402, as without streaming
                reply = payment_error(exc)
            except Exception as exc:  # a bug of ours: the request gets a 500, the app stays up
                log.exception("streaming API job %s failed", job_id.hex()[:8])
                reply = ErrorReply("internal", f"the node failed: {type(exc).__name__}", job_id)
            send.send_nowait(reply)
        send.close()

    tasks.start_soon(run)
    try:
        first = await receive.receive()
    except BaseException:
        scope.cancel()  # the client left before anything came
        receive.close()
        raise
    if isinstance(first, ErrorReply | ApiError):
        receive.close()  # nothing follows an error
        raise api_error(first) if isinstance(first, ErrorReply) else first
    hex_id = job_id.hex()

    async def events() -> AsyncIterator[str]:
        sent = ""
        item: str | JobAccepted | ErrorReply | ApiError = first
        try:
            for make in opening:
                yield f"data: {json.dumps(make(hex_id))}\n\n"
            while True:
                if isinstance(item, str):
                    sent += item
                    yield f"data: {json.dumps(chunk(hex_id, item, None))}\n\n"
                elif isinstance(item, ErrorReply | ApiError):
                    problem = api_error(item) if isinstance(item, ErrorReply) else item
                    yield f"data: {json.dumps(stream_error(problem))}\n\n"
                    return
                else:
                    if not item.text.startswith(sent):  # never expected: the coordinator guarantees it
                        problem = ApiError(502, "the verified answer does not extend the streamed text")
                        yield f"data: {json.dumps(stream_error(problem))}\n\n"
                        return
                    outcome = Outcome(
                        job=item, text=item.text, finish_reason=item.finish_reason, sampling=job.sampling
                    )
                    if len(item.text) > len(sent):
                        yield f"data: {json.dumps(chunk(hex_id, item.text[len(sent) :], None))}\n\n"
                    last = chunk(hex_id, "", outcome.finish_reason)
                    last["opengrid"] = extension(outcome)
                    yield f"data: {json.dumps(last)}\n\n"
                    yield "data: [DONE]\n\n"
                    return
                item = await receive.receive()
        finally:
            scope.cancel()  # done, or the client left: stop waiting for the job
            receive.close()  # (anyio warns about a stream left open when it is collected)

    headers = {"X-OpenGrid-Job-Id": hex_id, "X-OpenGrid-Verified": "true"}
    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)


def stream_error(error: ApiError) -> dict[str, Any]:
    return error.body()


def usage(outcome: Outcome) -> dict[str, int]:
    # Workers do not report prompt token counts yet; completion tokens are the verified ones.
    n = len(outcome.job.tokens)
    return {"prompt_tokens": 0, "completion_tokens": n, "total_tokens": n}


def extension(outcome: Outcome) -> dict[str, Any]:
    job = outcome.job
    return {
        "job_id": job.job_id.hex(),
        "verified": True,
        **decoding(outcome.sampling),
        "workers": job.workers,
        "dissenters": job.dissenters,
        "receipt": job.receipt.hex(),
        "tokens": job.tokens,
    }


def decoding(sampling: SamplingParams) -> dict[str, Any]:
    """How the answer was decoded, for the ``opengrid`` extension field."""
    if sampling.greedy:
        return {"decoding": "greedy"}
    settings = {"temperature": sampling.temperature, "top_k": sampling.top_k, "top_p": sampling.top_p}
    return {"decoding": "sampled", "sampling": {**settings, "seed": sampling.seed}}


def headers_for(outcome: Outcome) -> dict[str, str]:
    return {
        "X-OpenGrid-Job-Id": outcome.job.job_id.hex(),
        "X-OpenGrid-Verified": "true",
        "X-OpenGrid-Workers": ",".join(outcome.job.workers),
    }


def json_response(body: dict[str, Any], outcome: Outcome) -> JSONResponse:
    return JSONResponse(body, headers=headers_for(outcome))


def sse_response(events: list[dict[str, Any]], outcome: Outcome) -> StreamingResponse:
    events[-1]["opengrid"] = extension(outcome)

    async def stream() -> AsyncIterator[str]:
        for event in events:
            yield f"data: {json.dumps(event)}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(stream(), media_type="text/event-stream", headers=headers_for(outcome))

"""The OpenAI-compatible API, used through the official ``openai`` package against a real network."""

from __future__ import annotations

import pathlib
import socket
import time
from collections.abc import Iterator

import httpx
import llama_cpp
import openai
import pytest
from opengrid_sdk import Client

from opengrid.cli.demo import DemoNetwork, wait_for_workers

pytestmark = pytest.mark.slow
NETWORK = "opengrid-api"
API_KEY = "test-key"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, tiny_model_path: pathlib.Path) -> Iterator[str]:
    net = DemoNetwork(tmp_path_factory.mktemp("api"), model=str(tiny_model_path), network=NETWORK)
    port = _free_port()
    try:
        coordinator = net.start(
            "coordinator",
            "coordinator",
            # Replicated: streams verified token by token as replicas agree (audit mode answers whole until
            # chunked audits land), and `replicas` beyond the workers is a capacity error (503).
            extra_args=["--api", f"127.0.0.1:{port}", "--api-key", API_KEY, "--verify", "replicate"],
        )
        net.wait_ready(coordinator)
        worker_port = _free_port()
        for i in range(2):
            extra = ["--api", f"127.0.0.1:{worker_port}", "--api-key", API_KEY] if i == 0 else []
            net.wait_ready(
                net.start(f"worker-{i + 1}", "worker", bootstrap=coordinator.addrs[0], extra_args=extra)
            )
        _worker_api.append(f"http://127.0.0.1:{worker_port}/v1")
        with Client([coordinator.addrs[0]], network=NETWORK) as client:
            wait_for_workers(client, 2, timeout=60)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        net.stop()


@pytest.fixture(scope="module")
def llm(tiny_model_path: pathlib.Path) -> Iterator[llama_cpp.Llama]:
    model = llama_cpp.Llama(
        model_path=str(tiny_model_path), n_ctx=2048, n_batch=512, flash_attn=False, seed=0, verbose=False
    )
    yield model
    model.close()


_worker_api: list[str] = []


def test_a_workers_api_forwards_to_its_coordinator_and_checks_the_receipt(
    api: str, llm: llama_cpp.Llama, tiny_model_path: pathlib.Path
) -> None:
    completion = _client(_worker_api[0]).completions.create(
        model=tiny_model_path.stem, prompt="Forwarded", max_tokens=6
    )
    direct = llm.create_completion("Forwarded", max_tokens=6, temperature=0.0, top_k=1, repeat_penalty=1.0)
    assert completion.choices[0].text == direct["choices"][0]["text"]  # type: ignore[index]
    assert completion.model_extra["opengrid"]["verified"] is True  # type: ignore[index]


def _client(api: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=api, api_key=API_KEY, max_retries=0, timeout=60)


def test_models_lists_what_workers_serve(api: str, tiny_model_path: pathlib.Path) -> None:
    ids = [model.id for model in _client(api).models.list()]
    assert ids == [tiny_model_path.stem]


def test_completion_matches_llama_cpp_and_carries_verification(
    api: str, llm: llama_cpp.Llama, tiny_model_path: pathlib.Path
) -> None:
    model = tiny_model_path.stem
    response = _client(api).completions.with_raw_response.create(
        model=model, prompt="The capital of France is", max_tokens=10, temperature=0
    )
    completion = response.parse()
    direct = llm.create_completion(
        "The capital of France is", max_tokens=10, temperature=0.0, top_k=1, repeat_penalty=1.0
    )
    assert completion.choices[0].text == direct["choices"][0]["text"]  # type: ignore[index]
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None and completion.usage.completion_tokens == 10
    extension = completion.model_extra["opengrid"]  # type: ignore[index]
    assert extension["verified"] is True and len(extension["workers"]) == 2
    assert response.headers["x-opengrid-job-id"] == extension["job_id"]


def test_chat_matches_llama_cpp_chat_completion(
    api: str, llm: llama_cpp.Llama, tiny_model_path: pathlib.Path
) -> None:
    messages = [{"role": "user", "content": "Say something."}]
    chat = _client(api).chat.completions.create(
        model=tiny_model_path.stem,
        messages=messages,
        max_tokens=12,  # type: ignore[arg-type]
    )
    direct = llm.create_chat_completion(messages, max_tokens=12, temperature=0.0, top_k=1, repeat_penalty=1.0)  # type: ignore[arg-type]
    assert chat.choices[0].message.content == direct["choices"][0]["message"]["content"]  # type: ignore[index]
    assert chat.choices[0].message.role == "assistant"


def test_streaming_yields_the_verified_text(api: str, tiny_model_path: pathlib.Path) -> None:
    client = _client(api)
    whole = client.completions.create(model=tiny_model_path.stem, prompt="Once", max_tokens=8)
    stream = client.completions.create(model=tiny_model_path.stem, prompt="Once", max_tokens=8, stream=True)
    streamed = "".join(chunk.choices[0].text for chunk in stream)
    assert streamed == whole.choices[0].text
    chat_stream = client.chat.completions.create(
        model=tiny_model_path.stem, messages=[{"role": "user", "content": "Hi"}], max_tokens=8, stream=True
    )
    chunks = list(chat_stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks)
    assert chunks[-1].choices[0].finish_reason in ("length", "stop")


STREAM_TOKENS = 512


def test_streaming_sends_verified_text_well_before_the_end(api: str, tiny_model_path: pathlib.Path) -> None:
    """Verified streaming (spec/verification.md §14): the first text arrives while the replicas are still
    generating, not once they are done, and the streamed text is the unstreamed answer. Greedy decoding,
    so the two requests (two fresh job ids) must give the same text; a seed would not repeat a sample
    across job ids (the noise is keyed by the job id)."""
    client = _client(api)
    prompt = "The history of the city begins"
    whole = client.completions.create(model=tiny_model_path.stem, prompt=prompt, max_tokens=STREAM_TOKENS)
    assert whole.choices[0].finish_reason == "length"  # it generates all its tokens: a long enough job
    started = time.monotonic()
    stream = client.completions.create(
        model=tiny_model_path.stem, prompt=prompt, max_tokens=STREAM_TOKENS, stream=True
    )
    arrivals: list[tuple[float, str]] = []
    finish = None
    for chunk in stream:
        arrivals.append((time.monotonic() - started, chunk.choices[0].text))
        finish = chunk.choices[0].finish_reason or finish
    total = time.monotonic() - started
    first = next(t for t, text in arrivals if text)
    texts = [text for _, text in arrivals if text]
    assert "".join(texts) == whole.choices[0].text and finish == "length"
    assert len(texts) >= 2  # it came in pieces, not in one piece at the end
    # The criterion: first verified text before 60 % of the request's total time. Both sides include the
    # same fixed costs (HTTP, dispatch, prompt evaluation, the first frames of both replicas); the tiny
    # model makes 128 tokens in ~0.1 s on an idle machine, where those costs alone took the ratio to
    # 0.53, hence 512 tokens: measured 0.03-0.05 s of 0.51-0.73 s here (a ratio under 0.1, far from the
    # bound on a loaded machine too); before verified streaming the one chunk came at ~95 % of the time.
    print(f"first verified text after {first:.2f} s of {total:.2f} s ({len(texts)} chunks)")
    assert first < 0.6 * total, (first, total)


def test_stop_sequences_cut_the_verified_text(api: str, tiny_model_path: pathlib.Path) -> None:
    client = _client(api)
    whole = (
        client.completions.create(model=tiny_model_path.stem, prompt="Once", max_tokens=12).choices[0].text
    )
    stop = whole[3:5]
    cut = client.completions.create(model=tiny_model_path.stem, prompt="Once", max_tokens=12, stop=[stop])
    assert cut.choices[0].text == whole[: whole.find(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_errors_are_openai_shaped(api: str, tiny_model_path: pathlib.Path) -> None:
    client = _client(api)
    with pytest.raises(openai.NotFoundError) as missing:
        client.completions.create(model="no-such-model", prompt="hi", max_tokens=4)
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=tiny_model_path.stem, prompt="hi", max_tokens=0)
    with pytest.raises(openai.APIStatusError) as capacity:
        client.completions.create(
            model=tiny_model_path.stem, prompt="hi", max_tokens=4, extra_body={"replicas": 5}
        )
    assert capacity.value.status_code == 503
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=api, api_key="wrong", max_retries=0).models.list()
    raw = httpx.post(
        f"{api}/completions", content=b"{not json", headers={"Authorization": f"Bearer {API_KEY}"}
    )
    assert raw.status_code == 400 and raw.json()["error"]["type"] == "invalid_request_error"

"""The HTTP engine against a real ``python -m llama_cpp.server`` on 127.0.0.1, and vLLM's answers faked.

One server per module (ready in ~1 s with the tiny model). Measured while writing this: a managed
llama_cpp.server gives the same tokens and text as the in-process engine on the tiny model and on
SmolLM2-135M (18 of 18 prompts, 48 tokens each); the contract still names its own backend.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Iterator

import httpx
import llama_cpp
import pytest

from opengrid.core.audit import SamplingParams, judge
from opengrid.engines import (
    GenerationRequest,
    HttpEngine,
    LlamaEngine,
    ManagedServer,
    ModelInfo,
    ScoreRequest,
)
from opengrid.engines.http import free_loopback_port
from opengrid.errors import BadRequestError, EngineError, UnknownModelError

PROMPTS = ["The capital of France is", "Hello", "def fib(n):", "über alles é", "1, 2, 3,"]


@pytest.fixture(scope="module")
def server(tiny_info: ModelInfo) -> Iterator[ManagedServer]:
    with ManagedServer(tiny_info, n_threads=1, ready_timeout_s=30) as running:
        yield running


@pytest.fixture
def http_engine(server: ManagedServer) -> Iterator[HttpEngine]:
    with server.engine() as engine:
        yield engine


def test_tokens_and_text_equal_the_in_process_engine(
    http_engine: HttpEngine, tiny_engine: LlamaEngine
) -> None:
    for prompt in PROMPTS:
        for max_tokens in (1, 24):
            request = GenerationRequest(prompt=prompt, max_tokens=max_tokens)
            assert http_engine.generate(request) == tiny_engine.generate(request), prompt


def test_repeated_and_prefix_sharing_requests_are_stable(
    http_engine: HttpEngine, tiny_engine: LlamaEngine
) -> None:
    # llama_cpp.server keeps the KV cache of the previous prompt and reuses its longest common prefix.
    requests = [GenerationRequest(prompt=p, max_tokens=16) for p in ("abc def", "abc xyz", "abc def")]
    assert [http_engine.generate(r) for r in requests] == [tiny_engine.generate(r) for r in requests]


def test_contract_names_the_http_backend(http_engine: HttpEngine, tiny_engine: LlamaEngine) -> None:
    contract = http_engine.contract
    assert contract.backend == "llama.cpp-server"
    assert contract.backend_version == llama_cpp.__version__
    assert contract.model_sha256 == tiny_engine.contract.model_sha256
    assert (contract.temperature, contract.top_k, contract.repeat_penalty) == (0.0, 1, 1.0)
    assert contract.digest() != tiny_engine.contract.digest()  # its own numerical class


def test_every_decoding_field_is_sent(server: ManagedServer, tiny_info: ModelInfo) -> None:
    bodies: list[dict[str, object]] = []

    def spy(request: httpx.Request) -> httpx.Response:
        with httpx.Client(base_url=server.base_url, trust_env=False) as real:
            if request.url.path == "/v1/completions":
                bodies.append(json.loads(request.content))
            answer = real.request(
                request.method,
                request.url.path,
                content=request.content,
                headers={"content-type": "application/json"},
            )
            return httpx.Response(answer.status_code, content=answer.content)

    with HttpEngine(server.base_url, tiny_info, transport=httpx.MockTransport(spy)) as engine:
        engine.generate(GenerationRequest(prompt="hi", max_tokens=3))
    (body,) = bodies
    assert body["temperature"] == 0.0
    assert body["top_k"] == 1
    assert body["top_p"] == 1.0
    assert body["repeat_penalty"] == body["repetition_penalty"] == 1.0
    assert body["seed"] == 0
    assert body["stream"] is False
    assert body["max_tokens"] == 3
    assert body["model"] == tiny_info.name


def test_base_url_may_end_in_v1(server: ManagedServer, tiny_info: ModelInfo) -> None:
    with HttpEngine(server.base_url + "/v1/", tiny_info) as engine:
        assert engine.base_url == server.base_url


def test_unknown_served_model_is_a_clear_error(server: ManagedServer, tiny_info: ModelInfo) -> None:
    # llama_cpp.server would silently answer with its default model: the engine checks the name first.
    with pytest.raises(UnknownModelError, match=r"does not serve model 'gpt-17'.*'tiny'"):
        HttpEngine(server.base_url, tiny_info, served_name="gpt-17")


def test_prompts_without_bos_are_refused_when_the_server_adds_it(http_engine: HttpEngine) -> None:
    with pytest.raises(EngineError, match="BOS"):
        http_engine.generate(GenerationRequest(prompt="<|user|>\nhi\n", max_tokens=2, add_bos=False))


def test_empty_prompt_and_zero_tokens_are_refused(http_engine: HttpEngine) -> None:
    with pytest.raises(EngineError, match="empty prompt"):
        http_engine.generate(GenerationRequest(prompt="", max_tokens=2))
    with pytest.raises(EngineError, match="max_tokens must be >= 1"):
        http_engine.generate(GenerationRequest(prompt="hi", max_tokens=0))


def test_closed_engine_refuses_work(server: ManagedServer) -> None:
    engine = server.engine()
    engine.close()
    engine.close()  # idempotent
    with pytest.raises(EngineError, match="closed"):
        engine.generate(GenerationRequest(prompt="hi", max_tokens=1))


def test_server_down_is_an_engine_error(tiny_info: ModelInfo) -> None:
    url = f"http://127.0.0.1:{free_loopback_port()}"
    with pytest.raises(EngineError, match=r"cannot reach the llama\.cpp-server server"):
        HttpEngine(url, tiny_info, connect_timeout_s=2)


def test_served_name_needs_a_sha256() -> None:
    with pytest.raises(EngineError, match="model_sha256"):
        HttpEngine("http://127.0.0.1:9", "some-model")


def test_timeouts_and_http_errors_become_engine_errors(tiny_info: ModelInfo) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": "tiny"}]})
        if request.url.path == "/v1/completions":
            raise httpx.ReadTimeout("slow", request=request)
        return httpx.Response(500, text="boom")

    with HttpEngine("http://127.0.0.1:1", tiny_info, transport=httpx.MockTransport(handler)) as engine:
        with pytest.raises(EngineError, match="timed out"):
            engine.generate(GenerationRequest(prompt="hi", max_tokens=1))

    def unauthorized(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, json={"detail": "Invalid API key"})

    with pytest.raises(EngineError, match=r"HTTP 401 \(check the API key\)"):
        HttpEngine("http://127.0.0.1:1", tiny_info, transport=httpx.MockTransport(unauthorized))


# -- vLLM: answers in vLLM's shape, from a fake transport (no GPU here) ---------------------------


def _fake_vllm(choice: dict[str, object], seen: list[dict[str, object]]) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"object": "list", "data": [{"id": "org/model"}]})
        if request.url.path == "/version":
            return httpx.Response(200, json={"version": "0.11.0"})
        assert request.url.path == "/v1/completions"
        seen.append(json.loads(request.content))
        return httpx.Response(200, json={"choices": [choice], "usage": {"completion_tokens": 3}})

    return httpx.MockTransport(handler)


def test_vllm_token_ids_from_return_token_ids() -> None:
    seen: list[dict[str, object]] = []
    choice = {"text": " a b", "finish_reason": "length", "token_ids": [5, 6, 7]}
    engine = HttpEngine(
        "http://127.0.0.1:1", "org/model", backend="vllm", model_sha256="ab" * 32,
        transport=_fake_vllm(choice, seen),
    )  # fmt: skip
    with engine:
        result = engine.generate(GenerationRequest(prompt="x", max_tokens=3, add_bos=False))
        assert engine.contract.backend == "vllm"
        assert engine.contract.backend_version == "0.11.0"
    assert (result.tokens, result.text, result.finish_reason) == ((5, 6, 7), " a b", "length")
    (body,) = seen
    assert body["add_special_tokens"] is False
    assert body["repetition_penalty"] == 1.0 and body["temperature"] == 0.0 and body["top_k"] == 1
    assert body["return_tokens_as_token_ids"] is True


def test_vllm_token_ids_from_logprobs_and_eos_is_dropped() -> None:
    choice = {
        "text": "ok",
        "finish_reason": "stop",
        "stop_reason": None,
        "logprobs": {"tokens": ["token_id:9", "token_id:10", "token_id:2"]},
    }
    engine = HttpEngine(
        "http://127.0.0.1:1", "org/model", backend="vllm", model_sha256="ab" * 32,
        transport=_fake_vllm(choice, []),
    )  # fmt: skip
    with engine:
        result = engine.generate(GenerationRequest(prompt="x", max_tokens=8))
    assert (result.tokens, result.finish_reason) == ((9, 10), "stop")


def test_vllm_without_ids_is_an_error() -> None:
    choice = {"text": "ok", "finish_reason": "length", "logprobs": None}
    engine = HttpEngine(
        "http://127.0.0.1:1", "org/model", backend="vllm", model_sha256="ab" * 32,
        transport=_fake_vllm(choice, []),
    )  # fmt: skip
    with engine, pytest.raises(EngineError, match="no token ids"):
        engine.generate(GenerationRequest(prompt="x", max_tokens=3))


def test_vllm_command_line(tiny_info: ModelInfo) -> None:
    cmd = ManagedServer(tiny_info, backend="vllm").command(8123)
    assert cmd[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    assert cmd[cmd.index("--served-model-name") + 1] == "tiny"
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"


# -- managed servers: never orphaned ---------------------------------------------------------------


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_managed_server_stops_its_process(tiny_info: ModelInfo) -> None:
    server = ManagedServer(tiny_info, n_threads=1, ready_timeout_s=30)
    with pytest.raises(RuntimeError, match="job failed"), server:
        pid = server.pid
        assert pid is not None and not _gone(pid)
        assert server.ready_after_s is not None and server.ready_after_s < 30
        raise RuntimeError("job failed")
    assert _gone(pid)
    assert server.pid is None
    server.stop()  # idempotent


def test_managed_server_that_cannot_load_fails_fast(tmp_path: pathlib.Path) -> None:
    bogus = tmp_path / "broken.gguf"
    bogus.write_bytes(b"not a model")
    info = ModelInfo(name="broken", path=bogus, sha256="00" * 32)
    server = ManagedServer(info, ready_timeout_s=30, log_path=tmp_path / "server.log")
    with pytest.raises(EngineError, match=r"exited with code .* before it was ready"):
        server.start()
    assert server.pid is None
    assert (tmp_path / "server.log").stat().st_size > 0


# -- audits over HTTP (spec/verification.md §12) --------------------------------------------------------


@pytest.fixture(scope="module")
def scoring_engine(tiny_info: ModelInfo) -> Iterator[HttpEngine]:
    """A llama_cpp.server that keeps every row's logits (echo + logprobs need them)."""
    with (
        ManagedServer(tiny_info, n_threads=1, ready_timeout_s=30, logits_all=True) as running,
        running.engine() as engine,
    ):
        yield engine


def test_scoring_over_http_matches_the_in_process_auditor(
    scoring_engine: HttpEngine, tiny_engine: LlamaEngine
) -> None:
    http_engine = scoring_engine
    for prompt in PROMPTS[:3]:
        claim = tiny_engine.generate(GenerationRequest(prompt=prompt, max_tokens=24))
        request = ScoreRequest(prompt=prompt, tokens=claim.tokens, stopped=False)
        remote, local = http_engine.score(request), tiny_engine.score(request)
        assert remote.prompt_tokens == local.prompt_tokens
        assert [e.token for e in remote.evidence] == list(claim.tokens)
        # The server computes log-probabilities in float32 from a logits_all eval of the same build.
        for r, e in zip(remote.evidence, local.evidence, strict=True):
            assert r.gap == pytest.approx(e.gap, abs=1e-3) and r.logprob == pytest.approx(e.logprob, abs=1e-3)
            assert r.rank == min(e.rank, 20)
        assert judge(remote.evidence).accepted


def test_cheats_fail_an_audit_over_http(scoring_engine: HttpEngine, tiny_engine: LlamaEngine) -> None:
    http_engine = scoring_engine
    honest = {p: tiny_engine.generate(GenerationRequest(prompt=p, max_tokens=24)).tokens for p in PROMPTS[:3]}
    for i, prompt in enumerate(PROMPTS[:3]):
        other = honest[PROMPTS[(i + 1) % 3]]
        assert not judge(
            http_engine.score(ScoreRequest(prompt=prompt, tokens=other, stopped=False)).evidence
        ).accepted
        # Truncated and claimed stopped: the tiny model never ends a generation, so the stop is far off.
        truncated = ScoreRequest(prompt=prompt, tokens=honest[prompt][:12], stopped=True)
        verdict = judge(http_engine.score(truncated).evidence)
        assert not verdict.accepted and verdict.first_failure == 12


def test_sampled_jobs_are_refused_over_http_rather_than_decoded_greedily(scoring_engine: HttpEngine) -> None:
    http_engine = scoring_engine
    sampling = SamplingParams(temperature=0.8, seed=1)
    # The client's request, not the worker's failure: the worker answers ``malformed`` and keeps its
    # standing (a BadRequestError), and the message tells the client what to do.
    with pytest.raises(BadRequestError, match="greedily only") as refused:
        http_engine.generate(GenerationRequest(prompt="Hello", max_tokens=4, sampling=sampling))
    assert "send temperature 0" in str(refused.value)
    with pytest.raises(EngineError, match="by token text"):
        http_engine.score(ScoreRequest(prompt="Hello", tokens=(5, 6), stopped=False, sampling=sampling))

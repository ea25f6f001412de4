"""LlamaEngine on the tiny model: real llama.cpp, no mocks."""

from __future__ import annotations

import pathlib
import threading

import llama_cpp
import pytest

from opengrid.engines import Engine, GenerationRequest, LlamaEngine, ModelInfo
from opengrid.errors import EngineError
from opengrid.wire.contract import DecodingContract

PROMPTS = ["Hello", "The capital of France is", "Grüße aus Köln — 日本語\nline two"]


def _reference(path: pathlib.Path, prompt: str, max_tokens: int) -> tuple[str, list[int], int]:
    """llama-cpp-python's own completion path: (text, generated token ids, completion_tokens)."""
    llm = llama_cpp.Llama(str(path), n_ctx=2048, n_batch=512, flash_attn=False, seed=0, verbose=False)
    try:
        completion = llm.create_completion(
            prompt, max_tokens=max_tokens, temperature=0.0, top_k=1, repeat_penalty=1.0
        )
        text = completion["choices"][0]["text"]  # type: ignore[index]
        n = completion["usage"]["completion_tokens"]  # type: ignore[index]
        llm.reset()  # type: ignore[no-untyped-call]
        prompt_tokens = llm.tokenize(prompt.encode(), add_bos=True, special=True)
        tokens: list[int] = []
        for token in llm.generate(prompt_tokens, top_k=1, temp=0.0, repeat_penalty=1.0):
            tokens.append(token)
            if len(tokens) == max_tokens:
                break
        return text, tokens, n
    finally:
        llm.close()


def test_is_an_engine(tiny_engine: LlamaEngine) -> None:
    assert isinstance(tiny_engine, Engine)


def test_contract_names_the_model_and_the_build(tiny_engine: LlamaEngine, tiny_info: ModelInfo) -> None:
    assert tiny_engine.model == tiny_info
    assert tiny_engine.contract == DecodingContract(
        model_sha256=tiny_info.sha256, backend_version=llama_cpp.__version__
    )
    c = tiny_engine.contract
    assert (c.temperature, c.top_k, c.repeat_penalty, c.n_batch, c.flash_attn, c.kv_cache_type) == (
        0.0,
        1,
        1.0,
        512,
        False,
        "f16",
    )


def test_generates_max_tokens(tiny_engine: LlamaEngine) -> None:
    result = tiny_engine.generate(GenerationRequest(prompt="Hello", max_tokens=48))
    assert len(result.tokens) == 48
    assert result.finish_reason == "length"
    assert result.text
    assert result.text == tiny_engine.detokenize(result.tokens)


def test_empty_prompt_generates_after_bos(tiny_engine: LlamaEngine) -> None:
    result = tiny_engine.generate(GenerationRequest(prompt="", max_tokens=5))
    assert len(result.tokens) == 5


def test_repeated_generate_is_identical(tiny_engine: LlamaEngine, tiny_info: ModelInfo) -> None:
    request = GenerationRequest(prompt="Hello", max_tokens=32)
    first = tiny_engine.generate(request)
    tiny_engine.generate(GenerationRequest(prompt="Hello there, a longer prompt", max_tokens=7))
    assert tiny_engine.generate(request) == first
    with LlamaEngine(tiny_info, n_threads=1, n_ctx=256) as other:
        assert other.generate(request) == first


@pytest.mark.parametrize("prompt", PROMPTS)
def test_matches_llama_cpp_completion(tiny_engine: LlamaEngine, tiny_info: ModelInfo, prompt: str) -> None:
    max_tokens = 40
    text, tokens, n = _reference(tiny_info.path, prompt, max_tokens)
    result = tiny_engine.generate(GenerationRequest(prompt=prompt, max_tokens=max_tokens))
    assert result.text == text
    assert list(result.tokens) == tokens
    assert n == max_tokens


def test_concurrent_calls_are_serialised(tiny_engine: LlamaEngine) -> None:
    request = GenerationRequest(prompt="threads", max_tokens=64)
    expected = tiny_engine.generate(request)
    results = []

    def work() -> None:
        results.append(tiny_engine.generate(request))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [expected] * 4


def test_multibyte_characters_split_across_tokens_decode_whole(tiny_engine: LlamaEngine) -> None:
    tokens = tiny_engine.tokenize("日本")[1:]  # not in the vocabulary: three byte tokens each
    assert len(tokens) == 7  # "▁" + 2 x 3 bytes
    assert tiny_engine.detokenize(tokens) == " 日本"
    assert tiny_engine.detokenize(tokens[:-1]) == " 日\ufffd"


def test_context_overflow_is_an_engine_error(tiny_info: ModelInfo) -> None:
    with LlamaEngine(tiny_info, n_ctx=64) as engine:
        with pytest.raises(
            EngineError, match=r"prompt \(12 tokens\) \+ max_tokens \(60\) = 72 exceeds .* 64"
        ):
            engine.generate(GenerationRequest(prompt="0123456789", max_tokens=60))
        assert len(engine.generate(GenerationRequest(prompt="0123456789", max_tokens=52)).tokens) == 52


def test_max_tokens_must_be_positive(tiny_engine: LlamaEngine) -> None:
    with pytest.raises(EngineError, match="max_tokens must be >= 1"):
        tiny_engine.generate(GenerationRequest(prompt="x", max_tokens=0))


def test_out_of_vocabulary_ids_are_refused(tiny_engine: LlamaEngine) -> None:
    with pytest.raises(EngineError, match="outside the vocabulary"):
        tiny_engine.detokenize([5, 10_000])


def test_closed_engine_raises(tiny_info: ModelInfo) -> None:
    engine = LlamaEngine(tiny_info)
    engine.close()
    engine.close()
    with pytest.raises(EngineError, match="closed"):
        engine.generate(GenerationRequest(prompt="x", max_tokens=1))


def test_unloadable_file_is_an_engine_error(tmp_path: pathlib.Path) -> None:
    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"GGUF" + b"\0" * 60)
    info = ModelInfo(name="bogus", path=bogus, sha256="0" * 64)
    with pytest.raises(EngineError, match="could not load model 'bogus'") as excinfo:
        LlamaEngine(info)
    assert excinfo.value.__cause__ is not None

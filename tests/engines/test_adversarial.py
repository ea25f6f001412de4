"""WrongTokensEngine: a cheater that looks honest except for its tokens."""

from __future__ import annotations

from opengrid.engines import Engine, GenerationRequest, LlamaEngine, WrongTokensEngine


def test_wrong_tokens_have_the_honest_shape(tiny_engine: LlamaEngine) -> None:
    request = GenerationRequest(prompt="Hello", max_tokens=21)
    honest = tiny_engine.generate(request)
    cheater = WrongTokensEngine(tiny_engine)
    assert isinstance(cheater, Engine)
    wrong = cheater.generate(request)

    assert wrong.tokens != honest.tokens
    assert len(wrong.tokens) == len(honest.tokens) == 21
    assert wrong.finish_reason == honest.finish_reason
    assert wrong.tokens[:10] == honest.tokens[:10]
    assert all(w != h for w, h in zip(wrong.tokens[10:], honest.tokens[10:], strict=True))
    assert wrong.text == tiny_engine.detokenize(wrong.tokens)  # consistent, so only replicas reveal it
    assert cheater.model == tiny_engine.model
    assert cheater.contract == tiny_engine.contract
    assert cheater.generate(request) == wrong  # deterministic


def test_single_token_is_replaced(tiny_engine: LlamaEngine) -> None:
    request = GenerationRequest(prompt="Hello", max_tokens=1)
    assert WrongTokensEngine(tiny_engine).generate(request).tokens != tiny_engine.generate(request).tokens

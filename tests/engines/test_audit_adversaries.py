"""The audit-mode adversary engines (opengrid/engines/adversarial.py) on the tiny model: each cheats exactly
as documented, so the tests that use them (tests/node/test_audit_cheaters.py) test what they claim."""

from __future__ import annotations

import pathlib
from contextlib import closing

from opengrid.engines import GenerationRequest, LlamaEngine, ModelInfo, ScoreRequest, sha256_file
from opengrid.engines.adversarial import (
    IntermittentEngine,
    OneInNEngine,
    RubberStampEngine,
    WrongTokensEngine,
)

REQUEST = GenerationRequest(prompt="Once upon a time", max_tokens=45)


def _engine(path: pathlib.Path) -> LlamaEngine:
    return LlamaEngine(ModelInfo(name="tiny", path=path, sha256=sha256_file(path)), n_threads=1)


def test_one_in_n_changes_every_nth_token_and_keeps_text_and_tokens_in_step(
    tiny_model_path: pathlib.Path,
) -> None:
    inner = _engine(tiny_model_path)
    with closing(OneInNEngine(inner, n=20)) as cheat:
        honest = inner.generate(REQUEST)
        claim = cheat.generate(REQUEST)
        assert len(honest.tokens) == 45
        changed = [i for i, (a, b) in enumerate(zip(honest.tokens, claim.tokens, strict=True)) if a != b]
        assert changed == [19, 39]
        assert claim.text == inner.detokenize(claim.tokens) != honest.text


def test_an_intermittent_engine_cheats_on_its_schedule_only(tiny_model_path: pathlib.Path) -> None:
    inner = _engine(tiny_model_path)
    with closing(IntermittentEngine(inner, WrongTokensEngine(inner), honest_first=2, every=3)) as cheat:
        honest = inner.generate(REQUEST).tokens
        wrong = [cheat.generate(REQUEST).tokens != honest for _ in range(9)]
        assert wrong == [False, False, True, False, False, True, False, False, True]
        assert cheat.cheats == 3 and cheat.generations == 9


def test_a_rubber_stamp_scores_every_position_perfect_without_the_model(
    tiny_model_path: pathlib.Path,
) -> None:
    inner = _engine(tiny_model_path)
    with closing(RubberStampEngine(inner)) as stamp:
        scoring = stamp.score(ScoreRequest(prompt="x", tokens=(5, 6, 7), stopped=True))
        assert [e.token for e in scoring.evidence] == [5, 6, 7, 0] and all(
            e.gap == 0 for e in scoring.evidence
        )
        window = stamp.score(ScoreRequest(prompt="x", tokens=(5, 6, 7), stopped=False, end=2))
        assert len(window.evidence) == 2 and stamp.stamped == 2
        honest = inner.score(ScoreRequest(prompt="Once upon a time", tokens=(5, 6, 7), stopped=False))
        assert max(e.gap for e in honest.evidence) > 0.75, "the same claim, really scored, fails"

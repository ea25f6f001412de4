"""The generated tiny GGUF: reproducible bytes, and a model llama.cpp loads."""

from __future__ import annotations

import pathlib

import gguf
import pytest

from opengrid.engines import write_tiny_gguf


def test_same_seed_gives_identical_bytes(tmp_path: pathlib.Path, tiny_model_path: pathlib.Path) -> None:
    again = write_tiny_gguf(tmp_path / "again.gguf", seed=0)
    assert again == tmp_path / "again.gguf"
    assert again.read_bytes() == tiny_model_path.read_bytes()


def test_other_seed_gives_other_bytes(tmp_path: pathlib.Path, tiny_model_path: pathlib.Path) -> None:
    other = write_tiny_gguf(tmp_path / "other.gguf", seed=1)
    assert other.stat().st_size == tiny_model_path.stat().st_size
    assert other.read_bytes() != tiny_model_path.read_bytes()


def test_no_temporary_file_left_behind(tmp_path: pathlib.Path) -> None:
    write_tiny_gguf(tmp_path / "m.gguf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"]


def test_vocabulary_layout(tiny_model_path: pathlib.Path) -> None:
    reader = gguf.GGUFReader(tiny_model_path)
    field = reader.fields["tokenizer.ggml.tokens"]
    tokens = [bytes(field.parts[i]).decode("utf-8") for i in field.data]
    types = [int(reader.fields["tokenizer.ggml.token_type"].parts[i][0]) for i in range(len(tokens))]
    assert tokens[:3] == ["<unk>", "<s>", "</s>"]
    assert tokens[3 + 0x0A] == "<0x0A>"
    assert types.count(gguf.TokenType.BYTE) == 256
    assert 340 <= len(tokens) <= 380
    assert "tokenizer.chat_template" in reader.fields
    output = next(t for t in reader.tensors if t.name == "output.weight")
    rows = output.data.reshape(len(tokens), -1)
    assert not rows[:259].any()  # control and byte tokens can never win the argmax
    assert rows[259:].any(axis=1).all()


def test_a_generated_model_is_reproducible_and_runs_in_llama_cpp(tmp_path: pathlib.Path) -> None:
    """write_generated_gguf (the larger models of benchmarks/split_bench.py), at a small shape: the same
    seed gives the same bytes, another seed other bytes; llama.cpp loads the quantised model, counts the
    parameters the shape says, and greedy generation never ends early (no EOS can win)."""
    from opengrid.engines import GenerationRequest, LlamaEngine, ModelInfo, sha256_file
    from opengrid.engines.tiny_model import ModelShape, write_generated_gguf

    shape = ModelShape(n_embd=128, n_layer=3, n_head=4, n_head_kv=2, n_ff=256)
    lines: list[str] = []
    path = write_generated_gguf(tmp_path / "a.gguf", shape, seed=3, file_type="q4_0", progress=lines.append)
    assert lines == ["layer 1/3", "layer 2/3", "layer 3/3"]
    assert write_generated_gguf(tmp_path / "b.gguf", shape, seed=3, file_type="q4_0").read_bytes() == (
        path.read_bytes()
    )
    assert write_generated_gguf(tmp_path / "c.gguf", shape, seed=4, file_type="q4_0").read_bytes() != (
        path.read_bytes()
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.gguf", "b.gguf", "c.gguf"]
    reader = gguf.GGUFReader(path)
    kinds = {t.name: t.tensor_type for t in reader.tensors}
    assert kinds["blk.0.attn_k.weight"] == gguf.GGMLQuantizationType.Q4_0
    assert kinds["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32
    n_vocab = len(reader.fields["tokenizer.ggml.tokens"].data)
    with LlamaEngine(ModelInfo("generated", path, sha256_file(path)), n_ctx=256, n_threads=1) as engine:
        assert engine.n_params == shape.n_params + 2 * n_vocab * shape.n_embd + shape.n_embd
        out = engine.generate(GenerationRequest("Once upon a time", max_tokens=40))
        assert len(out.tokens) == 40 and out.finish_reason == "length"


def test_a_generated_model_rejects_an_unknown_file_type(tmp_path: pathlib.Path) -> None:
    from opengrid.engines.tiny_model import GENERATED_SHAPES, write_generated_gguf

    with pytest.raises(ValueError, match="file_type must be one of"):
        write_generated_gguf(tmp_path / "x.gguf", GENERATED_SHAPES["tiny"], file_type="q3_k")
    assert not list(tmp_path.iterdir())

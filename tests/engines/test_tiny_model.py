"""The generated tiny GGUF: reproducible bytes, and a model llama.cpp loads."""

from __future__ import annotations

import pathlib

import gguf

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

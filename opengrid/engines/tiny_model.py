"""A tiny llama-architecture GGUF model, generated from a seed, for tests and offline demos.

The model is 2 layers, 64 wide, with a character-level SentencePiece-style vocabulary (~370 tokens: unk,
bos, eos, the 256 ``<0xNN>`` byte-fallback tokens, ``▁`` for space, printable ASCII and a few multi-byte
characters). Weights come from ``numpy.random.RandomState(seed)``, so the file is byte-identical for a
given seed and different for another one. Its output is gibberish, but it loads in llama.cpp in a few
milliseconds and generates thousands of tokens per second: real inference, cheap enough for every test.

Two choices make it well-behaved under greedy decoding:

- the ``output`` rows of the control tokens (unk, bos, eos) and of the byte tokens are zero, so their
  logits are exactly 0 while the ~100 character tokens' logits are random; the argmax is a character
  token (all of them being negative has probability ~2^-100). It therefore never emits EOS
  (``finish_reason`` is always ``"length"``) and its text is always valid UTF-8, whole characters only;
- the embeddings of all tokens, byte tokens included, are random, so any prompt (byte-fallback or not)
  conditions the output.

:func:`write_generated_gguf` writes larger models of the same kind (same vocabulary, same two choices)
for benchmarks: the shapes of :data:`GENERATED_SHAPES` (up to ~1.1 B parameters, several times
SmolLM2-135M), with grouped-query attention and weights quantised to Q4_0, Q4_1, Q8_0 or stored as F16. They
are as slow to run as a real model of their shape, which is what a benchmark needs; they are not for the
test suite (the 0.6 B one takes ~12 s and 335 MB to write in Q4_0).
"""

from __future__ import annotations

import os
import pathlib
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import gguf
    import numpy as np
    import numpy.typing as npt

__all__ = ["GENERATED_SHAPES", "TINY_MODEL_NAME", "ModelShape", "write_generated_gguf", "write_tiny_gguf"]

TINY_MODEL_NAME = "tiny"
"""Catalog name of the generated model (see :mod:`opengrid.engines.models`)."""

_N_EMBD = 64
_N_LAYER = 2
_N_HEAD = 4
_N_FF = 128
_N_CTX_TRAIN = 4096
_RMS_EPS = 1e-5


@dataclass(frozen=True)
class ModelShape:
    """The dimensions of a generated llama-architecture model."""

    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    """Key/value heads (grouped-query attention when fewer than ``n_head``)."""
    n_ff: int

    @property
    def n_params(self) -> int:
        """Parameters in the layers (the ~370-token embeddings and output add 2 x 370 x n_embd)."""
        kv = self.n_embd // self.n_head * self.n_head_kv
        per_layer = 2 * self.n_embd * self.n_embd + 2 * self.n_embd * kv + 3 * self.n_embd * self.n_ff
        return self.n_layer * (per_layer + 2 * self.n_embd)


GENERATED_SHAPES: dict[str, ModelShape] = {
    "tiny": ModelShape(_N_EMBD, _N_LAYER, _N_HEAD, _N_HEAD, _N_FF),
    "150m": ModelShape(768, 24, 12, 4, 2048),  # ~140 M in its layers: SmolLM2-135M's size
    "600m": ModelShape(1536, 24, 16, 4, 4096),  # ~600 M: 4.4x SmolLM2-135M
    "1b": ModelShape(2048, 24, 32, 8, 5632),  # ~1.1 B
}
"""Named shapes for :func:`write_generated_gguf` (and ``benchmarks/split_bench.py --model-size``)."""

_QUANTISED = {"q4_0", "q4_1", "q8_0", "f16", "f32"}

if TYPE_CHECKING:
    _Tensor = tuple[str, npt.NDArray[np.generic], gguf.GGMLQuantizationType | None]

# Printable ASCII except space (space is SentencePiece's "▁"), plus whole-token multi-byte characters so
# that the output exercises multi-byte UTF-8 without ever splitting a character across tokens.
_CHARS: tuple[str, ...] = (
    "▁",
    *(chr(c) for c in range(0x21, 0x7F)),
    *"éèàüöäßñçø€£—…«»",
)

_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def _vocab() -> tuple[list[str], list[gguf.TokenType], list[float]]:
    """Tokens, their types and SentencePiece scores; ids 0/1/2 are unk/bos/eos (llama.cpp's defaults)."""
    import gguf

    tokens = ["<unk>", "<s>", "</s>"]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [gguf.TokenType.BYTE] * 256
    tokens += list(_CHARS)
    types += [gguf.TokenType.NORMAL] * len(_CHARS)
    # Single characters never merge, so scores only need to be distinct and deterministic.
    scores = [0.0 if t != gguf.TokenType.NORMAL else -float(i) for i, t in enumerate(types)]
    return tokens, types, scores


def _normal(rng: np.random.RandomState, shape: tuple[int, ...], std: float) -> npt.NDArray[np.float32]:
    import numpy as np

    return (rng.standard_normal(shape) * std).astype(np.float32)


def write_tiny_gguf(path: pathlib.Path, *, seed: int = 0) -> pathlib.Path:
    """Write the tiny model for ``seed`` to ``path`` and return ``path``.

    Missing parent directories are created. The file is written to a temporary name of its own in the
    same directory and renamed into place, so a reader never sees a half-written model, and processes or
    threads racing to write the same model (workers starting together on a fresh machine) each rename a
    whole file over the other's: the last one wins, with the same bytes. The same seed always gives the
    same bytes (~530 KB).
    """
    # gguf and numpy are imported on use: a node imports this module for TINY_MODEL_NAME alone.
    import gguf
    import numpy as np

    path = pathlib.Path(path)
    tokens, types, scores = _vocab()
    n_vocab = len(tokens)
    rng = np.random.RandomState(seed)

    control_or_byte = np.array(
        [t in (gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.BYTE) for t in types]
    )
    token_embd = _normal(rng, (n_vocab, _N_EMBD), 1.0)
    output = _normal(rng, (n_vocab, _N_EMBD), 1.0)
    output[control_or_byte] = 0.0

    tensors: list[tuple[str, npt.NDArray[np.float32]]] = [("token_embd.weight", token_embd)]
    attn_std = _N_EMBD**-0.5
    for i in range(_N_LAYER):
        # numpy (rows, cols) becomes ggml ne = {cols, rows}: weights are stored (out_features, in_features).
        tensors += [
            (f"blk.{i}.attn_norm.weight", np.ones(_N_EMBD, dtype=np.float32)),
            (f"blk.{i}.attn_q.weight", _normal(rng, (_N_EMBD, _N_EMBD), attn_std)),
            (f"blk.{i}.attn_k.weight", _normal(rng, (_N_EMBD, _N_EMBD), attn_std)),
            (f"blk.{i}.attn_v.weight", _normal(rng, (_N_EMBD, _N_EMBD), attn_std)),
            (f"blk.{i}.attn_output.weight", _normal(rng, (_N_EMBD, _N_EMBD), attn_std)),
            (f"blk.{i}.ffn_norm.weight", np.ones(_N_EMBD, dtype=np.float32)),
            (f"blk.{i}.ffn_gate.weight", _normal(rng, (_N_FF, _N_EMBD), attn_std)),
            (f"blk.{i}.ffn_up.weight", _normal(rng, (_N_FF, _N_EMBD), attn_std)),
            (f"blk.{i}.ffn_down.weight", _normal(rng, (_N_EMBD, _N_FF), _N_FF**-0.5)),
        ]
    tensors += [
        ("output_norm.weight", np.ones(_N_EMBD, dtype=np.float32)),
        ("output.weight", output),
    ]

    stored = ((name, array, None) for name, array in tensors)
    return _write_gguf(
        path, f"opengrid-tiny-seed{seed}", GENERATED_SHAPES["tiny"], "f32", (tokens, types, scores), stored
    )


def write_generated_gguf(
    path: pathlib.Path,
    shape: ModelShape,
    *,
    seed: int = 0,
    file_type: str = "q4_0",
    progress: Callable[[str], None] | None = None,
) -> pathlib.Path:
    """Write a random llama-architecture model of ``shape`` to ``path`` and return ``path``.

    Like :func:`write_tiny_gguf` (same vocabulary; control and byte tokens never win the argmax; written
    to a temporary name and renamed), with the weight matrices stored as ``file_type`` (``q4_0``,
    ``q4_1``, ``q8_0``, ``f16`` or ``f32``; norms are always F32). Weights come from ``numpy.random.Generator(
    PCG64(seed))``: the same seed, shape and type give the same bytes. ``progress`` is called with a line
    per layer written (a 0.6 B model takes ~12 s on one core).
    """
    import gguf
    import numpy as np
    from gguf import quants

    if file_type not in _QUANTISED:
        raise ValueError(f"file_type must be one of {sorted(_QUANTISED)}, got {file_type!r}")
    if shape.n_embd % shape.n_head or shape.n_head % shape.n_head_kv:
        raise ValueError(f"n_head must divide n_embd and n_head_kv n_head, got {shape}")
    qtype = {
        "q4_0": gguf.GGMLQuantizationType.Q4_0,
        "q4_1": gguf.GGMLQuantizationType.Q4_1,
        "q8_0": gguf.GGMLQuantizationType.Q8_0,
        "f16": gguf.GGMLQuantizationType.F16,
        "f32": gguf.GGMLQuantizationType.F32,
    }[file_type]
    tokens, types, scores = _vocab()
    n_vocab = len(tokens)
    rng = np.random.Generator(np.random.PCG64(seed))
    kv = shape.n_embd // shape.n_head * shape.n_head_kv

    def normal(rows: int, cols: int, std: float) -> npt.NDArray[np.float32]:
        out = rng.standard_normal((rows, cols), dtype=np.float32)
        out *= np.float32(std)
        return out

    def stored(array: npt.NDArray[np.float32]) -> tuple[npt.NDArray[np.generic], gguf.GGMLQuantizationType]:
        if qtype == gguf.GGMLQuantizationType.F32:
            return array, qtype
        return quants.quantize(array, qtype), qtype

    def tensors() -> Iterator[tuple[str, npt.NDArray[np.generic], gguf.GGMLQuantizationType | None]]:
        control_or_byte = np.array(
            [t in (gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.BYTE) for t in types]
        )
        yield ("token_embd.weight", *stored(normal(n_vocab, shape.n_embd, 1.0)))
        std = shape.n_embd**-0.5
        ones = np.ones(shape.n_embd, dtype=np.float32)
        for i in range(shape.n_layer):
            if progress is not None:
                progress(f"layer {i + 1}/{shape.n_layer}")
            yield (f"blk.{i}.attn_norm.weight", ones, None)
            yield (f"blk.{i}.attn_q.weight", *stored(normal(shape.n_embd, shape.n_embd, std)))
            yield (f"blk.{i}.attn_k.weight", *stored(normal(kv, shape.n_embd, std)))
            yield (f"blk.{i}.attn_v.weight", *stored(normal(kv, shape.n_embd, std)))
            yield (f"blk.{i}.attn_output.weight", *stored(normal(shape.n_embd, shape.n_embd, std)))
            yield (f"blk.{i}.ffn_norm.weight", ones, None)
            yield (f"blk.{i}.ffn_gate.weight", *stored(normal(shape.n_ff, shape.n_embd, std)))
            yield (f"blk.{i}.ffn_up.weight", *stored(normal(shape.n_ff, shape.n_embd, std)))
            yield (f"blk.{i}.ffn_down.weight", *stored(normal(shape.n_embd, shape.n_ff, shape.n_ff**-0.5)))
        yield ("output_norm.weight", ones, None)
        output = normal(n_vocab, shape.n_embd, 1.0)
        output[control_or_byte] = 0.0
        yield ("output.weight", *stored(output))

    name = f"opengrid-generated-{shape.n_embd}x{shape.n_layer}-{file_type}-seed{seed}"
    return _write_gguf(path, name, shape, file_type, (tokens, types, scores), tensors())


def _write_gguf(
    path: pathlib.Path,
    name: str,
    shape: ModelShape,
    file_type: str,
    vocab: tuple[list[str], list[gguf.TokenType], list[float]],
    tensors: Iterator[_Tensor],
) -> pathlib.Path:
    """Write a llama GGUF with the generated vocabulary and ``tensors`` (name, array, its quantisation
    or None for a plain float array) atomically: to a temporary name of its own, then renamed to
    ``path``. The tensors are generated as the writer takes them (the writer holds them until the end)."""
    import gguf

    tokens, types, scores = vocab
    file_types = {
        "f32": gguf.LlamaFileType.ALL_F32,
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0,
        "q4_1": gguf.LlamaFileType.MOSTLY_Q4_1,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    # Unique per call, not per process: two threads of one process may write the same model at once.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")
    writer = gguf.GGUFWriter(tmp, arch="llama")
    try:
        try:
            writer.add_name(name)
            writer.add_context_length(_N_CTX_TRAIN)
            writer.add_embedding_length(shape.n_embd)
            writer.add_block_count(shape.n_layer)
            writer.add_feed_forward_length(shape.n_ff)
            writer.add_head_count(shape.n_head)
            writer.add_head_count_kv(shape.n_head_kv)
            writer.add_rope_dimension_count(shape.n_embd // shape.n_head)
            writer.add_layer_norm_rms_eps(_RMS_EPS)
            writer.add_file_type(file_types[file_type])
            writer.add_tokenizer_model("llama")
            writer.add_token_list(tokens)
            writer.add_token_types(types)
            writer.add_token_scores(scores)
            writer.add_unk_token_id(0)
            writer.add_bos_token_id(1)
            writer.add_eos_token_id(2)
            writer.add_add_bos_token(True)
            writer.add_add_eos_token(False)
            writer.add_chat_template(_CHAT_TEMPLATE)
            for tensor_name, array, raw_dtype in tensors:
                writer.add_tensor(tensor_name, array, raw_dtype=raw_dtype)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
        finally:
            writer.close()
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path

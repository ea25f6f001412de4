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
"""

from __future__ import annotations

import os
import pathlib
import uuid
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import gguf
    import numpy as np
    import numpy.typing as npt

__all__ = ["TINY_MODEL_NAME", "write_tiny_gguf"]

TINY_MODEL_NAME = "tiny"
"""Catalog name of the generated model (see :mod:`opengrid.engines.models`)."""

_N_EMBD = 64
_N_LAYER = 2
_N_HEAD = 4
_N_FF = 128
_N_CTX_TRAIN = 4096
_RMS_EPS = 1e-5

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

    path.parent.mkdir(parents=True, exist_ok=True)
    # Unique per call, not per process: two threads of one process may write the same model at once.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")
    writer = gguf.GGUFWriter(tmp, arch="llama")
    try:
        try:
            writer.add_name(f"opengrid-tiny-seed{seed}")
            writer.add_context_length(_N_CTX_TRAIN)
            writer.add_embedding_length(_N_EMBD)
            writer.add_block_count(_N_LAYER)
            writer.add_feed_forward_length(_N_FF)
            writer.add_head_count(_N_HEAD)
            writer.add_head_count_kv(_N_HEAD)
            writer.add_rope_dimension_count(_N_EMBD // _N_HEAD)
            writer.add_layer_norm_rms_eps(_RMS_EPS)
            writer.add_file_type(gguf.LlamaFileType.ALL_F32)
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
            for name, array in tensors:
                writer.add_tensor(name, array)
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

"""How much memory a GGUF model needs, by layer: the planner's input (opengrid/core/split_plan.py).

Read from the file's tensor table and metadata (no weights are loaded): each ``blk.N.*`` tensor counts
for layer N, ``token_embd`` for the input layer, ``output``/``output_norm`` for the output layer (a model
with tied embeddings gets the embedding matrix again there, as llama.cpp places a copy with the output
layer). Each layer also holds its KV cache at ``n_ctx`` (f16 keys and values: the contract's cache type),
and the output layer its logits scratch: ``n_batch`` rows of ``n_vocab`` floats, which llama.cpp allocates
on the device holding the output layer (96 MiB for SmolLM2's 49,152 tokens at n_batch 512: more than its
output matrix; measured with the RPC backend).
"""

from __future__ import annotations

import pathlib
import re

from opengrid.core.split_plan import ModelFootprint
from opengrid.errors import EngineError

__all__ = ["model_footprint"]

_BLOCK = re.compile(r"^blk\.(\d+)\.")
_KV_BYTES = 2  # f16


def _field_int(reader: object, key: str) -> int | None:
    fields = getattr(reader, "fields", {})
    field = fields.get(key)
    if field is None or not field.data:
        return None
    return int(field.parts[field.data[0]][0])


def model_footprint(
    path: pathlib.Path, *, n_ctx: int, n_batch: int = 512, overhead_bytes: int = 64 * 1024 * 1024
) -> ModelFootprint:
    """The footprint of the GGUF at ``path`` with a KV cache of ``n_ctx`` tokens, evaluated in batches of
    ``n_batch`` (the contract's 512, capped at ``n_ctx`` as the engine does); EngineError if the file is
    not a GGUF with repeating layers."""
    import gguf  # the node extra's; imported here so the planner's users without it still import us

    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as exc:  # the library raises ValueError, OSError, struct errors
        raise EngineError(f"cannot read {path} as a GGUF model: {exc}") from exc
    arch_field = reader.fields.get("general.architecture")
    arch = bytes(arch_field.parts[arch_field.data[0]]).decode() if arch_field is not None else "llama"
    n_layer = _field_int(reader, f"{arch}.block_count")
    n_embd = _field_int(reader, f"{arch}.embedding_length")
    n_head = _field_int(reader, f"{arch}.attention.head_count")
    if not n_layer or not n_embd or not n_head:
        raise EngineError(
            f"{path} does not say its layer count, width and heads ({arch}.*): not a model to split"
        )
    n_head_kv = _field_int(reader, f"{arch}.attention.head_count_kv") or n_head
    head_dim = _field_int(reader, f"{arch}.attention.key_length") or n_embd // n_head
    kv_per_layer = 2 * n_ctx * n_head_kv * head_dim * _KV_BYTES
    layers = [0] * n_layer
    input_bytes = output_bytes = 0
    n_vocab = 0
    has_output = False
    for tensor in reader.tensors:
        size = int(tensor.n_bytes)
        match = _BLOCK.match(tensor.name)
        if match is not None and int(match.group(1)) < n_layer:
            layers[int(match.group(1))] += size
        elif tensor.name.startswith("token_embd"):
            input_bytes += size
            n_vocab = int(tensor.shape[-1])  # ne = {n_embd, n_vocab}
        elif tensor.name.startswith("output"):
            output_bytes += size
            has_output = has_output or tensor.name.startswith("output.")
    if not has_output:
        output_bytes += input_bytes  # tied embeddings: llama.cpp puts a copy with the output layer
    output_bytes += min(n_batch, n_ctx) * n_vocab * 4  # f32 logits of one batch
    return ModelFootprint(
        input_bytes=input_bytes,
        layer_bytes=tuple(b + kv_per_layer for b in layers),
        output_bytes=output_bytes,
        overhead_bytes=overhead_bytes,
    )

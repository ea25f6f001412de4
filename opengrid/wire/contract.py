"""The decoding contract: everything that decides which tokens a model emits for a prompt.

Replicas are compared only within one *numerical class*: same model file, same backend build, same
decoding settings (spec/verification.md). llama.cpp greedy output is bitwise identical across runs,
processes and thread counts on one build, but n_batch=1, flash attention and the KV-cache type change it,
so those are pinned here and sent with every job.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Final

import msgspec

SHA256_HEX_CHARS: Final = 64
MAX_BACKEND_CHARS: Final = 256
"""Characters of the backend's name, version and KV-cache type (like every name-like wire field)."""
Sha256Text = Annotated[str, msgspec.Meta(max_length=SHA256_HEX_CHARS)]
BackendText = Annotated[str, msgspec.Meta(max_length=MAX_BACKEND_CHARS)]


class DecodingContract(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Pinned decoding settings; its hash identifies the numerical class of a job."""

    model_sha256: Sha256Text
    """Hex sha256 of the GGUF file: names the exact weights, not a marketing name."""
    backend: BackendText = "llama.cpp"
    backend_version: BackendText = ""
    """The engine build (llama-cpp-python version); different builds may round differently."""
    temperature: float = 0.0
    """0.0 means greedy: the argmax token at every step."""
    top_k: int = 1
    repeat_penalty: float = 1.0
    seed: int = 0
    n_batch: int = 512
    """Must be >= 2: n_batch=1 takes a different matmul path and changes the logits."""
    flash_attn: bool = False
    kv_cache_type: BackendText = "f16"

    def digest(self) -> bytes:
        """32-byte sha256 of the canonical msgpack encoding: the numerical class id."""
        return hashlib.sha256(msgspec.msgpack.encode(self)).digest()

"""The decoding contract: everything that decides which tokens a model emits for a prompt.

Replicas are compared only within one *numerical class*: same model file, same backend build, same
decoding settings (spec/verification.md). llama.cpp greedy output is bitwise identical across runs,
processes and thread counts on one build, but n_batch=1, flash attention and the KV-cache type change it,
so those are pinned here and sent with every job.

A worker announces its contract with greedy decoding (the defaults below). A job's contract is the class's
contract with the client's sampling settings written in (``DecodingContract.sampled``): replicas then run
the same sampler with the same noise, and their attestations (and the receipt) sign the settings too.
``numerical_class`` strips them again to find the workers that can run the job (spec/verification.md §11).
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
MAX_TEMPERATURE: Final = 10.0
"""The sampler's largest temperature (``opengrid.core.audit.SamplingParams``)."""
MAX_TOP_K: Final = 2**32 - 1
"""``top_k`` is a 32-bit count (0 = off); no vocabulary is larger."""
MAX_SEED: Final = 2**64 - 1
"""Client seeds are unsigned 64-bit integers (msgpack integers stop there)."""
Temperature = Annotated[float, msgspec.Meta(ge=0.0, le=MAX_TEMPERATURE)]
"""0.0: greedy; NaN is refused (it fails both bounds)."""
TopK = Annotated[int, msgspec.Meta(ge=0, le=MAX_TOP_K)]
TopP = Annotated[float, msgspec.Meta(gt=0.0, le=1.0)]
"""In (0, 1]; 1.0 = off."""
NucleusMass = Annotated[float, msgspec.Meta(gt=0.0, lt=1.0)]
"""A contract's ``top_p`` when present: 1.0 (off) is written by leaving the field out."""
Seed = Annotated[int, msgspec.Meta(ge=0)]
"""0..``MAX_SEED``: msgspec takes no bound above int64 and msgpack integers stop at 2**64-1 anyway."""


def sampling_problem(temperature: object, top_k: object, top_p: object, seed: object) -> str:
    """Why these sampling settings cannot be sent (wrong type or out of range, with the value and the
    range), or "" when they can. The one check behind the SDK, the CLI and the API, matching the wire's
    bounds (``SubmitJob``) and the sampler's (``opengrid.core.audit.SamplingParams``)."""
    checks: tuple[tuple[str, object, type | tuple[type, ...], str], ...] = (
        ("temperature", temperature, (int, float), f"a number in [0, {MAX_TEMPERATURE:g}] (0 = greedy)"),
        ("top_k", top_k, int, f"an integer in 0..{MAX_TOP_K} (0 = off)"),
        ("top_p", top_p, (int, float), "a number in (0, 1] (1 = off)"),
        ("seed", seed, int, "an integer in 0..2**64-1"),
    )
    for name, value, kind, wanted in checks:
        if isinstance(value, bool) or not isinstance(value, kind):
            return f"{name} must be {wanted}, got {value!r} ({type(value).__name__})"
    assert isinstance(temperature, (int, float)) and isinstance(top_p, (int, float))  # checked above
    assert isinstance(top_k, int) and isinstance(seed, int)
    if not 0.0 <= temperature <= MAX_TEMPERATURE:  # NaN fails too
        return f"temperature must be in [0, {MAX_TEMPERATURE:g}] (0 = greedy), got {temperature}"
    if not 0 <= top_k <= MAX_TOP_K:
        return f"top_k must be in 0..{MAX_TOP_K} (0 = off), got {top_k}"
    if not 0.0 < top_p <= 1.0:
        return f"top_p must be in (0, 1] (1 = off), got {top_p}"
    if not 0 <= seed <= MAX_SEED:
        return f"seed must be in 0..2**64-1, got {seed}"
    return ""


SEEDED_SAMPLER_BACKENDS: Final = frozenset({"llama.cpp", "llama.cpp+gpu", "llama.cpp+rpc"})
"""Backends (``DecodingContract.backend``) that run the project's seeded sampler: the in-process engine,
on the CPU, a GPU, or split across members (opengrid/engines/split.py runs the same engine code)."""


class DecodingContract(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Pinned decoding settings; its hash identifies the numerical class of a job."""

    model_sha256: Sha256Text
    """Hex sha256 of the GGUF file: names the exact weights, not a marketing name."""
    backend: BackendText = "llama.cpp"
    backend_version: BackendText = ""
    """The engine build (llama-cpp-python version); different builds may round differently."""
    temperature: Temperature = 0.0
    """0.0 means greedy: the argmax token at every step. > 0: Gumbel-max sampling (spec §11), at most 10."""
    top_k: TopK = 1
    """Greedy contracts say 1; a sampled job's contract carries the client's ``top_k`` (0 = off)."""
    repeat_penalty: float = 1.0
    seed: Seed = 0
    """The client's seed (0 for greedy jobs): with the job id it fixes the sampling noise (spec §11.2)."""
    n_batch: int = 512
    """Must be >= 2: n_batch=1 takes a different matmul path and changes the logits."""
    flash_attn: bool = False
    kv_cache_type: BackendText = "f16"
    top_p: NucleusMass | msgspec.UnsetType = msgspec.UNSET
    """Nucleus mass kept before sampling, in (0, 1). Absent (``UNSET``) means 1.0, keeping every token,
    and is then not encoded at all: contracts without it keep the bytes and digests they had before the
    field existed, and an explicit 1.0 is refused so that each contract has one encoding. Read it with
    ``top_p_value``."""

    @property
    def top_p_value(self) -> float:
        """``top_p`` as a number: 1.0 when absent."""
        return 1.0 if isinstance(self.top_p, msgspec.UnsetType) else self.top_p

    @property
    def greedy(self) -> bool:
        """True when the contract decodes greedily (temperature 0): seed, top_k and top_p do not matter."""
        return self.temperature <= 0.0

    @property
    def runs_seeded_sampler(self) -> bool:
        """Whether a worker of this class runs the job's own sampler (spec §11) and can score a sampled
        claim: the in-process llama.cpp engine does; an HTTP engine (a llama_cpp.server or vLLM behind
        the worker) samples with the server's own RNG and names top tokens by text, so it takes greedy
        jobs and greedy audits only."""
        return self.backend in SEEDED_SAMPLER_BACKENDS

    def numerical_class(self) -> DecodingContract:
        """This contract with greedy decoding settings: the class a worker announces and is matched on.

        A job's contract differs from its class only by the client's sampling settings, which any worker
        of the class honours (they are applied by the job's own sampler, spec §11)."""
        return msgspec.structs.replace(self, temperature=0.0, top_k=1, top_p=msgspec.UNSET, seed=0)

    def sampled(self, *, temperature: float, top_k: int, top_p: float, seed: int) -> DecodingContract:
        """The contract of a job of this class with the client's sampling settings. Greedy settings
        (``temperature`` 0) give the class itself, whatever the others say: a greedy job's seed and masks
        change nothing, so its contract and digest stay the class's."""
        if temperature <= 0.0:
            return self.numerical_class()
        mass: float | msgspec.UnsetType = msgspec.UNSET if top_p >= 1.0 else top_p
        return msgspec.structs.replace(self, temperature=temperature, top_k=top_k, top_p=mass, seed=seed)

    def digest(self) -> bytes:
        """32-byte sha256 of the canonical msgpack encoding: the numerical class id."""
        return hashlib.sha256(msgspec.msgpack.encode(self)).digest()

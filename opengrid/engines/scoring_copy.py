"""Scoring copies: the same weights in a format llama.cpp's CPU backend can score in batches.

An audit is one forward pass over prompt + claimed tokens (spec/verification.md §12). Its cost against
generation depends on whether llama.cpp has a *batched* matrix kernel for the weights' format: for
F32/F16/BF16/Q8_0/Q4_0/Q5_0/IQ4_NL on x86, llamafile's tinyBLAS multiplies many rows at once (and the
repacked layouts cover Q4_0/IQ4_NL/Q4_K), but **Q4_1** has none, so its prefill runs the same per-row dot
products as decoding and an audit of 128 tokens costs ~0.55 of generating them on one CPU thread
(benchmarks/README.md, "Audit cost"). SmolLM2-135M-Instruct, the default model, is Q4_1.

A scoring copy is derived **deterministically** from the exact GGUF a job names: its file is hashed and
must equal the job's sha256 before anything is converted; every Q4_1 tensor is dequantized (exactly, in
numpy: ``d · q + m``) and written as ``bf16``, ``f16`` or ``f32``, or re-quantized to ``q8_0``; every
other tensor and every metadata key are copied unchanged, and two keys record the source's sha256 and
the copy type. The same source and type give the same bytes on any machine. The copy is used only to
**score**; the prover generates with the original. Its arithmetic (dequantized weights times activations
in the copy's format) differs from the prover's (Q4_1 weights times Q8_1 activations) by rounding, which is
the honest heterogeneity the audit tolerance already covers; spec/verification.md §12.5 gives the
calibration and the cost.

Copies live in ``cache_dir / "scoring-copies" / "<source sha256>.<type>.v<format>.gguf"``, written once
(atomically: a temporary name, then a rename) and re-used. Memory: the copy is loaded beside the
original (SmolLM2-135M: 98 MB original, 244 MB bf16 copy, 145 MB q8_0).
"""

from __future__ import annotations

import math
import os
import pathlib
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal, cast

from opengrid.engines.base import ModelInfo
from opengrid.engines.models import sha256_file
from opengrid.errors import EngineError, VerificationError

if TYPE_CHECKING:
    import gguf
    import numpy as np
    import numpy.typing as npt

__all__ = [
    "DEFAULT_SCORING_COPY",
    "SCORING_COPY_TYPES",
    "ScoringCopy",
    "ScoringCopyType",
    "auto_scoring_copy",
    "make_scoring_copy",
    "scoring_copies_of",
    "scoring_copy_path",
]

ScoringCopyType = Literal["bf16", "q8_0", "f16", "f32"]
SCORING_COPY_TYPES: Final[tuple[ScoringCopyType, ...]] = ("bf16", "q8_0", "f16", "f32")
"""Copy types, the default (``bf16``: the cheapest to score and closest to the prover, §12.5) first."""

DEFAULT_SCORING_COPY: Final[ScoringCopyType] = "bf16"
"""What ``load_engine(score_with="auto")`` makes for a Q4_1 model on a CPU that multiplies bf16 natively
(§12.5 says why; :func:`auto_scoring_copy` picks)."""

_WITHOUT_NATIVE_BF16: Final[ScoringCopyType] = "f16"
"""The copy for a CPU build without AVX512_BF16: there ggml converts bf16 to f32 row by row and ``bf16``
scored at 0.42 of generating, ``f16`` (F16C) at 0.36, the cheapest measured (§12.5, AVX2-only build)."""


def auto_scoring_copy(system_info: str | None = None) -> ScoringCopyType:
    """The scoring copy ``score_with="auto"`` makes on this llama.cpp build: ``bf16`` where its CPU
    backend multiplies bf16 natively (``AVX512_BF16 = 1`` in ``llama_print_system_info()``), else
    ``f16``. ``system_info`` overrides what the build reports (tests)."""
    if system_info is None:
        import llama_cpp

        system_info = llama_cpp.llama_print_system_info().decode(errors="replace")
    native = "AVX512_BF16 = 1" in system_info
    return DEFAULT_SCORING_COPY if native else _WITHOUT_NATIVE_BF16

SOURCE_SHA256_KEY: Final = "opengrid.scoring_copy.source_sha256"
"""GGUF metadata key of a copy: the sha256 of the file it was derived from."""
TYPE_KEY: Final = "opengrid.scoring_copy.type"
"""GGUF metadata key of a copy: its type (one of :data:`SCORING_COPY_TYPES`)."""

# Bump when the converter's output changes, so a copy written by an older version is not re-used.
_FORMAT: Final = 1


@dataclass(frozen=True)
class ScoringCopy:
    """A scoring copy on this machine, and the model it was derived from."""

    source: ModelInfo
    """The original model (what jobs and contracts name, by its sha256)."""
    kind: ScoringCopyType
    """The copy's type."""
    path: pathlib.Path
    """The copy's GGUF file."""


def scoring_copy_path(source_sha256: str, kind: ScoringCopyType, cache_dir: pathlib.Path) -> pathlib.Path:
    """Where the ``kind`` copy of the model with ``source_sha256`` lives under ``cache_dir``."""
    return cache_dir / "scoring-copies" / f"{source_sha256}.{kind}.v{_FORMAT}.gguf"


def scoring_copies_of(source_sha256: str, cache_dir: pathlib.Path) -> list[pathlib.Path]:
    """Every scoring copy of the model with ``source_sha256`` under ``cache_dir``, of any type and
    converter format (what ``opengrid models remove`` deletes with the model), sorted."""
    folder = cache_dir / "scoring-copies"
    if not folder.is_dir():
        return []
    return sorted(path for path in folder.glob(f"{source_sha256}.*.v*.gguf") if path.is_file())


def make_scoring_copy(model: ModelInfo, kind: ScoringCopyType, *, cache_dir: pathlib.Path) -> ScoringCopy:
    """The ``kind`` scoring copy of ``model``: re-used from ``cache_dir`` when there, else written.

    Before converting, ``model.path`` is hashed and must be ``model.sha256`` (else
    :class:`VerificationError`: a copy of other weights would audit against another model). A copy found
    in the cache is trusted by its name (the source's sha256, the type, the converter's format), as the
    rename that made it was atomic; reading its metadata back would cost seconds (the vocabulary).
    Blocking: ~5 s for SmolLM2-135M on one core, once.
    """
    if kind not in SCORING_COPY_TYPES:
        raise EngineError(f"unknown scoring copy type {kind!r}; use one of {', '.join(SCORING_COPY_TYPES)}")
    path = scoring_copy_path(model.sha256, kind, cache_dir)
    if path.is_file():  # its name carries the source's sha256, the type and the format; written atomically
        return ScoringCopy(source=model, kind=kind, path=path)
    actual = sha256_file(model.path)
    if actual != model.sha256:
        raise VerificationError(
            f"model file {model.path} has sha256 {actual}, not the {model.sha256} it was named by; no "
            "scoring copy is made of other weights. Re-resolve the model (opengrid models list) or fetch "
            "the named file again"
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EngineError(
            f"could not create {path.parent} for a scoring copy: {exc}; pass a writable cache_dir"
        ) from exc
    # Unique per call: two threads or processes may write the same copy at once; the rename is atomic.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        write_scoring_copy(model.path, tmp, kind, source_sha256=model.sha256)
        os.replace(tmp, path)
    except OSError as exc:
        raise EngineError(
            f"could not write the scoring copy {path}: {exc}; pass a writable cache_dir"
        ) from exc
    finally:
        tmp.unlink(missing_ok=True)
    return ScoringCopy(source=model, kind=kind, path=path)


def write_scoring_copy(source: pathlib.Path, dest: pathlib.Path, kind: str, *, source_sha256: str) -> None:
    """Write the ``kind`` copy of the GGUF at ``source`` to ``dest`` (no hashing, no cache: see
    :func:`make_scoring_copy`). Tensors are converted one at a time, so memory stays at one tensor.

    ``kind`` may also be ``"q4_0"``: not a scoring copy (it is coarser than the source) but a cheaper
    model of the same weights, which tests and benchmarks use as a model swap."""
    import gguf

    if kind not in (*SCORING_COPY_TYPES, "q4_0"):
        raise EngineError(f"unknown copy type {kind!r}; use one of {', '.join(SCORING_COPY_TYPES)}")

    reader = _read(source)
    arch = reader.fields.get("general.architecture")
    if arch is None:
        raise EngineError(f"{source} has no general.architecture; it is not a model GGUF")
    writer = gguf.GGUFWriter(dest, arch=str(arch.contents()), endianess=reader.endianess)
    try:
        for field in reader.fields.values():
            # GGUF.* are the reader's virtual fields; the writer writes the architecture itself.
            if field.name == "general.architecture" or field.name.startswith("GGUF."):
                continue
            if field.name in (SOURCE_SHA256_KEY, TYPE_KEY):
                continue
            value_type = field.types[0]
            sub_type = field.types[-1] if value_type == gguf.GGUFValueType.ARRAY else None
            writer.add_key_value(field.name, field.contents(), value_type, sub_type=sub_type)
        writer.add_string(SOURCE_SHA256_KEY, source_sha256)
        writer.add_string(TYPE_KEY, kind)
        target = _target(kind)
        for tensor in reader.tensors:
            if tensor.tensor_type == gguf.GGMLQuantizationType.Q4_1:
                # The reader gives ggml's order (ne0 = a row's length first); numpy's is the reverse.
                shape = tuple(int(n) for n in reversed(tensor.shape.tolist()))
                rows = math.prod(shape[:-1])
                writer.add_tensor_info(
                    tensor.name, shape, _numpy_dtype(kind), _converted_nbytes(kind, rows, shape[-1]), target
                )
            else:
                writer.add_tensor_info(
                    tensor.name, tensor.data.shape, tensor.data.dtype, tensor.data.nbytes, tensor.tensor_type
                )
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for tensor in reader.tensors:
            if tensor.tensor_type == gguf.GGMLQuantizationType.Q4_1:
                writer.write_tensor_data(_convert(tensor.data, kind), tensor_endianess=reader.endianess)
            else:
                writer.write_tensor_data(tensor.data, tensor_endianess=reader.endianess)
    finally:
        writer.close()


def _read(path: pathlib.Path) -> gguf.GGUFReader:
    import gguf

    try:
        return gguf.GGUFReader(path)
    except (OSError, ValueError) as exc:
        raise EngineError(f"could not read {path} as GGUF: {exc}") from exc


def _target(kind: str) -> gguf.GGMLQuantizationType:
    import gguf

    return cast(gguf.GGMLQuantizationType, getattr(gguf.GGMLQuantizationType, kind.upper()))


def _numpy_dtype(kind: str) -> np.dtype[np.generic]:
    """The dtype the writer is told: float for f32/f16 (element shape), bytes for bf16/q8_0 (raw)."""
    import numpy as np

    return cast(
        "np.dtype[np.generic]", np.dtype({"f32": np.float32, "f16": np.float16}.get(kind, np.float32))
    )


def _converted_nbytes(kind: str, rows: int, cols: int) -> int:
    import gguf

    block, size = gguf.GGML_QUANT_SIZES[_target(kind)]
    return rows * (cols // block) * size


def _convert(data: npt.NDArray[np.uint8], kind: str) -> npt.NDArray[np.generic]:
    """Dequantize one Q4_1 tensor (raw bytes, one row per row) and encode it as ``kind``."""
    import gguf
    import numpy as np

    weights = gguf.quants.dequantize(data, gguf.GGMLQuantizationType.Q4_1).astype(np.float32, copy=False)
    if kind == "f32":
        return weights
    if kind == "f16":
        return weights.astype(np.float16)
    return cast("npt.NDArray[np.generic]", gguf.quants.quantize(weights, _target(kind)))

"""The audit rule: accept or reject a claimed output from an auditor's per-position evidence (spec §12).

An auditor holding the same weights runs one forward pass over prompt + claimed tokens and reports, per
output position, a :class:`~opengrid.core.sampling.PositionEvidence`: how far (in logits) the claimed
token is from the token the job's sampler would have chosen on the auditor's arithmetic. Honest provers on
other hardware land within a few tenths of a logit (different rounding moves logits by ~0.1, at most 0.44
measured across three CPU builds); a prover that did not run the model, ran another model, or changed a
token lands logits away. :func:`judge` applies one tolerance to every position, in logits, so it scales
with temperature by construction (a gap is ``T`` times a perturbed-score difference).

:func:`evidence_commitment` hashes the evidence in a canonical encoding: an auditor signs it with its
verdict, so an auditor that lied ("pass" on a wrong output) is provable later by anyone who re-scores.

This module also holds the sampler's plain data (:class:`SamplingParams`, :class:`PositionEvidence`) and
imports no numpy: a coordinator judges evidence without loading it. The numpy side (choosing tokens and
computing evidence from logits) is :mod:`opengrid.core.sampling`.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from opengrid.errors import JobError

__all__ = [
    "DEFAULT_GAP_TOLERANCE",
    "EVIDENCE_DOMAIN",
    "GREEDY",
    "MAX_JOB_ID_BYTES",
    "MAX_SEED",
    "AuditPolicy",
    "AuditVerdict",
    "PositionEvidence",
    "SamplingParams",
    "evidence_commitment",
    "judge",
]

DEFAULT_GAP_TOLERANCE = 0.75
"""Logits. The largest honest gap measured across three CPU builds of llama.cpp (AVX-512, AVX2, AVX) was
0.44 on SmolLM2-135M (60 prompts x 128 tokens, greedy and Gumbel-max at T = 0.8); coarse cheats sit at
2-26 (spec §12.3). Backends not yet measured (GPUs) may need more: calibrate before lowering margins."""

EVIDENCE_DOMAIN = b"opengrid/audit-evidence/v1"
"""Domain-separation prefix of :func:`evidence_commitment`."""


MAX_SEED = 2**64 - 1
"""Client seeds are unsigned 64-bit integers."""

MAX_JOB_ID_BYTES = 255
"""Job ids longer than this cannot be encoded in the noise key or the evidence commitment."""


@dataclass(frozen=True)
class SamplingParams:
    """How a job's tokens are chosen; part of what the client asks for and what an auditor checks."""

    temperature: float = 0.0
    """0.0: greedy (argmax). > 0: Gumbel-max over ``logits / temperature``. At most 10."""
    top_k: int = 0
    """Keep the ``top_k`` highest logits (ties by lower id) before choosing; 0 keeps all."""
    top_p: float = 1.0
    """Then keep the smallest prefix (same order) whose softmax(logits / T) mass reaches ``top_p``;
    1.0 keeps all. In (0, 1]."""
    seed: int = 0
    """The client's seed, 0..2**64-1: with the job id it fixes the noise."""

    def __post_init__(self) -> None:
        if not (0.0 <= self.temperature <= 10.0) or math.isnan(self.temperature):
            raise JobError(f"temperature must be in [0, 10] (0 = greedy), got {self.temperature}")
        if self.top_k < 0:
            raise JobError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not (0.0 < self.top_p <= 1.0):
            raise JobError(f"top_p must be in (0, 1] (1 = off), got {self.top_p}")
        if not (0 <= self.seed <= MAX_SEED):
            raise JobError(f"seed must be in 0..2**64-1, got {self.seed}")

    @property
    def greedy(self) -> bool:
        """True when the choice is the plain argmax (temperature 0): seed and masks do not matter."""
        return self.temperature == 0.0


GREEDY = SamplingParams()
"""The default sampler: the argmax at every step (temperature 0)."""


@dataclass(frozen=True)
class PositionEvidence:
    """What an auditor's model thinks of one claimed token (spec §12.1); plain floats, canonical order."""

    token: int
    """The claimed token id."""
    logprob: float
    """log softmax(logits) of the claimed token (temperature 1: the model's own belief)."""
    gap: float
    """In logits: ``T * (best masked perturbed score - claimed token's perturbed score)`` (``T = 1``
    for greedy); 0 when the claimed token is the auditor's own choice, >= 0 always."""
    rank: int
    """Tokens ahead of the claimed one in logit order (0 = the argmax; ties by lower id)."""
    mask_margin: float
    """In logits: how far below the lowest logit the masks keep the claimed token's logit lies; 0 when
    the masks keep it (always 0 for greedy or with no mask)."""


@dataclass(frozen=True)
class AuditPolicy:
    """The tolerance an audit applies; one number for every temperature (gaps are in logits)."""

    gap_tolerance: float = DEFAULT_GAP_TOLERANCE
    """Largest accepted gap (logits) between the sampler's best perturbed score and the claimed token's,
    and the largest accepted distance below the top_k/top_p mask boundary (``mask_margin``). Default 0.5."""

    def __post_init__(self) -> None:
        if not (self.gap_tolerance >= 0.0 and math.isfinite(self.gap_tolerance)):
            raise JobError(f"gap_tolerance must be a finite number of logits >= 0, got {self.gap_tolerance}")


@dataclass(frozen=True)
class AuditVerdict:
    """The outcome of one audit: accepted, or the first failing position with its values."""

    accepted: bool
    positions: int
    """Positions scored."""
    max_gap: float
    """The largest gap over all positions (logits); 0.0 when nothing was scored."""
    first_failure: int | None = None
    """Output position (0 = first generated token) of the first position over tolerance, if any."""
    failure: PositionEvidence | None = None
    """The evidence at ``first_failure``."""
    reason: str = ""
    """Why it was rejected, with the values; empty when accepted."""


def judge(evidence: Sequence[PositionEvidence], policy: AuditPolicy | None = None) -> AuditVerdict:
    """Accept when every position's gap and mask margin are within ``policy.gap_tolerance``.

    ``evidence[i]`` is output position ``i``. An empty evidence list is rejected: an audit that scored
    nothing checked nothing (a claimed empty output still has its end-of-generation position).
    A NaN value (a broken engine) fails its position.
    """
    policy = policy or AuditPolicy()
    tolerance = policy.gap_tolerance
    if not evidence:
        return AuditVerdict(
            accepted=False, positions=0, max_gap=0.0, reason="no positions were scored; nothing was checked"
        )
    max_gap = 0.0
    first: int | None = None
    reason = ""
    for i, item in enumerate(evidence):
        gap_ok = item.gap <= tolerance  # False for NaN
        margin_ok = item.mask_margin <= tolerance
        if not math.isnan(item.gap):
            max_gap = max(max_gap, item.gap)
        if first is None and not (gap_ok and margin_ok):
            first = i
            if not gap_ok:
                reason = (
                    f"position {i}: claimed token {item.token} is {item.gap:.3f} logits below the "
                    f"sampler's choice (tolerance {tolerance}); rank {item.rank}, logprob {item.logprob:.3f}"
                )
            else:
                reason = (
                    f"position {i}: claimed token {item.token} lies {item.mask_margin:.3f} logits outside "
                    f"the top_k/top_p mask (tolerance {tolerance}); rank {item.rank}"
                )
    if first is None:
        return AuditVerdict(accepted=True, positions=len(evidence), max_gap=max_gap)
    return AuditVerdict(
        accepted=False,
        positions=len(evidence),
        max_gap=max_gap,
        first_failure=first,
        failure=evidence[first],
        reason=reason,
    )


_POSITION = struct.Struct(">IddId")
_PARAMS = struct.Struct(">dIdQ")


def evidence_commitment(job_id: bytes, params: SamplingParams, evidence: Sequence[PositionEvidence]) -> bytes:
    """32-byte sha256 over the canonical encoding of an auditor's evidence (spec §12.4).

    ``EVIDENCE_DOMAIN || u8 len(job_id) || job_id || f64be temperature || u32be top_k || f64be top_p ||
    u64be seed || u32be count || count x (u32be token || f64be logprob || f64be gap || u32be rank ||
    f64be mask_margin)``. Floats are IEEE 754 binary64 exactly as reported.
    """
    if len(job_id) > MAX_JOB_ID_BYTES:
        raise JobError(f"a job id is at most {MAX_JOB_ID_BYTES} bytes, got {len(job_id)}")
    digest = hashlib.sha256()
    digest.update(EVIDENCE_DOMAIN + bytes([len(job_id)]) + job_id)
    digest.update(_PARAMS.pack(params.temperature, params.top_k, params.top_p, params.seed))
    digest.update(len(evidence).to_bytes(4, "big"))
    for item in evidence:
        digest.update(_POSITION.pack(item.token, item.logprob, item.gap, item.rank, item.mask_margin))
    return digest.digest()

"""The token sampler, specified exactly so that any engine can recompute a choice (spec/verification.md §11).

A job's next token is chosen from the model's logits by this module, never by an engine's own sampler or
random-number generator, so that an auditor holding the same weights on other hardware can recompute what
the prover should have chosen from its own logits and measure how far the claimed token is from it:

- **greedy** (``temperature == 0``): the argmax of the logits; ties go to the lowest token id.
- **seeded sampling** (``temperature > 0``): Gumbel-max. ``token = argmax_i(logit_i / T + g_i)`` over the
  tokens the ``top_k`` / ``top_p`` masks keep, where ``g_i = -log(-log(u_i))`` and ``u_i`` in (0, 1) is
  derived from (job id, client seed, output position, token id) by :func:`uniforms`: a BLAKE2b key per
  position, then SplitMix64 per token id. The prover cannot choose the noise (the job id and the client's
  seed fix it) and the auditor recomputes it. Gumbel-max draws exactly from ``softmax(logits / T)``
  restricted to the mask, and its choice moves only when logits move by about the gap between the two
  best perturbed scores, so the auditor's tolerance is the same gap test as for greedy (measured:
  shared/notes/verification.md).

The plain data (:class:`SamplingParams`, :class:`PositionEvidence`) lives in :mod:`opengrid.core.audit`,
which imports no numpy, so a coordinator can judge evidence without loading it; it is re-exported here.

Everything here is numpy over one row of logits (a 49k-token vocabulary costs ~1 ms per position).
Gaps are reported in **logits** (perturbed-score differences multiplied by ``T``), so one tolerance
serves every temperature: an arithmetic difference of δ logits moves a perturbed score by δ/T.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from opengrid.core.audit import MAX_JOB_ID_BYTES, MAX_SEED, PositionEvidence, SamplingParams
from opengrid.errors import JobError, VerificationError

__all__ = [
    "NOISE_DOMAIN",
    "PositionEvidence",
    "SamplingParams",
    "candidate_mask",
    "choose",
    "gumbel_noise",
    "noise_key",
    "passing_tokens",
    "perturbed_scores",
    "score_position",
    "score_positions",
    "uniforms",
]

NOISE_DOMAIN = b"opengrid/sampling/gumbel/v1"
"""Domain-separation prefix of the per-position key (spec/verification.md §11.2)."""

_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_TWO_POW_MINUS_52 = 2.0**-52
_NOISE_BLOCK_ROWS = 8  # score_positions' rows per block of Gumbel noise (measured: 4-8 fastest)

Logits = npt.NDArray[np.floating]


def noise_key(job_id: bytes, seed: int, position: int) -> int:
    """The 64-bit key of one output position: BLAKE2b-64 over a canonical encoding (spec §11.2).

    Encoding: ``NOISE_DOMAIN || u8 len(job_id) || job_id || u64be seed || u32be position``; the key is the
    8-byte digest (``digest_size=8``) read as a little-endian unsigned integer.
    """
    if len(job_id) > MAX_JOB_ID_BYTES:
        raise JobError(f"a job id is at most {MAX_JOB_ID_BYTES} bytes, got {len(job_id)}")
    if not (0 <= seed <= MAX_SEED):
        raise JobError(f"seed must be in 0..2**64-1, got {seed}")
    if not (0 <= position < 2**32):
        raise JobError(f"position must be in 0..2**32-1, got {position}")
    material = (
        NOISE_DOMAIN + bytes([len(job_id)]) + job_id + seed.to_bytes(8, "big") + position.to_bytes(4, "big")
    )
    return int.from_bytes(hashlib.blake2b(material, digest_size=8).digest(), "little")


def uniforms(key: int, n_vocab: int) -> npt.NDArray[np.float64]:
    """``u_i`` for token ids ``0..n_vocab-1``: output ``i + 1`` of SplitMix64 seeded with ``key``.

    ``z = key + (i + 1) * 0x9E3779B97F4A7C15 (mod 2**64)``; ``z = (z ^ z >> 30) * 0xBF58476D1CE4E5B9``;
    ``z = (z ^ z >> 27) * 0x94D049BB133111EB``; ``z ^= z >> 31``; ``u_i = ((z >> 12) + 0.5) * 2**-52``,
    exact in float64 and strictly inside (0, 1).
    """
    row: npt.NDArray[np.float64] = _uniforms_matrix(np.array([key], dtype=np.uint64), n_vocab)[0]
    return row


def _uniforms_matrix(keys: npt.NDArray[np.uint64], n_vocab: int) -> npt.NDArray[np.float64]:
    """:func:`uniforms` for several keys at once: row ``j`` is ``uniforms(keys[j], n_vocab)``."""
    # numpy's uint64 array arithmetic wraps modulo 2**64, which is what SplitMix64 specifies.
    z = np.arange(1, n_vocab + 1, dtype=np.uint64)[None, :] * _GAMMA + keys[:, None]
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    z ^= z >> np.uint64(31)
    return ((z >> np.uint64(12)).astype(np.float64) + 0.5) * _TWO_POW_MINUS_52


def gumbel_noise(job_id: bytes, seed: int, position: int, n_vocab: int) -> npt.NDArray[np.float64]:
    """Standard Gumbel noise ``g_i = -log(-log(u_i))`` of one output position, float64."""
    u = uniforms(noise_key(job_id, seed, position), n_vocab)
    return -np.log(-np.log(u))


def _top_prefix(raw: npt.NDArray[np.float64], count: int) -> npt.NDArray[np.intp]:
    """The first ``count`` token ids by logit descending, ties by lower id (the order masks and ranks use).

    A partial sort: O(n) to find the boundary value, then a sort of ``count`` ids only.
    """
    n = raw.shape[0]
    if count >= n:
        ids = np.arange(n)
    else:
        boundary = np.partition(raw, n - count)[n - count]  # the count-th largest logit
        above = np.flatnonzero(raw > boundary)
        # Ties at the boundary: the lowest ids among them fill the prefix.
        ids = np.concatenate((above, np.flatnonzero(raw == boundary)[: count - above.shape[0]]))
    # lexsort sorts by the last key first: -logit, then id.
    return ids[np.lexsort((ids, -raw[ids]))]


_FIRST_TOP_P_PREFIX = 64


def candidate_mask(logits: Logits, params: SamplingParams) -> npt.NDArray[np.bool_]:
    """The tokens ``top_k`` then ``top_p`` keep (spec §11.3); all True when both are off.

    Order: logit descending, ties by lower token id. ``top_k`` keeps the first ``top_k``. ``top_p`` then
    walks the kept tokens in that order summing ``softmax(logits / T)`` taken over the kept tokens
    (float64, ``exp(s_i - max s) / sum exp(s_j - max s)``) and keeps up to and including the token that
    brings the running sum to ``>= top_p`` (all of them if rounding never gets there). At least one token
    is kept. Greedy has no mask: the argmax is always kept by both.
    """
    n = logits.shape[0]
    mask = np.ones(n, dtype=np.bool_)
    top_k_off = params.top_k == 0 or params.top_k >= n
    if params.greedy or (top_k_off and params.top_p >= 1.0):
        return mask
    raw = logits.astype(np.float64)
    if params.top_p >= 1.0:
        keep = _top_prefix(raw, params.top_k)
    else:
        scaled = raw / params.temperature
        top = scaled.max()
        if top_k_off:
            total = float(np.exp(scaled - top).sum())
            size = _FIRST_TOP_P_PREFIX
        else:
            size = params.top_k
            total = float(np.exp(scaled[_top_prefix(raw, size)] - top).sum())
        while True:  # grows x8 per round: at most ~5 rounds for a 2**20-token vocabulary
            keep = _top_prefix(raw, size)
            cumulative = np.cumsum(np.exp(scaled[keep] - top)) / total
            if cumulative[-1] >= params.top_p or size >= n or not top_k_off:
                break
            size *= 8
        count = int(np.searchsorted(cumulative, params.top_p, side="left")) + 1
        keep = keep[:count]
    mask[:] = False
    mask[keep] = True
    return mask


def perturbed_scores(
    logits: Logits, params: SamplingParams, job_id: bytes, position: int
) -> npt.NDArray[np.float64]:
    """The scores the choice is the argmax of, unmasked: ``logits`` (greedy) or ``logits / T + g``."""
    raw = logits.astype(np.float64)
    if params.greedy:
        return raw
    return raw / params.temperature + gumbel_noise(job_id, params.seed, position, raw.shape[0])


def choose(logits: Logits, params: SamplingParams, job_id: bytes, position: int) -> int:
    """The token the sampler picks at output ``position`` (0 = first generated token).

    ``argmax`` returns the first maximum, so ties go to the lowest token id.
    """
    if params.greedy:
        return int(np.argmax(logits))
    scores = perturbed_scores(logits, params, job_id, position)
    scores[~candidate_mask(logits, params)] = -np.inf
    return int(np.argmax(scores))


def _belief(logits: Logits, tokens: npt.NDArray[np.int64]) -> tuple[npt.NDArray[np.float64], ...]:
    """Per row of ``logits`` (rows x vocab): top logit, claimed logit, log-probability and rank of
    ``tokens[row]``, in the logits' own dtype where that is exact (max, comparisons) and float64 sums.

    Kept to a few passes over the matrix: an audit's own numpy cost is ~5 % of its forward pass.
    """
    rows = np.arange(logits.shape[0])
    top = logits.max(axis=1)
    claimed = logits[rows, tokens]
    total = np.exp(logits - top[:, None]).sum(axis=1, dtype=np.float64)
    logprob = claimed.astype(np.float64) - top.astype(np.float64) - np.log(total)
    rank = np.count_nonzero(logits > claimed[:, None], axis=1)
    ties = np.count_nonzero(logits == claimed[:, None], axis=1)
    for row in np.flatnonzero(ties > 1):  # rare: equal logits rank by lower id
        rank[row] += np.count_nonzero(logits[row, : tokens[row]] == claimed[row])
    return top.astype(np.float64), claimed.astype(np.float64), logprob, rank.astype(np.float64)


def score_position(
    logits: Logits, claimed: int, params: SamplingParams, job_id: bytes, position: int
) -> PositionEvidence:
    """Evidence about ``claimed`` at output ``position`` from the auditor's ``logits`` for that position."""
    n = logits.shape[0]
    if not 0 <= claimed < n:
        raise VerificationError(f"claimed token {claimed} is outside the vocabulary (0..{n - 1})")
    tops, claimed_logits, logprobs, ranks = _belief(logits[None, :], np.array([claimed], dtype=np.int64))
    top, claimed_logit = float(tops[0]), float(claimed_logits[0])
    if params.greedy:
        gap = top - claimed_logit
        margin = 0.0
    else:
        scores = perturbed_scores(logits, params, job_id, position)
        mask = candidate_mask(logits, params)
        best = float(max(scores[mask].max(), scores[claimed]))
        gap = params.temperature * (best - float(scores[claimed]))
        lowest_kept = float(logits[mask].min())
        margin = 0.0 if mask[claimed] else max(0.0, lowest_kept - claimed_logit)
    return PositionEvidence(
        token=claimed, logprob=float(logprobs[0]), gap=gap, rank=int(ranks[0]), mask_margin=margin
    )


def score_positions(
    logits: Logits, claimed: Sequence[int], params: SamplingParams, job_id: bytes, first_position: int = 0
) -> list[PositionEvidence]:
    """:func:`score_position` for consecutive output positions at once: ``logits[j]`` is the auditor's
    row for output position ``first_position + j`` and ``claimed[j]`` the token claimed there.

    Vectorised over rows when no mask applies (greedy, or sampling with ``top_k`` and ``top_p`` off),
    which is what keeps an audit's own Python cost small beside its forward pass; equal, value for
    value, to calling :func:`score_position` per row.
    """
    rows, n = logits.shape
    if rows != len(claimed):
        raise VerificationError(f"{rows} rows of logits for {len(claimed)} claimed tokens")
    tokens = np.asarray(claimed, dtype=np.int64)
    bad = tokens[(tokens < 0) | (tokens >= n)]
    if bad.size:
        raise VerificationError(f"claimed tokens {bad[:5].tolist()} are outside the vocabulary (0..{n - 1})")
    masked = not params.greedy and not ((params.top_k == 0 or params.top_k >= n) and params.top_p >= 1.0)
    if masked:
        return [
            score_position(logits[j], int(tokens[j]), params, job_id, first_position + j) for j in range(rows)
        ]
    top, claimed_logit, logprob, rank = _belief(logits, tokens)
    if params.greedy:
        gap = top - claimed_logit
    else:
        # A few rows at a time: the float64 temporaries of a block stay in the CPU's cache, where a
        # whole claim's (128 rows x 49,152 tokens, 50 MB each) made this 3-8x slower. Element-wise
        # arithmetic: the values are the same for any block size.
        gap = np.empty(rows, dtype=np.float64)
        for start in range(0, rows, _NOISE_BLOCK_ROWS):
            stop = min(rows, start + _NOISE_BLOCK_ROWS)
            keys = np.array(
                [noise_key(job_id, params.seed, first_position + j) for j in range(start, stop)],
                dtype=np.uint64,
            )
            u = _uniforms_matrix(keys, n)
            scores = logits[start:stop].astype(np.float64) / params.temperature - np.log(-np.log(u))
            picked = scores[np.arange(stop - start), tokens[start:stop]]
            gap[start:stop] = params.temperature * (scores.max(axis=1) - picked)
    return [
        PositionEvidence(
            token=int(tokens[j]),
            logprob=float(logprob[j]),
            gap=float(gap[j]),
            rank=int(rank[j]),
            mask_margin=0.0,
        )
        for j in range(rows)
    ]


def passing_tokens(
    logits: Logits, params: SamplingParams, job_id: bytes, position: int, tolerance: float, limit: int
) -> list[int]:
    """The tokens, at most ``limit``, best first, that would pass at output ``position`` if claimed there:
    those among the ``limit`` best by (perturbed) score whose :func:`score_position` evidence has its gap
    and mask margin within ``tolerance`` (the rule of ``opengrid.core.audit.judge``; NaN fails) —
    computed once for all of them, not a full :func:`score_position` each (its log-probability and rank
    are not needed). What an auditor lists in advance for a claim's first position
    (spec/verification.md §14.2). Every token listed passes; a token left out may pass too (when more
    than ``limit`` do), which costs only waiting for its chunk's verdict."""
    n = logits.shape[0]
    count = min(max(limit, 0), n)
    if count == 0:
        return []
    scores = perturbed_scores(logits, params, job_id, position)
    # The ``count`` best, ties by lower id (argpartition alone would cut a tie anywhere): everything
    # above the count-th score, then the lowest ids at it.
    cut = -np.partition(-scores, count - 1)[count - 1]
    best = np.concatenate([np.flatnonzero(scores > cut), np.flatnonzero(scores == cut)])
    best = best[np.lexsort((best, -scores[best]))][:count]  # score descending, ties by lower id
    count = best.shape[0]  # fewer only when scores are NaN
    masked = not params.greedy and not ((params.top_k == 0 or params.top_k >= n) and params.top_p >= 1.0)
    if params.greedy:  # as score_position: the top logit minus the claimed one, in float64
        gaps = float(logits.max()) - logits[best].astype(np.float64)
        margins = np.zeros(count)
    elif not masked:
        gaps = params.temperature * (float(scores.max()) - scores[best])
        margins = np.zeros(count)
    else:
        mask = candidate_mask(logits, params)
        top = np.maximum(float(scores[mask].max()), scores[best])
        gaps = params.temperature * (top - scores[best])
        lowest_kept = float(logits[mask].min())
        claimed = logits[best].astype(np.float64)
        margins = np.where(mask[best], 0.0, np.maximum(0.0, lowest_kept - claimed))
    passed = (gaps <= tolerance) & (margins <= tolerance)  # False for NaN
    return [int(token) for token in best[passed]]

"""Exact top-k within a shard and the merge of partial top-k lists across shards.

Order everywhere: higher score first, ties broken by ascending model id. Shard rows are sorted
by id, so within a shard a lower row is a lower id.
"""

import heapq
import logging
import math
from dataclasses import dataclass

import numpy as np
import torch

logger = logging.getLogger(__name__)

# `_topk` searches block-wise the rows at least TOPK_BLOCKED_MIN_MODELS long in a block of
# at least TOPK_BLOCKED_MIN_SCORES scores, in blocks of a multiple of TOPK_BLOCK_ALIGN scores
# (a maximum over 316 floats ran at a quarter of the speed of one over 320).
TOPK_BLOCKED_MIN_MODELS = 1 << 13
TOPK_BLOCKED_MIN_SCORES = 1 << 16
TOPK_BLOCK_ALIGN = 64
# `logsumexp_scaled` works through a row this many elements at a time, so its temporary
# stays in L2.
LOGSUMEXP_CHUNK_ELEMENTS = 1 << 15


@dataclass(frozen=True)
class Hit:
    """One ranked model: its score under the query's method and its id."""

    score: float
    model_id: str


def topk_rows(scores: torch.Tensor, k: int, allowed: torch.Tensor | None = None) -> list[list[int]]:
    """The rows of the k best models per query, in rank order.

    Args:
        scores: (q, n) scores; −inf marks a model that can never be returned.
        k: results wanted per query, >= 1; fewer come back when fewer models qualify.
        allowed: optional (n,) bool mask of models that may be returned (filters).

    Returns:
        q lists of row positions, each at most k long.
    """
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    k_eff = min(k, scores.shape[1])
    if k_eff == 0:
        return [[] for _ in range(scores.shape[0])]

    # torch.topk breaks ties arbitrarily, so every row tied with the k-th value is a candidate
    # and the (few) candidates are ordered by (−score, row) exactly. One value past the k-th
    # tells whether there can be ties outside the top k; only then is the row scanned. The
    # other rows are ordered together: a Python step per row cost 7 µs, more than the whole
    # selection of 32 rows of 133 scores.
    probe = _topk(scores, min(k_eff + 1, scores.shape[1]))
    values = probe.values.double().cpu().numpy()
    indices = probe.indices.cpu().numpy()
    rows, row_values = indices[:, :k_eff], values[:, :k_eff]
    order = np.lexsort((rows, -row_values), axis=-1)
    results = np.take_along_axis(rows, order, axis=1).tolist()
    for i in np.flatnonzero(~_top_k_is_closed(values, k_eff)):
        rows, row_values = _tied_candidates(scores[i], k_eff)
        results[i] = rows[np.lexsort((rows, -row_values))[:k_eff]].tolist()
    return results


def _topk(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """torch.topk(scores, k, dim=1), faster on long rows; the values are the same.

    torch.topk selects at about 0.3 GB/s per row here, slower than scoring the row. So a long
    row is cut into blocks of about sqrt(n): the k best values of the row all lie in the k
    blocks with the largest maxima (plus the ragged tail), since a block outside them has at
    least k elements above its maximum. Only those few blocks go through torch.topk.
    """
    q, n = scores.shape
    width = -(-math.isqrt(n) // TOPK_BLOCK_ALIGN) * TOPK_BLOCK_ALIGN
    blocks = n // width
    if n < TOPK_BLOCKED_MIN_MODELS or q * n < TOPK_BLOCKED_MIN_SCORES or blocks <= k:
        return torch.topk(scores, k, dim=1)
    body = scores[:, : blocks * width].reshape(q, blocks, width)
    best = torch.topk(body.amax(dim=2), k, dim=1).indices
    offsets = torch.arange(width, device=scores.device)
    cols = (best[:, :, None] * width + offsets).reshape(q, k * width)
    tail = torch.arange(blocks * width, n, device=scores.device).expand(q, -1)
    cols = torch.cat([cols, tail], dim=1)
    top = torch.topk(torch.gather(scores, 1, cols), k, dim=1)
    return torch.return_types.topk((top.values, torch.gather(cols, 1, top.indices)))


def _top_k_is_closed(probe_values: np.ndarray, k: int) -> np.ndarray:
    """Per row of (q, k + 1) probe values: whether its k best values are exactly its candidates.

    True when the value after the k-th is strictly smaller (no row outside can tie) and the
    k-th is above −inf; NaN, which torch.topk ranks first and a scan would skip, is left to
    the scan, as is a row with no value past the k-th.
    """
    if probe_values.shape[1] <= k:
        return np.zeros(len(probe_values), dtype=bool)
    return (
        (probe_values[:, k] < probe_values[:, k - 1])
        & (probe_values[:, k - 1] > float("-inf"))
        & ~np.isnan(probe_values[:, 0])
    )


def _tied_candidates(row_scores: torch.Tensor, k: int) -> tuple[np.ndarray, ...]:
    """Rows scoring at least the k-th best finite score of the row, with their scores in float64.

    NaN counts as −inf here, so it neither takes a place nor lowers the threshold.
    """
    finite = row_scores.masked_fill(row_scores.isnan(), float("-inf"))
    threshold = torch.topk(finite, k).values[-1]
    candidates = torch.nonzero((finite >= threshold) & (finite > float("-inf"))).flatten()
    return candidates.cpu().numpy(), finite[candidates].double().cpu().numpy()


def logsumexp_scaled(scores: torch.Tensor, temperature: float) -> float:
    """log Σ exp(scores / T) over a (n,) row; −inf when every score is −inf.

    The terms exp((s − max) / T) lie in [0, 1] and are computed in the row's precision, a
    cache-sized chunk at a time, and summed in float64: within 1e-7 of the float64 formula
    (torch.logsumexp(scores.double() / T)), 2.5x faster than it at n = 1M on one thread, as
    numpy's vectorised float32 exp does not widen the row first.
    """
    values = scores.detach().cpu().numpy()
    top = values.max() if values.size else float("-inf")
    if not math.isfinite(top):  # all −inf, or a +inf or NaN that decides the sum
        return float(top) / temperature
    scale = values.dtype.type(1.0 / temperature)
    terms = np.empty(min(values.size, LOGSUMEXP_CHUNK_ELEMENTS), dtype=values.dtype)
    total = 0.0
    for start in range(0, values.size, LOGSUMEXP_CHUNK_ELEMENTS):
        chunk = values[start : start + LOGSUMEXP_CHUNK_ELEMENTS]
        part = terms[: chunk.size]
        np.subtract(chunk, top, out=part)
        part *= scale
        np.exp(part, out=part)
        total += float(part.sum(dtype=np.float64))
    return float(top) / temperature + math.log(total)


def merge_topk(partials: list[list[Hit]], k: int) -> list[Hit]:
    """Merge per-shard lists, each already in rank order, into the global top k."""
    merged = heapq.merge(*partials, key=lambda hit: (-hit.score, hit.model_id))
    return [hit for _, hit in zip(range(k), merged, strict=False)]


def merge_logsumexp(values: list[float]) -> float:
    """log Σ exp over shards of per-shard log-sum-exp values; −inf when all are −inf."""
    finite = [v for v in values if v != float("-inf")]
    if not finite:
        return float("-inf")
    top = max(finite)
    return top + float(np.log(sum(np.exp(v - top) for v in finite)))

"""Exact top-k within a shard and the merge of partial top-k lists across shards.

Order everywhere: higher score first, ties broken by ascending model id. Shard rows are sorted
by id, so within a shard a lower row is a lower id.
"""

import heapq
import logging
from dataclasses import dataclass

import numpy as np
import torch

logger = logging.getLogger(__name__)


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

    # torch.topk breaks ties arbitrarily, so take every row tied with the k-th value and
    # order the (few) candidates by (−score, row) exactly.
    kth = torch.topk(scores, k_eff, dim=1).values[:, -1:]
    results = []
    for row_scores, threshold in zip(scores, kth, strict=True):
        candidates = torch.nonzero(
            (row_scores >= threshold) & (row_scores > float("-inf"))
        ).flatten()
        values = row_scores[candidates].double().cpu().numpy()
        rows = candidates.cpu().numpy()
        order = np.lexsort((rows, -values))[:k_eff]
        results.append(rows[order].tolist())
    return results


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

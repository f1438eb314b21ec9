"""Retrieval metrics of the paper's protocol: top-k accuracy of the source model and mAP@k.

AP@k follows the code published with the paper (Google Landmarks v2 style):
    AP@k = (1 / min(#relevant, k)) · Σ_{j=1..k} P(j) · rel(j),
with P(j) the precision of the first j results. (The paper's eq. 12 prints the sum's upper
limit as min(#relevant, k); its code, which produced its tables, sums to k.)
"""

import logging
from collections.abc import Iterable, Sequence

import numpy as np

logger = logging.getLogger(__name__)


def average_precision_at_k(ranked: Sequence[str], relevant: Iterable[str], k: int) -> float:
    """AP@k of one ranking; 0 when nothing is relevant.

    Args:
        ranked: model ids, best first (at least k long, or the whole collection).
        relevant: the ids that count as correct answers.
        k: the cut-off, >= 1.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    relevant = set(relevant)
    if not relevant:
        return 0.0
    hits, total = 0, 0.0
    for j, model_id in enumerate(ranked[:k], start=1):
        if model_id in relevant:
            hits += 1
            total += hits / j
    return total / min(len(relevant), k)


def average_precision(ranked: Sequence[str], relevant: Iterable[str]) -> float:
    """AP over the whole ranking (the paper's mAP without a cut-off); 0 when nothing is relevant.

    Args:
        ranked: every model id of the collection, best first: a relevant model missing from
            it counts as never retrieved.
        relevant: the ids that count as correct answers.
    """
    relevant = set(relevant)
    if not relevant:
        return 0.0
    # With k = #relevant or more, min(#relevant, k) = #relevant: the textbook AP.
    return average_precision_at_k(ranked, relevant, max(len(ranked), len(relevant)))


def top_k_hit(ranked: Sequence[str], source: str, k: int) -> bool:
    """Whether the source model is among the first k results."""
    return source in ranked[:k]


def summarise(
    rankings: Sequence[Sequence[str]],
    relevant_sets: Sequence[Iterable[str]],
    sources: Sequence[str],
    ks: Sequence[int] = (1, 5, 10),
) -> dict[str, dict[int, float]]:
    """mAP@k and top-k accuracy over many queries.

    Returns:
        {"map_at": {k: mean AP@k}, "top_k_accuracy": {k: fraction of queries whose source
        model is in the top k}}.
    """
    relevant_sets = [set(r) for r in relevant_sets]
    return {
        "map_at": {
            k: float(
                np.mean(
                    [
                        average_precision_at_k(r, rel, k)
                        for r, rel in zip(rankings, relevant_sets, strict=True)
                    ]
                )
            )
            for k in ks
        },
        "top_k_accuracy": {
            k: float(np.mean([top_k_hit(r, s, k) for r, s in zip(rankings, sources, strict=True)]))
            for k in ks
        },
    }

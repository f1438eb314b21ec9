"""Query plans over a shard: one expert, an image set, or a weighted product of experts.

A query is a list of experts, each a scoring method over a (m, d) block of query features.
One expert with m = 1 is a plain query; m > 1 is an image set, scored by the mean of its
per-image scores; several experts combine as a product of experts,
    Σ_e w_e · log p_e(model | q_e),  log p_e = s_e / T_e − log Σ_models exp(s_e / T_e),
where T_e is the method's probability temperature. The normalisers are constants over
models, so each shard ranks the combination exactly without them; it returns its partial
log-sum-exp of every expert and the aggregator subtracts the global ones.
"""

import logging
from dataclasses import dataclass

import numpy as np
import torch

from shards.scoring import ScoringTables, probability_temperature, score
from shards.topk import logsumexp_scaled

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Expert:
    """One term of a query.

    Attributes:
        method: a name from shards.scoring.METHODS.
        features: (m, d) float32 query features; m > 1 averages m per-image scores.
        weight: w_e; negative weights push models away from the concept.
    """

    method: str
    features: np.ndarray
    weight: float = 1.0


@dataclass(frozen=True)
class QueryScores:
    """A shard's scores for one query.

    Attributes:
        scores: (n,) final scores before the global normalisers; −inf where filtered out.
        temperature: T with p(model | query) = softmax(scores / T) over the collection.
        expert_lse: per expert, log Σ exp(s_e / T_e) over the allowed models of the shard
            (only for several experts; empty otherwise).
    """

    scores: torch.Tensor
    temperature: float
    expert_lse: list[float]


def _masked_logsumexp(values: torch.Tensor, allowed: torch.Tensor | None) -> float:
    if allowed is not None:
        values = values.masked_fill(~allowed, float("-inf"))
    return logsumexp_scaled(values, 1.0)


def score_experts(
    tables: ScoringTables, experts: list[Expert], allowed: torch.Tensor | None = None
) -> QueryScores:
    """Scores of every model of a shard for one query made of `experts`."""
    return score_queries(tables, [experts], [allowed])[0]


def score_queries(
    tables: ScoringTables,
    queries: list[list[Expert]],
    allowed: list[torch.Tensor | None],
) -> list[QueryScores]:
    """`score_experts` for several queries at once, each with its own (n,) mask or None.

    The features of every expert that uses the same method, across all the queries, are
    scored as one (q, d) block: the tables are read once per block rather than once per
    query, which is what a shard's time goes to. Scores equal those of `score_experts` up to
    float rounding (a block of one query and a larger block take different BLAS kernels).
    """
    if len(allowed) != len(queries):
        raise ValueError(f"got {len(queries)} queries but {len(allowed)} masks; pass one each")
    rows: dict[str, list[np.ndarray]] = {}
    spans = []  # per query, per expert: (method, first row, last row + 1) in its block
    for experts in queries:
        if not experts:
            raise ValueError("a query needs at least one expert")
        spans.append([])
        for expert in experts:
            block = rows.setdefault(expert.method, [])
            start = sum(len(features) for features in block)
            block.append(np.asarray(expert.features))
            spans[-1].append((expert.method, start, start + len(expert.features)))
    scored = {method: _score_block(tables, method, block) for method, block in rows.items()}

    results = []
    for experts, query_spans, mask in zip(queries, spans, allowed, strict=True):
        # One image's scores are its row as is; an image set's are the mean of its rows.
        per_expert = [
            scored[method][first] if last - first == 1 else scored[method][first:last].mean(dim=0)
            for method, first, last in query_spans
        ]
        results.append(_combine(tables, experts, per_expert, mask))
    return results


def _score_block(tables: ScoringTables, method: str, features: list[np.ndarray]) -> torch.Tensor:
    # Features arrive read-only from Ray's object store; torch needs a writable array, and
    # concatenating several blocks makes one.
    block = features[0] if len(features) == 1 else np.concatenate(features)
    block = np.require(block, requirements=["C", "W"])
    return score(tables, method, torch.as_tensor(block, device=tables.means.device))


def _combine(
    tables: ScoringTables,
    experts: list[Expert],
    per_expert: list[torch.Tensor],
    allowed: torch.Tensor | None,
) -> QueryScores:
    """One query's scores from its experts' (n,) scores: the product of experts, masked."""
    if len(experts) == 1 and experts[0].weight == 1.0:
        combined = per_expert[0]
        temperature = probability_temperature(experts[0].method, tables.tau)
        expert_lse: list[float] = []
    else:
        temperatures = [probability_temperature(e.method, tables.tau) for e in experts]
        logits = [s / t for s, t in zip(per_expert, temperatures, strict=True)]
        expert_lse = [_masked_logsumexp(lg, allowed) for lg in logits]
        combined = sum(e.weight * lg for e, lg in zip(experts, logits, strict=True))
        temperature = 1.0

    if allowed is not None:
        combined = combined.masked_fill(~allowed, float("-inf"))
    return QueryScores(combined, temperature, expert_lse)


def poe_offset(experts: list[Expert], global_expert_lse: list[float]) -> float:
    """What the aggregator subtracts from merged scores: Σ_e w_e · log Σ_all exp(s_e / T_e)."""
    if not global_expert_lse:
        return 0.0
    return sum(e.weight * lse for e, lse in zip(experts, global_expert_lse, strict=True))

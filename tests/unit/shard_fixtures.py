"""Builders of synthetic shard statistics for the scoring and storage tests."""

import numpy as np

from shards.moments import MomentSums
from shards.stats import ModelSummary, ShardStats, summarise_models


def random_summaries(
    num_models: int, dim: int, samples: int, seed: int = 0, reservoir: int = 32
) -> list[ModelSummary]:
    """Models whose features are L2-normalised Gaussian clouds around random centres."""
    rng = np.random.default_rng(seed)
    summaries = []
    for i in range(num_models):
        centre = rng.normal(size=dim)
        spread = rng.uniform(0.2, 1.0)
        x = centre + spread * rng.normal(size=(samples, dim)) * rng.uniform(0.1, 1, size=dim)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        summaries.append(
            ModelSummary(
                model_id=f"model-{i:04d}",
                metadata={"name": f"Model {i}", "tags": ["t"]},
                fingerprint=f"fp{i}",
                sums=MomentSums.of(x),
                reservoir=x[:reservoir].astype(np.float32),
                thumbnails=(b"png%d" % i,),
            )
        )
    return summaries


def random_shard(
    num_models: int = 20, dim: int = 12, rank: int = 3, keep_full: bool = True, seed: int = 0
) -> ShardStats:
    return summarise_models(
        random_summaries(num_models, dim, samples=200, seed=seed),
        rank=rank,
        keep_full=keep_full,
        reservoir_size=32,
    )

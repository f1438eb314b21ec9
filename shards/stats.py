"""The statistics of a block of models as numpy arrays, the unit a shard stores and scores.

Shape letters: `n` models, `d` feature dim, `r` covariance rank, `m` reservoir samples.
"""

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shards.moments import MomentSums, lowrank_covariance

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSummary:
    """What indexing produces for one model before it is written into a shard.

    Attributes:
        model_id: the catalog id.
        metadata: catalog fields shown in results (name, tags, ...), JSON-able.
        fingerprint: hash of everything the statistics depend on.
        sums: exact moments of the model's sample features.
        reservoir: (m, d) float32, raw sample features kept for the Monte-Carlo score.
        thumbnails: PNG bytes of a few samples.
    """

    model_id: str
    metadata: dict[str, Any]
    fingerprint: str
    sums: MomentSums
    reservoir: np.ndarray
    thumbnails: tuple[bytes, ...] = ()


@dataclass(frozen=True)
class ShardStats:
    """Statistics of `n` models, rows sorted by model id.

    Attributes:
        ids: n model ids, ascending.
        metadata: n JSON-able dicts of catalog fields.
        fingerprints: n fingerprints.
        counts: (n,) int64, samples behind each model's moments.
        means: (n, d) float, μ.
        eigvals: (n, r) float, top eigenvalues λ of each Σ, descending.
        eigvecs: (n, r, d) float, the matching eigenvectors as rows.
        residuals: (n,) float, σ², the mean of each Σ's other eigenvalues.
        covs: (n, d, d) float full covariances, or None where only the low-rank form is kept.
        reservoir: (n, m, d) float, stored sample features (rows past `reservoir_counts` are 0).
        reservoir_counts: (n,) int64, valid rows of each model's reservoir.
        thumbnails: n tuples of PNG bytes.
    """

    ids: tuple[str, ...]
    metadata: tuple[dict[str, Any], ...]
    fingerprints: tuple[str, ...]
    counts: np.ndarray
    means: np.ndarray
    eigvals: np.ndarray
    eigvecs: np.ndarray
    residuals: np.ndarray
    covs: np.ndarray | None
    reservoir: np.ndarray
    reservoir_counts: np.ndarray
    thumbnails: tuple[tuple[bytes, ...], ...] = field(default=())

    def __post_init__(self) -> None:
        n = len(self.ids)
        assert list(self.ids) == sorted(self.ids), "shard rows must be sorted by model id"
        assert self.means.shape[0] == n and self.eigvecs.shape[0] == n

    @property
    def num_models(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def rank(self) -> int:
        return self.eigvals.shape[1]

    def select(self, rows: np.ndarray | list[int]) -> "ShardStats":
        """The models at `rows` (ascending positions), as a new ShardStats."""
        rows = np.asarray(rows, dtype=np.int64)

        def pick(seq: tuple) -> tuple:
            return tuple(seq[i] for i in rows) if seq else seq

        return ShardStats(
            ids=pick(self.ids),
            metadata=pick(self.metadata),
            fingerprints=pick(self.fingerprints),
            counts=self.counts[rows],
            means=self.means[rows],
            eigvals=self.eigvals[rows],
            eigvecs=self.eigvecs[rows],
            residuals=self.residuals[rows],
            covs=None if self.covs is None else self.covs[rows],
            reservoir=self.reservoir[rows],
            reservoir_counts=self.reservoir_counts[rows],
            thumbnails=pick(self.thumbnails),
        )


def summarise_models(
    summaries: list[ModelSummary], rank: int, keep_full: bool, reservoir_size: int
) -> ShardStats:
    """Turn exact sums into the stored form: means, low-rank (and maybe full) covariances.

    Args:
        summaries: one per model, any order; rows come out sorted by id.
        rank: r, eigenpairs kept per model.
        keep_full: also keep the (d, d) covariance of every model.
        reservoir_size: m, reservoir rows per model (shorter reservoirs are zero-padded).
    """
    if not summaries:
        raise ValueError("a shard needs at least one model")
    ordered = sorted(summaries, key=lambda s: s.model_id)
    dim = ordered[0].sums.total.shape[0]
    n = len(ordered)

    means = np.empty((n, dim), np.float32)
    eigvals = np.empty((n, rank), np.float32)
    eigvecs = np.empty((n, rank, dim), np.float32)
    residuals = np.empty(n, np.float32)
    covs = np.empty((n, dim, dim), np.float32) if keep_full else None
    reservoir = np.zeros((n, reservoir_size, dim), np.float32)
    reservoir_counts = np.empty(n, np.int64)

    for row, summary in enumerate(ordered):
        cov = summary.sums.covariance()
        values, vectors, residual = lowrank_covariance(cov, rank)
        means[row] = summary.sums.mean()
        eigvals[row], eigvecs[row], residuals[row] = values, vectors.T, residual
        if covs is not None:
            covs[row] = cov
        kept = summary.reservoir[:reservoir_size]
        reservoir[row, : len(kept)] = kept
        reservoir_counts[row] = len(kept)

    return ShardStats(
        ids=tuple(s.model_id for s in ordered),
        metadata=tuple(s.metadata for s in ordered),
        fingerprints=tuple(s.fingerprint for s in ordered),
        counts=np.array([s.sums.count for s in ordered], np.int64),
        means=means,
        eigvals=eigvals,
        eigvecs=eigvecs,
        residuals=residuals,
        covs=covs,
        reservoir=reservoir,
        reservoir_counts=reservoir_counts,
        thumbnails=tuple(s.thumbnails for s in ordered),
    )


def concat_shards(parts: list[ShardStats]) -> ShardStats:
    """All models of `parts` in one ShardStats, rows re-sorted by id.

    Raises:
        ValueError: the parts disagree on dim, rank, reservoir size or full covariances.
    """
    parts = [p for p in parts if p.num_models]
    if not parts:
        raise ValueError("nothing to concatenate")
    shapes = {(p.dim, p.rank, p.reservoir.shape[1], p.covs is None) for p in parts}
    if len(shapes) != 1:
        raise ValueError(f"shards disagree on (dim, rank, reservoir, no full cov): {shapes}")
    ids = sum((p.ids for p in parts), ())
    if len(set(ids)) != len(ids):
        raise ValueError("a model id appears in more than one part")
    order = np.argsort(np.array(ids, dtype=object), kind="stable")

    def stack(name: str) -> np.ndarray:
        return np.concatenate([getattr(p, name) for p in parts])[order]

    def chain(name: str) -> tuple:
        joined = sum((tuple(getattr(p, name)) for p in parts), ())
        return tuple(joined[i] for i in order) if joined else ()

    return ShardStats(
        ids=chain("ids"),
        metadata=chain("metadata"),
        fingerprints=chain("fingerprints"),
        counts=stack("counts"),
        means=stack("means"),
        eigvals=stack("eigvals"),
        eigvecs=stack("eigvecs"),
        residuals=stack("residuals"),
        covs=None if parts[0].covs is None else stack("covs"),
        reservoir=stack("reservoir"),
        reservoir_counts=stack("reservoir_counts"),
        thumbnails=chain("thumbnails"),
    )


def with_metadata(stats: ShardStats, metadata: dict[str, dict[str, Any]]) -> ShardStats:
    """`stats` with each model's catalog metadata replaced by `metadata[model_id]`."""
    return dataclasses.replace(stats, metadata=tuple(metadata[i] for i in stats.ids))

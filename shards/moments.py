"""Streaming moments of image features: exact float64 sums that merge in any order.

Shape letters: `m` samples in a chunk, `d` feature dim, `r` covariance rank.
"""

import logging
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MomentSums:
    """Sufficient statistics of a set of feature vectors.

    Attributes:
        count: number of vectors summed.
        total: (d,) float64, Σx.
        outer: (d, d) float64, Σxxᵀ.
    """

    count: int
    total: np.ndarray
    outer: np.ndarray

    @classmethod
    def zeros(cls, dim: int) -> "MomentSums":
        return cls(0, np.zeros(dim), np.zeros((dim, dim)))

    @classmethod
    def of(cls, features: np.ndarray) -> "MomentSums":
        """Sums of `features`, (m, d) of any float dtype; accumulated in float64."""
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2:
            raise ValueError(f"features must be (m, d), got shape {x.shape}")
        return cls(x.shape[0], x.sum(axis=0), x.T @ x)

    def merge(self, other: "MomentSums") -> "MomentSums":
        if self.total.shape != other.total.shape:
            raise ValueError(f"cannot merge dims {self.total.shape} and {other.total.shape}")
        return MomentSums(
            self.count + other.count, self.total + other.total, self.outer + other.outer
        )

    def mean(self) -> np.ndarray:
        """(d,) float64, μ = Σx / n."""
        if self.count < 1:
            raise ValueError("the mean of zero samples is undefined")
        return self.total / self.count

    def covariance(self) -> np.ndarray:
        """(d, d) float64, the unbiased Σ = (Σxxᵀ − nμμᵀ) / (n − 1), symmetrised."""
        if self.count < 2:
            raise ValueError(f"a covariance needs at least 2 samples, got {self.count}")
        mu = self.mean()
        cov = (self.outer - self.count * np.outer(mu, mu)) / (self.count - 1)
        # Rounding leaves the two triangles unequal in the last bits; eigh wants symmetry.
        return (cov + cov.T) / 2


def merge_all(parts: list[MomentSums]) -> MomentSums:
    """Merge many partial sums; the result does not depend on their order beyond rounding."""
    if not parts:
        raise ValueError("nothing to merge")
    merged = parts[0]
    for part in parts[1:]:
        merged = merged.merge(part)
    return merged


def lowrank_covariance(cov: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Probabilistic-PCA compression Σ ≈ V diag(λ) Vᵀ + σ²I.

    Args:
        cov: (d, d) symmetric positive semi-definite.
        rank: r, the eigenpairs kept; 0 <= r < d.

    Returns:
        eigvals (r,) descending, eigvecs (d, r) orthonormal columns, and σ², the mean of the
        d − r eigenvalues left out (clipped at 0: tiny negative ones are rounding).
    """
    dim = cov.shape[0]
    if not 0 <= rank < dim:
        raise ValueError(f"rank must be in [0, {dim}), got {rank}")
    values, vectors = np.linalg.eigh(cov)
    values = np.clip(values[::-1], 0.0, None)
    vectors = vectors[:, ::-1]
    residual = float(values[rank:].mean())
    return values[:rank].copy(), np.ascontiguousarray(vectors[:, :rank]), residual

"""Fréchet distance between model Gaussians, its lower bound, and exact pruned top-k.

Shape letters: `n` models, `c` candidates, `d` feature dim, `r` covariance rank.
A model's low-rank covariance is Σ = V diag(λ) Vᵀ + σ²I with V (d, r) orthonormal.
"""

import logging
from dataclasses import dataclass

import numpy as np
import torch

logger = logging.getLogger(__name__)

# Candidates whose exact distance is computed together; exact work per candidate is a
# (d, 2r) QR and a (2r, 2r) eigenproblem, so blocks keep batched LAPACK calls efficient.
EXACT_BLOCK = 64


def frechet_distance_full(
    mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray
) -> float:
    """‖μ₁−μ₂‖² + tr Σ₁ + tr Σ₂ − 2 tr (Σ₁^½ Σ₂ Σ₁^½)^½ for full (d, d) covariances, float64."""
    values, vectors = np.linalg.eigh(cov1)
    root1 = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
    inner = np.linalg.eigvalsh(root1 @ cov2 @ root1)
    # Rounding leaves tiny negative eigenvalues on a PSD product: they are zeros.
    cross = np.sqrt(np.clip(inner, 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2 * cross)


@dataclass(frozen=True)
class LowRankGaussians:
    """Gaussians with low-rank covariances, as tensors (float64 for exactness).

    Attributes:
        means: (n, d); eigvals: (n, r) descending; eigvecs: (n, r, d) rows; residuals: (n,).
    """

    means: torch.Tensor
    eigvals: torch.Tensor
    eigvecs: torch.Tensor
    residuals: torch.Tensor

    @classmethod
    def from_arrays(cls, means, eigvals, eigvecs, residuals) -> "LowRankGaussians":
        def f64(a):
            return torch.as_tensor(np.ascontiguousarray(a, dtype=np.float64))

        return cls(f64(means), f64(eigvals), f64(eigvecs), f64(residuals))

    def take(self, rows: torch.Tensor) -> "LowRankGaussians":
        return LowRankGaussians(
            self.means[rows], self.eigvals[rows], self.eigvecs[rows], self.residuals[rows]
        )

    @property
    def dim(self) -> int:
        return self.means.shape[1]


def frechet_lower_bound(query: LowRankGaussians, models: LowRankGaussians) -> torch.Tensor:
    """(n,) lower bounds ‖μ₁−μ₂‖² + Σᵢ (√λᵢ(Σ₁) − √λᵢ(Σ₂))² of the Fréchet distance.

    `query` holds one model. The spectrum of V diag(λ) Vᵀ + σ²I is λᵢ + σ² for i <= r, then
    d − r copies of σ² (already descending), so the sum over all d eigenvalues has a closed
    form. The bound follows from von Neumann's trace inequality:
    tr(Σ₁^½ Σ₂ Σ₁^½)^½ <= Σᵢ √λᵢ(Σ₁) √λᵢ(Σ₂).
    """
    d, r = query.dim, query.eigvals.shape[1]
    sq_dist = (models.means - query.means).square().sum(dim=1)
    q_res, m_res = query.residuals.clamp_min(0), models.residuals.clamp_min(0)
    q_top = (query.eigvals.clamp_min(0) + q_res[:, None]).sqrt()
    m_top = (models.eigvals.clamp_min(0) + m_res[:, None]).sqrt()
    top = (m_top - q_top).square()
    rest = (m_res.sqrt() - q_res.sqrt()).square()
    return sq_dist + top.sum(dim=1) + (d - r) * rest


def frechet_distance_lowrank(query: LowRankGaussians, models: LowRankGaussians) -> torch.Tensor:
    """(c,) exact Fréchet distances from one low-rank Gaussian to `c` others.

    Both covariances act as σ²I on the complement of U = span(V₁, V₂) and map U into itself,
    so tr(Σ₁^½ Σ₂ Σ₁^½)^½ = Σ √eig(A^½ B A^½) + (d − 2r) σ₁σ₂, with A = UᵀΣ₁U and B = UᵀΣ₂U
    of size 2r: a (d, 2r) QR and a (2r, 2r) eigenproblem per model instead of (d, d) ones.
    """
    d, r = query.dim, query.eigvals.shape[1]
    c = models.means.shape[0]
    v1 = query.eigvecs[0].T.expand(c, d, r)
    basis, _ = torch.linalg.qr(torch.cat([v1, models.eigvecs.transpose(1, 2)], dim=2))
    m = basis.shape[2]

    def restricted(vecs: torch.Tensor, vals: torch.Tensor, residual: torch.Tensor):
        proj = vecs @ basis  # (c, r, m)
        eye = torch.eye(m, dtype=basis.dtype)
        return proj.transpose(1, 2) @ (vals[:, :, None] * proj) + residual[:, None, None] * eye

    a = restricted(
        query.eigvecs.expand(c, r, d), query.eigvals.expand(c, r), query.residuals.expand(c)
    )
    b = restricted(models.eigvecs, models.eigvals, models.residuals)
    a_vals, a_vecs = torch.linalg.eigh(a)
    a_root = (a_vecs * a_vals.clamp_min(0).sqrt()[:, None, :]) @ a_vecs.transpose(1, 2)
    inner = torch.linalg.eigvalsh(a_root @ b @ a_root)
    cross = inner.clamp_min(0).sqrt().sum(dim=1)
    cross = cross + (d - m) * (query.residuals.clamp_min(0) * models.residuals.clamp_min(0)).sqrt()

    trace1 = query.eigvals.sum() + d * query.residuals[0]
    trace2 = models.eigvals.sum(dim=1) + d * models.residuals
    sq_dist = (models.means - query.means).square().sum(dim=1)
    return sq_dist + trace1 + trace2 - 2 * cross


def nearest_by_frechet(
    query: LowRankGaussians, models: LowRankGaussians, k: int, allowed: torch.Tensor | None = None
) -> tuple[list[int], list[float], int]:
    """Exact k nearest models by Fréchet distance, computing few exact distances.

    Candidates are visited in order of their lower bound; once the k-th best exact distance
    is below the next candidate's bound, no unvisited model can enter the top k.

    Args:
        query: one model's Gaussian.
        models: the n candidates; rows are in model-id order, which breaks ties.
        k: results wanted.
        allowed: optional (n,) bool mask (filters, and excluding the query model itself).

    Returns:
        rows of the k nearest in rank order, their distances, and how many exact distances
        were computed.
    """
    bounds = frechet_lower_bound(query, models)
    if allowed is not None:
        bounds = bounds.masked_fill(~allowed, float("inf"))
    order = torch.argsort(bounds, stable=True)
    order = order[torch.isfinite(bounds[order])]
    best: list[tuple[float, int]] = []
    computed = 0
    for start in range(0, len(order), EXACT_BLOCK):
        block = order[start : start + EXACT_BLOCK]
        if len(best) >= k and best[k - 1][0] < bounds[block[0]].item():
            break
        exact = frechet_distance_lowrank(query, models.take(block))
        computed += len(block)
        best = sorted(best + list(zip(exact.tolist(), block.tolist(), strict=True)))[:k]
    return [row for _, row in best], [dist for dist, _ in best], computed

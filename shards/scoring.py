"""Scoring kernels: every query kind against a block of models, as a few large matrix products.

Shape letters: `q` queries, `n` models, `d` feature dim, `r` covariance rank, `m` reservoir
samples. Every kernel maps a (q, d) query block to a (q, n) score block, higher is better.
"""

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from shards.stats import ShardStats

logger = logging.getLogger(__name__)

# Intermediate (q, n_block, width) tensors are capped at this many elements, so that scoring a
# large shard needs memory proportional to the block, not to the shard.
MAX_BLOCK_ELEMENTS = 1 << 25


def _tensor(array: np.ndarray, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    # Arrays read from Arrow are read-only views, which torch refuses to share; a writable
    # contiguous copy is made only for those.
    return torch.as_tensor(np.require(array, requirements=["C", "W"]), device=device, dtype=dtype)


@dataclass(frozen=True)
class ScoringTables:
    """Tensors derived once from a shard's statistics, laid out for the kernels.

    The low-rank Gaussian uses C = V diag(λ) Vᵀ + sI with s = σ² + ε, whose inverse and log
    determinant have closed forms (Woodbury):
        C⁻¹ = (I − V diag(λ / (λ + s)) Vᵀ) / s,  log|C| = Σ log(λ + s) + (d − r) log s.
    `gauss_proj` stores the rows of V scaled by sqrt(λ / (λ + s)), so the Mahalanobis term is
    (‖z − μ‖² − ‖U z − U μ‖²) / s, two matrix products for all models at once.
    """

    num_models: int
    dim: int
    rank: int
    tau: float
    means: torch.Tensor  # (n, d)
    means_sqnorm: torch.Tensor  # (n,)
    means_unit: torch.Tensor  # (n, d), μ / ‖μ‖
    second_proj: torch.Tensor  # (n * r, d), rows of V scaled by sqrt(λ)
    residuals: torch.Tensor  # (n,) σ²
    gauss_proj: torch.Tensor  # (n * r, d), rows of V scaled by sqrt(λ / (λ + s))
    gauss_proj_mean: torch.Tensor  # (n, r), U μ
    gauss_scale: torch.Tensor  # (n,) s = σ² + ε
    gauss_const: torch.Tensor  # (n,) −½ (d log 2π + log|C|)
    reservoir: torch.Tensor  # (n, m, d)
    reservoir_log_count: torch.Tensor  # (n,) log of the valid rows, −inf where there are none
    reservoir_mask: torch.Tensor  # (n, m) bool, True on valid rows
    full_cov: torch.Tensor | None  # (n, d, d) Σ
    full_whiten: torch.Tensor | None  # (n, d, d) L⁻¹ with L Lᵀ = Σ + εI
    full_whiten_mean: torch.Tensor | None  # (n, d) L⁻¹ μ
    full_const: torch.Tensor | None  # (n,) −½ (d log 2π + log|Σ + εI|)

    @classmethod
    def build(
        cls,
        stats: ShardStats,
        eps: float,
        tau: float,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> "ScoringTables":
        """Derive the tables; constants are computed in float64 and then cast to `dtype`."""
        device = torch.device(device)
        n, d, r = stats.num_models, stats.dim, stats.rank
        f64 = np.float64
        means = stats.means.astype(f64)
        eigvals = stats.eigvals.astype(f64)
        eigvecs = stats.eigvecs.astype(f64)
        residuals = stats.residuals.astype(f64)
        norms = np.linalg.norm(means, axis=1, keepdims=True)

        scale = residuals + eps
        shrink = np.sqrt(eigvals / (eigvals + scale[:, None]))
        gauss_proj = eigvecs * shrink[:, :, None]
        logdet = np.log(eigvals + scale[:, None]).sum(axis=1) + (d - r) * np.log(scale)
        counts = stats.reservoir_counts
        with np.errstate(divide="ignore"):
            log_counts = np.log(counts.astype(f64))

        tables = dict(
            num_models=n,
            dim=d,
            rank=r,
            tau=tau,
            means=_tensor(means, device, dtype),
            means_sqnorm=_tensor((means**2).sum(axis=1), device, dtype),
            means_unit=_tensor(means / np.maximum(norms, 1e-12), device, dtype),
            second_proj=_tensor(
                (eigvecs * np.sqrt(eigvals)[:, :, None]).reshape(n * r, d), device, dtype
            ),
            residuals=_tensor(residuals, device, dtype),
            gauss_proj=_tensor(gauss_proj.reshape(n * r, d), device, dtype),
            gauss_proj_mean=_tensor(np.einsum("nrd,nd->nr", gauss_proj, means), device, dtype),
            gauss_scale=_tensor(scale, device, dtype),
            gauss_const=_tensor(-0.5 * (d * math.log(2 * math.pi) + logdet), device, dtype),
            reservoir=_tensor(stats.reservoir, device, dtype),
            reservoir_log_count=_tensor(log_counts, device, dtype),
            reservoir_mask=torch.as_tensor(
                np.arange(stats.reservoir.shape[1])[None, :] < counts[:, None], device=device
            ),
            **_full_tables(stats, eps, device, dtype),
        )
        return cls(**tables)


def _full_tables(
    stats: ShardStats, eps: float, device: torch.device, dtype: torch.dtype
) -> dict[str, torch.Tensor | None]:
    if stats.covs is None:
        return dict(full_cov=None, full_whiten=None, full_whiten_mean=None, full_const=None)
    d = stats.dim
    covs = stats.covs.astype(np.float64)
    chol = np.linalg.cholesky(covs + eps * np.eye(d))
    whiten = np.linalg.inv(chol)
    logdet = 2 * np.log(np.diagonal(chol, axis1=1, axis2=2)).sum(axis=1)
    return dict(
        full_cov=_tensor(covs, device, dtype),
        full_whiten=_tensor(whiten, device, dtype),
        full_whiten_mean=_tensor(np.einsum("nij,nj->ni", whiten, stats.means), device, dtype),
        full_const=_tensor(-0.5 * (d * math.log(2 * math.pi) + logdet), device, dtype),
    )


def _unit(queries: torch.Tensor) -> torch.Tensor:
    return queries / queries.norm(dim=1, keepdim=True).clamp_min(1e-12)


def _model_blocks(num_models: int, num_queries: int, width: int) -> list[slice]:
    per_block = max(1, MAX_BLOCK_ELEMENTS // max(1, num_queries * width))
    return [slice(i, min(i + per_block, num_models)) for i in range(0, num_models, per_block)]


def score_first_moment(t: ScoringTables, queries: torch.Tensor) -> torch.Tensor:
    """cos(q, μ)."""
    return _unit(queries) @ t.means_unit.T


def score_first_second_moment(t: ScoringTables, queries: torch.Tensor) -> torch.Tensor:
    """μᵀq̃/τ + q̃ᵀΣq̃/(2τ²) with the low-rank Σ: log E[exp(hᵀq̃/τ)] for h ~ N(μ, Σ)."""
    unit = _unit(queries)
    q = unit.shape[0]
    projected = (unit @ t.second_proj.T).view(q, t.num_models, t.rank)
    quad = projected.square().sum(dim=2) + t.residuals * unit.square().sum(dim=1, keepdim=True)
    return (unit @ t.means.T) / t.tau + quad / (2 * t.tau**2)


def score_first_second_moment_full(t: ScoringTables, queries: torch.Tensor) -> torch.Tensor:
    """As `score_first_second_moment` with the full covariance."""
    cov = _require_full(t.full_cov, "first_second_moment_full")
    unit = _unit(queries)
    quad = torch.einsum("qi,nij,qj->qn", unit, cov, unit)
    return (unit @ t.means.T) / t.tau + quad / (2 * t.tau**2)


def score_gaussian_density(t: ScoringTables, queries: torch.Tensor) -> torch.Tensor:
    """log N(z; μ, V diag(λ) Vᵀ + (σ² + ε)I) on the raw query, in the Woodbury form."""
    q = queries.shape[0]
    sq_dist = queries.square().sum(dim=1, keepdim=True) - 2 * queries @ t.means.T + t.means_sqnorm
    projected = (queries @ t.gauss_proj.T).view(q, t.num_models, t.rank) - t.gauss_proj_mean
    mahalanobis = (sq_dist - projected.square().sum(dim=2)) / t.gauss_scale
    return t.gauss_const - 0.5 * mahalanobis


def score_gaussian_density_full(t: ScoringTables, queries: torch.Tensor) -> torch.Tensor:
    """log N(z; μ, Σ + εI) with the full covariance, through the whitening L⁻¹."""
    whiten = _require_full(t.full_whiten, "gaussian_density_full")
    q, d = queries.shape
    out = torch.empty(q, t.num_models, dtype=queries.dtype, device=queries.device)
    for block in _model_blocks(t.num_models, q, d):
        white = (queries @ whiten[block].reshape(-1, d).T).view(q, -1, d)
        mahalanobis = (white - t.full_whiten_mean[block]).square().sum(dim=2)
        out[:, block] = t.full_const[block] - 0.5 * mahalanobis
    return out


def score_monte_carlo(t: ScoringTables, queries: torch.Tensor) -> torch.Tensor:
    """log mean_j exp(x_j · q̃ / τ) over each model's stored sample features x_j."""
    unit = _unit(queries)
    q, d = unit.shape
    m = t.reservoir.shape[1]
    out = torch.empty(q, t.num_models, dtype=unit.dtype, device=unit.device)
    for block in _model_blocks(t.num_models, q, m):
        logits = (unit @ t.reservoir[block].reshape(-1, d).T).view(q, -1, m) / t.tau
        logits = logits.masked_fill(~t.reservoir_mask[block], float("-inf"))
        out[:, block] = torch.logsumexp(logits, dim=2) - t.reservoir_log_count[block]
    return out


def _require_full(tensor: torch.Tensor | None, method: str) -> torch.Tensor:
    if tensor is None:
        raise ValueError(
            f"method {method!r} needs full covariances, which this index does not keep; "
            "use the low-rank method or re-index with a larger full_covariance_max_bytes"
        )
    return tensor


Kernel = Callable[[ScoringTables, torch.Tensor], torch.Tensor]

METHODS: dict[str, Kernel] = {
    "first_moment": score_first_moment,
    "first_second_moment": score_first_second_moment,
    "first_second_moment_full": score_first_second_moment_full,
    "gaussian_density": score_gaussian_density,
    "gaussian_density_full": score_gaussian_density_full,
    "monte_carlo": score_monte_carlo,
}


def probability_temperature(method: str, tau: float) -> float:
    """The temperature that turns a method's scores into log-likelihoods up to a constant.

    Cosine similarities need 1/τ, as CLIP's logits do; every other score is already a
    log-likelihood (or its closed-form surrogate), so p(model | q) = softmax(score / T).
    """
    return tau if method == "first_moment" else 1.0


def score(tables: ScoringTables, method: str, queries: torch.Tensor) -> torch.Tensor:
    """Scores (q, n) of a (q, d) query block by `method`; NaN (degenerate model) becomes −inf."""
    try:
        kernel = METHODS[method]
    except KeyError:
        raise ValueError(f"unknown method {method!r}; expected one of {sorted(METHODS)}") from None
    if queries.ndim != 2 or queries.shape[1] != tables.dim:
        raise ValueError(f"queries must be (q, {tables.dim}), got {tuple(queries.shape)}")
    with torch.inference_mode():
        scores = kernel(tables, queries.to(tables.means.dtype))
        return torch.nan_to_num(scores, nan=float("-inf"))

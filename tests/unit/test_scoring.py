"""Scoring kernels against the golden float64 oracle, model-by-model references and Monte-Carlo."""

import dataclasses

import numpy as np
import pytest
import torch
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

from shards import scoring
from shards.moments import lowrank_covariance
from shards.scoring import (
    METHODS,
    ScoringTables,
    _matmul_nt,
    map_in_scoring_threads,
    score,
    set_scoring_threads,
)
from shards.stats import ShardStats
from shards.topk import topk_rows
from tests.unit.shard_fixtures import random_shard

GOLDEN_KEYS = {
    "first_moment": "first_moment",
    "first_second_moment_full": "first_second_moment",
    "gaussian_density_full": "gaussian_density",
    "gaussian_density": "gaussian_density_lowrank",
    "monte_carlo": "monte_carlo",
}


@pytest.fixture(scope="module")
def golden(cases_dir):
    return np.load(cases_dir / "scoring" / "golden.npz")


def golden_stats(golden) -> ShardStats:
    n = golden["mu"].shape[0]
    factors = [lowrank_covariance(cov, int(golden["rank"])) for cov in golden["sigma"]]
    return ShardStats(
        ids=tuple(f"m{i}" for i in range(n)),
        metadata=({},) * n,
        fingerprints=("",) * n,
        counts=np.full(n, golden["samples"].shape[1]),
        means=golden["mu"],
        eigvals=np.stack([f[0] for f in factors]),
        eigvecs=np.stack([f[1].T for f in factors]),
        residuals=np.array([f[2] for f in factors]),
        covs=golden["sigma"],
        reservoir=golden["samples"],
        reservoir_counts=np.full(n, golden["samples"].shape[1]),
    )


@pytest.mark.parametrize("method", sorted(GOLDEN_KEYS))
def test_kernels_match_golden_oracle_in_float64(golden, method):
    tables = ScoringTables.build(
        golden_stats(golden),
        eps=float(golden["eps"]),
        tau=float(golden["tau"]),
        dtype=torch.float64,
    )
    got = score(tables, method, torch.as_tensor(golden["queries"])).numpy()
    np.testing.assert_allclose(got, golden[GOLDEN_KEYS[method]], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("method", sorted(GOLDEN_KEYS))
def test_kernels_in_float32_agree_with_golden_to_single_precision(golden, method):
    tables = ScoringTables.build(
        golden_stats(golden), eps=float(golden["eps"]), tau=float(golden["tau"])
    )
    got = score(tables, method, torch.as_tensor(golden["queries"], dtype=torch.float32))
    expected = golden[GOLDEN_KEYS[method]]
    # float32 keeps ~7 digits; scores reach a few thousand (1/τ² terms), so compare relative
    # to the largest magnitude in the block.
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-5 * np.abs(expected).max())


def reference_score(stats: ShardStats, i: int, method: str, query, eps: float, tau: float):
    """Model `i`'s score in float64, written from the formulas, not from the kernels."""
    unit = query / np.linalg.norm(query)
    mu = stats.means[i].astype(np.float64)
    vecs, vals = stats.eigvecs[i].astype(np.float64), stats.eigvals[i].astype(np.float64)
    lowrank = vecs.T @ np.diag(vals) @ vecs + float(stats.residuals[i]) * np.eye(len(mu))
    full = stats.covs[i].astype(np.float64)
    samples = stats.reservoir[i, : stats.reservoir_counts[i]].astype(np.float64)
    if method == "first_moment":
        return mu @ unit / np.linalg.norm(mu)
    if method.startswith("first_second_moment"):
        cov = full if method.endswith("_full") else lowrank
        return mu @ unit / tau + unit @ cov @ unit / (2 * tau**2)
    if method.startswith("gaussian_density"):
        cov = full if method.endswith("_full") else lowrank
        return multivariate_normal(mu, cov + eps * np.eye(len(mu))).logpdf(query)
    assert method == "monte_carlo", method
    return logsumexp(samples @ unit / tau) - np.log(len(samples))


def reference_scores(stats: ShardStats, method: str, query, eps: float, tau: float):
    return np.array(
        [reference_score(stats, i, method, query, eps, tau) for i in range(stats.num_models)]
    )


@pytest.mark.parametrize("band_rows", [64, 3])
@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_matches_a_model_by_model_float64_reference(monkeypatch, method, band_rows):
    # Bands of 3 rows cut L⁻¹ (d = 10) into four, the last one ragged.
    monkeypatch.setattr("shards.scoring.WHITEN_BAND_ROWS", band_rows)
    stats = random_shard(num_models=15, dim=10, rank=3)
    queries = np.random.default_rng(5).normal(size=(4, 10))
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    tables = ScoringTables.build(stats, eps=1e-3, tau=0.05, dtype=torch.float64)

    got = score(tables, method, torch.as_tensor(queries)).numpy()

    expected = np.stack([reference_scores(stats, method, q, 1e-3, 0.05) for q in queries])
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.skipif(not scoring._onednn_available(), reason="torch without oneDNN")
@pytest.mark.parametrize("threads", [1, 2])
def test_fused_full_gaussian_density_in_float32_matches_the_float64_reference(monkeypatch, threads):
    """More than 4 queries take the fused path: ragged bands and ragged model chunks."""
    monkeypatch.setattr("shards.scoring.WHITEN_BAND_ROWS", 3)
    monkeypatch.setattr("shards.scoring.FUSED_WHITEN_MODELS", 4)
    fused_calls = []
    fused = scoring._gaussian_density_full_fused
    monkeypatch.setattr(
        "shards.scoring._gaussian_density_full_fused",
        lambda *args: fused_calls.append(1) or fused(*args),
    )
    monkeypatch.setattr("shards.scoring._scoring_threads", threads)
    stats = random_shard(num_models=15, dim=10, rank=3)
    queries = np.random.default_rng(6).normal(size=(7, 10))
    tables = ScoringTables.build(stats, eps=1e-3, tau=0.05)

    got = score(tables, "gaussian_density_full", torch.as_tensor(queries, dtype=torch.float32))

    assert fused_calls
    expected = np.stack(
        [reference_scores(stats, "gaussian_density_full", q, 1e-3, 0.05) for q in queries]
    )
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-5 * np.abs(expected).max())


def test_first_second_moment_is_the_log_expectation_it_approximates():
    """Compare with a Monte-Carlo estimate of log E[exp(hᵀq̃/τ)] for h ~ N(μ, Σ).

    For Gaussian h the identity is exact, so any gap is Monte-Carlo error. exp(hᵀq̃/τ) is
    log-normal with log-variance s² = q̃ᵀΣq̃/τ²; the relative standard error of the mean of N
    draws is sqrt((e^{s²} − 1) / N). With s² ≈ 1 and N = 400,000 that is ~0.26%, so a
    tolerance of 0.02 on the log (about 8 standard errors) cannot fail by chance.
    """
    rng = np.random.default_rng(7)
    dim, tau = 8, 0.1
    mu = rng.normal(size=dim) * 0.3
    basis = rng.normal(size=(dim, dim))
    cov = basis @ basis.T
    query = rng.normal(size=dim)
    unit = query / np.linalg.norm(query)
    cov *= tau**2 / (unit @ cov @ unit)

    vals, vecs = np.linalg.eigh(cov)
    stats = ShardStats(
        ids=("m",),
        metadata=({},),
        fingerprints=("",),
        counts=np.array([1]),
        means=mu[None],
        eigvals=vals[::-1][None, : dim - 1].copy(),
        eigvecs=vecs[:, ::-1].T[None, : dim - 1].copy(),
        residuals=np.array([vals[0]]),
        covs=cov[None],
        reservoir=np.zeros((1, 1, dim)),
        reservoir_counts=np.array([0]),
    )
    tables = ScoringTables.build(stats, eps=0.0, tau=tau, dtype=torch.float64)
    closed_form = score(tables, "first_second_moment_full", torch.as_tensor(query[None]))

    draws = rng.multivariate_normal(mu, cov, size=400_000)
    estimate = logsumexp(draws @ unit / tau) - np.log(len(draws))
    assert abs(closed_form.item() - estimate) < 0.02


def test_lowrank_woodbury_equals_dense_formula_with_same_lowrank_covariance():
    stats = random_shard(num_models=30, dim=24, rank=5)
    queries = torch.as_tensor(np.random.default_rng(3).normal(size=(6, 24)))
    tables = ScoringTables.build(stats, eps=1e-3, tau=0.01, dtype=torch.float64)
    woodbury = score(tables, "gaussian_density", queries).numpy()
    dense = np.stack(
        [reference_scores(stats, "gaussian_density", q, 1e-3, 0.01) for q in queries.numpy()]
    )
    # Stored eigenvectors are float32, orthonormal only to ~1e-7, and the Woodbury identity
    # assumes orthonormal columns; so agreement is to single precision, not to 1e-15.
    np.testing.assert_allclose(woodbury, dense, rtol=1e-6)


def test_full_methods_refuse_an_index_without_full_covariances():
    tables = ScoringTables.build(random_shard(keep_full=False), eps=1e-3, tau=0.01)
    with pytest.raises(ValueError, match="full covariances"):
        score(tables, "gaussian_density_full", torch.zeros(1, 12))


def test_models_that_cannot_score_get_minus_infinity_and_are_never_returned():
    """A model without reservoir samples scores −inf; a degenerate (NaN) mean turns to −inf."""
    stats = random_shard()
    means = stats.means.copy()
    means[3] = np.nan
    counts = stats.reservoir_counts.copy()
    counts[5] = 0
    stats = dataclasses.replace(stats, means=means, reservoir_counts=counts)
    tables = ScoringTables.build(stats, eps=1e-3, tau=0.01)
    queries = torch.as_tensor(np.random.default_rng(0).normal(size=(2, 12)), dtype=torch.float32)

    for method, dead in (("first_moment", 3), ("monte_carlo", 5)):
        scores = score(tables, method, queries)
        assert torch.all(scores[:, dead] == float("-inf")), method
        others = np.delete(scores.numpy(), dead, axis=1)
        assert np.isfinite(others).all(), method
        for rows in topk_rows(scores, k=stats.num_models):
            assert dead not in rows and len(rows) == stats.num_models - 1, method


def test_unknown_method_and_wrong_dim_are_named():
    tables = ScoringTables.build(random_shard(), eps=1e-3, tau=0.01)
    with pytest.raises(ValueError, match="unknown method 'cosine'"):
        score(tables, "cosine", torch.zeros(1, 12))
    with pytest.raises(ValueError, match=r"\(q, 12\)"):
        score(tables, "first_moment", torch.zeros(1, 7))


def test_blocked_kernels_equal_unblocked(monkeypatch):
    monkeypatch.setattr("shards.scoring.WHITEN_BAND_ROWS", 5)  # L⁻¹ in bands of 5, 5 and 2
    stats = random_shard(num_models=40, dim=12)
    queries = torch.as_tensor(np.random.default_rng(9).normal(size=(3, 12)), dtype=torch.float32)
    tables = ScoringTables.build(stats, eps=1e-3, tau=0.05)
    whole = {m: score(tables, m, queries) for m in ("monte_carlo", "gaussian_density_full")}
    monkeypatch.setattr("shards.scoring.MAX_BLOCK_ELEMENTS", 3 * 7 * 32)
    for method, expected in whole.items():
        torch.testing.assert_close(score(tables, method, queries), expected)


@pytest.mark.parametrize("wide", [False, True])
@pytest.mark.parametrize("num_queries", [1, 2, 5, 33])
def test_products_shared_by_threads_block_by_block_equal_one_product(
    monkeypatch, num_queries, wide
):
    # Wide: rows of 16 count as wide, so up to 4 queries take torch's matrix-vector product.
    monkeypatch.setattr("shards.scoring.WIDE_ROW_ELEMENTS", 8 if wide else 1 << 13)
    rng = np.random.default_rng(4)
    table = torch.as_tensor(rng.normal(size=(1001, 16)), dtype=torch.float64)
    block = torch.as_tensor(rng.normal(size=(num_queries, 16)), dtype=torch.float64)
    # Blocks of 7 and 10 rows, over two threads, with a ragged last block.
    monkeypatch.setattr("shards.scoring.MATVEC_BLOCK_ELEMENTS", 16 * 7)
    monkeypatch.setattr("shards.scoring.MATMUL_BLOCK_ELEMENTS", 16 * 10)
    monkeypatch.setattr("shards.scoring.PARALLEL_MATMUL_MIN_ELEMENTS", 1)
    monkeypatch.setattr("shards.scoring.SMALL_TABLE_ELEMENTS", 1)
    set_scoring_threads(2)
    try:
        torch.testing.assert_close(_matmul_nt(block, table), block @ table.T)
    finally:
        set_scoring_threads(None)
    with pytest.raises(ValueError, match="threads must be >= 1 or None, got 0"):
        set_scoring_threads(0)


@pytest.mark.parametrize("wide_rows", [False, True])
@pytest.mark.parametrize("onednn", [True, False])
@pytest.mark.parametrize("num_queries", [1, 3, 4, 5, 33])
def test_float32_products_by_each_library_equal_a_float64_product(
    monkeypatch, onednn, num_queries, wide_rows
):
    if onednn and not scoring._onednn_available():
        pytest.skip("this torch has no oneDNN")
    rng = np.random.default_rng(5)
    table = torch.as_tensor(rng.normal(size=(1001, 48)), dtype=torch.float32)
    wide = torch.as_tensor(rng.normal(size=(num_queries, 64)), dtype=torch.float32)
    block = wide[:, :48]  # a column slice, as the banded whitening passes
    # Blocks of 7 (one query), 10 (OpenBLAS, dot passes) and 13 rows (oneDNN), over two
    # threads, with ragged last blocks; the OpenMP setting of this thread is left as it was.
    monkeypatch.setattr("shards.scoring.MATVEC_BLOCK_ELEMENTS", 48 * 7)
    monkeypatch.setattr("shards.scoring.MATMUL_BLOCK_ELEMENTS", 48 * 10)
    monkeypatch.setattr("shards.scoring.ONEDNN_BLOCK_ELEMENTS", 48 * 13)
    monkeypatch.setattr("shards.scoring.PARALLEL_MATMUL_MIN_ELEMENTS", 1)
    monkeypatch.setattr("shards.scoring.SMALL_TABLE_ELEMENTS", 1)
    monkeypatch.setattr("shards.scoring._onednn_available", lambda: onednn)
    # Wide: rows of 48 count as wide, so oneDNN blocks hold 40 rows, not 13, and up to 4
    # queries take torch's matrix-vector product.
    monkeypatch.setattr("shards.scoring.WIDE_ROW_ELEMENTS", 32 if wide_rows else 1 << 13)
    monkeypatch.setattr("shards.scoring.ONEDNN_WIDE_MIN_ROWS", 40)
    onednn_rows = []
    product = scoring._onednn_rows_by_queries

    def counted(rows, queries):
        onednn_rows.append(len(rows))
        return product(rows, queries)

    monkeypatch.setattr("shards.scoring._onednn_rows_by_queries", counted)
    threads_before = torch.get_num_threads()
    set_scoring_threads(2)
    try:
        got = _matmul_nt(block, table)
    finally:
        set_scoring_threads(None)
    expected = block.double() @ table.double().T
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)
    assert got.dtype == torch.float32
    assert torch.get_num_threads() == threads_before
    # oneDNN multiplies exactly the blocks of more than DOT_PASS_MAX_QUERIES queries.
    expect_onednn = onednn and num_queries > scoring.DOT_PASS_MAX_QUERIES
    assert sum(onednn_rows) == (1001 if expect_onednn else 0)
    block_rows = 40 if wide_rows else 13
    assert all(rows == block_rows for rows in onednn_rows[:-1])
    assert max(onednn_rows, default=block_rows) <= block_rows


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_map_in_scoring_threads_keeps_the_order_and_raises_what_work_raises(threads):
    set_scoring_threads(threads)
    try:
        assert map_in_scoring_threads(lambda x: x * x, list(range(50))) == [
            x * x for x in range(50)
        ]
        assert map_in_scoring_threads(str, []) == []

        def fail_on_seven(x: int) -> int:
            if x == 7:
                raise RuntimeError("seven")
            return x

        with pytest.raises(RuntimeError, match="seven"):
            map_in_scoring_threads(fail_on_seven, list(range(20)))
    finally:
        set_scoring_threads(None)

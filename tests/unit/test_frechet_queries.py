"""Fréchet distances and pruning, products of experts, image sets and filters."""

import numpy as np
import pytest
import torch

from shards.filters import FilterIndex, Filters
from shards.frechet import (
    LowRankGaussians,
    frechet_distance_full,
    frechet_distance_lowrank,
    frechet_lower_bound,
    nearest_by_frechet,
)
from shards.moments import lowrank_covariance
from shards.queries import Expert, poe_offset, score_experts
from shards.scoring import ScoringTables, score
from tests.unit.shard_fixtures import random_shard
from tests.unit.test_scoring import golden_stats


@pytest.fixture(scope="module")
def golden(cases_dir):
    return np.load(cases_dir / "scoring" / "golden.npz")


def exact_lowrank(mu: np.ndarray, covs: np.ndarray) -> LowRankGaussians:
    """Full covariances written exactly in the low-rank form with r = d − 1."""
    values, vectors = np.linalg.eigh(covs)
    values, vectors = values[:, ::-1], vectors[:, :, ::-1]
    smallest = values[:, -1]
    return LowRankGaussians.from_arrays(
        mu, values[:, :-1] - smallest[:, None], vectors[:, :, :-1].transpose(0, 2, 1), smallest
    )


def pairwise(fn, gaussians: LowRankGaussians) -> np.ndarray:
    n = gaussians.means.shape[0]
    return np.stack([fn(gaussians.take(torch.tensor([i])), gaussians).numpy() for i in range(n)])


def test_full_frechet_matches_golden(golden):
    mu, sigma = golden["mu"], golden["sigma"]
    got = [
        [frechet_distance_full(mu[i], sigma[i], mu[j], sigma[j]) for j in range(7)]
        for i in range(7)
    ]
    np.testing.assert_allclose(got, golden["frechet"], atol=1e-10)


def test_lowrank_frechet_and_bound_match_golden_when_the_form_is_exact(golden):
    gaussians = exact_lowrank(golden["mu"], golden["sigma"])
    np.testing.assert_allclose(
        pairwise(frechet_distance_lowrank, gaussians), golden["frechet"], atol=1e-10
    )
    np.testing.assert_allclose(
        pairwise(frechet_lower_bound, gaussians), golden["frechet_lower_bound"], atol=1e-10
    )


def test_lowrank_frechet_equals_dense_formula_on_the_same_lowrank_covariances(golden):
    factors = [lowrank_covariance(c, 4) for c in golden["sigma"]]
    gaussians = LowRankGaussians.from_arrays(
        golden["mu"], [f[0] for f in factors], [f[1].T for f in factors], [f[2] for f in factors]
    )
    dense = [v @ np.diag(lam) @ v.T + res * np.eye(16) for lam, v, res in factors]
    mu = golden["mu"]
    expected = [
        [frechet_distance_full(mu[i], dense[i], mu[j], dense[j]) for j in range(7)]
        for i in range(7)
    ]
    exact = pairwise(frechet_distance_lowrank, gaussians)
    np.testing.assert_allclose(exact, expected, atol=1e-10)
    assert (pairwise(frechet_lower_bound, gaussians) <= exact + 1e-12).all()


def test_pruned_nearest_equals_brute_force_and_skips_most_models():
    stats = random_shard(num_models=200, dim=16, rank=3, keep_full=False, seed=3)
    gaussians = LowRankGaussians.from_arrays(
        stats.means, stats.eigvals, stats.eigvecs, stats.residuals
    )
    allowed = torch.ones(200, dtype=torch.bool)
    allowed[17] = False
    for query_row in (17, 101):
        query = gaussians.take(torch.tensor([query_row]))
        rows, dists, computed = nearest_by_frechet(query, gaussians, 5, allowed)
        exact = frechet_distance_lowrank(query, gaussians).numpy()
        brute = sorted((d, r) for r, d in enumerate(exact) if r != 17)[:5]
        assert rows == [r for _, r in brute]
        np.testing.assert_allclose(dists, [d for d, _ in brute], atol=1e-12)
        assert computed < 200


def test_product_of_experts_matches_golden(golden):
    tables = ScoringTables.build(
        golden_stats(golden),
        eps=float(golden["eps"]),
        tau=float(golden["tau"]),
        dtype=torch.float64,
    )
    for weight, key in ((1.0, "poe_text_image"), (-0.5, "poe_text_minus_half_image")):
        rows = []
        for q in golden["queries"]:
            experts = [
                Expert("first_second_moment_full", q[None]),
                Expert("gaussian_density_full", q[None], weight),
            ]
            result = score_experts(tables, experts)
            rows.append(result.scores.numpy() - poe_offset(experts, result.expert_lse))
        np.testing.assert_allclose(rows, golden[key], rtol=1e-10)


def test_image_set_scores_the_mean_per_image_log_density():
    stats = random_shard(num_models=12, dim=10)
    tables = ScoringTables.build(stats, eps=1e-3, tau=0.05, dtype=torch.float64)
    images = np.random.default_rng(2).normal(size=(6, 10))
    got = score_experts(tables, [Expert("gaussian_density", images)]).scores
    per_image = score(tables, "gaussian_density", torch.as_tensor(images))
    torch.testing.assert_close(got, per_image.mean(dim=0))


def test_filtered_product_of_experts_normalises_over_allowed_models_only():
    stats = random_shard(num_models=12, dim=10)
    tables = ScoringTables.build(stats, eps=1e-3, tau=0.05, dtype=torch.float64)
    q = np.random.default_rng(4).normal(size=(1, 10))
    experts = [Expert("first_moment", q), Expert("gaussian_density", q, -0.3)]
    allowed = torch.arange(12) % 3 == 0
    filtered = score_experts(tables, experts, allowed)
    subset = score_experts(
        ScoringTables.build(stats.select(range(0, 12, 3)), eps=1e-3, tau=0.05, dtype=torch.float64),
        experts,
    )
    np.testing.assert_allclose(filtered.expert_lse, subset.expert_lse, rtol=1e-12)
    torch.testing.assert_close(filtered.scores[allowed], subset.scores)
    assert torch.isinf(filtered.scores[~allowed]).all()


METADATA = (
    {
        "tags": ["digit", "mnist"],
        "license": "CC-BY-SA-3.0",
        "architecture": "dataset",
        "resolution": 28,
    },
    {"tags": ["face", "gan"], "license": "MIT", "architecture": "DCGAN", "resolution": 64},
    {
        "tags": ["face", "photo"],
        "license": "unstated",
        "architecture": "dataset",
        "resolution": None,
    },
    {"tags": ["Photo", "cat"], "license": "MIT", "architecture": "dataset", "resolution": 96},
)


@pytest.mark.parametrize(
    ("filters", "rows"),
    [
        (Filters(), [0, 1, 2, 3]),
        (Filters(tags_any=("face", "cat")), [1, 2, 3]),
        (Filters(tags_all=("face", "photo")), [2]),
        (Filters(tags_none=("photo",)), [0, 1]),
        (Filters(licenses=("mit",)), [1, 3]),
        (Filters(architectures=("dataset",), min_resolution=32), [3]),
        (Filters(max_resolution=64), [0, 1]),
        (Filters(min_resolution=100, max_resolution=10), []),
        (Filters(tags_any=("no-such-tag",)), []),
    ],
)
def test_filter_index_masks(filters, rows):
    mask = FilterIndex(METADATA).mask(filters)
    got = list(range(4)) if mask is None else np.flatnonzero(mask).tolist()
    assert got == rows

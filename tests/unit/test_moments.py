"""Streaming moments: chunked sums merged in any order equal the moments of all features."""

import numpy as np
import pytest

from shards.moments import MomentSums, lowrank_covariance, merge_all


def test_merged_chunk_sums_in_any_order_equal_moments_of_all_features():
    rng = np.random.default_rng(1)
    features = rng.normal(loc=0.3, size=(1000, 24))
    chunks = np.array_split(features, [100, 350, 360, 800])
    order = rng.permutation(len(chunks))

    merged = merge_all([MomentSums.of(chunks[i]) for i in order])

    assert merged.count == 1000
    np.testing.assert_allclose(merged.mean(), features.mean(axis=0), rtol=0, atol=1e-13)
    np.testing.assert_allclose(merged.covariance(), np.cov(features.T), rtol=0, atol=1e-12)


def test_merge_is_exact_for_float32_inputs_accumulated_in_float64():
    rng = np.random.default_rng(2)
    features = rng.normal(size=(512, 8)).astype(np.float32)
    halves = MomentSums.of(features[:256]).merge(MomentSums.of(features[256:]))
    np.testing.assert_allclose(
        halves.covariance(), np.cov(features.T.astype(np.float64)), atol=1e-12
    )


def test_covariance_needs_two_samples():
    with pytest.raises(ValueError, match="at least 2 samples"):
        MomentSums.of(np.ones((1, 3))).covariance()


def test_merge_refuses_different_dims():
    with pytest.raises(ValueError, match="cannot merge"):
        MomentSums.zeros(3).merge(MomentSums.zeros(4))


def test_lowrank_covariance_matches_golden_factors(cases_dir):
    golden = np.load(cases_dir / "scoring" / "golden.npz")
    rank = int(golden["rank"])
    for i, cov in enumerate(golden["sigma"]):
        values, vectors, residual = lowrank_covariance(cov, rank)
        expected_vecs = golden["lowrank_eigvecs"][i]
        np.testing.assert_allclose(values, golden["lowrank_eigvals"][i], atol=1e-12)
        np.testing.assert_allclose(residual, golden["lowrank_residual"][i], atol=1e-12)
        # Eigenvectors are defined up to sign; the reconstructed matrix is not.
        np.testing.assert_allclose(
            vectors @ np.diag(values) @ vectors.T,
            expected_vecs @ np.diag(golden["lowrank_eigvals"][i]) @ expected_vecs.T,
            atol=1e-12,
        )

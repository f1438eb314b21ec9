"""A scorer actor answers concurrent searches, batched, exactly as it answers them one by one."""

import asyncio

import numpy as np
import pytest

from actors.scorer import ShardScorer
from shards import store
from shards.filters import Filters
from shards.queries import Expert

ray = pytest.importorskip("ray")

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def queries(dim: int) -> list[tuple[list[Expert], int, Filters]]:
    """Searches of every kind a scorer serves: each method, an image set, a product, filters."""
    rng = np.random.default_rng(12)

    def features(rows: int) -> np.ndarray:
        x = rng.normal(size=(rows, dim)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    return [
        ([Expert("first_moment", features(1))], 3, Filters()),
        ([Expert("first_second_moment", features(1))], 2, Filters()),
        ([Expert("gaussian_density", features(1))], 3, Filters(tags_any=("digit",))),
        ([Expert("gaussian_density", features(4))], 1, Filters()),
        ([Expert("monte_carlo", features(1))], 3, Filters()),
        ([Expert("first_moment", features(1)), Expert("gaussian_density", features(1), -0.5)], 3,
         Filters()),
        ([Expert("first_moment", features(1))], 5, Filters(tags_none=("digit",))),
        ([Expert("first_moment", features(1))], 3, Filters()),
    ]  # fmt: skip


def start(root, version: str, max_queries: int, wait_s: float):
    actor = ray.remote(ShardScorer).options(num_cpus=0.25)
    return actor.remote(str(root), version, 0, 1e-3, 0.01, max_queries, wait_s)


def test_concurrent_searches_are_batched_and_answer_as_sequential_ones(zoo):
    root = zoo[1]
    manifest = store.read_manifest(root)
    searches = queries(manifest.dim)
    alone = start(root, manifest.version, max_queries=1, wait_s=0.0)
    batched = start(root, manifest.version, max_queries=32, wait_s=0.5)

    sequential = [ray.get(alone.search.remote(*search)) for search in searches]

    async def concurrently() -> list:
        return await asyncio.gather(*(batched.search.remote(*search) for search in searches))

    together = asyncio.run(concurrently())

    # The generous wait puts every search into one batch; the image set fills 4 of its rows.
    assert ray.get(batched.batch_sizes.remote()) == {len(searches): 1}
    assert set(ray.get(alone.batch_sizes.remote())) == {1}
    for one, many in zip(sequential, together, strict=True):
        assert [h.model_id for h in many.hits] == [h.model_id for h in one.hits]
        np.testing.assert_allclose(
            [h.score for h in many.hits], [h.score for h in one.hits], rtol=1e-5
        )
        np.testing.assert_allclose(many.logsumexp, one.logsumexp, rtol=1e-6)
        np.testing.assert_allclose(many.expert_lse, one.expert_lse, rtol=1e-6)
    for actor in (alone, batched):
        ray.kill(actor)


def test_an_invalid_search_fails_alone_within_a_batch(zoo):
    root = zoo[1]
    manifest = store.read_manifest(root)
    good = queries(manifest.dim)[0]
    bad = ([Expert("first_moment", np.ones((1, manifest.dim + 1), np.float32))], 3, Filters())
    batched = start(root, manifest.version, max_queries=32, wait_s=0.5)

    async def concurrently() -> list:
        calls = [batched.search.remote(*s) for s in (good, bad, good)]
        return await asyncio.gather(*calls, return_exceptions=True)

    first, failed, last = asyncio.run(concurrently())

    assert isinstance(failed, ray.exceptions.RayTaskError)
    assert isinstance(failed.cause, ValueError) and "queries must be" in str(failed.cause)
    assert [h.model_id for h in first.hits] == [h.model_id for h in last.hits]
    ray.kill(batched)

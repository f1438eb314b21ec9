"""Cross-request batching: queries scored together answer as they would alone."""

import asyncio
import threading

import numpy as np
import pytest
import torch

from actors.batching import RequestBatcher
from actors.scorer import SearchRequest, _row_groups
from shards.filters import Filters
from shards.queries import Expert, score_experts, score_queries
from shards.scoring import ScoringTables
from tests.unit.shard_fixtures import random_shard


def test_batched_queries_score_as_each_alone():
    stats = random_shard(num_models=30, dim=10, rank=3)
    tables = ScoringTables.build(stats, eps=1e-3, tau=0.05)
    rng = np.random.default_rng(3)
    q = rng.normal(size=(8, 10)).astype(np.float32)
    queries = [
        [Expert("first_moment", q[:1])],
        [Expert("gaussian_density", q[1:2])],
        [Expert("first_moment", q[2:3])],
        [Expert("gaussian_density", q[3:6])],  # an image set: the mean of its rows
        [Expert("first_second_moment", q[6:7]), Expert("first_moment", q[7:8], -0.5)],
    ]
    masks = [None, torch.arange(30) % 2 == 0, None, torch.arange(30) < 25, torch.arange(30) > 3]

    batched = score_queries(tables, queries, masks)

    for experts, mask, got in zip(queries, masks, batched, strict=True):
        alone = score_experts(tables, experts, mask)
        assert got.temperature == alone.temperature
        assert torch.equal(torch.isinf(got.scores), torch.isinf(alone.scores))
        finite = torch.isfinite(alone.scores)
        torch.testing.assert_close(got.scores[finite], alone.scores[finite], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(got.expert_lse, alone.expert_lse, rtol=1e-6)


def test_batched_queries_need_one_mask_each_and_an_expert_each():
    tables = ScoringTables.build(random_shard(num_models=5, dim=10), eps=1e-3, tau=0.05)
    query = [Expert("first_moment", np.ones((1, 10), np.float32))]
    with pytest.raises(ValueError, match="2 queries but 1 masks"):
        score_queries(tables, [query, query], [None])
    with pytest.raises(ValueError, match="at least one expert"):
        score_queries(tables, [query, []], [None, None])


def test_requests_are_grouped_by_feature_rows():
    def request(rows: int) -> SearchRequest:
        return SearchRequest([Expert("first_moment", np.ones((rows, 4), np.float32))], 3, Filters())

    requests = [request(1), request(2), request(1), request(5), request(1)]
    groups = _row_groups(requests, max_rows=4)
    assert [[len(r.experts[0].features) for r in g] for g in groups] == [[1, 2, 1], [5], [1]]


def test_concurrent_requests_are_answered_in_batches_and_in_order():
    seen: list[list[int]] = []
    release = threading.Event()

    def answer(requests: list[int]) -> list[int | Exception]:
        release.wait(5)  # the first batch holds the worker while the others queue up
        seen.append(list(requests))
        return [ValueError(f"bad {r}") if r == 3 else 10 * r for r in requests]

    batcher = RequestBatcher(answer, max_size=4, wait_s=0.0)

    async def run() -> list:
        first = asyncio.create_task(batcher.submit(0))
        await asyncio.sleep(0.05)
        rest = [asyncio.create_task(batcher.submit(i)) for i in range(1, 7)]
        await asyncio.sleep(0.05)
        release.set()
        return await asyncio.gather(first, *rest, return_exceptions=True)

    results = asyncio.run(run())

    assert seen == [[0], [1, 2, 3, 4], [5, 6]]
    assert batcher.batch_sizes == {1: 1, 4: 1, 2: 1}
    assert results[:3] == [0, 10, 20] and results[4:] == [40, 50, 60]
    assert isinstance(results[3], ValueError) and "bad 3" in str(results[3])


def test_a_failing_batch_fails_each_of_its_requests():
    def answer(requests: list[int]) -> list[int]:
        raise RuntimeError("scoring failed")

    async def run() -> list:
        batcher = RequestBatcher(answer, max_size=8, wait_s=0.01)
        return await asyncio.gather(*(batcher.submit(i) for i in range(3)), return_exceptions=True)

    results = asyncio.run(run())
    assert all(isinstance(r, RuntimeError) and "scoring failed" in str(r) for r in results)


def test_batcher_settings_are_validated():
    with pytest.raises(ValueError, match="max_size must be >= 1, got 0"):
        RequestBatcher(lambda r: r, max_size=0, wait_s=0.0)
    with pytest.raises(ValueError, match="wait_s must be >= 0"):
        RequestBatcher(lambda r: r, max_size=1, wait_s=-1)

"""`ShardScorer`: a Ray actor that holds one shard's statistics and answers top-k queries."""

import asyncio
import logging
import os
import time
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray
import torch

from actors.batching import RequestBatcher
from shards import store
from shards.filters import FilterIndex, Filters
from shards.frechet import LowRankGaussians, nearest_by_frechet
from shards.queries import Expert, QueryScores, score_queries
from shards.scoring import ScoringTables, map_in_scoring_threads, set_scoring_threads
from shards.topk import Hit, logsumexp_scaled, topk_rows

logger = logging.getLogger(__name__)

SCORER_NAME_PREFIX = "modelseek-scorer-"
# Searches that reach a scorer together are scored as one (q, d) block: the shard's tables
# are read once per block, so 32 queries against 1M means cost about 4x one query, not 32x.
# A lone search waits this long for company; under load, searches that arrive while a block
# is being scored form the next block without waiting.
BATCH_WAIT_S = 0.002
BATCH_MAX_QUERIES = 32


@dataclass(frozen=True)
class SearchRequest:
    """One search as a scorer receives it (see `ShardScorer.search`)."""

    experts: list[Expert]
    k: int
    filters: Filters


@dataclass(frozen=True)
class ShardAnswer:
    """A shard's part of the answer to one query.

    Attributes:
        hits: the shard's best models, in rank order.
        logsumexp: log Σ exp(score / T) over the shard's allowed models, T the query's
            probability temperature; the aggregator combines them into p(model | query).
        expert_lse: per expert of a product of experts, its partial normaliser.
        seconds: time spent scoring.
        exact_computed: for similar-model queries, the exact distances computed.
    """

    hits: list[Hit]
    logsumexp: float
    expert_lse: list[float]
    seconds: float
    exact_computed: int = 0


@dataclass(frozen=True)
class ModelRecord:
    """What the API shows of a model: catalog fields plus index facts."""

    model_id: str
    metadata: dict[str, Any]
    samples: int
    fingerprint: str
    thumbnails: int


class ShardScorer:
    """Scores query blocks against one shard, on CUDA when the actor was given a GPU.

    Run as a named Ray actor with `max_restarts`; a restart re-runs `__init__`, which reloads
    and re-verifies the shard from storage. It is an asyncio actor: concurrent searches are
    batched (`batch_max_queries`, `batch_wait_s`) and scored in a worker thread, so pings and
    descriptions answer while a block is being scored.
    """

    def __init__(
        self,
        index_root: str,
        version: str,
        position: int,
        eps: float,
        tau: float,
        batch_max_queries: int = BATCH_MAX_QUERIES,
        batch_wait_s: float = BATCH_WAIT_S,
    ):
        started = time.perf_counter()
        manifest = store.read_manifest(index_root, version)
        self._stats = store.load_shard(index_root, manifest, position)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        # Ray gives an actor with a fraction of a CPU one torch thread; the shards of a query
        # are scored at the same time, so each may stream its tables on its share of the cores.
        threads = max(1, len(os.sched_getaffinity(0)) // len(manifest.shards))
        set_scoring_threads(threads)
        self._tables = ScoringTables.build(self._stats, eps=eps, tau=tau, device=device)
        self._filters = FilterIndex(self._stats.metadata)
        # Fréchet distances need float64 (a difference of traces); kept on the CPU.
        self._gaussians = LowRankGaussians.from_arrays(
            self._stats.means, self._stats.eigvals, self._stats.eigvecs, self._stats.residuals
        )
        self._position = position
        self._batcher = RequestBatcher(self.search_batch, batch_max_queries, batch_wait_s)
        logger.info(
            "scorer %d ready on %s (%d threads): %d models of version %s in %.2f s",
            position,
            device,
            threads,
            self._stats.num_models,
            version,
            time.perf_counter() - started,
        )

    async def search(self, experts: list[Expert], k: int, filters: Filters) -> ShardAnswer:
        """This shard's top k for a query made of `experts` (see shards.queries).

        Concurrent calls are answered together by `search_batch`; an error in one query (a
        method the index lacks, features of the wrong width) is raised by that call alone.
        """
        return await self._batcher.submit(SearchRequest(experts, k, filters))

    def search_batch(self, requests: list[SearchRequest]) -> list[ShardAnswer | Exception]:
        """Answers to several searches, their features scored as one block per method.

        Blocks hold at most `batch_max_queries` feature rows (an image set counts its images),
        so the (rows, n) scores stay as small as one full block would be. A block that cannot
        be scored as a whole (one of its queries is invalid) is answered query by query, so
        that only the invalid query fails. `ShardAnswer.seconds` counts from the start of
        the block, which each of its queries waited for.
        """
        answers: list[ShardAnswer | Exception] = []
        for group in _row_groups(requests, self._batcher.max_size):
            answers += self._search_group(group)
        return answers

    def _search_group(self, requests: list[SearchRequest]) -> list[ShardAnswer | Exception]:
        started = time.perf_counter()
        masks = [self._allowed(r.filters) for r in requests]
        try:
            results = score_queries(self._tables, [r.experts for r in requests], masks)
        except (ValueError, RuntimeError) as err:
            if len(requests) == 1:
                return [err]
            logger.debug("block of %d refused (%s); answering one by one", len(requests), err)
            return [answer for r in requests for answer in self._search_group([r])]
        return map_in_scoring_threads(
            lambda pair: self._answer(pair[0], pair[1].k, started),
            list(zip(results, requests, strict=True)),
        )

    def _answer(self, result: QueryScores, k: int, started: float) -> ShardAnswer:
        rows = topk_rows(result.scores[None], k)[0]
        values = result.scores.cpu().numpy()
        lse = logsumexp_scaled(result.scores, result.temperature)
        return ShardAnswer(
            hits=[Hit(float(values[r]), self._stats.ids[r]) for r in rows],
            logsumexp=lse,
            expert_lse=result.expert_lse,
            seconds=time.perf_counter() - started,
        )

    def gaussian(self, model_id: str) -> dict[str, np.ndarray] | None:
        """One model's mean and low-rank covariance factors, None when not in this shard."""
        try:
            row = self._stats.ids.index(model_id)
        except ValueError:
            return None
        s = self._stats
        return {
            "means": s.means[row : row + 1],
            "eigvals": s.eigvals[row : row + 1],
            "eigvecs": s.eigvecs[row : row + 1],
            "residuals": s.residuals[row : row + 1],
        }

    async def similar(
        self, query: dict[str, np.ndarray], k: int, filters: Filters, exclude_id: str
    ) -> ShardAnswer:
        """This shard's k models nearest to `query` by exact Fréchet distance (score = −d).

        Computed in a worker thread, so that searches keep being gathered meanwhile.
        """
        return await asyncio.to_thread(self._similar, query, k, filters, exclude_id)

    def _similar(
        self, query: dict[str, np.ndarray], k: int, filters: Filters, exclude_id: str
    ) -> ShardAnswer:
        started = time.perf_counter()
        allowed = self._allowed(filters)
        allowed = (
            torch.ones(self._stats.num_models, dtype=torch.bool) if allowed is None else allowed
        )
        if exclude_id in self._stats.ids:
            allowed[self._stats.ids.index(exclude_id)] = False
        rows, distances, computed = nearest_by_frechet(
            LowRankGaussians.from_arrays(**query), self._gaussians, k, allowed.cpu()
        )
        return ShardAnswer(
            hits=[Hit(-d, self._stats.ids[r]) for r, d in zip(rows, distances, strict=True)],
            logsumexp=float("nan"),
            expert_lse=[],
            seconds=time.perf_counter() - started,
            exact_computed=computed,
        )

    def _allowed(self, filters: Filters) -> torch.Tensor | None:
        mask = self._filters.mask(filters)
        return None if mask is None else torch.as_tensor(mask, device=self._tables.means.device)

    def describe(self) -> list[ModelRecord]:
        s = self._stats
        return [
            ModelRecord(
                s.ids[i],
                s.metadata[i],
                int(s.counts[i]),
                s.fingerprints[i],
                len(s.thumbnails[i]) if s.thumbnails else 0,
            )
            for i in range(s.num_models)
        ]

    def thumbnail(self, model_id: str, number: int) -> bytes | None:
        """PNG bytes of sample thumbnail `number` of a model, None when there is none."""
        try:
            row = self._stats.ids.index(model_id)
            return self._stats.thumbnails[row][number]
        except (ValueError, IndexError):
            return None

    def batch_sizes(self) -> dict[int, int]:
        """How many search batches of each size this scorer has answered."""
        return dict(self._batcher.batch_sizes)

    def ping(self) -> int:
        return self._position


def _row_groups(requests: list[SearchRequest], max_rows: int) -> list[list[SearchRequest]]:
    """Consecutive requests in groups of at most `max_rows` feature rows; a larger one alone."""
    groups: list[list[SearchRequest]] = []
    rows = max_rows
    for request in requests:
        size = sum(len(e.features) for e in request.experts)
        if not groups or rows + size > max_rows:
            groups.append([])
            rows = 0
        groups[-1].append(request)
        rows += size
    return groups


def start_scorer(
    index_root: str, version: str, position: int, num_shards: int, eps: float, tau: float
) -> ray.actor.ActorHandle:
    """Start the restartable scorer actor of shard `position`; GPUs are shared when present.

    Ray restarts the actor after a crash (re-running `__init__`, which reloads the shard);
    an actor killed for good is replaced by its owner with another call to this function.
    """
    gpus = ray.cluster_resources().get("GPU", 0)
    options: dict[str, Any] = {
        # Named so that operators (and tests) find a shard's actor; the suffix keeps a
        # replacement, or a second aggregator replica's actor, from clashing with it.
        "name": f"{SCORER_NAME_PREFIX}{version}-{position}-{uuid.uuid4().hex[:8]}",
        "num_cpus": 0.25,
        "num_gpus": min(1.0, gpus / num_shards) if gpus else 0,
        "max_restarts": -1,
        "max_task_retries": 2,
    }
    return (
        ray.remote(ShardScorer).options(**options).remote(index_root, version, position, eps, tau)
    )

"""`Aggregator`: fans a query block out to every shard scorer and merges their top-k lists."""

import asyncio
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import ray
from ray import serve

from actors.scorer import ModelRecord, ShardAnswer, start_scorer
from modelseek.errors import IndexCorrupt, NotFound
from shards import store
from shards.scoring import probability_temperature
from shards.topk import merge_logsumexp, merge_topk

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RankedModel:
    """One result row as the API returns it."""

    rank: int
    model_id: str
    name: str
    score: float
    probability: float
    tags: list[str]


@dataclass(frozen=True)
class SearchResult:
    """The merged answer to a (q, d) query block.

    Attributes:
        results: q ranked lists.
        version: the index version that answered.
        missing_shards: shards that did not answer in time, with the models they hold.
        score_s: slowest shard's scoring time; merge_s: the merge's.
    """

    results: list[list[RankedModel]]
    version: str
    missing_shards: list[dict[str, Any]] = field(default_factory=list)
    score_s: float = 0.0
    merge_s: float = 0.0


def merge_answers(
    answers: list[ShardAnswer], k: int, records: dict[str, ModelRecord], temperature: float
) -> tuple[list[list[RankedModel]], float]:
    """Merge per-shard answers into global top-k lists with p(model | query)."""
    started = time.perf_counter()
    merged = []
    for qi in range(len(answers[0].hits) if answers else 0):
        hits = merge_topk([a.hits[qi] for a in answers], k)
        lse = merge_logsumexp([a.logsumexp[qi] for a in answers])
        merged.append(
            [
                RankedModel(
                    rank=rank,
                    model_id=hit.model_id,
                    name=records[hit.model_id].metadata.get("name", hit.model_id),
                    score=hit.score,
                    probability=math.exp(hit.score / temperature - lse),
                    tags=list(records[hit.model_id].metadata.get("tags", [])),
                )
                for rank, hit in enumerate(hits, start=1)
            ]
        )
    return merged, time.perf_counter() - started


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=64)
class Aggregator:
    """Owns the scorer actors of the index version in service and merges their answers.

    A new version arrives through `reconfigure` (Serve's `user_config`): the new scorers are
    started and checked before they replace the old ones, so no request is dropped.
    """

    def __init__(self, index_root: str, eps: float, tau: float, shard_timeout_s: float):
        self._root = index_root
        self._eps, self._tau = eps, tau
        self._timeout_s = shard_timeout_s
        self._manifest: store.Manifest | None = None
        self._scorers: list[ray.actor.ActorHandle] = []
        self._records: dict[str, ModelRecord] = {}

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        version = user_config.get("version") or store.read_current_version(self._root)
        if self._manifest is not None and version == self._manifest.version:
            return
        await self._load(version)

    async def _load(self, version: str) -> None:
        started = time.perf_counter()
        try:
            manifest = store.read_manifest(self._root, version)
        except store.StoreError as err:
            raise IndexCorrupt(str(err)) from err
        scorers = [self._start_scorer(manifest, i) for i in range(len(manifest.shards))]
        described = await asyncio.gather(*(s.describe.remote() for s in scorers))
        old = self._scorers
        self._manifest = manifest
        self._scorers = scorers
        self._records = {r.model_id: r for shard in described for r in shard}
        for actor in old:
            ray.kill(actor)
        logger.info(
            "serving index version %s: %d models in %d shards (%.1f s)",
            version,
            len(self._records),
            len(scorers),
            time.perf_counter() - started,
        )

    def _start_scorer(self, manifest: store.Manifest, position: int) -> ray.actor.ActorHandle:
        return start_scorer(
            self._root, manifest.version, position, len(manifest.shards), self._eps, self._tau
        )

    def _note_failure(self, scorers: list, position: int, error: BaseException) -> None:
        """Replace a scorer that died for good; others (timeouts, restarts) heal by themselves.

        `scorers` is the list the failed call used: after a version swap it is not ours.
        """
        logger.warning("shard %d did not answer: %r", position, error)
        dead = isinstance(error, ray.exceptions.ActorDiedError)
        if dead and scorers is self._scorers:
            logger.warning("scorer of shard %d is dead; starting a new one", position)
            self._scorers[position] = self._start_scorer(self._manifest, position)

    async def search(self, queries: np.ndarray, method: str, k: int) -> SearchResult:
        """Exact top k of every model for each row of `queries`, (q, d) float32."""
        if self._manifest is None:
            await self.reconfigure({})
        manifest, scorers = self._manifest, self._scorers
        refs = [s.search.remote(queries, method, k) for s in scorers]
        outcomes = await asyncio.gather(
            *(asyncio.wait_for(ref, self._timeout_s) for ref in refs), return_exceptions=True
        )
        answers, missing = [], []
        for position, outcome in enumerate(outcomes):
            if isinstance(outcome, ShardAnswer):
                answers.append(outcome)
                continue
            if isinstance(outcome, ray.exceptions.RayTaskError) and isinstance(
                outcome.cause, ValueError
            ):
                raise outcome.cause  # a bad method for this index, the same on every shard
            entry = manifest.shards[position]
            self._note_failure(scorers, position, outcome)
            missing.append(
                {
                    "shard": position,
                    "models": entry.num_models,
                    "first_id": entry.first_id,
                    "last_id": entry.last_id,
                }
            )
        temperature = probability_temperature(method, self._tau)
        results, merge_s = merge_answers(answers, k, self._records, temperature)
        score_s = max((a.seconds for a in answers), default=0.0)
        return SearchResult(results, manifest.version, missing, score_s, merge_s)

    async def list_models(self) -> list[dict[str, Any]]:
        if self._manifest is None:
            await self.reconfigure({})
        return [_record_json(r) for r in sorted(self._records.values(), key=lambda r: r.model_id)]

    async def get_model(self, model_id: str) -> dict[str, Any]:
        if self._manifest is None:
            await self.reconfigure({})
        try:
            return _record_json(self._records[model_id])
        except KeyError:
            raise NotFound(f"no model with id {model_id!r}; GET /v1/models lists them") from None

    async def thumbnail(self, model_id: str, number: int) -> bytes:
        record = self._records.get(model_id)
        if record is None or not 0 <= number < record.thumbnails:
            raise NotFound(f"model {model_id!r} has no thumbnail {number}")
        shard = next(
            i for i, e in enumerate(self._manifest.shards) if e.first_id <= model_id <= e.last_id
        )
        return await self._scorers[shard].thumbnail.remote(model_id, number)

    async def health(self) -> dict[str, Any]:
        if self._manifest is None:
            await self.reconfigure({})
        scorers = self._scorers
        pings = await asyncio.gather(
            *(asyncio.wait_for(s.ping.remote(), self._timeout_s) for s in scorers),
            return_exceptions=True,
        )
        down = [i for i, p in enumerate(pings) if not isinstance(p, int)]
        for position in down:
            self._note_failure(scorers, position, pings[position])
        return {
            "status": "degraded" if down else "ok",
            "index_version": self._manifest.version,
            "feature_space": self._manifest.feature_space,
            "models": len(self._records),
            "shards": len(self._scorers),
            "shards_down": down,
        }


def _record_json(record: ModelRecord) -> dict[str, Any]:
    data = asdict(record)
    data.update(data.pop("metadata"))
    data["id"] = data.pop("model_id")
    return data

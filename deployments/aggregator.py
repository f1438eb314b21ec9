"""`Aggregator`: fans a query out to every shard scorer and merges their top-k lists."""

import asyncio
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import ray
from ray import serve

from actors.scorer import ModelRecord, ShardAnswer, start_scorer
from modelseek.errors import IndexCorrupt
from shards import store
from shards.filters import Filters
from shards.queries import Expert, poe_offset
from shards.scoring import probability_temperature
from shards.topk import merge_logsumexp, merge_topk

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RankedModel:
    """One result row as the API returns it.

    `probability` is p(model | query) over the whole (filtered) collection; similar-model
    queries rank by `distance` (Fréchet) and carry no probability.
    """

    rank: int
    model_id: str
    name: str
    score: float
    probability: float | None
    tags: list[str]
    distance: float | None = None


@dataclass(frozen=True)
class SearchResult:
    """The merged answer to one query.

    Attributes:
        results: the ranked models.
        version: the index version that answered; feature_space: the space it lives in.
        missing_shards: shards that did not answer in time, with the models they hold.
        score_s: slowest shard's scoring time; merge_s: the merge's.
        exact_computed: similar-model queries: exact Fréchet distances computed in all.
    """

    results: list[RankedModel]
    version: str
    feature_space: str
    missing_shards: list[dict[str, Any]] = field(default_factory=list)
    score_s: float = 0.0
    merge_s: float = 0.0
    exact_computed: int = 0


def merge_answers(
    answers: list[ShardAnswer],
    k: int,
    records: dict[str, ModelRecord],
    experts: list[Expert] | None,
    tau: float,
) -> list[RankedModel]:
    """Merge per-shard answers into the global top k.

    Args:
        answers: one per shard that answered.
        k: results wanted.
        records: metadata of every model.
        experts: the query's experts, for probabilities and the product-of-experts
            normalisers; None for similar-model queries (scores are −distance).
        tau: τ, which sets the probability temperature of first-moment scores.
    """
    hits = merge_topk([a.hits for a in answers], k)
    offset, lse, temperature = 0.0, float("nan"), 1.0
    if experts is not None:
        lse = merge_logsumexp([a.logsumexp for a in answers])
        global_expert_lse = [
            merge_logsumexp([a.expert_lse[e] for a in answers])
            for e in range(len(answers[0].expert_lse) if answers else 0)
        ]
        offset = poe_offset(experts, global_expert_lse)
        if len(experts) == 1 and experts[0].weight == 1.0:
            temperature = probability_temperature(experts[0].method, tau)
    return [
        RankedModel(
            rank=rank,
            model_id=hit.model_id,
            name=records[hit.model_id].metadata.get("name", hit.model_id),
            score=hit.score - offset,
            probability=None if experts is None else math.exp(hit.score / temperature - lse),
            tags=list(records[hit.model_id].metadata.get("tags", [])),
            distance=-hit.score if experts is None else None,
        )
        for rank, hit in enumerate(hits, start=1)
    ]


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=64)
class Aggregator:
    """Owns the scorer actors of the index version in service and merges their answers.

    A new version arrives through `reconfigure` (Serve's `user_config`): the new scorers are
    started and checked before they replace the old ones, so no request is dropped.
    """

    def __init__(self, index_root: str, eps: float, tau: float | None, shard_timeout_s: float):
        self._root = index_root
        # None: each version's manifest says (its feature space's trained temperature).
        self._eps, self._tau_override = eps, tau
        self._timeout_s = shard_timeout_s
        self._manifest: store.Manifest | None = None
        self._scorers: list[ray.actor.ActorHandle] = []
        self._records: dict[str, ModelRecord] = {}

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        version = user_config.get("version") or store.read_current_version(self._root)
        if self._manifest is not None and version == self._manifest.version:
            return
        await self._load(version)

    async def reload(self) -> dict[str, Any]:
        """Serve the version CURRENT now names; refused if it is in another feature space.

        Returns:
            {"version", "previous"} on success, or {"error": message} when refused (an
            exception would reach the client as a remote traceback).
        """
        previous = self._manifest.version if self._manifest else None
        try:
            manifest = store.read_manifest(self._root)
            store.verify_index(self._root, manifest)
        except store.StoreError as err:
            return {"error": str(err)}
        if self._manifest is not None and manifest.feature_space != self._manifest.feature_space:
            return {
                "error": f"version {manifest.version} is in feature space "
                f"{manifest.feature_space!r}, but the service encodes queries in "
                f"{self._manifest.feature_space!r}; restart `modelseek serve`"
            }
        await self.reconfigure({"version": manifest.version})
        return {"version": manifest.version, "previous": previous}

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
            self._root,
            manifest.version,
            position,
            len(manifest.shards),
            self._eps,
            manifest.scoring_temperature(self._tau_override),
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

    async def _fan_out(self, call) -> tuple[store.Manifest, list[ShardAnswer], list[dict]]:
        """Run `call(scorer)` on every shard; answers of those that replied, and the rest."""
        if self._manifest is None:
            await self.reconfigure({})
        manifest, scorers = self._manifest, self._scorers
        outcomes = await asyncio.gather(
            *(asyncio.wait_for(call(s), self._timeout_s) for s in scorers),
            return_exceptions=True,
        )
        answers, missing = [], []
        for position, outcome in enumerate(outcomes):
            if isinstance(outcome, ShardAnswer):
                answers.append(outcome)
                continue
            if isinstance(outcome, ray.exceptions.RayTaskError) and isinstance(
                outcome.cause, ValueError
            ):
                raise outcome.cause  # a query this index cannot answer, the same on every shard
            self._note_failure(scorers, position, outcome)
            entry = manifest.shards[position]
            missing.append(
                {
                    "shard": position,
                    "models": entry.num_models,
                    "first_id": entry.first_id,
                    "last_id": entry.last_id,
                }
            )
        return manifest, answers, missing

    async def search(self, experts: list[Expert], k: int, filters: Filters) -> SearchResult:
        """Exact top k of the whole collection for one query made of `experts`."""
        manifest, answers, missing = await self._fan_out(
            lambda s: s.search.remote(experts, k, filters)
        )
        return self._merge(manifest, answers, missing, k, experts)

    async def similar(self, model_id: str, k: int, filters: Filters) -> SearchResult | None:
        """The k models nearest to `model_id` by exact Fréchet distance, itself excluded.

        None when there is no such model: an exception would cross the replica boundary
        as a remote traceback, so the ingress raises NotFound itself.
        """
        if self._manifest is None:
            await self.reconfigure({})
        if model_id not in self._records:
            return None
        holder = self._scorers[self._shard_of(model_id)]
        query = await asyncio.wait_for(holder.gaussian.remote(model_id), self._timeout_s)
        manifest, answers, missing = await self._fan_out(
            lambda s: s.similar.remote(query, k, filters, model_id)
        )
        return self._merge(manifest, answers, missing, k, None)

    def _merge(
        self,
        manifest: store.Manifest,
        answers: list[ShardAnswer],
        missing: list[dict],
        k: int,
        experts: list[Expert] | None,
    ) -> SearchResult:
        started = time.perf_counter()
        tau = manifest.scoring_temperature(self._tau_override)
        results = merge_answers(answers, k, self._records, experts, tau)
        return SearchResult(
            results,
            manifest.version,
            manifest.feature_space,
            missing,
            score_s=max((a.seconds for a in answers), default=0.0),
            merge_s=time.perf_counter() - started,
            exact_computed=sum(a.exact_computed for a in answers),
        )

    def _shard_of(self, model_id: str) -> int:
        return next(
            i for i, e in enumerate(self._manifest.shards) if e.first_id <= model_id <= e.last_id
        )

    async def list_models(self) -> list[dict[str, Any]]:
        if self._manifest is None:
            await self.reconfigure({})
        return [_record_json(r) for r in sorted(self._records.values(), key=lambda r: r.model_id)]

    async def get_model(self, model_id: str) -> dict[str, Any] | None:
        if self._manifest is None:
            await self.reconfigure({})
        record = self._records.get(model_id)
        return None if record is None else _record_json(record)

    async def thumbnail(self, model_id: str, number: int) -> bytes | None:
        record = self._records.get(model_id)
        if record is None or not 0 <= number < record.thumbnails:
            return None
        return await self._scorers[self._shard_of(model_id)].thumbnail.remote(model_id, number)

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

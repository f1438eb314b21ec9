"""`ShardScorer`: a Ray actor that holds one shard's statistics and answers top-k queries."""

import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray
import torch

from shards import store
from shards.scoring import ScoringTables, probability_temperature, score
from shards.topk import Hit, topk_rows

logger = logging.getLogger(__name__)

SCORER_NAME_PREFIX = "modelseek-scorer-"


@dataclass(frozen=True)
class ShardAnswer:
    """A shard's part of the answer to a (q, d) query block.

    Attributes:
        hits: q lists of the shard's best models, in rank order.
        logsumexp: q values of log Σ exp(score / T) over the shard's models, T the method's
            probability temperature; the aggregator combines them into p(model | query).
        seconds: time spent scoring.
    """

    hits: list[list[Hit]]
    logsumexp: list[float]
    seconds: float


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
    and re-verifies the shard from storage.
    """

    def __init__(self, index_root: str, version: str, position: int, eps: float, tau: float):
        started = time.perf_counter()
        manifest = store.read_manifest(index_root, version)
        self._stats = store.load_shard(index_root, manifest, position)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self._tables = ScoringTables.build(self._stats, eps=eps, tau=tau, device=device)
        self._position = position
        logger.info(
            "scorer %d ready on %s: %d models of version %s in %.2f s",
            position,
            device,
            self._stats.num_models,
            version,
            time.perf_counter() - started,
        )

    def search(self, queries: np.ndarray, method: str, k: int) -> ShardAnswer:
        """Top k of this shard for every row of `queries`, (q, d) float32."""
        started = time.perf_counter()
        block = torch.as_tensor(queries, device=self._tables.means.device)
        scores = score(self._tables, method, block)
        temperature = probability_temperature(method, self._tables.tau)
        lse = torch.logsumexp(scores.double() / temperature, dim=1).tolist()
        rows = topk_rows(scores, k)
        values = scores.cpu().numpy()
        hits = [
            [Hit(float(values[qi, r]), self._stats.ids[r]) for r in row_list]
            for qi, row_list in enumerate(rows)
        ]
        return ShardAnswer(hits, lse, time.perf_counter() - started)

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

    def ping(self) -> int:
        return self._position


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

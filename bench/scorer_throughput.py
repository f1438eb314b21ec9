"""Searches per second of one scorer actor on a simulated shard, batched and one at a time.

    python bench/scorer_throughput.py --models 250K --clients 32 --queries 256

Writes a one-shard index of simulated unit means (rank 1, one reservoir sample) to a temporary
folder, starts a local Ray, and sends first-moment searches from `--clients` concurrent callers
to a `ShardScorer` that scores one query per call and then to one that batches concurrent
calls (actors.scorer.BATCH_MAX_QUERIES, BATCH_WAIT_S). Also reports the latency of a lone
search to each. Measures the scorer actor alone: no HTTP, encoder or aggregator.
"""

import argparse
import asyncio
import dataclasses
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import ray

from actors.scorer import BATCH_MAX_QUERIES, BATCH_WAIT_S, ShardScorer
from modelseek.bench import BenchConfig, Collection, parse_sizes, simulate_queries
from shards import store
from shards.filters import Filters
from shards.queries import Expert


def write_simulated_index(root: Path, models: int) -> store.Manifest:
    """One shard of unit means; rank 1 and one reservoir sample each, the least a shard holds."""
    stats = Collection(models, BenchConfig(), root / "work").stats_for("first_moment")
    means = stats.means
    stats = dataclasses.replace(
        stats,
        eigvals=np.ones((models, 1), np.float32),
        eigvecs=means[:, None, :],
        reservoir=means[:, None, :],
        reservoir_counts=np.ones(models, np.int64),
    )
    fields = {"feature_space": "simulated", "encoder": "none", "settings": {}}
    return store.write_index(root / "index", [stats], fields)


async def run_clients(actor, features: np.ndarray, clients: int) -> float:
    """Seconds to answer every row of `features`, `clients` searches in flight at a time."""
    slots = asyncio.Semaphore(clients)

    async def one(row: np.ndarray) -> None:
        async with slots:
            await actor.search.remote([Expert("first_moment", row[None])], 10, Filters())

    started = time.perf_counter()
    await asyncio.gather(*(one(row) for row in features))
    return time.perf_counter() - started


def lone_latency_ms(actor, features: np.ndarray) -> float:
    times = []
    for row in features:
        started = time.perf_counter()
        ray.get(actor.search.remote([Expert("first_moment", row[None])], 10, Filters()))
        times.append(time.perf_counter() - started)
    return 1e3 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=lambda s: parse_sizes(s)[0], default=250_000)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--queries", type=int, default=256)
    args = parser.parse_args()

    features = simulate_queries(args.queries, seed=7).numpy()
    with tempfile.TemporaryDirectory(prefix="modelseek-throughput-") as folder:
        manifest = write_simulated_index(Path(folder), args.models)
        ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
        try:
            for name, max_queries, wait_s in (
                ("one at a time", 1, 0.0),
                ("batched", BATCH_MAX_QUERIES, BATCH_WAIT_S),
            ):
                actor = (
                    ray.remote(ShardScorer)
                    .options(num_cpus=0.25)
                    .remote(
                        str(Path(folder) / "index"),
                        manifest.version,
                        0,
                        1e-3,
                        0.01,
                        max_queries,
                        wait_s,
                    )
                )
                lone_latency_ms(actor, features[:3])  # loads the shard, warms the threads
                lone_ms = lone_latency_ms(actor, features[:16])
                seconds = asyncio.run(run_clients(actor, features, args.clients))
                sizes = ray.get(actor.batch_sizes.remote())
                mean_batch = sum(k * v for k, v in sizes.items()) / sum(sizes.values())
                print(
                    f"{name:>13}: {args.queries / seconds:6.1f} searches/s with {args.clients} "
                    f"clients (mean batch {mean_batch:.1f}); lone search {lone_ms:.1f} ms "
                    f"[{args.models:,} models, load {os.getloadavg()[0]:.2f}]"
                )
                ray.kill(actor)
        finally:
            ray.shutdown()


if __name__ == "__main__":
    main()

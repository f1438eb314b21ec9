"""Indexing as Ray tasks: sample and encode fixed-size chunks, merge exact sums, publish shards.

One task = one chunk of one model. Its images come from a seed derived from the model's seed
and the chunk's position, so a retried task returns the very same images and sums.
"""

import hashlib
import json
import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import ray
from tqdm import tqdm

from modelseek.catalog import Catalog, ModelEntry, load_catalog
from modelseek.config import IndexConfig
from modelseek.errors import CatalogError, ModelseekError
from modelseek.features import load_feature_space
from modelseek.images import image_to_png_bytes
from modelseek.sources import open_source
from shards import store
from shards.moments import MomentSums, merge_all
from shards.stats import ModelSummary, ShardStats, concat_shards, summarise_models, with_metadata

logger = logging.getLogger(__name__)

# Bumped when what a fingerprint covers changes meaning, so every model is re-indexed once.
FINGERPRINT_VERSION = 1


class IndexingFailed(ModelseekError):
    """A model could not be sampled or encoded; nothing was published."""

    code = "indexing_failed"


@dataclass(frozen=True)
class ChunkResult:
    """What one indexing task returns: exact sums plus a few raw features and thumbnails."""

    model_id: str
    start: int
    sums: MomentSums
    reservoir: np.ndarray  # (m_chunk, d) float32
    thumbnails: tuple[bytes, ...]


@dataclass(frozen=True)
class IndexReport:
    """What `build_index` did, with figures for the CLI and the logs."""

    version: str
    published: bool
    models_total: int
    models_sampled: int
    images_encoded: int
    seconds: float


def _make_thumbnail(image: np.ndarray, side_px: int) -> bytes:
    from PIL import Image

    thumb = Image.fromarray(image)
    thumb.thumbnail((side_px, side_px))
    return image_to_png_bytes(np.asarray(thumb))


@ray.remote(num_cpus=1, max_retries=2)
def encode_chunk(
    entry: ModelEntry,
    base_dir: str,
    encoder: str,
    start: int,
    size: int,
    seed: int,
    reservoir_rows: int,
    thumbnails: int,
    thumbnail_px: int,
) -> ChunkResult:
    """Sample images [start, start + size) of one model, encode them, return their sums."""
    import torch

    # Two tasks share two cores; a task using every core for its matmuls would oversubscribe.
    torch.set_num_threads(1)
    space = load_feature_space(encoder)
    images = open_source(entry, Path(base_dir)).load_chunk(start, size, seed)
    features = space.encode_images(images)
    return ChunkResult(
        model_id=entry.id,
        start=start,
        sums=MomentSums.of(features),
        reservoir=features[:reservoir_rows].astype(np.float32),
        thumbnails=tuple(_make_thumbnail(img, thumbnail_px) for img in images[:thumbnails]),
    )


def fingerprint(entry: ModelEntry, source_digest: str, feature_space: str, cfg: IndexConfig) -> str:
    """Hash of everything a model's statistics depend on; metadata edits do not count."""
    covered = {
        "version": FINGERPRINT_VERSION,
        "source": entry.source.to_dict(),
        "source_digest": source_digest,
        "feature_space": feature_space,
        "samples": cfg.samples_per_model,
        "chunk_size": cfg.chunk_size,
        "seed": cfg.seed,
        "rank": cfg.lowrank_rank,
        "reservoir": cfg.reservoir_size,
        "thumbnails": [cfg.thumbnails, cfg.thumbnail_px],
    }
    return hashlib.sha256(json.dumps(covered, sort_keys=True).encode()).hexdigest()


def _previous_index(
    root: Path, feature_space: str
) -> tuple[store.Manifest | None, ShardStats | None]:
    """The published index under `root` when it is in `feature_space`, else (None, None)."""
    try:
        manifest = store.read_manifest(root)
    except store.StoreError:
        return None, None
    if manifest.feature_space != feature_space:
        logger.info(
            "previous index is in %s, not %s: re-indexing every model",
            manifest.feature_space,
            feature_space,
        )
        return manifest, None
    try:
        shards = [store.load_shard(root, manifest, i) for i in range(len(manifest.shards))]
    except store.StoreError as err:
        logger.warning("previous index unreadable (%s): re-indexing every model", err)
        return manifest, None
    return manifest, concat_shards(shards)


def _plan_chunks(entry: ModelEntry, count: int, cfg: IndexConfig) -> list[tuple[int, int]]:
    if count < 2:
        raise CatalogError(
            f"model {entry.id!r}: source yields {count} image(s), a covariance needs at least 2"
        )
    return [(s, min(cfg.chunk_size, count - s)) for s in range(0, count, cfg.chunk_size)]


def _run_chunks(
    catalog: Catalog, todo: list[ModelEntry], encoder: str, cfg: IndexConfig, progress: bool
) -> tuple[list[ModelSummary], int]:
    """Sample and encode the models in `todo` as Ray tasks; returns summaries and images."""
    plans = {}
    for entry in todo:
        count = open_source(entry, catalog.base_dir).count(cfg.samples_per_model)
        plans[entry.id] = _plan_chunks(entry, count, cfg)

    futures = {}
    for entry in todo:
        chunks = plans[entry.id]
        per_chunk = math.ceil(cfg.reservoir_size / len(chunks))
        for position, (start, size) in enumerate(chunks):
            ref = encode_chunk.remote(
                entry,
                str(catalog.base_dir),
                encoder,
                start,
                size,
                cfg.seed,
                per_chunk,
                cfg.thumbnails if position == 0 else 0,
                cfg.thumbnail_px,
            )
            futures[ref] = entry

    images_total = sum(size for chunks in plans.values() for _, size in chunks)
    results: dict[str, list[ChunkResult]] = defaultdict(list)
    model_bar = tqdm(total=len(todo), desc="models", unit="model", disable=not progress)
    image_bar = tqdm(total=images_total, desc="images", unit="img", disable=not progress)
    pending = list(futures)
    try:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            entry = futures[done[0]]
            try:
                chunk = ray.get(done[0])
            except ray.exceptions.RayTaskError as err:
                raise IndexingFailed(
                    f"model {entry.id!r} could not be sampled or encoded: {err.cause}"
                ) from err
            results[entry.id].append(chunk)
            image_bar.update(chunk.sums.count)
            if len(results[entry.id]) == len(plans[entry.id]):
                model_bar.update(1)
    except BaseException:
        for ref in pending:
            ray.cancel(ref)
        raise
    finally:
        model_bar.close()
        image_bar.close()

    return [_summarise(entry, results[entry.id], cfg) for entry in todo], images_total


def _summarise(entry: ModelEntry, chunks: list[ChunkResult], cfg: IndexConfig) -> ModelSummary:
    chunks = sorted(chunks, key=lambda c: c.start)
    return ModelSummary(
        model_id=entry.id,
        metadata=entry.metadata(),
        fingerprint="",
        sums=merge_all([c.sums for c in chunks]),
        reservoir=np.concatenate([c.reservoir for c in chunks])[: cfg.reservoir_size],
        thumbnails=sum((c.thumbnails for c in chunks), ()),
    )


def build_index(
    catalog_path: str | Path,
    index_root: str | Path,
    encoder: str,
    cfg: IndexConfig,
    progress: bool = True,
    on_progress: Callable[[str], None] | None = None,
) -> IndexReport:
    """Index every model of a catalog whose fingerprint changed, then publish a new version.

    Ray must be initialised. Unchanged models keep their statistics from the published
    version; an index in another feature space is rebuilt whole. A failure anywhere publishes
    nothing and leaves the published version in service.

    Raises:
        CatalogError: the catalog or a model source is invalid.
        IndexingFailed: a sampling or encoding task failed.
    """
    started = time.perf_counter()
    root = Path(index_root)
    catalog = load_catalog(catalog_path)
    space = load_feature_space(encoder)
    say = on_progress or logger.info

    prints = {
        e.id: fingerprint(e, open_source(e, catalog.base_dir).digest(), space.id, cfg)
        for e in catalog
    }
    keep_full = len(catalog) * space.dim**2 * 4 <= cfg.full_covariance_max_bytes
    manifest, previous = _previous_index(root, space.id)
    reusable = {}
    # Stored statistics are reusable only in the same form: full covariances cannot be
    # recovered from the low-rank ones, so crossing the size limit re-indexes everything.
    if previous is not None and (previous.covs is not None) == keep_full:
        reusable = {
            model_id: row
            for row, model_id in enumerate(previous.ids)
            if prints.get(model_id) == previous.fingerprints[row]
        }
    todo = [e for e in catalog if e.id not in reusable]
    say(f"{len(catalog)} models in the catalog, {len(todo)} to sample, {len(reusable)} unchanged")

    metadata = {e.id: e.metadata() for e in catalog}
    if (
        not todo
        and manifest is not None
        and _same_layout(manifest, previous, metadata, cfg, keep_full)
        # An index written before manifests recorded τ is republished with the space's own.
        and math.isclose(manifest.temperature, space.temperature)
    ):
        say(f"index {manifest.version} is up to date; nothing to do")
        return IndexReport(
            manifest.version, False, len(catalog), 0, 0, time.perf_counter() - started
        )

    summaries, images = _run_chunks(catalog, todo, encoder, cfg, progress)
    summaries = [
        ModelSummary(s.model_id, s.metadata, prints[s.model_id], s.sums, s.reservoir, s.thumbnails)
        for s in summaries
    ]
    parts = []
    if summaries:
        parts.append(summarise_models(summaries, cfg.lowrank_rank, keep_full, cfg.reservoir_size))
    if reusable:
        parts.append(previous.select(sorted(reusable.values())))
    everything = with_metadata(concat_shards(parts), metadata)
    shard_parts = [
        everything.select(range(s.start, s.stop))
        for s in store.split_contiguous(everything.num_models, cfg.num_shards)
    ]
    published = store.write_index(
        root,
        shard_parts,
        {
            "feature_space": space.id,
            "encoder": encoder,
            "temperature": space.temperature,
            "settings": asdict(cfg),
        },
        keep=cfg.keep_versions,
    )
    return IndexReport(
        published.version, True, len(catalog), len(todo), images, time.perf_counter() - started
    )


def _same_layout(
    manifest: store.Manifest,
    previous: ShardStats | None,
    metadata: dict,
    cfg: IndexConfig,
    keep_full: bool,
) -> bool:
    return (
        previous is not None
        and previous.ids == tuple(sorted(metadata))
        and all(metadata[i] == m for i, m in zip(previous.ids, previous.metadata, strict=True))
        and len(manifest.shards) == min(cfg.num_shards, len(metadata))
        and manifest.full_covariance == keep_full
    )

"""Index storage: Parquet shard files named by content hash, a manifest, atomic publication.

Layout under an index root:
    CURRENT                      the name of the published version (replaced atomically)
    versions/<version>/manifest.json
    versions/<version>/shard-<sha256 prefix>.parquet
A new version is written into a temporary folder, renamed into `versions/`, and published by
replacing CURRENT; a crash at any point leaves the previous version in service.
"""

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from shards.stats import ShardStats

logger = logging.getLogger(__name__)

FORMAT_NAME = "modelseek-index"
FORMAT_VERSION = 1
# τ of manifests written before the feature space's own was recorded: CLIP's.
DEFAULT_TEMPERATURE = 0.01


class StoreError(Exception):
    """An index on storage is missing, incomplete or corrupt; the message names the file."""


@dataclass(frozen=True)
class ShardEntry:
    """One shard file as the manifest lists it."""

    file: str
    sha256: str
    num_bytes: int
    num_models: int
    first_id: str
    last_id: str


@dataclass(frozen=True)
class Manifest:
    """What an index version holds and how it was built."""

    version: str
    created_at: float
    feature_space: str
    encoder: str
    dim: int
    rank: int
    full_covariance: bool
    num_models: int
    shards: tuple[ShardEntry, ...]
    fingerprints: dict[str, str]
    settings: dict[str, Any]
    temperature: float = DEFAULT_TEMPERATURE
    format: str = FORMAT_NAME
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    def scoring_temperature(self, override: float | None) -> float:
        """τ to score this version with: `override` when set, else its feature space's own."""
        return self.temperature if override is None else override

    @classmethod
    def from_json(cls, text: str, source: str) -> "Manifest":
        try:
            raw = json.loads(text)
            if raw.get("format") != FORMAT_NAME or raw.get("format_version") != FORMAT_VERSION:
                raise StoreError(
                    f"{source}: format {raw.get('format')!r} v{raw.get('format_version')}, "
                    f"expected {FORMAT_NAME!r} v{FORMAT_VERSION}; re-run `modelseek index`"
                )
            raw["shards"] = tuple(ShardEntry(**entry) for entry in raw["shards"])
            return cls(**raw)
        except (ValueError, TypeError, KeyError) as err:
            raise StoreError(f"{source}: unreadable manifest ({err})") from err


def current_pointer_path(root: Path) -> Path:
    return Path(root) / "CURRENT"


def version_dir(root: Path, version: str) -> Path:
    return Path(root) / "versions" / version


def shard_file_name(sha256: str) -> str:
    return f"shard-{sha256[:16]}.parquet"


def _shard_schema(dim: int, rank: int, full: bool) -> pa.Schema:
    fields = [
        pa.field("model_id", pa.string(), nullable=False),
        pa.field("metadata_json", pa.string()),
        pa.field("fingerprint", pa.string()),
        pa.field("count", pa.int64()),
        pa.field("mean", pa.list_(pa.float32(), dim)),
        pa.field("eigvals", pa.list_(pa.float32(), rank)),
        pa.field("eigvecs", pa.list_(pa.float32(), rank * dim)),
        pa.field("residual", pa.float32()),
        pa.field("reservoir", pa.large_list(pa.float32())),
        pa.field("reservoir_count", pa.int64()),
        pa.field("thumbnails", pa.list_(pa.binary())),
    ]
    if full:
        fields.append(pa.field("cov", pa.list_(pa.float32(), dim * dim)))
    return pa.schema(fields)


def _fixed_list(array: np.ndarray, width: int) -> pa.Array:
    flat = pa.array(np.ascontiguousarray(array, dtype=np.float32).reshape(-1))
    return pa.FixedSizeListArray.from_arrays(flat, width)


def shard_to_table(stats: ShardStats) -> pa.Table:
    """The Arrow table of a shard: one row per model, float32 statistics."""
    n, d, r = stats.num_models, stats.dim, stats.rank
    m = stats.reservoir.shape[1]
    reservoir_offsets = pa.array(np.arange(n + 1, dtype=np.int64) * (m * d))
    columns = {
        "model_id": pa.array(stats.ids, pa.string()),
        "metadata_json": pa.array([json.dumps(meta, sort_keys=True) for meta in stats.metadata]),
        "fingerprint": pa.array(stats.fingerprints, pa.string()),
        "count": pa.array(stats.counts, pa.int64()),
        "mean": _fixed_list(stats.means, d),
        "eigvals": _fixed_list(stats.eigvals, r),
        "eigvecs": _fixed_list(stats.eigvecs, r * d),
        "residual": pa.array(stats.residuals.astype(np.float32)),
        "reservoir": pa.LargeListArray.from_arrays(
            reservoir_offsets, pa.array(stats.reservoir.astype(np.float32).reshape(-1))
        ),
        "reservoir_count": pa.array(stats.reservoir_counts, pa.int64()),
        "thumbnails": pa.array(
            [list(t) for t in stats.thumbnails] or [[] for _ in range(n)], pa.list_(pa.binary())
        ),
    }
    if stats.covs is not None:
        columns["cov"] = _fixed_list(stats.covs, d * d)
    schema = _shard_schema(d, r, stats.covs is not None)
    return pa.table(columns, schema=schema).replace_schema_metadata(
        {"dim": str(d), "rank": str(r), "reservoir": str(m)}
    )


def _column_matrix(table: pa.Table, name: str, shape: tuple[int, ...]) -> np.ndarray:
    column = table.column(name).combine_chunks()
    return column.flatten().to_numpy(zero_copy_only=False).reshape(shape)


def table_to_shard(table: pa.Table) -> ShardStats:
    meta = table.schema.metadata or {}
    d, r, m = (int(meta[key]) for key in (b"dim", b"rank", b"reservoir"))
    n = table.num_rows
    return ShardStats(
        ids=tuple(table.column("model_id").to_pylist()),
        metadata=tuple(json.loads(s) for s in table.column("metadata_json").to_pylist()),
        fingerprints=tuple(table.column("fingerprint").to_pylist()),
        counts=table.column("count").to_numpy(),
        means=_column_matrix(table, "mean", (n, d)),
        eigvals=_column_matrix(table, "eigvals", (n, r)),
        eigvecs=_column_matrix(table, "eigvecs", (n, r, d)),
        residuals=table.column("residual").to_numpy(),
        covs=_column_matrix(table, "cov", (n, d, d)) if "cov" in table.column_names else None,
        reservoir=_column_matrix(table, "reservoir", (n, m, d)),
        reservoir_counts=table.column("reservoir_count").to_numpy(),
        thumbnails=tuple(tuple(t) for t in table.column("thumbnails").to_pylist()),
    )


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _next_version(root: Path) -> str:
    versions = root / "versions"
    numbers = [int(p.name) for p in versions.glob("[0-9]*") if p.name.isdigit()]
    return f"{max(numbers, default=0) + 1:06d}"


def write_index(
    root: str | Path, shards: list[ShardStats], manifest_fields: dict[str, Any], keep: int = 3
) -> Manifest:
    """Write `shards` as a new version under `root` and publish it atomically.

    Args:
        root: the index root (created if missing).
        shards: the shards in order; together they hold every model once.
        manifest_fields: feature_space, encoder, temperature and settings for the manifest.
        keep: versions kept on storage after publication (the newest ones).

    Returns:
        The manifest of the published version.
    """
    root = Path(root)
    (root / "versions").mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=root / "versions"))
    try:
        entries = [_write_shard(staging, stats) for stats in shards]
        version = _next_version(root)
        manifest = Manifest(
            version=version,
            created_at=time.time(),
            dim=shards[0].dim,
            rank=shards[0].rank,
            full_covariance=shards[0].covs is not None,
            num_models=sum(s.num_models for s in shards),
            shards=tuple(entries),
            fingerprints={i: f for s in shards for i, f in zip(s.ids, s.fingerprints, strict=True)},
            **manifest_fields,
        )
        (staging / "manifest.json").write_text(manifest.to_json())
        _fsync_file(staging / "manifest.json")
        os.rename(staging, version_dir(root, version))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise

    _publish(root, version)
    _prune_versions(root, keep)
    logger.info(
        "published index version %s: %d models, %d shards",
        version,
        manifest.num_models,
        len(entries),
    )
    return manifest


def _write_shard(folder: Path, stats: ShardStats) -> ShardEntry:
    scratch = folder / "shard.parquet.tmp"
    pq.write_table(shard_to_table(stats), scratch, compression="zstd")
    _fsync_file(scratch)
    sha = _sha256_file(scratch)
    final = folder / shard_file_name(sha)
    os.rename(scratch, final)
    return ShardEntry(
        file=final.name,
        sha256=sha,
        num_bytes=final.stat().st_size,
        num_models=stats.num_models,
        first_id=stats.ids[0],
        last_id=stats.ids[-1],
    )


def _publish(root: Path, version: str) -> None:
    pointer = current_pointer_path(root)
    scratch = pointer.with_name(f".CURRENT.{os.getpid()}.tmp")
    scratch.write_text(version + "\n")
    _fsync_file(scratch)
    os.replace(scratch, pointer)


def _prune_versions(root: Path, keep: int) -> None:
    current = read_current_version(root)
    versions = sorted(p for p in (root / "versions").iterdir() if p.name.isdigit())
    for old in versions[: max(0, len(versions) - keep)]:
        if old.name != current:
            shutil.rmtree(old, ignore_errors=True)


def read_current_version(root: str | Path) -> str:
    pointer = current_pointer_path(Path(root))
    try:
        return pointer.read_text().strip()
    except FileNotFoundError:
        raise StoreError(
            f"no index at {root}: {pointer} is missing; build one with `modelseek index`"
        ) from None


def read_manifest(root: str | Path, version: str | None = None) -> Manifest:
    """The manifest of `version`, by default the published one."""
    version = version or read_current_version(root)
    path = version_dir(Path(root), version) / "manifest.json"
    try:
        return Manifest.from_json(path.read_text(), str(path))
    except FileNotFoundError:
        raise StoreError(f"index version {version} has no manifest at {path}") from None


def load_shard(root: str | Path, manifest: Manifest, position: int) -> ShardStats:
    """Read shard `position` of `manifest`, refusing a file whose sha256 does not match."""
    entry = manifest.shards[position]
    path = version_dir(Path(root), manifest.version) / entry.file
    started = time.perf_counter()
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise StoreError(f"shard file {path} listed in the manifest is missing") from None
    _check_digest(path, hashlib.sha256(data).hexdigest(), entry.sha256)
    stats = table_to_shard(pq.read_table(pa.BufferReader(data)))
    logger.info(
        "loaded shard %s: %d models in %.2f s",
        path,
        stats.num_models,
        time.perf_counter() - started,
    )
    return stats


def split_contiguous(num_items: int, num_parts: int) -> list[slice]:
    """Split `num_items` rows into at most `num_parts` contiguous, near-equal, non-empty slices."""
    num_parts = max(1, min(num_parts, num_items))
    bounds = np.linspace(0, num_items, num_parts + 1).round().astype(int)
    return [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def verify_index(root: str | Path, manifest: Manifest) -> None:
    """Check every shard file of `manifest` against its sha256 without parsing it.

    Raises:
        StoreError: naming the first file that is missing or fails its checksum.
    """
    folder = version_dir(Path(root), manifest.version)
    for entry in manifest.shards:
        path = folder / entry.file
        if not path.exists():
            raise StoreError(f"shard file {path} listed in the manifest is missing")
        _check_digest(path, _sha256_file(path), entry.sha256)


def _check_digest(path: Path, actual: str, expected: str) -> None:
    if actual != expected:
        raise StoreError(
            f"shard file {path} fails its checksum: sha256 {actual[:16]}..., manifest says "
            f"{expected[:16]}...; the index is corrupt, re-run `modelseek index`"
        )

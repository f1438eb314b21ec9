"""`modelseek bench`: the paper's Table 3 on simulated collections, with the bounds to judge it.

Every scoring method is timed (scores and exact top-k together, as a scorer answers) on
collections of simulated statistics, and each time is set against three references measured
in the same run: the machine's memory read bandwidth, a straightforward per-model loop, and
FAISS's flat inner-product index. Shape letters: `n` models, `d` feature dim, `r` covariance
rank, `m` reservoir samples, `q` queries.
"""

import argparse
import contextlib
import datetime
import functools
import importlib.util
import logging
import math
import os
import platform
import resource
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from shards.scoring import (
    METHODS,
    ONEDNN_BLOCK_ELEMENTS,
    TABLES_READ,
    ScoringTables,
    _matmul_nt,
    _pin_numpy_blas_to_one_thread,
    get_scoring_threads,
    map_in_scoring_threads,
    packed_whiten_elements,
    score,
    set_scoring_threads,
)
from shards.stats import ShardStats
from shards.topk import topk_rows

logger = logging.getLogger(__name__)

DIM = 512
# The paper's covariances, identity plus small symmetric noise: the noise is a Wigner matrix
# scaled so that its spectrum lies in [−2s, 2s], s = COV_NOISE, keeping Σ well conditioned.
COV_NOISE = 0.1
# Elements generated per step of the simulation (float32), to bound its temporaries.
SIMULATE_BLOCK_ELEMENTS = 1 << 24
# Passes of the bandwidth probe before each method.
BANDWIDTH_PROBE_REPEATS = 3
# The bandwidth probe's array is read in chunks of this many float32 (32 MiB).
PROBE_CHUNK_ELEMENTS = 1 << 23
# Cases whose tables are at least this large (well past the last-level cache) take a
# bandwidth probe pass before every timed sample, and their fraction of the bound is the
# median of the per-sample fractions: the VM's bandwidth drifts by ±40% within a case.
PAIRED_PROBE_MIN_BYTES = 64 * 1024**2
# The product rate is measured on (COMPUTE_PROBE_QUERIES, d) x (COMPUTE_PROBE_ROWS_PER_THREAD
# x scoring threads, d): a query block against a table that stays in the last-level cache, so
# memory does not limit it, with a block of rows for every scoring thread (a single block
# would time one core: 84 against 151 GFLOPS on the 2-core EPYC).
COMPUTE_PROBE_QUERIES = 32
COMPUTE_PROBE_ROWS_PER_THREAD = ONEDNN_BLOCK_ELEMENTS // DIM
# A timed sample repeats a fast call until it lasts this long, so timer resolution and
# one-off hiccups do not dominate sub-millisecond cases.
MIN_SAMPLE_S = 0.05
# Methods in the order they run: statistics shared by consecutive methods are simulated once
# and dropped as soon as no later method needs them.
RUN_ORDER = (
    "first_moment",
    "first_second_moment",
    "gaussian_density",
    "first_second_moment_full",
    "gaussian_density_full",
    "monte_carlo",
)
assert set(RUN_ORDER) == set(METHODS), "the benchmark runs every method"
STATISTICS_READ = {
    "first_moment": ("means",),
    "first_second_moment": ("means", "lowrank"),
    "gaussian_density": ("means", "lowrank"),
    "first_second_moment_full": ("means", "covs"),
    "gaussian_density_full": ("means", "covs"),
    "monte_carlo": ("means", "reservoir"),
}
# Tables that share memory with the statistics they come from (no copy in float32 on the CPU).
SHARED_TABLES = {"means": "means", "reservoir": "reservoir"}


@dataclass(frozen=True)
class BenchConfig:
    """What `run_bench` measures.

    Attributes:
        sizes: collection sizes n.
        methods: the scoring methods timed, run in RUN_ORDER whatever order they are given.
        rank: r of the low-rank covariances.
        batches: query block sizes q.
        k: results per query; top-k is timed together with the scores.
        repeats: timed samples per case; the median is reported.
        case_budget_s: past this many seconds a case stops sampling (after at least 3).
        reservoir: m, stored samples per model for the Monte-Carlo baseline.
        memory_budget_bytes: a method whose statistics and tables need more is skipped.
        loop_sizes: sizes at which the per-model loop is timed.
        loop_budget_s: seconds one pass of the loop may take; past it the rest of the pass is
            extrapolated from the models timed (every model costs the loop the same work).
        threads: threads of the kernels' products and of FAISS (torch's own ops use one, as
            in a scorer actor; see `limit_threads`).
        faiss: also time FAISS IndexFlatIP for the first moment.
        eps: ε added to covariances, as served.
        tau: τ of the second-moment and Monte-Carlo scores, as served.
        seed: of the simulated statistics and queries.
        bandwidth_bytes: size of the tensor the read bandwidth is measured on.
    """

    sizes: tuple[int, ...] = (133, 10_000, 100_000, 1_000_000)
    methods: tuple[str, ...] = RUN_ORDER
    rank: int = 16
    batches: tuple[int, ...] = (1, 32)
    k: int = 10
    repeats: int = 5
    case_budget_s: float = 10.0
    reservoir: int = 128
    memory_budget_bytes: int = 16 * 1024**3
    loop_sizes: tuple[int, ...] = (133, 10_000)
    loop_budget_s: float = 5.0
    threads: int = 2
    faiss: bool = True
    eps: float = 1e-3
    tau: float = 0.01
    seed: int = 0
    bandwidth_bytes: int = 2 * 1024**3


@dataclass(frozen=True)
class Case:
    """One (size, method, batch) measurement; times are medians, in seconds per query block.

    Attributes:
        bytes_read: bytes of the tables the method streams per query block.
        bandwidth: read bandwidth, bytes per second: the median of the probes before each
            timed sample (tables of PAIRED_PROBE_MIN_BYTES or more), else of those before the
            method.
        build_s: seconds ScoringTables.build_for took for this method.
        peak_extra_bytes: RSS high-water while timing, above the RSS before (the scoring
            temporaries); None where /proc cannot reset the high-water mark.
        process_peak_bytes: the process's RSS high-water since the previous case (the build
            of this case's tables included).
        loop_s: the per-model loop on the same queries, when timed at this size.
        loop_models: models the loop timed per pass (fewer than n: extrapolated).
        faiss_s: FAISS IndexFlatIP on the same unit means (first moment only).
        flops: floating-point operations of the method's matrix products per query block.
        product_rate: the products' rate on cache-resident tables, measured before the
            method, floating-point operations per second.
        paired_fraction: median over timed samples of (bound at the bandwidth probed just
            before the sample) / (the sample's time); None where no probe preceded samples.
    """

    size: int
    method: str
    batch: int
    rank: int
    seconds: float
    repeats: int
    bytes_read: int
    bandwidth: float
    build_s: float
    peak_extra_bytes: int | None
    process_peak_bytes: int | None = None
    loop_s: float | None = None
    loop_models: int | None = None
    faiss_s: float | None = None
    flops: float = 0.0
    product_rate: float | None = None
    paired_fraction: float | None = None


@dataclass(frozen=True)
class Skipped:
    size: int
    method: str
    reason: str


@dataclass(frozen=True)
class Target:
    """A performance target of issue 3: passed is None where its case did not run."""

    name: str
    passed: bool | None
    measured: str


@dataclass
class BenchReport:
    """Everything `render_markdown` writes."""

    config: BenchConfig
    command: str
    machine: dict[str, str]
    bandwidth_samples: list[float] = field(default_factory=list)  # bytes per second
    cases: list[Case] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    wall_s: float = 0.0
    peak_rss_bytes: int = 0

    @property
    def bandwidth(self) -> float:
        """Median measured read bandwidth, bytes per second."""
        return statistics.median(self.bandwidth_samples)

    def case(self, size: int, method: str, batch: int) -> Case | None:
        for case in self.cases:
            if (case.size, case.method, case.batch) == (size, method, batch):
                return case
        return None


# --- simulated statistics -------------------------------------------------------------------


def _blocks(total: int, per_item: int) -> Iterator[slice]:
    step = max(1, SIMULATE_BLOCK_ELEMENTS // max(1, per_item))
    for start in range(0, total, step):
        yield slice(start, min(start + step, total))


def simulate_means(n: int, generator: torch.Generator) -> np.ndarray:
    """(n, d) float32 means: random directions, L2-normalised as CLIP features are."""
    means = np.empty((n, DIM), np.float32)
    for rows in _blocks(n, DIM):
        block = torch.randn(rows.stop - rows.start, DIM, generator=generator)
        means[rows] = F.normalize(block, dim=1).numpy()
    return means


def simulate_lowrank(
    n: int, rank: int, generator: torch.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Probabilistic-PCA factors shaped like those of the paper's covariances.

    The top of the spectrum of I + noise: eigenvalues λ in [1 + s, 1 + 2s] (descending),
    σ² = 1, eigenvectors orthonormal rows. Drawn directly, because an eigendecomposition of
    100K (d, d) matrices would take hours and the timings do not depend on the values.

    Returns:
        eigvals (n, r), eigvecs (n, r, d) and residuals (n,), float32.
    """
    eigvecs = np.empty((n, rank, DIM), np.float32)
    for rows in _blocks(n, rank * DIM):
        gaussian = torch.randn(rows.stop - rows.start, DIM, rank, generator=generator)
        eigvecs[rows] = torch.linalg.qr(gaussian).Q.transpose(1, 2).numpy()
    spread = torch.rand(n, rank, generator=generator).sort(dim=1, descending=True).values
    eigvals = (1 + COV_NOISE * (1 + spread)).numpy()
    return eigvals, eigvecs, np.ones(n, np.float32)


def simulate_covs(out: np.ndarray, generator: torch.Generator) -> None:
    """Fill `out` (n, d, d) float32 with covariances I + (s / sqrt(2d)) (A + Aᵀ), A ~ N(0, 1)."""
    scale = COV_NOISE / math.sqrt(2 * DIM)
    eye = torch.eye(DIM)
    for rows in _blocks(out.shape[0], DIM * DIM):
        noise = torch.randn(rows.stop - rows.start, DIM, DIM, generator=generator)
        out[rows] = (eye + scale * (noise + noise.transpose(1, 2))).numpy()


def simulate_reservoir(means: np.ndarray, m: int, generator: torch.Generator) -> np.ndarray:
    """(n, m, d) float32 unit sample features scattered around each model's mean."""
    n = means.shape[0]
    reservoir = np.empty((n, m, DIM), np.float32)
    for rows in _blocks(n, m * DIM):
        centres = torch.from_numpy(means[rows])[:, None, :]
        noise = torch.randn(rows.stop - rows.start, m, DIM, generator=generator)
        reservoir[rows] = F.normalize(centres + noise / math.sqrt(DIM), dim=2).numpy()
    return reservoir


def simulate_queries(batch: int, seed: int) -> torch.Tensor:
    """(q, d) float32 unit query features."""
    generator = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(batch, DIM, generator=generator), dim=1)


class Collection:
    """Simulated statistics of n models, each kind generated on first use and dropped on demand.

    Full covariances live in a memory-mapped file under `workdir`, as an index's statistics
    live on storage: the whitening tables derived from them then fit in memory beside them.
    """

    def __init__(self, n: int, cfg: BenchConfig, workdir: Path) -> None:
        self.n = n
        self.cfg = cfg
        self.workdir = workdir
        self.ids = tuple(f"m{i:08d}" for i in range(n))
        self._arrays: dict[str, Any] = {}

    def _get(self, kind: str) -> Any:
        if kind not in self._arrays:
            started = time.perf_counter()
            simulate = {
                "means": lambda rng: simulate_means(self.n, rng),
                "lowrank": lambda rng: simulate_lowrank(self.n, self.cfg.rank, rng),
                "covs": self._simulate_covs,
                "reservoir": lambda rng: simulate_reservoir(
                    self._get("means"), self.cfg.reservoir, rng
                ),
            }
            # One stream per kind, so a kind's values do not depend on which others were drawn.
            seed = self.cfg.seed * 100 + list(simulate).index(kind)
            self._arrays[kind] = simulate[kind](torch.Generator().manual_seed(seed))
            logger.info(
                "simulated %s of %d models in %.1f s", kind, self.n, time.perf_counter() - started
            )
        return self._arrays[kind]

    def _simulate_covs(self, generator: torch.Generator) -> np.ndarray:
        covs = np.memmap(
            self.workdir / "covs.f32", dtype=np.float32, mode="w+", shape=(self.n, DIM, DIM)
        )
        simulate_covs(covs, generator)
        return covs

    def stats_for(self, method: str) -> ShardStats:
        """ShardStats holding what `method` reads; the other statistics are empty (r = 0 ...)."""
        kinds = STATISTICS_READ[method]
        n = self.n
        eigvals, eigvecs, residuals = (
            self._get("lowrank")
            if "lowrank" in kinds
            else (
                np.zeros((n, 0), np.float32),
                np.zeros((n, 0, DIM), np.float32),
                np.ones(n, np.float32),
            )
        )
        reservoir = (
            self._get("reservoir") if "reservoir" in kinds else np.zeros((n, 0, DIM), np.float32)
        )
        return ShardStats(
            ids=self.ids,
            metadata=({},) * n,
            fingerprints=("",) * n,
            counts=np.full(n, 10_000),
            means=self._get("means"),
            eigvals=eigvals,
            eigvecs=eigvecs,
            residuals=residuals,
            covs=self._get("covs") if "covs" in kinds else None,
            reservoir=reservoir,
            reservoir_counts=np.full(n, reservoir.shape[1]),
        )

    def keep_only(self, kinds: set[str]) -> None:
        """Drop every simulated kind not in `kinds`."""
        for kind in set(self._arrays) - kinds:
            del self._arrays[kind]


# --- memory accounting ----------------------------------------------------------------------


def table_elements(n: int, rank: int, reservoir: int) -> dict[str, int]:
    """Elements of each ScoringTables tensor for n models (`reservoir_mask` is 1 byte each)."""
    d = DIM
    return {
        "means": n * d,
        "means_sqnorm": n,
        "means_unit": n * d,
        "second_proj": n * rank * d,
        "residuals": n,
        "gauss_proj": n * rank * d,
        "gauss_proj_mean": n * rank,
        "gauss_scale": n,
        "gauss_const": n,
        "reservoir": n * reservoir * d,
        "reservoir_log_count": n,
        "reservoir_mask": n * reservoir,
        "full_second": n * d * (d + 1) // 2,
        "full_whiten": n * packed_whiten_elements(d),
        "full_whiten_mean": n * d,
        "full_const": n,
    }


def memory_needed(method: str, n: int, cfg: BenchConfig) -> int:
    """Bytes of memory `method` needs at n models: statistics, tables, FAISS, score blocks.

    Full covariances are not counted: they stay in their mapped file, from which both full
    methods' tables are built a chunk of models at a time.
    """
    d, r, m = DIM, cfg.rank, cfg.reservoir
    statistics_bytes = {
        "means": n * d * 4,
        "lowrank": n * r * (d + 1) * 4,
        "reservoir": n * m * d * 4,
    }
    kinds = STATISTICS_READ[method]
    needed = sum(statistics_bytes.get(kind, 0) for kind in kinds)
    elements = table_elements(n, r, m)
    for name in TABLES_READ[method]:
        if SHARED_TABLES.get(name) in statistics_bytes:
            continue
        needed += elements[name] * (1 if name == "reservoir_mask" else 4)
    if method == "first_moment" and cfg.faiss:
        needed += n * d * 4
    # The (q, n) scores, the masked copy top-k may make, and a block of temporaries.
    needed += 3 * max(cfg.batches) * n * 4 + 256 * 1024**2
    return needed


def _proc_status_bytes(key: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


@dataclass
class RssPeak:
    """What `track_peak_rss` saw.

    Attributes:
        extra_bytes: RSS high-water inside the block above the RSS before it; None where
            the high-water mark cannot be reset.
        process_bytes: the process's RSS high-water since the previous reset, this block
            included (resetting also resets what getrusage reports, so the run keeps these).
    """

    extra_bytes: int | None = None
    process_bytes: int | None = None


@contextlib.contextmanager
def track_peak_rss() -> Iterator[RssPeak]:
    """Measure the RSS high-water of a block; Linux resets it when /proc/self/clear_refs gets 5."""
    peak = RssPeak()
    before = _proc_status_bytes("VmRSS")
    high_before = _proc_status_bytes("VmHWM")
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
        resettable = before is not None
    except OSError:
        resettable = False
    yield peak
    high = _proc_status_bytes("VmHWM")
    if resettable and high is not None:
        peak.extra_bytes = max(0, high - before)
    seen = [value for value in (high_before, high) if value is not None]
    peak.process_bytes = max(seen) if seen else None


# --- timing ---------------------------------------------------------------------------------


def sample_seconds(
    call: Callable[[], object],
    repeats: int,
    budget_s: float,
    warm: bool = False,
    before_sample: Callable[[], object] | None = None,
) -> list[float]:
    """Seconds of `call` in `repeats` samples, fewer (but 3) past `budget_s` seconds.

    A warm-up call comes first unless `warm` says the caller made one. `before_sample` runs,
    untimed, before every sample (a bandwidth probe); it does not count against the budget.
    """
    started = time.perf_counter()
    call()
    first_s = time.perf_counter() - started
    inner = max(1, min(1000, math.ceil(MIN_SAMPLE_S / max(first_s, 1e-7))))
    samples = [first_s] if warm and inner == 1 and before_sample is None else []
    spent = first_s
    while len(samples) < repeats and (len(samples) < 3 or spent < budget_s):
        if before_sample is not None:
            before_sample()
        started = time.perf_counter()
        for _ in range(inner):
            call()
        elapsed = time.perf_counter() - started
        samples.append(elapsed / inner)
        spent += elapsed
    return samples


def median_seconds(
    call: Callable[[], object], repeats: int, budget_s: float, warm: bool = False
) -> tuple[float, int]:
    """Median of `sample_seconds` and the number of samples."""
    samples = sample_seconds(call, repeats, budget_s, warm)
    return statistics.median(samples), len(samples)


class BandwidthProbe:
    """Memory read bandwidth: a float32 array held for the whole run, read by the threads.

    The kernels' threads (`set_scoring_threads`) share its 32 MiB chunks, as they share a
    table's blocks, and each chunk is dotted with itself by numpy's BLAS on one core (every
    byte read once). That was the fastest read measured: numpy's pairwise sum ran at 42 GB/s
    where the dot and the kernels' matrix-vector passes read 55, so a probe by sums put
    kernels above 100% of their "bound"; torch's reductions would wake OpenMP threads whose
    spinning afterwards slows the next timed products. The run measures it at the start,
    before every method, before every sample of a large case and at the end: the machine
    is a VM whose speed drifts with its neighbours. The array adds `num_bytes` to the run's
    memory.
    """

    def __init__(self, num_bytes: int) -> None:
        self.num_bytes = num_bytes
        _pin_numpy_blas_to_one_thread()
        values = np.ones(num_bytes // 4, dtype=np.float32)
        step = PROBE_CHUNK_ELEMENTS
        self._chunks = [values[i : i + step] for i in range(0, values.size, step)]
        self.measure(1)

    def measure(self, repeats: int) -> list[float]:
        """Bytes per second, one sample per pass."""
        samples = []
        for _ in range(repeats):
            started = time.perf_counter()
            map_in_scoring_threads(_self_dot, self._chunks)
            samples.append(self.num_bytes / (time.perf_counter() - started))
        return samples


def _self_dot(chunk: np.ndarray) -> float:
    return float(np.dot(chunk, chunk))


def measure_product_rate(repeats: int = 7) -> float:
    """Floating-point operations per second of the kernels' product on cache-resident data.

    `_matmul_nt` of a (COMPUTE_PROBE_QUERIES, d) block against a table of
    COMPUTE_PROBE_ROWS_PER_THREAD rows per scoring thread: what the products reach on all
    threads when memory does not hold them back, the compute side of
    the bounds (a kernel whose products need F operations takes at least F / rate). The
    fastest of `repeats` samples: the VM's neighbours slow it for seconds at a time, and a
    bound must hold at the machine's best.
    """
    generator = torch.Generator().manual_seed(0)
    block = torch.randn(COMPUTE_PROBE_QUERIES, DIM, generator=generator)
    threads = get_scoring_threads() or torch.get_num_threads()
    table = torch.randn(COMPUTE_PROBE_ROWS_PER_THREAD * threads, DIM, generator=generator)
    with torch.inference_mode():
        samples = sample_seconds(lambda: _matmul_nt(block, table), repeats, budget_s=1.0)
    return 2 * COMPUTE_PROBE_QUERIES * table.shape[0] * DIM / min(samples)


def product_flops(method: str, n: int, cfg: BenchConfig, batch: int) -> float:
    """Floating-point operations of `method`'s matrix products for one block of `batch`."""
    d, r, m = DIM, cfg.rank, cfg.reservoir
    per_query = {
        "first_moment": n * d,
        "first_second_moment": n * d + n * r * d,
        "first_second_moment_full": n * d + n * d * (d + 1) // 2,
        "gaussian_density": n * d + n * r * d,
        "gaussian_density_full": n * packed_whiten_elements(d),
        "monte_carlo": n * m * d,
    }[method]
    return 2.0 * per_query * batch


# --- the per-model loop ---------------------------------------------------------------------
# One model's statistics at a time, re-deriving per call what the formula needs, in the style
# of public reference code (torch.distributions for the densities, default validation).

LoopScorer = Callable[[ShardStats, int, torch.Tensor, float, float], torch.Tensor]


def _loop_first_moment(
    stats: ShardStats, i: int, queries: torch.Tensor, eps: float, tau: float
) -> torch.Tensor:
    mean = F.normalize(torch.from_numpy(stats.means[i]), dim=0)
    return F.normalize(queries, dim=1) @ mean


def _loop_first_second_moment(
    stats: ShardStats, i: int, queries: torch.Tensor, eps: float, tau: float
) -> torch.Tensor:
    unit = F.normalize(queries, dim=1)
    vecs, vals = torch.from_numpy(stats.eigvecs[i]), torch.from_numpy(stats.eigvals[i])
    spread = ((unit @ vecs.T).square() * vals).sum(dim=1)
    spread = spread + float(stats.residuals[i]) * unit.square().sum(dim=1)
    return unit @ torch.from_numpy(stats.means[i]) / tau + spread / (2 * tau**2)


def _loop_first_second_moment_full(
    stats: ShardStats, i: int, queries: torch.Tensor, eps: float, tau: float
) -> torch.Tensor:
    unit = F.normalize(queries, dim=1)
    spread = ((unit @ torch.from_numpy(stats.covs[i])) * unit).sum(dim=1)
    return unit @ torch.from_numpy(stats.means[i]) / tau + spread / (2 * tau**2)


def _loop_gaussian_density(
    stats: ShardStats, i: int, queries: torch.Tensor, eps: float, tau: float
) -> torch.Tensor:
    vecs, vals = torch.from_numpy(stats.eigvecs[i]), torch.from_numpy(stats.eigvals[i])
    diag = torch.full((stats.dim,), float(stats.residuals[i]) + eps)
    density = torch.distributions.LowRankMultivariateNormal(
        torch.from_numpy(stats.means[i]), vecs.T * vals.sqrt(), diag
    )
    return density.log_prob(queries)


def _loop_gaussian_density_full(
    stats: ShardStats, i: int, queries: torch.Tensor, eps: float, tau: float
) -> torch.Tensor:
    cov = torch.from_numpy(stats.covs[i]) + eps * torch.eye(stats.dim)
    density = torch.distributions.MultivariateNormal(torch.from_numpy(stats.means[i]), cov)
    return density.log_prob(queries)


def _loop_monte_carlo(
    stats: ShardStats, i: int, queries: torch.Tensor, eps: float, tau: float
) -> torch.Tensor:
    count = int(stats.reservoir_counts[i])
    samples = torch.from_numpy(stats.reservoir[i, :count])
    logits = F.normalize(queries, dim=1) @ samples.T / tau
    return torch.logsumexp(logits, dim=1) - math.log(count)


LOOP_SCORERS: dict[str, LoopScorer] = {
    "first_moment": _loop_first_moment,
    "first_second_moment": _loop_first_second_moment,
    "first_second_moment_full": _loop_first_second_moment_full,
    "gaussian_density": _loop_gaussian_density,
    "gaussian_density_full": _loop_gaussian_density_full,
    "monte_carlo": _loop_monte_carlo,
}


def loop_scores(
    stats: ShardStats, method: str, queries: torch.Tensor, eps: float, tau: float
) -> torch.Tensor:
    """(q, n) scores of the per-model loop, for checking it against the kernels."""
    scorer = LOOP_SCORERS[method]
    with torch.inference_mode():
        columns = [scorer(stats, i, queries, eps, tau) for i in range(stats.num_models)]
    return torch.stack(columns, dim=1)


def time_loop(
    stats: ShardStats, method: str, queries: torch.Tensor, cfg: BenchConfig
) -> tuple[float, int]:
    """Median seconds of the per-model loop (scores and top-k) for one query block.

    Returns:
        seconds per pass over all n models (extrapolated past `cfg.loop_budget_s`), and the
        models timed in a pass.
    """
    scorer = LOOP_SCORERS[method]
    n = stats.num_models
    samples: list[float] = []
    timed = n
    with torch.inference_mode():
        for _ in range(cfg.repeats):
            columns = []
            started = time.perf_counter()
            for i in range(n):
                columns.append(scorer(stats, i, queries, cfg.eps, cfg.tau))
                if time.perf_counter() - started > cfg.loop_budget_s:
                    break
            timed = len(columns)
            if timed == n:
                topk_rows(torch.stack(columns, dim=1), cfg.k)
            samples.append((time.perf_counter() - started) * n / timed)
            if timed < n or sum(samples) > cfg.loop_budget_s:
                break
    return statistics.median(samples), timed


def time_faiss(tables: ScoringTables, queries: torch.Tensor, cfg: BenchConfig) -> float:
    """Median seconds of FAISS IndexFlatIP search (k results) over the same unit means."""
    # Its loader logs at INFO which optimised build it could not find.
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    import faiss

    faiss.omp_set_num_threads(cfg.threads)
    index = faiss.IndexFlatIP(tables.dim)
    index.add(tables.means_unit.numpy())
    block = queries.numpy()

    def search() -> None:
        index.search(block / np.linalg.norm(block, axis=1, keepdims=True), cfg.k)

    seconds, _ = median_seconds(search, cfg.repeats, cfg.case_budget_s)
    return seconds


# --- the run --------------------------------------------------------------------------------


def bench_method(
    collection: Collection, method: str, cfg: BenchConfig, probe: BandwidthProbe
) -> tuple[list[Case], list[float]]:
    """Time `method` at the collection's size for every batch: loop, kernel, FAISS.

    Returns:
        the cases, and the bandwidth samples measured just before timing them.
    """
    stats = collection.stats_for(method)
    queries = {batch: simulate_queries(batch, cfg.seed + batch) for batch in cfg.batches}
    loops = {}
    if collection.n in cfg.loop_sizes:
        for batch, block in queries.items():
            loops[batch] = time_loop(stats, method, block, cfg)

    started = time.perf_counter()
    tables = ScoringTables.build_for(stats, [method], eps=cfg.eps, tau=cfg.tau)
    build_s = time.perf_counter() - started
    bytes_read = sum(
        getattr(tables, name).element_size() * getattr(tables, name).numel()
        for name in TABLES_READ[method]
    )

    bandwidth_samples = probe.measure(BANDWIDTH_PROBE_REPEATS)
    bandwidth = statistics.median(bandwidth_samples)
    product_rate = measure_product_rate()
    paired = bytes_read >= PAIRED_PROBE_MIN_BYTES
    cases = []
    for batch, block in queries.items():

        def answer(block: torch.Tensor = block) -> list[list[int]]:
            return topk_rows(score(tables, method, block), cfg.k)

        answer()  # warms up and maps the tables' pages before the high-water mark is reset
        probes: list[float] = []
        with track_peak_rss() as peak:
            samples = sample_seconds(
                answer,
                cfg.repeats,
                cfg.case_budget_s,
                warm=True,
                before_sample=functools.partial(_probe_into, probe, probes) if paired else None,
            )
        seconds, repeats = statistics.median(samples), len(samples)
        bandwidth_samples += probes
        loop_s, loop_models = loops.get(batch, (None, None))
        faiss_s = time_faiss(tables, block, cfg) if method == "first_moment" and cfg.faiss else None
        cases.append(
            Case(
                size=collection.n,
                method=method,
                batch=batch,
                rank=stats.rank,
                seconds=seconds,
                repeats=repeats,
                bytes_read=bytes_read,
                bandwidth=statistics.median(probes) if probes else bandwidth,
                build_s=build_s,
                peak_extra_bytes=peak.extra_bytes,
                process_peak_bytes=peak.process_bytes,
                loop_s=loop_s,
                loop_models=loop_models,
                faiss_s=faiss_s,
                flops=product_flops(method, collection.n, cfg, batch),
                product_rate=product_rate,
                paired_fraction=statistics.median(
                    bytes_read / bw / t for bw, t in zip(probes, samples, strict=True)
                )
                if probes
                else None,
            )
        )
        logger.info(
            "n=%d %s q=%d: %.3f ms/query (loop %s, faiss %s)",
            collection.n,
            method,
            batch,
            1e3 * seconds / batch,
            "-" if loop_s is None else f"{1e3 * loop_s / batch:.3f} ms",
            "-" if faiss_s is None else f"{1e3 * faiss_s / batch:.3f} ms",
        )
    return cases, bandwidth_samples


def _probe_into(probe: BandwidthProbe, samples: list[float]) -> None:
    samples.extend(probe.measure(1))


def cpu_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine since boot, from /proc/stat (0, 0 elsewhere)."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(v) for v in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)


def describe_machine(threads: int) -> dict[str, str]:
    """CPU model, cores, memory, library versions and the load at the start."""
    cpu = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as info:
        cpu = next((ln.split(":", 1)[1].strip() for ln in info if ln.startswith("model name")), cpu)
    flags = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as info:
        line = next((ln for ln in info if ln.startswith("flags")), "")
        flags = ", ".join(
            f for f in ("avx2", "avx512f", "avx512_vnni", "amx_tile") if f in line.split()
        )
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        import faiss

        faiss_version = faiss.__version__
    except ImportError:
        faiss_version = "not installed"
    return {
        "cpu": cpu,
        "cpu_flags": flags or "none of avx2/avx512",
        "cores": str(os.cpu_count()),
        "memory": f"{memory / 1024**3:.0f} GiB",
        "system": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "faiss": faiss_version,
        "threads": str(threads),
        "load_start": "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg()),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


@contextlib.contextmanager
def limit_threads(threads: int) -> Iterator[None]:
    """Run as a scorer actor runs: torch's own ops on one thread, the products on `threads`.

    Ray gives a scorer (a fraction of a CPU) OMP_NUM_THREADS=1, and the kernels split their
    products over `set_scoring_threads` threads themselves (shards.scoring._matmul_nt). With
    a second OpenMP thread, torch's reductions cost the products a core: libgomp's idle
    threads spin for a while after each parallel region (32 queries x 10K means scored
    1.7x slower). FAISS is set in `time_faiss`. The previous settings are restored after.
    """
    previous, previous_scoring = torch.get_num_threads(), get_scoring_threads()
    torch.set_num_threads(1)
    set_scoring_threads(threads)
    try:
        yield
    finally:
        set_scoring_threads(previous_scoring)
        torch.set_num_threads(previous)


def validate(cfg: BenchConfig) -> None:
    for name in ("sizes", "batches"):
        values = getattr(cfg, name)
        if not values or min(values) < 1:
            raise ValueError(f"--{name} must be positive integers, got {values}")
    for name in ("rank", "k", "repeats", "reservoir", "threads"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(cfg, name)}")
    unknown = set(cfg.methods) - set(RUN_ORDER)
    if not cfg.methods or unknown:
        raise ValueError(
            f"--methods must name some of {', '.join(RUN_ORDER)}; got {', '.join(cfg.methods)}"
        )
    if cfg.memory_budget_bytes <= 0:
        raise ValueError(f"--memory-gb must be > 0, got {cfg.memory_budget_bytes / 1024**3}")
    if cfg.faiss and importlib.util.find_spec("faiss") is None:
        raise ValueError(
            "FAISS is not installed: install the bench extra (pip install -e '.[bench]') "
            "or pass --no-faiss"
        )


def run_bench(cfg: BenchConfig, command: str) -> BenchReport:
    """Measure every method at every size that fits; see BenchConfig for the knobs."""
    validate(cfg)
    started = time.perf_counter()
    report = BenchReport(config=cfg, command=command, machine=describe_machine(cfg.threads))
    busy_before, total_before = cpu_jiffies()
    own_before = _own_cpu_seconds()
    with limit_threads(cfg.threads):
        probe = BandwidthProbe(cfg.bandwidth_bytes)
        report.bandwidth_samples += probe.measure(7)
        logger.info("read bandwidth %.1f GB/s", report.bandwidth / 1e9)
        for n in cfg.sizes:
            with tempfile.TemporaryDirectory(prefix="modelseek-bench-") as workdir:
                collection = Collection(n, cfg, Path(workdir))
                _bench_size(collection, cfg, report, probe)
                collection.keep_only(set())
        report.bandwidth_samples += probe.measure(7)
        del probe
    report.machine["load_end"] = "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    report.wall_s = time.perf_counter() - started
    busy, total = cpu_jiffies()
    if total > total_before:
        # Jiffies add up over every core: busy / total is the machine's mean utilisation.
        cores = os.cpu_count() or 1
        busy_s = (busy - busy_before) / (total - total_before) * cores * report.wall_s
        others = max(0.0, busy_s - (_own_cpu_seconds() - own_before)) / report.wall_s
        report.machine["others_cores"] = f"{others:.2f}"
    # Resetting the high-water mark for each case also resets getrusage's, hence the cases'.
    report.peak_rss_bytes = max(
        [resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024]
        + [c.process_peak_bytes for c in report.cases if c.process_peak_bytes is not None]
    )
    return report


def _own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _bench_size(
    collection: Collection, cfg: BenchConfig, report: BenchReport, probe: BandwidthProbe
) -> None:
    n = collection.n
    budget_gb = cfg.memory_budget_bytes / 1024**3
    for position, method in enumerate(RUN_ORDER):
        if method not in cfg.methods:
            continue
        needed = memory_needed(method, n, cfg)
        if needed > cfg.memory_budget_bytes:
            reason = f"needs ~{needed / 1024**3:.1f} GiB, over the {budget_gb:g} GiB budget"
            logger.info("n=%d %s skipped: %s", n, method, reason)
            report.skipped.append(Skipped(n, method, reason))
            continue
        cases, bandwidth_samples = bench_method(collection, method, cfg, probe)
        report.cases += cases
        report.bandwidth_samples += bandwidth_samples
        later = {
            kind
            for m in RUN_ORDER[position + 1 :]
            if m in cfg.methods
            for kind in STATISTICS_READ[m]
        }
        collection.keep_only(later)


# --- targets and the report -----------------------------------------------------------------


def bound_fraction(case: Case) -> float:
    """(bytes read / bandwidth) / time: 1.0 is as fast as memory allows.

    Paired with the probe before each sample where there were such probes.
    """
    if case.paired_fraction is not None:
        return case.paired_fraction
    return case.bytes_read / case.bandwidth / case.seconds


def compute_bound_s(case: Case) -> float:
    """Seconds the case's products take at the measured product rate; 0 where not measured."""
    return case.flops / case.product_rate if case.product_rate else 0.0


def loop_ceiling(case: Case) -> float:
    """The most a kernel that reads the tables and does the products could beat the loop by.

    The loop's time over the larger of the bandwidth bound and the compute bound.
    """
    return case.loop_s / max(case.bytes_read / case.bandwidth, compute_bound_s(case))


def evaluate_targets(report: BenchReport) -> list[Target]:
    """The targets of issue 3 on this run; sizes default to those the issue names."""
    targets = []
    fm_1 = report.case(1_000_000, "first_moment", 1)
    targets.append(
        Target(
            "first moment, 1M models, batch 1: >= 80% of the bandwidth bound",
            None if fm_1 is None else bound_fraction(fm_1) >= 0.8,
            "not run" if fm_1 is None else f"{bound_fraction(fm_1):.0%} of the bound",
        )
    )
    fm_32 = report.case(1_000_000, "first_moment", 32)
    ms_32 = None if fm_32 is None else 1e3 * fm_32.seconds / 32
    targets.append(
        Target(
            "first moment, 1M models, batch 32: <= 10 ms per query",
            None if ms_32 is None else ms_32 <= 10,
            "not run" if ms_32 is None else f"{ms_32:.2f} ms per query",
        )
    )
    for batch in report.config.batches:
        fm = report.case(1_000_000, "first_moment", batch)
        ratio = None if fm is None or fm.faiss_s is None else fm.seconds / fm.faiss_s
        targets.append(
            Target(
                f"first moment, 1M models, batch {batch}: no slower than FAISS IndexFlatIP",
                None if ratio is None else ratio <= 1.0,
                "not run" if ratio is None else f"{ratio:.2f}x FAISS's time",
            )
        )
    for method in RUN_ORDER:
        for batch in report.config.batches:
            case = report.case(10_000, method, batch)
            speedup = None if case is None or case.loop_s is None else case.loop_s / case.seconds
            measured = "not run"
            if speedup is not None:
                ceiling = loop_ceiling(case)
                measured = f"{speedup:.0f}x (ceiling {ceiling:.0f}x" + (
                    ": out of reach of any kernel that reads the tables and does the products)"
                    if ceiling < 100
                    else ")"
                )
            targets.append(
                Target(
                    f"{method}, 10K models, batch {batch}: >= 100x the per-model loop",
                    None if speedup is None else speedup >= 100,
                    measured,
                )
            )
    gd = report.case(100_000, "gaussian_density", 1)
    slowdown = None if gd is None else 1 / bound_fraction(gd)
    targets.append(
        Target(
            f"gaussian_density (r = {report.config.rank}), 100K models, batch 1: within 1.5x "
            "of the bandwidth bound",
            None if slowdown is None else slowdown <= 1.5,
            "not run" if slowdown is None else f"{slowdown:.2f}x the bound",
        )
    )
    return targets


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    ms = 1e3 * seconds
    return (
        f"{ms:.0f}"
        if ms >= 100
        else f"{ms:.1f}"
        if ms >= 10
        else f"{ms:.2f}"
        if ms >= 1
        else f"{ms:.3f}"
    )


def _size(n: int) -> str:
    for unit, scale in (("M", 1_000_000), ("K", 1_000)):
        if n >= scale and n % scale == 0:
            return f"{n // scale}{unit}"
    return str(n)


def _gb(num_bytes: float | None) -> str:
    return "—" if num_bytes is None else f"{num_bytes / 1e9:.2f}"


def render_markdown(report: BenchReport) -> str:
    """The report as markdown: machine, method, tables, skipped cases, targets."""
    cfg, machine = report.config, report.machine
    bandwidth = report.bandwidth
    lines = [
        "# Scoring benchmark: the paper's Table 3, reproduced and extended",
        "",
        f"Written by `modelseek bench` on {machine['date']}, in {report.wall_s / 60:.1f} min "
        f"(peak RSS {report.peak_rss_bytes / 1e9:.1f} GB). Command:",
        "",
        f"    {report.command}",
        "",
        f"Machine: {machine['cpu']} ({machine['cpu_flags']}), {machine['cores']} cores, "
        f"{machine['memory']}, {machine['system']}; Python {machine['python']}, "
        f"torch {machine['torch']}, numpy {machine['numpy']}, faiss {machine['faiss']}; "
        f"{machine['threads']} threads for the products and FAISS, one for torch's own ops, as "
        "in a scorer actor. Load average (1, 5, 15 min) "
        f"{machine['load_start']} at the start and {machine.get('load_end', '?')} at the end; "
        f"other processes in the VM kept {machine.get('others_cores', '?')} cores busy on "
        "average during the run (/proc/stat less this process); neighbours outside the VM show "
        "only as drift in the bandwidth probes below. Every time is a median of repeats.",
        "",
        f"Memory read bandwidth: **{bandwidth / 1e9:.1f} GB/s** (median of "
        f"{len(report.bandwidth_samples)} passes over a "
        f"{cfg.bandwidth_bytes / 1024**3:g} GiB float32 array, its 32 MiB chunks each "
        f"dotted with itself by BLAS on the {cfg.threads} threads that run the products: 7 at "
        f"the start and the end of the run, {BANDWIDTH_PROBE_REPEATS} before every method, "
        "one before every timed sample of a case whose tables exceed "
        f"{PAIRED_PROBE_MIN_BYTES // 1024**2} MiB; range "
        f"{min(report.bandwidth_samples) / 1e9:.1f}–{max(report.bandwidth_samples) / 1e9:.1f} "
        "GB/s: the VM's speed drifts with its neighbours, so each case's bound uses the "
        "bandwidth measured just before it).",
        "",
        "## How it was measured",
        "",
        f"- Collections: d = {DIM}; means are random directions, L2-normalised (CLIP features "
        "are unit vectors); full covariances are the paper's identity plus small symmetric "
        f"noise, I + (s/√(2d))(A + Aᵀ) with A ~ N(0, 1) and s = {COV_NOISE} (spectrum in "
        f"[1 − 2s, 1 + 2s]); low-rank factors (r = {cfg.rank}) have the shape of that spectrum's "
        f"top (λ in [1 + s, 1 + 2s], σ² = 1, orthonormal eigenvectors), drawn directly; the "
        f"Monte-Carlo reservoir keeps m = {cfg.reservoir} unit samples per model. Statistics are "
        "built with numpy as ShardStats (no indexing) and turned into tensors by "
        "`ScoringTables.build_for(stats, [method])`, which holds only the tables the method "
        "reads. Full covariances sit in a memory-mapped temporary file, as statistics sit on "
        "storage. float32 throughout.",
        f"- Time per query: `topk_rows(score(tables, method, queries), k={cfg.k})`, scores and "
        f"exact top-k together as a scorer answers; median of {cfg.repeats} timed samples after "
        f"a warm-up (at least 3 where {cfg.repeats} would pass {cfg.case_budget_s:g} s; a sample "
        f"repeats calls shorter than {MIN_SAMPLE_S * 1e3:.0f} ms), divided by the batch size. "
        "Queries are unit vectors.",
        "- Bound: bytes of the tables the method reads (its whole index: every model's "
        "statistics must be read once per query block) / the bandwidth measured just before "
        "the method. *Fraction* = bound / measured time; 100% is as fast as memory allows. "
        f"For tables over {PAIRED_PROBE_MIN_BYTES // 1024**2} MiB a probe pass precedes every "
        "timed sample and the fraction is the median of the per-sample fractions, so a drift "
        "in bandwidth between samples does not count as the kernel's (a probe and its sample "
        "are not simultaneous, so a fraction can pass 100% when the bandwidth recovers between "
        "them). Batch 32 reads the same bytes for 32 queries, so its time is compute, not "
        "memory.",
        "- Compute bound: floating-point operations of the method's matrix products per block "
        "/ the rate `_matmul_nt` reaches on a "
        f"({COMPUTE_PROBE_QUERIES}, {DIM}) x ({COMPUTE_PROBE_ROWS_PER_THREAD} x threads, {DIM}) "
        "product whose table stays in cache, on every scoring thread, the fastest of 7 samples "
        "taken before each method (shown as GFLOPS).",
        "- Memory: *tables GB* is the bytes the method reads; *peak extra GB* the RSS high-water "
        "while timing above the RSS before it (the scoring temporaries; `/proc/self/clear_refs` "
        "resets the mark); *process RSS GB* the process's RSS high-water from the previous case "
        "to the end of this one (simulated statistics, table build and tables included; mapped "
        "covariance pages count once touched).",
        f"- Per-model loop: each model's statistics scored one at a time in torch, re-deriving "
        "what the formula needs per call as public reference code does (normalising μ; "
        "`torch.distributions.MultivariateNormal` / `LowRankMultivariateNormal` with default "
        "validation for the densities), then the same top-k. It runs with torch on one "
        "thread, as the kernels' own torch ops do (on this machine two threads took the loop "
        "0.8x to 1.6x as long, first moment and Gaussian density at 10K models). A pass longer "
        f"than {cfg.loop_budget_s:g} s stops and is extrapolated from the models done (the "
        "loop costs the same for every model); the models timed are listed.",
        "- FAISS: `IndexFlatIP` over the same unit means, `search(q / ‖q‖, k)`, same threads "
        "and timing; the ratio is our time / FAISS's (below 1: faster).",
        "",
    ]
    lines += _paper_table(report)
    lines += _detail_table(report)
    lines += _loop_table(report)
    lines += _faiss_table(report)
    if report.skipped:
        lines += ["## Skipped", ""]
        lines += [f"- {_size(s.size)} models, {s.method}: {s.reason}" for s in report.skipped]
        lines += [""]
    lines += ["## Targets (issue 3)", ""]
    for target in evaluate_targets(report):
        verdict = {True: "PASS", False: "MISS", None: "NOT RUN"}[target.passed]
        lines.append(f"- **{verdict}** {target.name}: {target.measured}")
    lines.append("")
    return "\n".join(lines)


def _paper_table(report: BenchReport) -> list[str]:
    sizes = report.config.sizes
    lines = []
    for batch in report.config.batches:
        lines += [
            f"## Time per query, batch {batch} (ms; the paper's Table 3 layout)",
            "",
            "| method | " + " | ".join(_size(n) for n in sizes) + " |",
            "|---|" + "---:|" * len(sizes),
        ]
        for method in (m for m in RUN_ORDER if m in report.config.methods):
            cells = []
            for n in sizes:
                case = report.case(n, method, batch)
                cells.append("skipped" if case is None else _ms(case.seconds / batch))
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def _detail_table(report: BenchReport) -> list[str]:
    lines = [
        "## Every case",
        "",
        "| models | method | r | batch | ms/query | ms/batch | tables GB | GB/s | bound ms "
        "| fraction | GFLOPS | compute bound ms | peak extra GB | process RSS GB | build s "
        "| samples |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in report.cases:
        bound_s = c.bytes_read / c.bandwidth
        lines.append(
            f"| {_size(c.size)} | {c.method} | {c.rank or '—'} | {c.batch} "
            f"| {_ms(c.seconds / c.batch)} | {_ms(c.seconds)} | {_gb(c.bytes_read)} "
            f"| {c.bandwidth / 1e9:.1f} | {_ms(bound_s)} | {bound_fraction(c):.0%} "
            f"| {(c.product_rate or 0) / 1e9:.0f} | {_ms(compute_bound_s(c))} "
            f"| {_gb(c.peak_extra_bytes)} | {_gb(c.process_peak_bytes)} | {c.build_s:.1f} "
            f"| {c.repeats} |"
        )
    return lines + [""]


def _loop_table(report: BenchReport) -> list[str]:
    rows = [c for c in report.cases if c.loop_s is not None]
    if not rows:
        return []
    lines = [
        "## Speed-up over the per-model loop",
        "",
        "The ceiling is the loop's time over the larger of the bandwidth bound and the compute "
        "bound: no kernel that reads the tables and does the products at the measured rate "
        "can beat the loop by more.",
        "",
        "| models | method | batch | loop ms/query | ours ms/query | speed-up | ceiling "
        "| models timed |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for c in rows:
        ceiling = loop_ceiling(c)
        lines.append(
            f"| {_size(c.size)} | {c.method} | {c.batch} | {_ms(c.loop_s / c.batch)} "
            f"| {_ms(c.seconds / c.batch)} | {c.loop_s / c.seconds:.0f}x | {ceiling:.0f}x "
            f"| {c.loop_models:,} of {c.size:,} |"
        )
    return lines + [""]


def _faiss_table(report: BenchReport) -> list[str]:
    rows = [c for c in report.cases if c.faiss_s is not None]
    if not rows:
        return []
    lines = [
        "## First moment against FAISS IndexFlatIP",
        "",
        "| models | batch | FAISS ms/query | ours ms/query | ours / FAISS |",
        "|---:|---:|---:|---:|---:|",
    ]
    for c in rows:
        lines.append(
            f"| {_size(c.size)} | {c.batch} | {_ms(c.faiss_s / c.batch)} "
            f"| {_ms(c.seconds / c.batch)} | {c.seconds / c.faiss_s:.2f} |"
        )
    return lines + [""]


# --- command line ---------------------------------------------------------------------------


def parse_sizes(text: str) -> tuple[int, ...]:
    """'133,10K,100K,1M' -> (133, 10000, 100000, 1000000)."""
    sizes = []
    for item in text.split(","):
        item = item.strip().upper()
        scale = {"K": 1_000, "M": 1_000_000}.get(item[-1:], 1)
        digits = item[:-1] if scale > 1 else item
        try:
            sizes.append(int(float(digits) * scale))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"sizes are integers with an optional K or M, comma-separated; got {item!r}"
            ) from None
    return tuple(sizes)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `modelseek bench` options, defaulting to BenchConfig's values."""
    d = BenchConfig()
    join = ",".join
    parser.add_argument("--sizes", type=parse_sizes, default=d.sizes, help="e.g. 133,10K,100K,1M")
    parser.add_argument(
        "--methods",
        type=lambda text: tuple(m.strip() for m in text.split(",")),
        default=d.methods,
        help=f"scoring methods to time (default all: {join(d.methods)})",
    )
    parser.add_argument("--rank", type=int, default=d.rank, help="low-rank covariance rank r")
    parser.add_argument("--batches", type=parse_sizes, default=d.batches, help="e.g. 1,32")
    parser.add_argument("--k", type=int, default=d.k, help="results per query")
    parser.add_argument("--repeats", type=int, default=d.repeats, help="timed samples per case")
    parser.add_argument(
        "--case-budget-s",
        type=float,
        default=d.case_budget_s,
        help="seconds after which a case takes no more samples (it keeps at least 3)",
    )
    parser.add_argument(
        "--reservoir", type=int, default=d.reservoir, help="Monte-Carlo samples per model"
    )
    parser.add_argument(
        "--memory-gb",
        type=float,
        default=d.memory_budget_bytes / 1024**3,
        help="skip a method whose statistics and tables need more GiB",
    )
    parser.add_argument(
        "--loop-sizes",
        type=parse_sizes,
        default=d.loop_sizes,
        help=f"sizes at which to time the per-model loop (default {join(map(str, d.loop_sizes))})",
    )
    parser.add_argument(
        "--loop-budget-s",
        type=float,
        default=d.loop_budget_s,
        help="seconds per loop pass before extrapolating",
    )
    parser.add_argument("--threads", type=int, default=d.threads)
    parser.add_argument("--no-faiss", action="store_true", help="skip the FAISS comparison")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--out", type=Path, help="also write the markdown report here")


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    return BenchConfig(
        sizes=args.sizes,
        methods=args.methods,
        rank=args.rank,
        batches=args.batches,
        k=args.k,
        repeats=args.repeats,
        case_budget_s=args.case_budget_s,
        reservoir=args.reservoir,
        memory_budget_bytes=int(args.memory_gb * 1024**3),
        loop_sizes=args.loop_sizes,
        loop_budget_s=args.loop_budget_s,
        threads=args.threads,
        faiss=not args.no_faiss,
        seed=args.seed,
    )


def command_line(cfg: BenchConfig, out: Path | None) -> str:
    """The command that reruns `cfg`, every option spelled out."""
    join = ",".join
    parts = [
        "modelseek bench",
        f"--sizes {join(_size(n) for n in cfg.sizes)}",
        *([] if cfg.methods == RUN_ORDER else [f"--methods {join(cfg.methods)}"]),
        f"--rank {cfg.rank}",
        f"--batches {join(map(str, cfg.batches))}",
        f"--k {cfg.k}",
        f"--repeats {cfg.repeats}",
        f"--case-budget-s {cfg.case_budget_s:g}",
        f"--reservoir {cfg.reservoir}",
        f"--memory-gb {cfg.memory_budget_bytes / 1024**3:g}",
        f"--loop-sizes {join(_size(n) for n in cfg.loop_sizes)}",
        f"--loop-budget-s {cfg.loop_budget_s:g}",
        f"--threads {cfg.threads}",
        f"--seed {cfg.seed}",
    ]
    if not cfg.faiss:
        parts.append("--no-faiss")
    if out is not None:
        parts.append(f"--out {out}")
    return " ".join(parts)

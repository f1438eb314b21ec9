"""Scoring kernels: every query kind against a block of models, as a few large matrix products.

Shape letters: `q` queries, `n` models, `d` feature dim, `r` covariance rank, `m` reservoir
samples. Every kernel maps a (q, d) query block to a (q, n) score block, higher is better.
"""

import contextlib
import functools
import logging
import math
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch

from shards.stats import ShardStats

logger = logging.getLogger(__name__)

# Intermediate (q, n_block, width) tensors are capped at this many elements (32 MB in float32),
# so scoring a large shard needs memory proportional to the block, not to the shard. Larger
# blocks mean fewer hand-offs between the BLAS threads and torch's, each of which can cost
# milliseconds on a small VM: 32 MB blocks scored 32 queries 1.2x faster than 8 MB ones.
MAX_BLOCK_ELEMENTS = 1 << 23
# Tables are derived in float64 a chunk of models at a time, each float64 temporary capped at
# this many elements (32 MB), so building 1M models costs little more than the tables.
BUILD_BLOCK_ELEMENTS = 1 << 22
# Rows of a table multiplied by one OpenBLAS call: skinny (q, d) x (d, rows) products run
# ~1.8x faster in blocks of about 2 MB (about L2) than in one call over a large table (q = 32).
MATMUL_BLOCK_ELEMENTS = 1 << 19
# Rows of a table multiplied by one oneDNN call (8 MB in float32): its per-call set-up is
# larger than OpenBLAS's, and 32 queries x 1M means ran 1.3x faster in 8 MB blocks than in 2 MB.
ONEDNN_BLOCK_ELEMENTS = 1 << 21
# Blocks of at most this many queries are multiplied as one dot-product pass per query over
# each block of rows, the block still in cache for the passes after the first: at 1M means,
# 2 queries took 70 ms this way against 110 with oneDNN and 160 with OpenBLAS; past 4 queries
# oneDNN is faster.
DOT_PASS_MAX_QUERIES = 4
# Rows of a table one thread streams per call for a single query (8 MB): small enough that
# threads share a table's rows evenly when one of them is slowed down, large enough that the
# calls cost nothing next to the reads.
MATVEC_BLOCK_ELEMENTS = 1 << 21
# Tables smaller than this (4 MB in float32) are multiplied in the calling thread: handing
# work to other threads costs more than it saves.
PARALLEL_MATMUL_MIN_ELEMENTS = 1 << 20
# oneDNN blocks of rows wider than WIDE_ROW_ELEMENTS hold at least this many rows where the
# table has 2 such blocks per thread.
ONEDNN_WIDE_MIN_ROWS = 256
# Rows wider than this, a query row past half the L1 cache, are dotted by torch's matrix-vector
# product (MKL): numpy's dot loop then reloads the query from L2 for every row, and read a
# table of 131,328-wide rows at 21 GB/s on 2 cores against MKL's 31 (512-wide rows: 52).
WIDE_ROW_ELEMENTS = 1 << 13
# Tables smaller than this (1 MB in float32) go to torch's own matmul: the blocked paths'
# set-up cost more than their products (133 x 512 means, 32 queries: 150 against 78 µs).
SMALL_TABLE_ELEMENTS = 1 << 18
# L⁻¹ is lower triangular: its rows are stored in bands of this many, each band only up to
# its last row's diagonal, which keeps 56% of the d x d entries at d = 512 (the products and
# the bytes read shrink alike) while each band is still one wide product.
WHITEN_BAND_ROWS = 64
# Models per task of the fused full Gaussian density: 32 queries' whitened residuals of a
# band then take 32 x 64 x 64 floats (512 KiB), in L2.
FUSED_WHITEN_MODELS = 64
# Threads that share a product (`set_scoring_threads`); None: torch.get_num_threads().
_scoring_threads: int | None = None


def set_scoring_threads(threads: int | None) -> None:
    """Threads the kernels' products use, apart from torch's own count; None restores it.

    A Ray actor with a fraction of a CPU gets OMP_NUM_THREADS=1, and torch's small
    reductions are best left there (OpenMP's barriers cost milliseconds on a busy VM), while
    the products, which stream the tables, run on Python threads that share blocks evenly.
    """
    global _scoring_threads
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1 or None, got {threads}")
    _scoring_threads = threads


def get_scoring_threads() -> int | None:
    """What `set_scoring_threads` last set; None: torch.get_num_threads()."""
    return _scoring_threads


# The tables each method reads. Tables built for some methods only (`build_for`) hold these
# and leave the others empty; the bytes they occupy are what a query must stream from memory.
TABLES_READ: dict[str, tuple[str, ...]] = {
    "first_moment": ("means_unit",),
    "first_second_moment": ("means", "second_proj", "residuals"),
    "first_second_moment_full": ("means", "full_second"),
    "gaussian_density": (
        "means",
        "means_sqnorm",
        "gauss_proj",
        "gauss_proj_mean",
        "gauss_scale",
        "gauss_const",
    ),
    "gaussian_density_full": ("full_whiten", "full_whiten_mean", "full_const"),
    "monte_carlo": ("reservoir", "reservoir_log_count", "reservoir_mask"),
}
_FULL_TABLES = ("full_second", "full_whiten", "full_whiten_mean", "full_const")


def _tensor(array: np.ndarray, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    # Arrays read from Arrow are read-only views, which torch refuses to share; a writable
    # contiguous copy is made only for those.
    return torch.as_tensor(np.require(array, requirements=["C", "W"]), device=device, dtype=dtype)


@dataclass(frozen=True)
class ScoringTables:
    """Tensors derived once from a shard's statistics, laid out for the kernels.

    The low-rank Gaussian uses C = V diag(λ) Vᵀ + sI with s = σ² + ε, whose inverse and log
    determinant have closed forms (Woodbury):
        C⁻¹ = (I − V diag(λ / (λ + s)) Vᵀ) / s,  log|C| = Σ log(λ + s) + (d − r) log s.
    `gauss_proj` stores the rows of V scaled by sqrt(λ / (λ + s)), so the Mahalanobis term is
    (‖z − μ‖² − ‖U z − U μ‖²) / s, two matrix products for all models at once.

    The full second-moment term q̃ᵀΣq̃ = Σᵢ Σᵢᵢ q̃ᵢ² + 2 Σᵢ<ⱼ Σᵢⱼ q̃ᵢ q̃ⱼ needs Σ's upper triangle
    only: `full_second` holds it with the off-diagonal entries doubled (`_upper_triangle`), and
    the query side is the matching entries of q̃q̃ᵀ, so one product over d(d + 1)/2 columns
    gives the term: half the bytes and operations of Σq̃ followed by a dot product.

    `means` and `reservoir` may share memory with the statistics they came from (no copy when
    the dtype and device already match); nothing writes to either.
    """

    num_models: int
    dim: int
    rank: int
    tau: float
    means: torch.Tensor  # (n, d)
    means_sqnorm: torch.Tensor  # (n,)
    means_unit: torch.Tensor  # (n, d), μ / ‖μ‖
    second_proj: torch.Tensor  # (n * r, d), rows of V scaled by sqrt(λ)
    residuals: torch.Tensor  # (n,) σ²
    gauss_proj: torch.Tensor  # (n * r, d), rows of V scaled by sqrt(λ / (λ + s))
    gauss_proj_mean: torch.Tensor  # (n, r), U μ
    gauss_scale: torch.Tensor  # (n,) s = σ² + ε
    gauss_const: torch.Tensor  # (n,) −½ (d log 2π + log|C|)
    reservoir: torch.Tensor  # (n, m, d)
    reservoir_log_count: torch.Tensor  # (n,) log of the valid rows, −inf where there are none
    reservoir_mask: torch.Tensor  # (n, m) bool, True on valid rows
    full_second: torch.Tensor | None  # (n, d(d + 1)/2) Σ's upper triangle, off-diagonal x 2
    full_whiten: torch.Tensor | None  # L⁻¹ with L Lᵀ = Σ + εI, in bands (`whiten_bands`)
    full_whiten_mean: torch.Tensor | None  # (n, d) L⁻¹ μ
    full_const: torch.Tensor | None  # (n,) −½ (d log 2π + log|Σ + εI|)
    methods: frozenset[str] | None = None  # the methods these tables serve; None: all of them

    @classmethod
    def build(
        cls,
        stats: ShardStats,
        eps: float,
        tau: float,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> "ScoringTables":
        """Derive the tables; constants are computed in float64 and then cast to `dtype`."""
        return cls.build_for(stats, METHODS, eps, tau, device, dtype)

    @classmethod
    def build_for(
        cls,
        stats: ShardStats,
        methods: Iterable[str],
        eps: float,
        tau: float,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> "ScoringTables":
        """Derive only the tables that `methods` read (TABLES_READ); the others stay empty.

        A collection too large for every table at once (1M models at r = 16 need 33 GB per
        projection) can still be scored by the methods whose tables fit; `score` refuses the
        others by name. Values equal those of `build`.
        """
        methods = frozenset(methods)
        unknown = methods - set(METHODS)
        if unknown:
            raise ValueError(
                f"unknown methods {sorted(unknown)}; expected some of {sorted(METHODS)}"
            )
        wanted = {name for method in methods for name in TABLES_READ[method]}
        device = torch.device(device)
        tables = _derive_tables(stats, wanted, eps, device, dtype)
        return cls(
            num_models=stats.num_models,
            dim=stats.dim,
            rank=stats.rank,
            tau=tau,
            methods=methods,
            **tables,
        )


def _derive_tables(
    stats: ShardStats, wanted: set[str], eps: float, device: torch.device, dtype: torch.dtype
) -> dict[str, torch.Tensor | None]:
    n, d, r = stats.num_models, stats.dim, stats.rank
    f64 = np.float64
    eigvals = stats.eigvals.astype(f64)
    residuals = stats.residuals.astype(f64)
    scale = residuals + eps
    logdet = np.log(eigvals + scale[:, None]).sum(axis=1) + (d - r) * np.log(scale)
    counts = stats.reservoir_counts
    with np.errstate(divide="ignore"):
        log_counts = np.log(counts.astype(f64))
    keep_full = stats.covs is not None

    def empty(shape: tuple[int, ...], name: str, kind: torch.dtype = dtype) -> torch.Tensor:
        shape = shape if name in wanted else (0,)
        if device.type == "cpu":
            # numpy asks Linux for transparent huge pages on large arrays, torch does not: the
            # blocked products ran ~5% faster over 2 MB pages (32 queries, 1M means).
            numpy_dtype = torch.empty((), dtype=kind).numpy().dtype
            return torch.from_numpy(np.empty(shape, dtype=numpy_dtype))
        return torch.empty(shape, dtype=kind, device=device)

    def direct(name: str, make: Callable[[], np.ndarray]) -> torch.Tensor:
        return _tensor(make(), device, dtype) if name in wanted else empty((0,), name)

    tables: dict[str, torch.Tensor | None] = dict(
        means=direct("means", lambda: stats.means),
        means_sqnorm=empty((n,), "means_sqnorm"),
        means_unit=empty((n, d), "means_unit"),
        second_proj=empty((n * r, d), "second_proj"),
        residuals=direct("residuals", lambda: residuals),
        gauss_proj=empty((n * r, d), "gauss_proj"),
        gauss_proj_mean=empty((n, r), "gauss_proj_mean"),
        gauss_scale=direct("gauss_scale", lambda: scale),
        gauss_const=direct("gauss_const", lambda: -0.5 * (d * math.log(2 * math.pi) + logdet)),
        reservoir=direct("reservoir", lambda: stats.reservoir),
        reservoir_log_count=direct("reservoir_log_count", lambda: log_counts),
        reservoir_mask=torch.as_tensor(
            np.arange(stats.reservoir.shape[1])[None, :] < counts[:, None], device=device
        )
        if "reservoir_mask" in wanted
        else empty((0,), "reservoir_mask", torch.bool),
        full_second=empty((n, d * (d + 1) // 2), "full_second") if keep_full else None,
        full_whiten=empty((n * packed_whiten_elements(d),), "full_whiten") if keep_full else None,
        full_whiten_mean=empty((n, d), "full_whiten_mean") if keep_full else None,
        full_const=empty((n,), "full_const") if keep_full else None,
    )
    derived = {
        name
        for name, table in tables.items()
        if name in wanted and table is not None and name not in _DIRECT_TABLES
    }
    full = derived & set(_FULL_TABLES)
    step = max(1, BUILD_BLOCK_ELEMENTS // (d * max(r, 1, d if full else 1)))
    for start in range(0, n, step) if derived else ():
        rows = slice(start, min(start + step, n))
        _fill_lowrank_chunk(stats, rows, scale, derived, tables)
        if full:
            _fill_full_chunk(stats, rows, eps, derived, tables)
    return tables


_DIRECT_TABLES = (
    "means",
    "residuals",
    "gauss_scale",
    "gauss_const",
    "reservoir",
    "reservoir_log_count",
    "reservoir_mask",
)


def _fill_lowrank_chunk(
    stats: ShardStats,
    rows: slice,
    scale: np.ndarray,
    names: set[str],
    tables: dict[str, torch.Tensor | None],
) -> None:
    """Write the mean and low-rank tables of models `rows`, computed in float64."""
    r, d = stats.rank, stats.dim
    flat = slice(rows.start * r, rows.stop * r)
    means = stats.means[rows].astype(np.float64)
    eigvals = stats.eigvals[rows].astype(np.float64)
    eigvecs = stats.eigvecs[rows].astype(np.float64)

    def put(name: str, where: slice, make: Callable[[], np.ndarray]) -> None:
        if name in names:
            tables[name][where] = torch.from_numpy(np.ascontiguousarray(make()))

    put("means_sqnorm", rows, lambda: (means**2).sum(axis=1))
    norms = np.linalg.norm(means, axis=1, keepdims=True)
    put("means_unit", rows, lambda: means / np.maximum(norms, 1e-12))
    put("second_proj", flat, lambda: (eigvecs * np.sqrt(eigvals)[:, :, None]).reshape(-1, d))
    if names & {"gauss_proj", "gauss_proj_mean"}:
        shrink = np.sqrt(eigvals / (eigvals + scale[rows, None]))
        gauss_proj = eigvecs * shrink[:, :, None]
        put("gauss_proj", flat, lambda: gauss_proj.reshape(-1, d))
        put("gauss_proj_mean", rows, lambda: np.einsum("nrd,nd->nr", gauss_proj, means))


def _fill_full_chunk(
    stats: ShardStats,
    rows: slice,
    eps: float,
    names: set[str],
    tables: dict[str, torch.Tensor | None],
) -> None:
    """Write the full-covariance tables of models `rows`, computed in float64.

    Σ's weighted upper triangle, and the whitening: Cholesky and triangular inverse.
    """
    d = stats.dim
    covs = torch.from_numpy(stats.covs[rows].astype(np.float64))
    if "full_second" in names:
        upper_rows, upper_cols, weights = _upper_triangle(d)
        both = covs + covs.transpose(1, 2)
        tables["full_second"][rows] = both[:, upper_rows, upper_cols] * weights
    if not names & {"full_whiten", "full_whiten_mean", "full_const"}:
        return
    # torch's batched Cholesky and triangular solve rather than numpy's: numpy's OpenBLAS
    # LAPACK ran 10x slower with two threads on the busy 2-core machine, and a triangular
    # solve is half the work of a general inverse.
    chol = torch.linalg.cholesky(covs + eps * torch.eye(d, dtype=torch.float64))
    eye = torch.eye(d, dtype=torch.float64).expand_as(chol)
    whiten = torch.linalg.solve_triangular(chol, eye, upper=False)
    logdet = 2 * torch.log(torch.diagonal(chol, dim1=1, dim2=2)).sum(dim=1)
    if "full_whiten" in names:
        for first, last, band in whiten_bands(tables["full_whiten"], stats.num_models, d):
            height = last - first
            band[rows.start * height : rows.stop * height] = whiten[:, first:last, :last].reshape(
                -1, last
            )
    if "full_whiten_mean" in names:
        means = torch.from_numpy(stats.means[rows].astype(np.float64))
        tables["full_whiten_mean"][rows] = torch.einsum("nij,nj->ni", whiten, means)
    if "full_const" in names:
        tables["full_const"][rows] = -0.5 * (d * math.log(2 * math.pi) + logdet)


def _band_rows(dim: int) -> list[tuple[int, int]]:
    return [(i, min(i + WHITEN_BAND_ROWS, dim)) for i in range(0, dim, WHITEN_BAND_ROWS)]


def packed_whiten_elements(dim: int) -> int:
    """Elements of one model's L⁻¹ as stored: each band of rows up to its last diagonal."""
    return sum((last - first) * last for first, last in _band_rows(dim))


def whiten_bands(
    packed: torch.Tensor, num_models: int, dim: int
) -> list[tuple[int, int, torch.Tensor]]:
    """Views of the stored L⁻¹ of every model: per band (first row, last row + 1, table).

    Band rows [first, last) of L⁻¹ are zero past column last − 1, so a band is kept as a
    (num_models · (last − first), last) table: model i's rows come at i · (last − first).
    Bands follow each other in `packed`, each for all the models.
    """
    views, offset = [], 0
    for first, last in _band_rows(dim):
        size = num_models * (last - first) * last
        views.append((first, last, packed[offset : offset + size].view(-1, last)))
        offset += size
    return views


def _unit(queries: torch.Tensor) -> torch.Tensor:
    return queries / queries.norm(dim=1, keepdim=True).clamp_min(1e-12)


def _model_blocks(num_models: int, num_queries: int, width: int) -> list[slice]:
    per_block = max(1, MAX_BLOCK_ELEMENTS // max(1, num_queries * width))
    return [slice(i, min(i + per_block, num_models)) for i in range(0, num_models, per_block)]


def _matmul_nt(block: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """block @ tableᵀ, (q, w) x (rows, w) -> (q, rows): the product every kernel spends its time in.

    On the CPU the table's rows are shared by `set_scoring_threads` threads (default: torch's
    count), a block of rows per call, each call on one core:
    - up to DOT_PASS_MAX_QUERIES queries: numpy's dot loop, one pass per query over a block
      (it streams ~20% faster per core than OpenBLAS's sgemv), or for rows wider than
      WIDE_ROW_ELEMENTS torch's matrix-vector product;
    - more queries in float32: oneDNN's inner product (torch's `mkldnn._linear_pointwise`),
      table rows x queries; on the 2-core EPYC it ran 32 queries at 94 GFLOPS per core on
      cache-resident rows, against 67-84 for OpenBLAS and 72-78 for torch's MKL, which takes
      generic code paths on AMD CPUs;
    - otherwise (float64, or a torch without oneDNN): OpenBLAS, table rows x the queries'
      transpose, at 84 GFLOPS per core against 56 the other way round.
    No library's own worker threads are used: OpenBLAS's spin between calls and starve
    torch's OpenMP threads (8 ms lost per call on 2 cores), and fixed shares stall when a VM
    thread loses its core. Elsewhere (small tables, CUDA, gradients, other dtypes) it is torch's
    matmul.
    """
    if (
        block.device.type != "cpu"
        or block.dtype not in (torch.float32, torch.float64)
        or block.dtype != table.dtype
        or block.shape[0] == 0
        or table.shape[0] == 0
        or block.requires_grad
        or table.requires_grad
        or table.numel() < SMALL_TABLE_ELEMENTS
    ):
        return block @ table.T
    left, right = block.numpy(), table.numpy()
    queries = left.shape[0]
    rows, width = right.shape
    out = np.empty((queries, rows), dtype=left.dtype)
    threads = _scoring_threads or max(1, torch.get_num_threads())
    workers = threads if right.size >= PARALLEL_MATMUL_MIN_ELEMENTS else 1
    use_onednn = _uses_onednn(block)
    if use_onednn:
        step_elements = ONEDNN_BLOCK_ELEMENTS
    elif queries == 1:
        step_elements = MATVEC_BLOCK_ELEMENTS
    else:
        step_elements = MATMUL_BLOCK_ELEMENTS
    step = max(1, step_elements // width)
    if use_onednn and width > WIDE_ROW_ELEMENTS:
        # On wide rows a block of a few rows re-reads the whole query block from memory:
        # 32 queries over 10K rows of 131,328 took 620 ms in blocks of 15 rows, 427 in 256.
        step = max(step, min(ONEDNN_WIDE_MIN_ROWS, -(-rows // (2 * workers))))
    # Threads take blocks from one shared sequence rather than fixed shares: on a shared VM a
    # thread can lose its core for milliseconds, and with fixed shares the product then waits
    # for its share alone (32 queries ran 1.4x faster this way on the busy 2-core machine).
    # Taking the next block is atomic under the GIL; the products release it.
    starts = iter(range(0, rows, step))
    left_t = np.ascontiguousarray(left.T)
    weights = block.contiguous()
    out_rows = torch.from_numpy(out)

    def multiply() -> None:
        if use_onednn:
            with _one_openmp_thread():
                for start in starts:
                    cols = slice(start, min(start + step, rows))
                    out[:, cols] = _onednn_rows_by_queries(table[cols], weights).numpy().T
            return
        if queries <= DOT_PASS_MAX_QUERIES and width > WIDE_ROW_ELEMENTS:
            with _one_openmp_thread(), torch.inference_mode():
                for start in starts:
                    cols = slice(start, min(start + step, rows))
                    for i in range(queries):
                        torch.mv(table[cols], weights[i], out=out_rows[i, cols])
            return
        # OpenBLAS writes a (rows, q) block into a buffer of this thread's, transposed into
        # place while cache-hot.
        turned = None if queries <= DOT_PASS_MAX_QUERIES else np.empty((step, queries), left.dtype)
        for start in starts:
            cols = slice(start, min(start + step, rows))
            if turned is None:
                for i in range(queries):
                    np.vecdot(right[cols], left[i], out=out[i, cols])
            else:
                part = turned[: cols.stop - cols.start]
                np.matmul(right[cols], left_t, out=part)
                out[:, cols] = part.T

    _pin_numpy_blas_to_one_thread()
    others = [_blas_executor(workers).submit(multiply) for _ in range(workers - 1)]
    # The calling thread multiplies too: one thread fewer to wake.
    multiply()
    for done in others:
        done.result()
    return out_rows


def _uses_onednn(block: torch.Tensor) -> bool:
    """Whether products of this query block go to oneDNN (see `_matmul_nt`)."""
    return (
        block.device.type == "cpu"
        and block.dtype == torch.float32
        and not block.requires_grad
        and block.shape[0] > DOT_PASS_MAX_QUERIES
        and _onednn_available()
    )


def _onednn_rows_by_queries(rows: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    """rows @ queriesᵀ, (n, w) x (q, w) -> (n, q), by oneDNN in float32 (no reduced precision)."""
    return torch.ops.mkldnn._linear_pointwise(rows, queries, None, "none", [], "")


@functools.cache
def _onednn_available() -> bool:
    """Whether torch's oneDNN inner product runs here and gives numpy's answer on a small case."""
    if not torch.backends.mkldnn.is_available():
        return False
    rows = torch.arange(24, dtype=torch.float32).view(6, 4)
    queries = torch.linspace(-1, 1, 20, dtype=torch.float32).view(5, 4)
    try:
        got = _onednn_rows_by_queries(rows, queries)
    except (AttributeError, RuntimeError) as err:
        logger.info("oneDNN products unavailable (%s); using OpenBLAS", err)
        return False
    expected = rows.numpy().astype(np.float64) @ queries.numpy().astype(np.float64).T
    return bool(np.allclose(got.numpy(), expected, rtol=1e-6, atol=1e-5))


@functools.cache
def _openmp_runtimes() -> tuple:
    from threadpoolctl import ThreadpoolController

    return tuple(c for c in ThreadpoolController().lib_controllers if c.user_api == "openmp")


@contextlib.contextmanager
def _one_openmp_thread() -> Iterator[None]:
    """The calling thread's OpenMP regions (oneDNN's) run on that thread alone, then as before.

    OpenMP's thread count is a per-thread setting: this changes no other thread's.
    """
    runtimes = _openmp_runtimes()
    before = [runtime.get_num_threads() for runtime in runtimes]
    for runtime in runtimes:
        runtime.set_num_threads(1)
    try:
        yield
    finally:
        for runtime, count in zip(runtimes, before, strict=True):
            runtime.set_num_threads(count)


@functools.cache
def _pin_numpy_blas_to_one_thread() -> None:
    # numpy's OpenBLAS only: scipy's and torch's libraries keep their settings.
    from threadpoolctl import ThreadpoolController

    for library in ThreadpoolController().lib_controllers:
        if library.internal_api == "openblas" and "numpy" in library.filepath:
            library.set_num_threads(1)
            logger.debug("numpy's OpenBLAS at %s set to one thread", library.filepath)


_executors: dict[int, ThreadPoolExecutor] = {}
_executors_lock = threading.Lock()


def _blas_executor(workers: int) -> ThreadPoolExecutor:
    """A pool of the threads that multiply beside the calling thread."""
    with _executors_lock:
        if workers not in _executors:
            _executors[workers] = ThreadPoolExecutor(
                max(1, workers - 1), thread_name_prefix="scoring-blas"
            )
        return _executors[workers]


_Item = TypeVar("_Item")
_Result = TypeVar("_Result")


def map_in_scoring_threads(work: Callable[[_Item], _Result], items: list[_Item]) -> list[_Result]:
    """[work(item) for item in items], shared by the scoring threads (`set_scoring_threads`).

    For per-query work after a block is scored (top-k, normalisers), whose numpy and torch
    calls release the GIL: a shard's 32 answers over 1M models take one thread 40 ms.
    `work` must not itself score: the threads it would hand products to are busy with it.
    """
    threads = min(len(items), _scoring_threads or max(1, torch.get_num_threads()))
    if threads <= 1:
        return [work(item) for item in items]
    results: list[_Result | None] = [None] * len(items)
    positions = iter(range(len(items)))

    def run() -> None:
        for i in positions:
            results[i] = work(items[i])

    others = [_blas_executor(threads).submit(run) for _ in range(threads - 1)]
    try:
        run()
    finally:
        # Even when `work` raised here, no thread is left working once this returns.
        for done in others:
            done.exception()
    for done in others:
        done.result()
    return results  # type: ignore[return-value]


def score_first_moment(t: ScoringTables, queries: torch.Tensor) -> torch.Tensor:
    """cos(q, μ)."""
    return _matmul_nt(_unit(queries), t.means_unit)


def score_first_second_moment(t: ScoringTables, queries: torch.Tensor) -> torch.Tensor:
    """μᵀq̃/τ + q̃ᵀΣq̃/(2τ²) with the low-rank Σ: log E[exp(hᵀq̃/τ)] for h ~ N(μ, Σ)."""
    unit = _unit(queries)
    q, r = unit.shape[0], t.rank
    unit_sqnorm = unit.square().sum(dim=1, keepdim=True)
    out = _matmul_nt(unit, t.means) / t.tau
    for block in _model_blocks(t.num_models, q, r):
        width = block.stop - block.start
        projected = _matmul_nt(unit, t.second_proj[block.start * r : block.stop * r])
        quad = projected.view(q, width, r).square_().sum(dim=2)
        quad += t.residuals[block] * unit_sqnorm
        out[:, block] += quad / (2 * t.tau**2)
    return out


def score_first_second_moment_full(t: ScoringTables, queries: torch.Tensor) -> torch.Tensor:
    """As `score_first_second_moment` with the full covariance, from its upper triangle."""
    second = _require_full(t.full_second, "first_second_moment_full")
    unit = _unit(queries)
    out = _matmul_nt(unit, t.means) / t.tau
    out += _matmul_nt(_upper_outer(unit), second) / (2 * t.tau**2)
    return out


def _upper_outer(unit: torch.Tensor) -> torch.Tensor:
    """(q, d(d + 1)/2): the upper triangle of every query's q̃q̃ᵀ, row by row.

    A few queries gather both factors; more take row i of the triangle, q̃ᵢ q̃[i:], as one
    product per row (32 queries: 5.5 ms, against 28 to gather and 31 to index the full
    outer products).
    """
    d = unit.shape[1]
    if len(unit) <= DOT_PASS_MAX_QUERIES:
        rows, cols, _ = _upper_triangle(d)
        device = unit.device
        return unit.index_select(1, rows.to(device)) * unit.index_select(1, cols.to(device))
    return torch.cat([unit[:, i : i + 1] * unit[:, i:] for i in range(d)], dim=1)


@functools.cache
def _upper_triangle(dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows and columns of a (dim, dim) matrix's upper triangle (row by row), and weights.

    The upper triangle of Σ + Σᵀ, weighted ½ on the diagonal and 1 off it, dotted with that of
    q̃q̃ᵀ is q̃ᵀΣq̃ (for any Σ; a covariance's off-diagonal entries are then simply doubled).
    """
    rows, cols = np.triu_indices(dim)
    weights = np.where(rows == cols, 0.5, 1.0)
    return torch.from_numpy(rows), torch.from_numpy(cols), torch.from_numpy(weights)


def score_gaussian_density(t: ScoringTables, queries: torch.Tensor) -> torch.Tensor:
    """log N(z; μ, V diag(λ) Vᵀ + (σ² + ε)I) on the raw query, in the Woodbury form."""
    q, r = queries.shape[0], t.rank
    out = (
        queries.square().sum(dim=1, keepdim=True)
        - 2 * _matmul_nt(queries, t.means)
        + t.means_sqnorm
    )
    for block in _model_blocks(t.num_models, q, r):
        width = block.stop - block.start
        projected = _matmul_nt(queries, t.gauss_proj[block.start * r : block.stop * r])
        projected = projected.view(q, width, r).sub_(t.gauss_proj_mean[block])
        mahalanobis = (out[:, block] - projected.square_().sum(dim=2)) / t.gauss_scale[block]
        out[:, block] = t.gauss_const[block] - 0.5 * mahalanobis
    return out


def score_gaussian_density_full(t: ScoringTables, queries: torch.Tensor) -> torch.Tensor:
    """log N(z; μ, Σ + εI) with the full covariance, through the whitening L⁻¹.

    ‖L⁻¹(z − μ)‖² summed band by band: rows [first, last) of L⁻¹ need z[:last] only.
    """
    bands = whiten_bands(_require_full(t.full_whiten, "gaussian_density_full"), t.num_models, t.dim)
    q, d = queries.shape
    out = torch.empty(q, t.num_models, dtype=queries.dtype, device=queries.device)
    if _uses_onednn(queries):
        _gaussian_density_full_fused(t, bands, queries, out)
        return out
    for block in _model_blocks(t.num_models, q, d):
        mahalanobis = torch.zeros(q, block.stop - block.start, dtype=out.dtype, device=out.device)
        for first, last, band in bands:
            height = last - first
            white = _matmul_nt(
                queries[:, :last], band[block.start * height : block.stop * height]
            ).view(q, -1, height)
            white -= t.full_whiten_mean[block, first:last]
            mahalanobis += white.square_().sum(dim=2)
        out[:, block] = t.full_const[block] - 0.5 * mahalanobis
    return out


def _gaussian_density_full_fused(
    t: ScoringTables,
    bands: list[tuple[int, int, torch.Tensor]],
    queries: torch.Tensor,
    out: torch.Tensor,
) -> None:
    """The whitened residuals reduced where they are made, a few models per task.

    Each scoring thread takes FUSED_WHITEN_MODELS models at a time and, band by band, does
    their product on its own core and reduces it while it is in cache. Products of whole
    model blocks followed by separate passes wrote and re-read q x n x d floats (655 MB for
    32 queries x 10K models) through torch's one thread, more time than the products.
    """
    starts = range(0, t.num_models, FUSED_WHITEN_MODELS)
    # Each band multiplies the queries' leading columns, copied contiguous once for all tasks.
    heads = [queries[:, :last].contiguous() for _, last, _ in bands]

    def work(start: int) -> None:
        models = slice(start, min(start + FUSED_WHITEN_MODELS, t.num_models))
        with _one_openmp_thread(), torch.inference_mode():
            mahalanobis = torch.zeros(models.stop - models.start, len(queries), dtype=out.dtype)
            for (first, last, band), head in zip(bands, heads, strict=True):
                height = last - first
                rows = band[models.start * height : models.stop * height]
                white = _onednn_rows_by_queries(rows, head)
                white = white.view(-1, height, len(queries))
                white -= t.full_whiten_mean[models, first:last, None]
                mahalanobis += white.square_().sum(dim=1)
            out[:, models] = (t.full_const[models, None] - 0.5 * mahalanobis).T

    map_in_scoring_threads(work, list(starts))


def score_monte_carlo(t: ScoringTables, queries: torch.Tensor) -> torch.Tensor:
    """log mean_j exp(x_j · q̃ / τ) over each model's stored sample features x_j."""
    scaled = _unit(queries) / t.tau  # the products are then the logits themselves
    q, d = scaled.shape
    m = t.reservoir.shape[1]
    out = torch.empty(q, t.num_models, dtype=scaled.dtype, device=scaled.device)
    for block in _model_blocks(t.num_models, q, m):
        logits = _matmul_nt(scaled, t.reservoir[block].reshape(-1, d)).view(q, -1, m)
        valid = t.reservoir_mask[block]
        if not bool(valid.all()):  # reservoirs are full but for models with few samples
            logits.masked_fill_(~valid, float("-inf"))
        # One query's log-sum-exp per call, shared by the scoring threads: on one thread
        # these passes took as long as the products (32 queries x 10K models, m = 128).
        sums = map_in_scoring_threads(_logsumexp_last, list(logits))
        out[:, block] = torch.stack(sums) - t.reservoir_log_count[block]
    return out


def _logsumexp_last(values: torch.Tensor) -> torch.Tensor:
    # Inference mode is per thread, and this runs on the scoring threads.
    with torch.inference_mode():
        return torch.logsumexp(values, dim=-1)


def _require_full(tensor: torch.Tensor | None, method: str) -> torch.Tensor:
    if tensor is None:
        raise ValueError(
            f"method {method!r} needs full covariances, which this index does not keep; "
            "use the low-rank method or re-index with a larger full_covariance_max_bytes"
        )
    return tensor


Kernel = Callable[[ScoringTables, torch.Tensor], torch.Tensor]

METHODS: dict[str, Kernel] = {
    "first_moment": score_first_moment,
    "first_second_moment": score_first_second_moment,
    "first_second_moment_full": score_first_second_moment_full,
    "gaussian_density": score_gaussian_density,
    "gaussian_density_full": score_gaussian_density_full,
    "monte_carlo": score_monte_carlo,
}
assert set(METHODS) == set(TABLES_READ), "every method lists the tables it reads"


def probability_temperature(method: str, tau: float) -> float:
    """The temperature that turns a method's scores into log-likelihoods up to a constant.

    Cosine similarities need 1/τ, as CLIP's logits do; every other score is already a
    log-likelihood (or its closed-form surrogate), so p(model | q) = softmax(score / T).
    """
    return tau if method == "first_moment" else 1.0


def score(tables: ScoringTables, method: str, queries: torch.Tensor) -> torch.Tensor:
    """Scores (q, n) of a (q, d) query block by `method`; NaN (degenerate model) becomes −inf."""
    try:
        kernel = METHODS[method]
    except KeyError:
        raise ValueError(f"unknown method {method!r}; expected one of {sorted(METHODS)}") from None
    if tables.methods is not None and method not in tables.methods:
        raise ValueError(
            f"these tables were built for {sorted(tables.methods)}, not {method!r}; "
            "build them with ScoringTables.build (every method) or build_for including it"
        )
    if queries.ndim != 2 or queries.shape[1] != tables.dim:
        raise ValueError(f"queries must be (q, {tables.dim}), got {tuple(queries.shape)}")
    with torch.inference_mode():
        scores = kernel(tables, queries.to(tables.means.dtype))
        # A finite sum proves there is nothing to clean, reading the block once where the
        # fill reads and writes it. Kernels return fresh tensors, cleaned in place. (Not
        # nan_to_num_, which also turns ±inf into the largest finite floats.)
        if not torch.isfinite(scores.sum()):
            scores.masked_fill_(scores.isnan(), float("-inf"))
        return scores

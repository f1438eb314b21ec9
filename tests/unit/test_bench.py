"""`modelseek bench` on a tiny collection: every method measured and reported, no timing asserts."""

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from modelseek import bench
from modelseek.cli import main
from shards.scoring import METHODS, ScoringTables, score

HAS_FAISS = importlib.util.find_spec("faiss") is not None
TINY = dict(
    sizes=(133,),
    rank=4,
    batches=(1, 3),
    repeats=1,
    reservoir=8,
    loop_sizes=(133,),
    bandwidth_bytes=16 * 1024**2,
    faiss=HAS_FAISS,
)


@pytest.fixture(scope="module")
def tiny_report() -> bench.BenchReport:
    return bench.run_bench(bench.BenchConfig(**TINY), command="modelseek bench (test)")


def test_tiny_run_measures_every_method_at_every_batch(tiny_report):
    measured = {(c.method, c.batch) for c in tiny_report.cases}
    assert measured == {(m, b) for m in METHODS for b in (1, 3)}
    assert not tiny_report.skipped
    for case in tiny_report.cases:
        assert case.size == 133 and case.repeats == 1
        assert math.isfinite(case.seconds) and case.seconds > 0
        assert case.bytes_read > 0
        # A slow loop pass stops at the loop budget and is extrapolated from the models done.
        assert case.loop_s > 0 and 1 <= case.loop_models <= 133
        assert (case.faiss_s is not None) == (HAS_FAISS and case.method == "first_moment")
    assert tiny_report.bandwidth > 0
    assert tiny_report.wall_s > 0 and tiny_report.peak_rss_bytes > 0
    # Only tables past the threshold (full covariances: 139 MB) take a probe before each sample.
    for case in tiny_report.cases:
        paired = case.bytes_read >= bench.PAIRED_PROBE_MIN_BYTES
        assert (case.paired_fraction is not None) == paired, case.method
    assert all(case.product_rate > 0 and case.flops > 0 for case in tiny_report.cases)


def test_cases_past_the_probe_threshold_pair_each_sample_with_a_bandwidth_probe(monkeypatch):
    monkeypatch.setattr(bench, "PAIRED_PROBE_MIN_BYTES", 1)
    cfg = bench.BenchConfig(**{**TINY, "methods": ("first_moment",), "repeats": 3})
    report = bench.run_bench(cfg, command="modelseek bench (test)")
    # 7 probes at the start and at the end, 3 before the method, one before each sample.
    samples = sum(case.repeats for case in report.cases)
    assert len(report.bandwidth_samples) == 7 + 7 + bench.BANDWIDTH_PROBE_REPEATS + samples
    for case in report.cases:
        assert case.paired_fraction is not None and case.paired_fraction > 0
        assert bench.bound_fraction(case) == case.paired_fraction


def test_product_flops_count_the_multiply_adds_of_each_method():
    cfg = bench.BenchConfig(rank=4, reservoir=8)
    n, d, q = 10, bench.DIM, 3
    assert bench.product_flops("first_moment", n, cfg, q) == 2 * n * d * q
    assert bench.product_flops("gaussian_density", n, cfg, q) == 2 * (n * d + n * 4 * d) * q
    assert bench.product_flops("gaussian_density_full", n, cfg, q) == 2 * n * 147_456 * q
    assert bench.product_flops("monte_carlo", n, cfg, q) == 2 * n * 8 * d * q


def test_bytes_read_are_the_tables_each_method_streams(tiny_report):
    n, d, r, m = 133, bench.DIM, 4, 8
    expected = {
        "first_moment": n * d * 4,
        "first_second_moment": (n * d + n * r * d + n) * 4,
        # Σ's upper triangle: d(d + 1)/2 of its d² entries.
        "first_second_moment_full": (n * d + n * d * (d + 1) // 2) * 4,
        "gaussian_density": (n * d + n + n * r * d + n * r + 2 * n) * 4,
        # L⁻¹ kept in bands of 64 rows, each up to its last diagonal: 147,456 of 512².
        "gaussian_density_full": (n * 147_456 + n * d + n) * 4,
        "monte_carlo": n * m * d * 4 + n * 4 + n * m,
    }
    for case in tiny_report.cases:
        assert case.bytes_read == expected[case.method], case.method


def test_report_names_every_method_the_machine_and_the_targets(tiny_report):
    text = bench.render_markdown(tiny_report)
    for method in METHODS:
        assert f"| {method} |" in text
    assert tiny_report.machine["cpu"] in text
    assert "modelseek bench (test)" in text
    assert "## Targets (issue 3)" in text
    # The run has no 1M, 10K or 100K models, so no target can be judged.
    assert "PASS" not in text and "MISS" not in text


@pytest.mark.parametrize("method", sorted(METHODS))
def test_per_model_loop_computes_the_same_scores_as_the_kernels(method, tmp_path):
    cfg = bench.BenchConfig(rank=4, reservoir=8)
    stats = bench.Collection(20, cfg, tmp_path).stats_for(method)
    queries = bench.simulate_queries(3, seed=1)
    tables = ScoringTables.build_for(stats, [method], eps=cfg.eps, tau=cfg.tau)

    expected = score(tables, method, queries)
    got = bench.loop_scores(stats, method, queries, cfg.eps, cfg.tau)

    # float32 on both sides; scores reach a few thousand (1/τ² terms, log densities at d=512).
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())


def test_simulated_statistics_have_the_stated_shapes_and_spectra(tmp_path):
    cfg = bench.BenchConfig(rank=4, reservoir=8)
    collection = bench.Collection(6, cfg, tmp_path)
    full = collection.stats_for("gaussian_density_full")
    lowrank = collection.stats_for("gaussian_density")

    np.testing.assert_allclose(np.linalg.norm(full.means, axis=1), 1, rtol=1e-5)
    eigvals = np.linalg.eigvalsh(np.asarray(full.covs, dtype=np.float64))
    assert eigvals.min() > 1 - 2 * bench.COV_NOISE - 0.05
    assert eigvals.max() < 1 + 2 * bench.COV_NOISE + 0.05
    gram = np.einsum("nrd,nsd->nrs", lowrank.eigvecs, lowrank.eigvecs)
    np.testing.assert_allclose(gram, np.broadcast_to(np.eye(4), gram.shape), atol=1e-5)
    assert np.all(np.diff(lowrank.eigvals, axis=1) <= 0)


def test_methods_over_the_memory_budget_are_skipped_with_a_reason():
    cfg = bench.BenchConfig(**{**TINY, "memory_budget_bytes": 1})
    report = bench.run_bench(cfg, command="modelseek bench (test)")
    assert not report.cases
    assert {s.method for s in report.skipped} == set(METHODS)
    assert all("budget" in s.reason for s in report.skipped)


def test_only_the_methods_asked_for_are_timed_and_reported():
    cfg = bench.BenchConfig(**{**TINY, "methods": ("monte_carlo", "first_moment")})
    report = bench.run_bench(cfg, command="modelseek bench (test)")
    assert {c.method for c in report.cases} == {"first_moment", "monte_carlo"}
    text = bench.render_markdown(report)
    assert "| monte_carlo |" in text and "| gaussian_density |" not in text
    assert "--methods monte_carlo,first_moment" in bench.command_line(cfg, None)
    with pytest.raises(ValueError, match="--methods must name"):
        bench.run_bench(bench.BenchConfig(**{**TINY, "methods": ("cosine",)}), command="x")


def test_a_missing_faiss_is_named_before_anything_runs(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: None if name == "faiss" else real_find_spec(name)
    )
    with pytest.raises(ValueError, match=r"FAISS is not installed.*--no-faiss"):
        bench.run_bench(bench.BenchConfig(**{**TINY, "faiss": True}), command="x")
    assert bench.run_bench(
        bench.BenchConfig(**{**TINY, "faiss": False, "methods": ("first_moment",)}), command="x"
    ).cases


def test_sizes_accept_k_and_m_suffixes():
    assert bench.parse_sizes("133,10K,100k,1M") == (133, 10_000, 100_000, 1_000_000)
    with pytest.raises(Exception, match="optional K or M"):
        bench.parse_sizes("ten")


def test_cli_writes_the_report_it_prints(tmp_path: Path, capsys):
    out = tmp_path / "bench" / "RESULTS.md"
    argv = ["bench", "--sizes", "133", "--memory-gb", "0.000001", "--repeats", "1"]
    assert main([*argv, "--no-faiss", "--out", str(out)]) == 0

    written = out.read_text()
    assert written in capsys.readouterr().out
    assert "--sizes 133 " in written and f"--out {out}" in written


def test_loop_targets_out_of_reach_of_any_kernel_say_so():
    def case(loop_s: float, flops: float = 0.0) -> bench.Case:
        # 1 GB at 10 GB/s: no kernel can take under 0.1 s; products at 100 GFLOPS.
        return bench.Case(
            10_000, "monte_carlo", 1, 0, 0.2, 5, 10**9, 1e10, 0.0, None, None, loop_s,
            flops=flops, product_rate=1e11,
        )  # fmt: skip

    report = bench.BenchReport(config=bench.BenchConfig(), command="x", machine={})
    report.cases = [case(loop_s=5.0)]
    assert bench.loop_ceiling(report.cases[0]) == pytest.approx(50)
    target = next(t for t in bench.evaluate_targets(report) if t.name.startswith("monte_carlo"))
    assert target.passed is False and "ceiling 50x: out of reach" in target.measured
    report.cases = [case(loop_s=50.0)]
    target = next(t for t in bench.evaluate_targets(report) if t.name.startswith("monte_carlo"))
    assert target.passed is True and target.measured == "250x (ceiling 500x)"
    # 40 GFLOP of products take 0.4 s at 100 GFLOPS: the compute bound sets the ceiling.
    report.cases = [case(loop_s=50.0, flops=4e10)]
    assert bench.loop_ceiling(report.cases[0]) == pytest.approx(125)

"""Exact sharded top-k and the index storage: round trip, checksums, atomic publication."""

import json
import math

import numpy as np
import pytest
import torch

from shards import store
from shards.scoring import METHODS, ScoringTables, score
from shards.topk import Hit, logsumexp_scaled, merge_logsumexp, merge_topk, topk_rows
from tests.unit.shard_fixtures import random_shard


def brute_force(scores: np.ndarray, ids: list[str], k: int) -> list[list[str]]:
    """Sort every model by (−score, id) in plain Python."""
    return [
        [ids[j] for j in sorted(range(len(ids)), key=lambda j: (-row[j], ids[j]))[:k]]
        for row in scores
    ]


@pytest.mark.parametrize("method", sorted(METHODS))
def test_sharded_topk_equals_single_process_brute_force(method):
    stats = random_shard(num_models=37, dim=10, rank=3)
    queries = torch.as_tensor(np.random.default_rng(4).normal(size=(5, 10)), dtype=torch.float32)
    k = 7

    partials = [[] for _ in range(5)]
    for part in store.split_contiguous(stats.num_models, 4):
        shard = stats.select(np.arange(part.start, part.stop))
        scores = score(ScoringTables.build(shard, eps=1e-3, tau=0.05), method, queries)
        for qi, rows in enumerate(topk_rows(scores, k)):
            partials[qi].append([Hit(float(scores[qi, r]), shard.ids[r]) for r in rows])
    merged = [[h.model_id for h in merge_topk(p, k)] for p in partials]

    whole = score(ScoringTables.build(stats, eps=1e-3, tau=0.05), method, queries).numpy()
    assert merged == brute_force(whole, list(stats.ids), k)


def test_topk_breaks_ties_by_model_id_and_skips_minus_infinity():
    scores = torch.tensor([[1.0, 3.0, 3.0, float("-inf"), 3.0, 0.5]])
    assert topk_rows(scores, 3) == [[1, 2, 4]]
    assert topk_rows(scores, 10) == [[1, 2, 4, 0, 5]]


@pytest.mark.parametrize(("queries", "n"), [(3, 133), (32, 10_000), (2, 100_003)])
def test_topk_rows_of_a_block_equal_a_sort_of_each_row(queries, n):
    """Rows with and without ties at the k-th place, NaN, −inf and short rows in one block.

    The larger blocks take the block-wise selection, whose candidates must still be exact.
    """
    rng = np.random.default_rng(n)
    # Scores on a coarse grid tie often; a few rows are kept distinct.
    scores = np.round(rng.normal(size=(queries, n)) * 4) / 4
    scores[0] = rng.permutation(n)
    scores[1, ::2] = float("-inf")
    scores[1, 7] = float("nan")
    scores[-1, : n - 5] = float("-inf")
    k = 10
    got = topk_rows(torch.as_tensor(scores, dtype=torch.float32), k)

    for row, ranked in zip(scores.astype(np.float32), got, strict=True):
        valid = np.flatnonzero(np.isfinite(row))
        expected = valid[np.lexsort((valid, -row[valid]))][:k]
        assert ranked == expected.tolist()


def test_topk_with_mask_returns_k_allowed_models():
    scores = torch.arange(10, dtype=torch.float32)[None]
    allowed = torch.tensor([i % 2 == 0 for i in range(10)])
    assert topk_rows(scores, 3, allowed) == [[8, 6, 4]]


def test_merge_topk_orders_ties_across_shards_by_id():
    merged = merge_topk([[Hit(2.0, "b"), Hit(1.0, "d")], [Hit(2.0, "a"), Hit(1.0, "c")]], 3)
    assert [h.model_id for h in merged] == ["a", "b", "c"]


@pytest.mark.parametrize("n", [0, 1, 5, 100_003])
def test_logsumexp_scaled_equals_torch_in_float64_to_1e_7(monkeypatch, n):
    monkeypatch.setattr("shards.topk.LOGSUMEXP_CHUNK_ELEMENTS", 1000)
    scores = torch.as_tensor(np.random.default_rng(n).normal(size=n), dtype=torch.float32)
    scores[::7] = float("-inf")
    for temperature in (1.0, 0.01):
        expected = torch.logsumexp(scores.double() / temperature, dim=0).item()
        # The terms are float32; a relative error of 1e-7 in the normaliser is one of 1e-7
        # in every probability.
        assert logsumexp_scaled(scores, temperature) == pytest.approx(expected, abs=1e-7)
        assert logsumexp_scaled(scores.double(), temperature) == pytest.approx(expected, rel=1e-12)
    for special in (float("-inf"), float("inf")):
        assert logsumexp_scaled(torch.full((3,), special), 0.5) == special
    assert math.isnan(logsumexp_scaled(torch.tensor([1.0, float("nan")]), 0.5))
    doubles = scores.double()
    kept = doubles.clone()
    logsumexp_scaled(doubles, 0.01)
    assert torch.equal(doubles, kept)  # the row is read, never written


def test_merge_logsumexp_equals_logsumexp_of_all_scores():
    rng = np.random.default_rng(0)
    parts = [rng.normal(size=n) * 50 for n in (3, 5, 1)]
    expected = np.logaddexp.reduce(np.concatenate(parts))
    got = merge_logsumexp([float(np.logaddexp.reduce(p)) for p in parts] + [float("-inf")])
    assert got == pytest.approx(expected, rel=1e-12)


def write_two_shards(root, keep_full=True):
    stats = random_shard(num_models=9, keep_full=keep_full)
    parts = [stats.select(range(s.start, s.stop)) for s in store.split_contiguous(9, 2)]
    fields = {"feature_space": "fs/test", "encoder": "hermetic", "settings": {"seed": 0}}
    return stats, store.write_index(root, parts, fields)


@pytest.mark.parametrize("keep_full", [True, False])
def test_index_round_trip_preserves_statistics(tmp_path, keep_full):
    stats, manifest = write_two_shards(tmp_path, keep_full)

    loaded = store.read_manifest(tmp_path)
    shards = [store.load_shard(tmp_path, loaded, i) for i in range(len(loaded.shards))]

    assert loaded == manifest and loaded.num_models == 9 and len(loaded.shards) == 2
    assert sum((s.ids for s in shards), ()) == stats.ids
    np.testing.assert_array_equal(np.concatenate([s.means for s in shards]), stats.means)
    np.testing.assert_array_equal(np.concatenate([s.eigvecs for s in shards]), stats.eigvecs)
    np.testing.assert_array_equal(np.concatenate([s.reservoir for s in shards]), stats.reservoir)
    assert (shards[0].covs is None) == (not keep_full)
    assert shards[0].metadata[0] == stats.metadata[0]
    assert shards[1].thumbnails[-1] == stats.thumbnails[-1]
    for entry in manifest.shards:
        assert entry.file == store.shard_file_name(entry.sha256)


def test_shard_failing_its_checksum_is_refused_naming_the_file(tmp_path):
    _, manifest = write_two_shards(tmp_path)
    path = store.version_dir(tmp_path, manifest.version) / manifest.shards[1].file
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))

    with pytest.raises(store.StoreError, match=f"{path.name} fails its checksum"):
        store.load_shard(tmp_path, manifest, 1)


def test_crash_while_writing_leaves_previous_version_published(tmp_path, monkeypatch):
    _, first = write_two_shards(tmp_path)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(store, "_publish", crash)
    with pytest.raises(KeyboardInterrupt):
        write_two_shards(tmp_path)
    monkeypatch.undo()
    monkeypatch.setattr(store, "_write_shard", crash)
    with pytest.raises(KeyboardInterrupt):
        write_two_shards(tmp_path)

    assert store.read_current_version(tmp_path) == first.version
    assert store.read_manifest(tmp_path) == first
    leftovers = [p.name for p in (tmp_path / "versions").iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_old_versions_are_pruned_but_current_kept(tmp_path):
    for _ in range(5):
        _, manifest = write_two_shards(tmp_path)
    names = sorted(p.name for p in (tmp_path / "versions").iterdir())
    assert names == ["000003", "000004", "000005"] and manifest.version == "000005"


def test_manifest_records_the_temperature_and_older_ones_read_as_clips(tmp_path):
    stats = random_shard(num_models=4)
    fields = {"feature_space": "fs/test", "encoder": "lite", "temperature": 0.05, "settings": {}}
    manifest = store.write_index(tmp_path, [stats], fields)
    assert store.read_manifest(tmp_path).temperature == 0.05
    assert manifest.scoring_temperature(None) == 0.05 and manifest.scoring_temperature(0.2) == 0.2

    path = store.version_dir(tmp_path, manifest.version) / "manifest.json"
    older = json.loads(path.read_text())
    del older["temperature"]
    path.write_text(json.dumps(older))
    assert store.read_manifest(tmp_path).temperature == store.DEFAULT_TEMPERATURE == 0.01


def test_missing_index_and_bad_manifest_are_clear_errors(tmp_path):
    with pytest.raises(store.StoreError, match="no index at"):
        store.read_manifest(tmp_path)
    _, manifest = write_two_shards(tmp_path)
    path = store.version_dir(tmp_path, manifest.version) / "manifest.json"
    path.write_text(json.dumps({"format": "other"}))
    with pytest.raises(store.StoreError, match="format 'other'"):
        store.read_manifest(tmp_path)


def test_sharded_filtered_product_of_experts_equals_brute_force():
    from shards.filters import FilterIndex, Filters
    from shards.queries import Expert, poe_offset, score_experts
    from shards.topk import merge_logsumexp

    stats = random_shard(num_models=40, dim=10, rank=3)
    tagged = tuple(
        {**m, "tags": ["even" if i % 2 == 0 else "odd", f"r{i % 3}"]}
        for i, m in enumerate(stats.metadata)
    )
    stats = type(stats)(**{**stats.__dict__, "metadata": tagged})
    q = np.random.default_rng(8).normal(size=(2, 10)).astype(np.float32)
    experts = [Expert("first_moment", q[:1]), Expert("gaussian_density", q[1:], -0.4)]
    filters = Filters(tags_any=("even",), tags_none=("r0",))
    k = 6

    hits, expert_lse = [], []
    for part in store.split_contiguous(stats.num_models, 3):
        shard = stats.select(np.arange(part.start, part.stop))
        allowed = torch.as_tensor(FilterIndex(shard.metadata).mask(filters))
        result = score_experts(ScoringTables.build(shard, eps=1e-3, tau=0.05), experts, allowed)
        rows = topk_rows(result.scores[None], k)[0]
        hits.append([Hit(float(result.scores[r]), shard.ids[r]) for r in rows])
        expert_lse.append(result.expert_lse)
    offset = poe_offset(
        experts, [merge_logsumexp(list(col)) for col in zip(*expert_lse, strict=True)]
    )
    merged = [(h.model_id, h.score - offset) for h in merge_topk(hits, k)]

    allowed = torch.as_tensor(FilterIndex(stats.metadata).mask(filters))
    whole = score_experts(ScoringTables.build(stats, eps=1e-3, tau=0.05), experts, allowed)
    final = whole.scores.numpy() - poe_offset(experts, whole.expert_lse)
    expected = brute_force(final[None], list(stats.ids), k)[0]
    assert [m for m, _ in merged] == expected
    assert all("even" in stats.metadata[stats.ids.index(m)]["tags"] for m in expected)
    np.testing.assert_allclose(
        [s for _, s in merged], [final[stats.ids.index(m)] for m in expected], rtol=1e-5
    )

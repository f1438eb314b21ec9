"""Top-10 overlap between low-rank (Woodbury) and full-covariance Gaussian density rankings.

    python bench/lowrank_overlap.py --index ~/.modelseek/demo/index \
        --catalog ~/.modelseek/demo/catalog.yaml --per-model 10

Queries are fresh samples of every catalog model (a seed indexing never used), encoded in
the index's own feature space; the index must keep full covariances (small collections do).
"""

import argparse

import numpy as np
import torch

from modelseek.catalog import load_catalog
from modelseek.features import load_feature_space
from modelseek.sources import open_source
from shards import store
from shards.scoring import ScoringTables, score
from shards.stats import concat_shards

QUERY_SEED = 31_337


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", required=True)
    parser.add_argument("--catalog", required=True)
    parser.add_argument("--per-model", type=int, default=10)
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args()

    manifest = store.read_manifest(args.index)
    stats = concat_shards(
        [store.load_shard(args.index, manifest, i) for i in range(len(manifest.shards))]
    )
    if stats.covs is None:
        raise SystemExit("this index keeps no full covariances; nothing to compare")
    space = load_feature_space(manifest.encoder)
    catalog = load_catalog(args.catalog)
    images = [
        img
        for entry in catalog
        for img in open_source(entry, catalog.base_dir).load_chunk(0, args.per_model, QUERY_SEED)
    ]
    queries = torch.as_tensor(space.encode_images(images))
    tables = ScoringTables.build(stats, eps=1e-3, tau=0.01)
    k = min(args.k, stats.num_models)
    low = torch.topk(score(tables, "gaussian_density", queries), k).indices.numpy()
    full = torch.topk(score(tables, "gaussian_density_full", queries), k).indices.numpy()
    overlap = [len(set(a) & set(b)) / k for a, b in zip(low, full, strict=True)]
    top1 = np.mean(low[:, 0] == full[:, 0])
    print(
        f"{manifest.feature_space}, {stats.num_models} models, rank r = {stats.rank}, "
        f"{len(images)} image queries: top-{k} overlap {np.mean(overlap):.3f} "
        f"(min {np.min(overlap):.2f}), same top-1 {top1:.3f}"
    )


if __name__ == "__main__":
    main()

"""Diagnostics behind the notes of eval/RESULTS.md: why lite misses targets (no setting changed).

Run after `modelseek eval ZOO` (it reads the cached lite index):
    .venv/bin/python eval/diagnose.py /tmp/evalzoo-full
Each figure varies one thing against the reported protocol and says which; none of them
replaces a reported number.
"""

import json
import logging
import sys
from dataclasses import replace

import numpy as np
import torch

from modelseek.features import load_feature_space
from modelseek.protocol import (
    EvalConfig,
    build_image_queries,
    build_sketch_queries,
    build_text_queries,
    index_dir,
    load_index,
    load_zoo,
    rank_all,
    retrieval_metrics,
)
from shards.scoring import ScoringTables, score

logger = logging.getLogger(__name__)

# The temperature every space was scored with before each used its own: CLIP's.
CLIP_TAU = 0.01


def metrics_of(stats, tables, method, features, query_set, chosen=None):
    ranked = rank_all(score(tables, method, torch.from_numpy(features)))
    chosen = range(len(query_set)) if chosen is None else chosen
    rankings = [[stats.ids[j] for j in ranked[i]] for i in chosen]
    return retrieval_metrics(
        rankings, [query_set.targets[i] for i in chosen], [query_set.relevant[i] for i in chosen]
    )


def label_top1(stats, tables, method, features, query_set):
    """Share of queries whose first model is relevant (shares a label), not only the source."""
    ranked = rank_all(score(tables, method, torch.from_numpy(features)))
    return float(
        np.mean([stats.ids[r[0]] in rel for r, rel in zip(ranked, query_set.relevant, strict=True)])
    )


def main(zoo_dir: str) -> None:
    zoo = load_zoo(zoo_dir)
    cfg = EvalConfig(zoo_dir=zoo.root)
    manifest, stats = load_index(index_dir(cfg, zoo, "lite"))
    tau = manifest.scoring_temperature(cfg.tau)
    tables = ScoringTables.build(stats, cfg.eps, tau)
    space = load_feature_space("lite")
    out = {}

    images = build_image_queries(zoo)
    image_features = space.encode_images(list(images.items))
    single = [i for i, s in enumerate(images.sources) if len(zoo.models[s].labels) == 1]
    out["image gaussian_density, all queries"] = metrics_of(
        stats, tables, "gaussian_density", image_features, images
    )
    out["image gaussian_density, queries of single-label models only"] = metrics_of(
        stats, tables, "gaussian_density", image_features, images, single
    )
    out["image gaussian_density, first model shares a label (label-level top-1)"] = label_top1(
        stats, tables, "gaussian_density", image_features, images
    )

    sketches = build_sketch_queries(images)
    inverted = replace(sketches, items=tuple(255 - s for s in sketches.items))
    sketch_features = space.encode_images(list(inverted.items))
    out["sketch gaussian_density, white lines on black instead of black on white"] = metrics_of(
        stats, tables, "gaussian_density", sketch_features, inverted
    )

    texts = build_text_queries(zoo)
    text_features = space.encode_texts(list(texts.items))
    seen = texts.subset("seen")
    clip_tables = ScoringTables.build(stats, cfg.eps, CLIP_TAU)
    out[f"text seen, first_second_moment at lite's trained tau = {tau:.4g} (reported)"] = (
        metrics_of(stats, tables, "first_second_moment", text_features, texts, seen)
    )
    out[f"text seen, first_second_moment at CLIP's tau = {CLIP_TAU} (first run)"] = metrics_of(
        stats, clip_tables, "first_second_moment", text_features, texts, seen
    )
    print(json.dumps(out, indent=2))  # noqa: T201 (the script's output)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    main(sys.argv[1])

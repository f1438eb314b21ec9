"""Encoding throughput of a feature space: images/s and texts/s at a given batch size.

python bench/encode_throughput.py --encoder hermetic --batch 128 --repeats 10
"""

import argparse
import logging
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from modelseek.features import HERMETIC_ENCODER, load_feature_space

logger = logging.getLogger(__name__)


def time_per_call_s(run: Callable[[], object], repeats: int) -> tuple[float, float]:
    """(median, best) seconds of `repeats` calls after one warm-up call."""
    run()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times), min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default=HERMETIC_ENCODER)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()

    space = load_feature_space(args.encoder, device=args.device)
    rng = np.random.default_rng(0)
    side = space.preprocess_cfg["size"][0]
    workloads = {
        f"images {side} px (no resize)": [
            rng.integers(0, 256, (side, side, 3), dtype=np.uint8) for _ in range(args.batch)
        ],
        "images 96 px": [
            rng.integers(0, 256, (96, 96, 3), dtype=np.uint8) for _ in range(args.batch)
        ],
        "images 64-96 px, mixed": [
            rng.integers(0, 256, (h, h, 3), dtype=np.uint8)
            for h in rng.integers(64, 97, size=args.batch)
        ],
    }
    texts = [f"a photo of thing number {i} on a sunny day" for i in range(args.batch)]

    print(
        f"{space.id} on {args.device}, batch {args.batch}, torch threads {torch.get_num_threads()}"
    )
    for name, images in workloads.items():
        median_s, best_s = time_per_call_s(lambda im=images: space.encode_images(im), args.repeats)
        print(
            f"  {name:28s} {args.batch / median_s:8.0f}/s median {args.batch / best_s:8.0f}/s best"
        )
    median_s, best_s = time_per_call_s(lambda: space.encode_texts(texts), args.repeats)
    print(
        f"  {'texts':28s} {args.batch / median_s:8.0f}/s median {args.batch / best_s:8.0f}/s best"
    )


if __name__ == "__main__":
    main()

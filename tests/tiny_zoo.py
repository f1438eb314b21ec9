"""A tiny evaluation zoo on disk (the contract of scripts/build_eval_zoo.py) from drawn shapes."""

import json
from pathlib import Path

import numpy as np
import yaml
from PIL import Image, ImageDraw

SIDE_PX = 64
# id -> (labels, what one image shows): discs, squares and stripes of one colour, and a mixed
# model drawing discs or squares, so that one model carries two labels.
TINY_MODELS = {
    "red-discs": (["disc"], "disc", (220, 30, 30)),
    "blue-discs": (["disc"], "disc", (30, 30, 220)),
    "green-squares": (["square"], "square", (30, 160, 30)),
    "grey-stripes": (["stripes"], "stripes", (90, 90, 90)),
    "discs-and-squares": (["disc", "square"], "mixed", (200, 120, 20)),
}
TINY_LABELS = {
    "disc": {"noun": "a disc", "seen_by_lite": True},
    "square": {"noun": "a square", "seen_by_lite": True},
    "stripes": {"noun": "stripes", "seen_by_lite": False},
}


def draw_shape(shape: str, colour: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    """One (64, 64, 3) uint8 image of `shape` at a random place and size, with pixel noise."""
    image = Image.new("RGB", (SIDE_PX, SIDE_PX), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    if shape == "mixed":
        shape = "disc" if rng.random() < 0.5 else "square"
    if shape == "stripes":
        width = int(rng.integers(3, 8))
        for x in range(int(rng.integers(0, width)), SIDE_PX, 2 * width):
            draw.rectangle([x, 0, x + width - 1, SIDE_PX], fill=colour)
    else:
        size = int(rng.integers(16, 40))
        x, y = (int(v) for v in rng.integers(2, SIDE_PX - size - 2, size=2))
        box = [x, y, x + size, y + size]
        (draw.ellipse if shape == "disc" else draw.rectangle)(box, fill=colour)
    pixels = np.asarray(image).astype(np.int16) + rng.integers(-12, 13, (SIDE_PX, SIDE_PX, 3))
    return np.clip(pixels, 0, 255).astype(np.uint8)


def write_tiny_zoo(root: Path, samples: int = 48, queries: int = 6, seed: int = 0) -> Path:
    """Write a zoo of TINY_MODELS as sample-set folders, queries drawn from another seed."""
    rng = np.random.default_rng(seed)
    catalog, models = [], {}
    for model_id, (labels, shape, colour) in TINY_MODELS.items():
        for folder, count in (
            (root / "samples" / model_id, samples),
            (root / "queries" / model_id, queries),
        ):
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                Image.fromarray(draw_shape(shape, colour, rng)).save(folder / f"{i:03d}.png")
        nouns = " and ".join(TINY_LABELS[label]["noun"] for label in labels)
        catalog.append(
            {
                "id": model_id,
                "name": model_id.replace("-", " "),
                "description": f"Drawings of {nouns} in one colour on white.",
                "tags": labels,
                "source": {"kind": "images", "path": f"samples/{model_id}"},
            }
        )
        models[model_id] = {
            "labels": labels,
            "kind": "sample_set",
            "queries": "generated",
            "query_dir": f"queries/{model_id}",
            "n_queries": queries,
            "trained_on": "drawn shapes",
        }
    (root / "catalog.yaml").write_text(yaml.safe_dump({"version": 1, "models": catalog}))
    manifest = {"version": 1, "small": True, "models": models, "labels": TINY_LABELS, "build": {}}
    (root / "zoo.json").write_text(json.dumps(manifest, indent=2))
    return root

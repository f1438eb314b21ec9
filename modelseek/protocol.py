"""The paper's evaluation protocol on a zoo: held-out queries ranked against the indexed models.

A zoo (built by scripts/build_eval_zoo.py) is a folder:
    catalog.yaml          a Modelseek catalog of the models
    zoo.json              labels, kinds and query folders of the models, nouns of the labels
    queries/<id>/NNN.png  held-out images of model <id>, never part of its indexed samples

Relevance (used by mAP): an image or sketch query from model m is relevant to every model whose
labels intersect m's labels (a mixed {sandal, sneaker} model is relevant to sandal models and
to sneaker models, and they to it); a text query made from label l is relevant to the models
carrying l; a model's description is relevant as an image of that model is. Top-k accuracy
counts the source model m (the paper's); a label's prompt has no single source, so any model
carrying the label counts.
"""

import hashlib
import json
import logging
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image

from modelseek.catalog import list_image_files, load_catalog
from modelseek.config import IndexConfig, ServeConfig
from modelseek.errors import CatalogError
from modelseek.evaluation import average_precision, average_precision_at_k, top_k_hit
from modelseek.features import load_feature_space, parse_encoder_spec
from modelseek.images import to_rgb_array
from shards import store
from shards.scoring import METHODS, ScoringTables, probability_temperature, score
from shards.stats import ShardStats, concat_shards
from shards.topk import topk_rows

logger = logging.getLogger(__name__)

ZOO_VERSION = 1
MAX_QUERIES_PER_MODEL = 50
DEFAULT_WORK_DIR = Path("~/.modelseek/eval")
TOP_KS = (1, 5, 10)
MAP_KS = (5, 10)
# Served answers hold this many models: the timed call is score + exact top-k of this size.
SERVED_K = 10
# Ranks drawn in the drop-off figure.
DROPOFF_RANKS = 20
# Canny's Gaussian width in pixels for a 64-pixel image, scaled with the image side so that a
# sketch keeps the same level of detail at any resolution. Chosen before any query was scored.
SKETCH_SIGMA_PER_64_PX = 1.0
# Prompts made from every label's noun ("a sneaker"); the first is the keyword baseline's
# caption of an image query.
TEXT_TEMPLATES = ("a photo of {noun}", "a drawing of {noun}", "{noun}")
# The methods of the index, in the paper's order, then the two description baselines.
KEYWORD_BASELINE = "keyword_match"
DESCRIPTION_BASELINE = "description_embedding"
METHOD_ORDER = (
    "monte_carlo",
    "first_moment",
    "first_second_moment",
    "first_second_moment_full",
    "gaussian_density",
    "gaussian_density_full",
    KEYWORD_BASELINE,
    DESCRIPTION_BASELINE,
)
assert set(METHOD_ORDER) >= set(METHODS), "every scoring method is evaluated"
# Words that say nothing about what a model generates (the keyword baseline ignores them).
# A word list reads better as one text than as a column of string literals.
STOPWORDS = frozenset(
    "a an the of and or in on at to for with by from as is are was were be this that these "  # noqa: SIM905
    "those it its photo photos image images picture pictures drawing drawings sample samples "
    "model models generated generates generate trained train training gan dcgan vae set "
    "dataset data real synthetic".split()
)


@dataclass(frozen=True)
class ZooModel:
    """One model of a zoo as zoo.json describes it.

    Attributes:
        id: the catalog id.
        labels: the classes it generates, e.g. ("sandal", "sneaker").
        kind: "dcgan", "vae", "sample_set" or "pretrained_gan".
        query_origin: "real" (held-out real images of its classes) or "generated" (samples
            drawn with seeds the index never uses).
        query_dir: its query images.
        trained_on: a short text about its training data.
        description: its catalog description.
    """

    id: str
    labels: tuple[str, ...]
    kind: str
    query_origin: str
    query_dir: Path
    trained_on: str
    description: str


@dataclass(frozen=True)
class Zoo:
    """A zoo folder, read and checked.

    Attributes:
        root: the folder.
        catalog_path: its catalog.yaml.
        small: whether it is the small (CI) build.
        models: the models by id, ids ascending (the order of index rows).
        nouns: each label's noun phrase, e.g. {"sneaker": "a sneaker"}.
        seen_by_lite: whether the lite space's projection was trained on each label.
        build: what zoo.json says about how the zoo was built.
    """

    root: Path
    catalog_path: Path
    small: bool
    models: dict[str, ZooModel]
    nouns: dict[str, str]
    seen_by_lite: dict[str, bool]
    build: dict[str, Any] = field(default_factory=dict)

    @property
    def labels(self) -> list[str]:
        return sorted(self.nouns)

    def fingerprint(self) -> str:
        """sha256 of catalog.yaml and zoo.json: a rebuilt zoo gets new cached results."""
        digest = hashlib.sha256()
        for path in (self.catalog_path, self.root / "zoo.json"):
            digest.update(path.read_bytes())
        return digest.hexdigest()


def load_zoo(root: str | Path) -> Zoo:
    """Read a zoo folder and check zoo.json against its catalog.

    Raises:
        CatalogError: a file is missing, or zoo.json disagrees with the catalog (the message
            names the model or label and says to rebuild the zoo).
    """
    root = Path(root).expanduser().resolve()
    manifest_path = root / "zoo.json"
    if not manifest_path.is_file():
        raise CatalogError(
            f"{root} is not an evaluation zoo: {manifest_path} is missing; build one with "
            "scripts/build_eval_zoo.py"
        )
    raw = json.loads(manifest_path.read_text())
    if raw.get("version") != ZOO_VERSION:
        raise CatalogError(
            f"{manifest_path}: version {raw.get('version')!r}, expected {ZOO_VERSION}; "
            "rebuild the zoo with this checkout's scripts/build_eval_zoo.py"
        )
    catalog = load_catalog(root / "catalog.yaml")
    labels = raw["labels"]
    models = {}
    for model_id in sorted(raw["models"]):
        info = raw["models"][model_id]
        unknown = [label for label in info["labels"] if label not in labels]
        if unknown or not info["labels"]:
            raise CatalogError(
                f"{manifest_path}: model {model_id!r} has labels {info['labels']}, of which "
                f"{unknown} are not under 'labels'; every model needs known labels"
            )
        if info["queries"] not in ("real", "generated"):
            raise CatalogError(
                f"{manifest_path}: model {model_id!r} has queries {info['queries']!r}, "
                "expected 'real' or 'generated'"
            )
        models[model_id] = ZooModel(
            id=model_id,
            labels=tuple(info["labels"]),
            kind=info["kind"],
            query_origin=info["queries"],
            query_dir=root / info["query_dir"],
            trained_on=info.get("trained_on", ""),
            description=catalog.get(model_id).description,
        )
    missing = sorted({entry.id for entry in catalog} - set(models))
    if missing:
        raise CatalogError(f"{manifest_path}: catalog models {missing} are not in zoo.json")
    return Zoo(
        root=root,
        catalog_path=root / "catalog.yaml",
        small=bool(raw.get("small", False)),
        models=models,
        nouns={label: info["noun"] for label, info in labels.items()},
        seen_by_lite={
            label: bool(info.get("seen_by_lite", False)) for label, info in labels.items()
        },
        build=raw.get("build", {}),
    )


def relevant_to_model(zoo: Zoo, model_id: str) -> frozenset[str]:
    """The models whose labels intersect `model_id`'s (the model itself included)."""
    labels = set(zoo.models[model_id].labels)
    return frozenset(m.id for m in zoo.models.values() if labels & set(m.labels))


def models_with_label(zoo: Zoo, label: str) -> frozenset[str]:
    """The models that carry `label`."""
    return frozenset(m.id for m in zoo.models.values() if label in m.labels)


# --- queries -------------------------------------------------------------------------------


@dataclass(frozen=True)
class QuerySet:
    """Queries of one kind with what counts as a correct answer to each.

    Attributes:
        name: "image", "sketch" or "text".
        modality: "image" (images and sketches are encoded as images) or "text".
        items: `q` (h, w, 3) uint8 images, or `q` strings.
        sources: `q` descriptions of where each query came from (model id or label).
        targets: `q` sets of models that count as a top-k hit.
        relevant: `q` sets of models that count as relevant for mAP.
        captions: `q` texts that the keyword baseline matches against descriptions.
        groups: `q` tuples of the breakdowns a query belongs to, e.g. ("seen", "prompt").
    """

    name: str
    modality: str
    items: tuple[Any, ...]
    sources: tuple[str, ...]
    targets: tuple[frozenset[str], ...]
    relevant: tuple[frozenset[str], ...]
    captions: tuple[str, ...]
    groups: tuple[tuple[str, ...], ...]

    def __len__(self) -> int:
        return len(self.items)

    def subset(self, group: str) -> list[int]:
        """Positions of the queries in `group` ("all": every query)."""
        return [i for i, g in enumerate(self.groups) if group == "all" or group in g]


def caption_of(zoo: Zoo, model_id: str) -> str:
    """What a perfect captioner would say of a model's image: "a photo of a sneaker"."""
    nouns = " and ".join(zoo.nouns[label] for label in zoo.models[model_id].labels)
    return TEXT_TEMPLATES[0].format(noun=nouns)


def read_query_images(zoo: Zoo, model_id: str, limit: int) -> list[np.ndarray]:
    """The first `limit` query images of a model (file-name order), as RGB arrays."""
    folder = zoo.models[model_id].query_dir
    files = list_image_files(str(folder), zoo.root)[:limit]
    if not files:
        raise CatalogError(
            f"model {model_id!r} has no query images in {folder}; rebuild the zoo with queries"
        )
    images = []
    for path in files:
        with Image.open(path) as image:
            images.append(to_rgb_array(image))
    return images


def build_image_queries(zoo: Zoo, limit: int = MAX_QUERIES_PER_MODEL) -> QuerySet:
    """Every model's held-out query images (at most `limit` each)."""
    items, sources, targets, relevant, captions, groups = [], [], [], [], [], []
    for model_id, model in zoo.models.items():
        images = read_query_images(zoo, model_id, limit)
        related = relevant_to_model(zoo, model_id)
        items += images
        sources += [model_id] * len(images)
        targets += [frozenset({model_id})] * len(images)
        relevant += [related] * len(images)
        captions += [caption_of(zoo, model_id)] * len(images)
        groups += [(f"{model.query_origin} queries", model.kind)] * len(images)
    return QuerySet(
        "image", "image", *map(tuple, (items, sources, targets, relevant, captions, groups))
    )


def to_sketch(image: np.ndarray) -> np.ndarray:
    """A sketch of an image: Canny edges of its grayscale, black lines on white, same size.

    Args:
        image: (h, w, 3) uint8 RGB.

    Returns:
        (h, w, 3) uint8, 0 on edges and 255 elsewhere.
    """
    from skimage.color import rgb2gray
    from skimage.feature import canny

    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected (h, w, 3) uint8 RGB, got {image.dtype} {image.shape}")
    sigma = SKETCH_SIGMA_PER_64_PX * max(1.0, min(image.shape[:2]) / 64)
    edges = canny(rgb2gray(image), sigma=sigma)
    sketch = np.where(edges, 0, 255).astype(np.uint8)
    return np.repeat(sketch[:, :, None], 3, axis=2)


def build_sketch_queries(images: QuerySet) -> QuerySet:
    """The image queries drawn as sketches; same sources and relevance."""
    return replace(images, name="sketch", items=tuple(to_sketch(image) for image in images.items))


def build_text_queries(zoo: Zoo) -> QuerySet:
    """Every model's description, and every label's noun in each of TEXT_TEMPLATES.

    A description belongs to "seen" when the lite space was trained on all of its model's
    labels, else to "held-out"; a prompt to the status of its label.
    """
    items, sources, targets, relevant, groups = [], [], [], [], []
    for model_id, model in zoo.models.items():
        seen = all(zoo.seen_by_lite[label] for label in model.labels)
        items.append(model.description)
        sources.append(model_id)
        targets.append(frozenset({model_id}))
        relevant.append(relevant_to_model(zoo, model_id))
        groups.append(("seen" if seen else "held-out", "descriptions"))
    for label in zoo.labels:
        carriers = models_with_label(zoo, label)
        if not carriers:
            continue
        for template in TEXT_TEMPLATES:
            items.append(template.format(noun=zoo.nouns[label]))
            sources.append(label)
            targets.append(carriers)
            relevant.append(carriers)
            groups.append(("seen" if zoo.seen_by_lite[label] else "held-out", "prompts"))
    return QuerySet("text", "text", *map(tuple, (items, sources, targets, relevant, items, groups)))


# --- baselines -----------------------------------------------------------------------------


def content_words(text: str) -> frozenset[str]:
    """Lower-cased words of `text` without stopwords, plural 's' dropped ("Sneakers" -> sneaker)."""
    words = re.findall(r"[a-z0-9]+", text.lower())
    return frozenset(
        w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w
        for w in words
        if w not in STOPWORDS
    )


def keyword_scores(captions: Sequence[str], descriptions: Sequence[str]) -> torch.Tensor:
    """Jaccard overlap of content words, (q, n) float64: the paper's keyword baseline.

    Equal scores rank by model id, as every ranking here does.
    """
    model_words = [content_words(d) for d in descriptions]
    out = torch.zeros(len(captions), len(descriptions), dtype=torch.float64)
    for i, caption in enumerate(captions):
        words = content_words(caption)
        for j, other in enumerate(model_words):
            union = words | other
            out[i, j] = len(words & other) / len(union) if union else 0.0
    return out


def description_scores(queries: np.ndarray, description_features: np.ndarray) -> torch.Tensor:
    """cos(query feature, description's text feature), (q, n): the paper's second baseline."""
    q = torch.from_numpy(queries).double()
    t = torch.from_numpy(description_features).double()
    q = q / q.norm(dim=1, keepdim=True).clamp_min(1e-12)
    t = t / t.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return q @ t.T


# --- metrics -------------------------------------------------------------------------------


def rank_all(scores: torch.Tensor) -> np.ndarray:
    """(q, n) rows of every model, best first, ties by row (= by id, as shards/topk.py orders)."""
    # A stable sort of the negated scores keeps equal scores in row order; −inf goes last.
    return np.argsort(-scores.double().numpy(), axis=1, kind="stable")


def retrieval_metrics(
    rankings: Sequence[Sequence[str]],
    targets: Sequence[frozenset[str]],
    relevant: Sequence[frozenset[str]],
) -> dict[str, float]:
    """top-1/5/10 accuracy, mAP@5, mAP@10 and mAP of full rankings (modelseek.evaluation)."""
    out: dict[str, float] = {}
    for k in TOP_KS:
        hits = [
            any(top_k_hit(r, t, k) for t in ts) for r, ts in zip(rankings, targets, strict=True)
        ]
        out[f"top{k}"] = float(np.mean(hits))
    for k in MAP_KS:
        aps = [average_precision_at_k(r, rel, k) for r, rel in zip(rankings, relevant, strict=True)]
        out[f"map@{k}"] = float(np.mean(aps))
    aps = [average_precision(r, rel) for r, rel in zip(rankings, relevant, strict=True)]
    out["map"] = float(np.mean(aps))
    return out


def mean_dropoff(scores: torch.Tensor, temperature: float, ranks: int) -> np.ndarray:
    """Mean over queries of p(model | q) sorted descending, at ranks 1..`ranks`: (ranks,)."""
    probs = torch.softmax(scores.double() / temperature, dim=1)
    top = torch.sort(probs, dim=1, descending=True).values[:, :ranks]
    return top.mean(dim=0).numpy()


# --- the run -------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvalConfig:
    """What `modelseek eval` does.

    Attributes:
        zoo_dir: the zoo folder.
        encoders: feature spaces, e.g. ("lite", "hermetic").
        samples_per_model: images sampled per model for its statistics.
        max_queries_per_model: image (and sketch) queries per model.
        work_dir: where indexes are cached.
        out: the markdown report; the figure goes beside it.
        index: the rest of the index settings (full covariances are always kept).
        eps: `ε` of the Gaussian density.
        tau: `τ` of the first-moment probabilities and the second-moment and Monte-Carlo
            scores; None uses each space's own (recorded in its index manifest), as the
            service does.
    """

    zoo_dir: Path
    encoders: tuple[str, ...] = ("lite", "hermetic")
    samples_per_model: int = IndexConfig().samples_per_model
    max_queries_per_model: int = MAX_QUERIES_PER_MODEL
    work_dir: Path = DEFAULT_WORK_DIR
    out: Path = Path("eval/RESULTS.md")
    index: IndexConfig = IndexConfig()
    eps: float = ServeConfig().eps
    tau: float | None = ServeConfig().tau


@dataclass(frozen=True)
class Row:
    """One line of a results table: a method in a space on a group of a query set."""

    space: str
    query_set: str
    group: str
    method: str
    num_queries: int
    metrics: dict[str, float]
    score_ms: float  # per query, score + exact top-SERVED_K over the collection


@dataclass
class SpaceResult:
    """Everything measured in one feature space (filled in by `evaluate_space`)."""

    encoder: str
    space_id: str
    index_root: Path
    index_version: str
    index_seconds: float
    models_sampled: int
    full_covariance: bool
    rank: int
    reservoir: int
    rows: list[Row]
    encode_ms: dict[str, float]  # per query, by query set
    dropoff: dict[tuple[str, str], np.ndarray]  # (query set, method) -> (ranks,)
    confusions: dict[tuple[str, str], list[tuple[str, float, str]]]  # (set, method) -> per label
    duplicate_queries: int  # image queries equal to a stored sample feature of their model
    tau: float  # the temperature scores used


def text_supported(encoder: str) -> bool:
    """Whether the space's text tower means anything: the hermetic one has random weights."""
    return parse_encoder_spec(encoder).kind != "hermetic"


def index_dir(cfg: EvalConfig, zoo: Zoo, encoder: str) -> Path:
    """The cached index of a zoo in one space: one folder per (zoo folder, encoder).

    The zoo's path, not its content, names the folder: a rebuilt zoo reuses the folder and the
    indexer re-samples only the models whose fingerprints changed.
    """
    key = hashlib.sha256(f"{zoo.root}\n{encoder}".encode()).hexdigest()[:12]
    slug = re.sub(r"[^a-z0-9]+", "-", encoder.lower()).strip("-")[:40]
    return Path(cfg.work_dir).expanduser() / f"{slug}-{key}"


def index_settings(cfg: EvalConfig, num_models: int, dim: int) -> IndexConfig:
    """The index settings: cfg.index with its sample count, keeping every full covariance."""
    full_bytes = num_models * dim * dim * 4
    return replace(
        cfg.index,
        samples_per_model=cfg.samples_per_model,
        full_covariance_max_bytes=max(cfg.index.full_covariance_max_bytes, full_bytes),
    )


def index_zoo(cfg: EvalConfig, zoo: Zoo, encoder: str) -> tuple[Path, Any]:
    """Index the zoo through the real pipeline (Ray must be initialised); (root, IndexReport)."""
    from actors.indexing import build_index

    space = load_feature_space(encoder)
    root = index_dir(cfg, zoo, encoder)
    settings = index_settings(cfg, len(zoo.models), space.dim)
    logger.info("indexing %d models of %s in %s into %s", len(zoo.models), zoo.root, encoder, root)
    report = build_index(zoo.catalog_path, root, encoder, settings, progress=False)
    return root, report


def load_index(root: Path) -> tuple[store.Manifest, ShardStats]:
    """The published index under `root`, every shard in one ShardStats."""
    manifest = store.read_manifest(root)
    shards = [store.load_shard(root, manifest, i) for i in range(len(manifest.shards))]
    return manifest, concat_shards(shards)


def count_folder_leaks(zoo: Zoo, images: QuerySet) -> tuple[int, int]:
    """(query images identical in pixels to an indexed file, images checked) for folder models.

    Models sampled from Python generators have no files to compare; `SpaceResult.
    duplicate_queries` checks those against stored sample features instead.
    """
    catalog = load_catalog(zoo.catalog_path)
    leaks, checked = 0, 0
    for entry in catalog:
        if entry.source.kind != "images":
            continue
        indexed = set()
        for path in list_image_files(entry.source.path, zoo.root):
            with Image.open(path) as image:
                indexed.add(hashlib.sha256(to_rgb_array(image).tobytes()).hexdigest())
        for i in (i for i, s in enumerate(images.sources) if s == entry.id):
            checked += 1
            leaks += hashlib.sha256(images.items[i].tobytes()).hexdigest() in indexed
    return leaks, checked


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - started


class Scored(NamedTuple):
    """A method's or baseline's answers to one query set."""

    scores: torch.Tensor  # (q, n)
    seconds: float  # per query
    served: list[list[int]] | None  # the rows a scorer serves first (methods only)


def _model_scores(tables: ScoringTables, method: str, features: np.ndarray) -> Scored:
    """Scores of every query by `method`, and seconds per query of score + exact top-k."""
    queries = torch.from_numpy(features)

    def served() -> tuple[torch.Tensor, list[list[int]]]:
        scores = score(tables, method, queries)
        return scores, topk_rows(scores, SERVED_K)

    # One query first, untimed: the first call of a kernel starts its thread pool.
    score(tables, method, queries[:1])
    (scores, top), seconds = _timed(served)
    return Scored(scores, seconds / max(1, len(features)), top)


def _check_served(method: str, ranked: np.ndarray, served: list[list[int]]) -> None:
    """The full ranking used for the metrics must begin with what a scorer would serve."""
    heads = ranked[:, :SERVED_K].tolist()
    if any(head != top for head, top in zip(heads, served, strict=True)):
        raise AssertionError(f"{method}: full ranking disagrees with shards.topk.topk_rows")


def evaluate_space(
    cfg: EvalConfig,
    zoo: Zoo,
    encoder: str,
    root: Path,
    report: Any,
    query_sets: Sequence[QuerySet],
) -> SpaceResult:
    """Score every query set that the space supports by every method and both baselines."""
    manifest, stats = load_index(root)
    if tuple(stats.ids) != tuple(zoo.models):
        raise CatalogError(
            f"index {root} holds {stats.num_models} models, the zoo {len(zoo.models)}; "
            "delete the work dir's index and rerun"
        )
    space = load_feature_space(encoder)
    tau = manifest.scoring_temperature(cfg.tau)
    tables = ScoringTables.build(stats, cfg.eps, tau)
    descriptions = [m["description"] for m in stats.metadata]
    description_features = space.encode_texts(descriptions) if text_supported(encoder) else None
    ids = stats.ids
    result = SpaceResult(
        encoder=encoder,
        space_id=space.id,
        index_root=root,
        index_version=manifest.version,
        index_seconds=report.seconds,
        models_sampled=report.models_sampled,
        full_covariance=stats.covs is not None,
        rank=stats.rank,
        reservoir=int(stats.reservoir.shape[1]),
        rows=[],
        encode_ms={},
        dropoff={},
        confusions={},
        duplicate_queries=0,
        tau=tau,
    )
    for query_set in query_sets:
        if query_set.modality == "text" and not text_supported(encoder):
            logger.info("%s: skipping text queries (random text tower)", encoder)
            continue
        encode = space.encode_texts if query_set.modality == "text" else space.encode_images
        # One item first, untimed: the first call loads the tokenizer and warms up the model.
        encode(list(query_set.items[:1]))
        features, seconds = _timed(lambda encode=encode, qs=query_set: encode(list(qs.items)))
        result.encode_ms[query_set.name] = 1e3 * seconds / max(1, len(query_set))
        if query_set.name == "image":
            result.duplicate_queries = _duplicates(stats, query_set, features)

        scored = _score_all(tables, features, query_set, descriptions, description_features)
        for method in METHODS:
            result.dropoff[(query_set.name, method)] = mean_dropoff(
                scored[method].scores,
                probability_temperature(method, tau),
                min(DROPOFF_RANKS, len(ids)),
            )
        for method in (m for m in METHOD_ORDER if m in scored):
            ranked = rank_all(scored[method].scores)
            if scored[method].served is not None:
                _check_served(method, ranked, scored[method].served)
            rankings = [[ids[j] for j in row] for row in ranked]
            result.rows.extend(
                _rows(encoder, query_set, method, rankings, 1e3 * scored[method].seconds)
            )
            result.confusions[(query_set.name, method)] = _confusions(zoo, query_set, rankings)
        logger.info("%s: %s queries (%d) evaluated", encoder, query_set.name, len(query_set))
    return result


def _score_all(
    tables: ScoringTables,
    features: np.ndarray,
    query_set: QuerySet,
    descriptions: Sequence[str],
    description_features: np.ndarray | None,
) -> dict[str, Scored]:
    """(q, n) scores and seconds per query of every method and baseline that applies."""
    scored = {method: _model_scores(tables, method, features) for method in METHODS}
    scored[KEYWORD_BASELINE] = _baseline(
        lambda: keyword_scores(query_set.captions, descriptions), len(query_set)
    )
    if description_features is not None:
        scored[DESCRIPTION_BASELINE] = _baseline(
            lambda: description_scores(features, description_features), len(query_set)
        )
    return scored


def _baseline(make: Callable[[], torch.Tensor], count: int) -> Scored:
    scores, seconds = _timed(make)
    return Scored(scores, seconds / max(1, count), None)


def _rows(
    encoder: str, query_set: QuerySet, method: str, rankings: list[list[str]], ms: float
) -> list[Row]:
    groups = ["all"] + sorted({g for gs in query_set.groups for g in gs})
    rows = []
    for group in groups:
        chosen = query_set.subset(group)
        if not chosen:
            continue
        metrics = retrieval_metrics(
            [rankings[i] for i in chosen],
            [query_set.targets[i] for i in chosen],
            [query_set.relevant[i] for i in chosen],
        )
        rows.append(Row(encoder, query_set.name, group, method, len(chosen), metrics, ms))
    return rows


def _confusions(
    zoo: Zoo, query_set: QuerySet, rankings: list[list[str]]
) -> list[tuple[str, float, str]]:
    """Per label: (label, top-1 hit rate of its queries, the labels most often ranked first)."""
    out = []
    names = sorted({_query_label(zoo, query_set, i) for i in range(len(query_set))})
    for label in names:
        chosen = [i for i in range(len(query_set)) if _query_label(zoo, query_set, i) == label]
        if not chosen:
            continue
        hits = [any(top_k_hit(rankings[i], t, 1) for t in query_set.targets[i]) for i in chosen]
        wrong = Counter(
            "+".join(zoo.models[rankings[i][0]].labels)
            for i, hit in zip(chosen, hits, strict=True)
            if not hit
        )
        confused = ", ".join(f"{name} ({count})" for name, count in wrong.most_common(3))
        out.append((label, float(np.mean(hits)), confused or "—"))
    return out


def _query_label(zoo: Zoo, query_set: QuerySet, i: int) -> str:
    """A query's label: its source model's labels joined by '+', or the label it was made from."""
    source = query_set.sources[i]
    return "+".join(zoo.models[source].labels) if source in zoo.models else source


def _duplicates(stats: ShardStats, query_set: QuerySet, features: np.ndarray) -> int:
    """Image queries whose feature equals (cos > 1 − 1e-6) a stored sample of their model."""
    rows = {model_id: row for row, model_id in enumerate(stats.ids)}
    count = 0
    for feature, source in zip(features, query_set.sources, strict=True):
        row = rows[source]
        stored = stats.reservoir[row, : stats.reservoir_counts[row]].astype(np.float64)
        if len(stored) and float(np.max(stored @ feature.astype(np.float64))) > 1 - 1e-6:
            count += 1
    return count


def build_query_sets(zoo: Zoo, max_per_model: int) -> list[QuerySet]:
    """Image, sketch and text queries of a zoo."""
    images = build_image_queries(zoo, max_per_model)
    return [images, build_sketch_queries(images), build_text_queries(zoo)]


def chance_top1(zoo: Zoo) -> float:
    """Top-1 accuracy of a uniformly random ranking of an image query: 1 / models."""
    return 1.0 / len(zoo.models)


def mean_relevant(query_set: QuerySet) -> float:
    """Mean number of relevant models per query."""
    return float(np.mean([len(r) for r in query_set.relevant]))


def describe_zoo(zoo: Zoo) -> dict[str, Any]:
    """Counts for the report: models per kind, per query origin, labels seen and held out."""
    kinds = Counter(m.kind for m in zoo.models.values())
    origins = Counter(m.query_origin for m in zoo.models.values())
    seen = [label for label in zoo.labels if zoo.seen_by_lite[label]]
    held_out = [label for label in zoo.labels if not zoo.seen_by_lite[label]]
    mixed = [m.id for m in zoo.models.values() if len(m.labels) > 1]
    return {
        "models": len(zoo.models),
        "kinds": dict(sorted(kinds.items())),
        "origins": dict(sorted(origins.items())),
        "seen": seen,
        "held_out": held_out,
        "mixed": mixed,
    }

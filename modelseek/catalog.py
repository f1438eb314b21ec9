"""The model catalog: a YAML file listing each model's metadata and how to sample it."""

import glob
import json
import logging
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from modelseek.errors import CatalogError

logger = logging.getLogger(__name__)

CATALOG_VERSION = 1
MODEL_ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,127}$")
# "pkg.module:callable"; the attribute may be dotted ("pkg.module:Class.create").
FACTORY_PATTERN = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif"})
_GLOB_CHARS = frozenset("*?[")


class FrozenMapping(Mapping[str, Any]):
    """A read-only, hashable, picklable mapping; nested lists become tuples, dicts FrozenMappings.

    Ray ships catalog entries to worker processes, so this cannot be a `MappingProxyType`
    (which does not pickle); it must be hashable because it sits in a frozen dataclass.
    """

    __slots__ = ("_items",)

    def __init__(self, items: Mapping[str, Any] | None = None) -> None:
        frozen = {str(key): _freeze(value) for key, value in (items or {}).items()}
        object.__setattr__(self, "_items", dict(sorted(frozen.items())))

    def __getitem__(self, key: str) -> Any:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(tuple(self._items.items()))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mapping) and dict(self.items()) == dict(other.items())

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"FrozenMapping is read-only; cannot set {name!r}")

    def __getstate__(self) -> dict[str, Any]:
        return self._items

    def __setstate__(self, state: dict[str, Any]) -> None:
        object.__setattr__(self, "_items", state)

    def __repr__(self) -> str:
        return f"FrozenMapping({self._items!r})"


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return FrozenMapping(value)
    if isinstance(value, list | tuple):
        return tuple(_freeze(item) for item in value)
    return value


def thaw(value: Any) -> Any:
    """Plain dicts and lists from `FrozenMapping`s and tuples, e.g. to pass to a factory or JSON."""
    if isinstance(value, Mapping):
        return {key: thaw(item) for key, item in value.items()}
    if isinstance(value, tuple | list):
        return [thaw(item) for item in value]
    return value


@dataclass(frozen=True)
class SourceSpec:
    """How to sample a model, as written in the catalog.

    Attributes:
        kind: "images" (a folder or glob of generated samples) or "python" (a factory).
        path: images only: a folder or a glob; relative paths are resolved against the
            catalog file's folder when the source is opened.
        factory: python only: "pkg.module:callable", imported when the model is sampled.
        kwargs: python only: keyword arguments for the factory, JSON-like values.
    """

    kind: str
    path: str | None = None
    factory: str | None = None
    kwargs: Mapping[str, Any] = field(default_factory=FrozenMapping)

    def __post_init__(self) -> None:
        if not isinstance(self.kwargs, FrozenMapping):
            object.__setattr__(self, "kwargs", FrozenMapping(self.kwargs))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict with sorted kwargs: `json.dumps(..., sort_keys=True)` is canonical."""
        return {
            "kind": self.kind,
            "path": self.path,
            "factory": self.factory,
            "kwargs": thaw(self.kwargs),
        }


@dataclass(frozen=True)
class ModelEntry:
    """One model of the catalog.

    Attributes:
        id: a slug, `^[a-z0-9][a-z0-9._-]{0,127}$`, unique in the catalog.
        name: a human-readable title.
        description: free text describing what the model generates.
        tags: labels used as search filters, e.g. ("face", "gan").
        creator: who trained or published the model.
        license: the model's license, e.g. "MIT".
        architecture: e.g. "DCGAN", "StyleGAN2", "diffusion".
        resolution: the side of its images in pixels, if known.
        links: URLs about the model.
        source: how to sample it.
    """

    id: str
    name: str
    description: str
    tags: tuple[str, ...]
    creator: str
    license: str
    architecture: str
    resolution: int | None
    links: tuple[str, ...]
    source: SourceSpec

    def metadata(self) -> dict[str, Any]:
        """Every field but `source`, JSON-able (tags and links as lists)."""
        return {
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "tags": list(self.tags),
            "creator": self.creator,
            "license": self.license,
            "architecture": self.architecture,
            "resolution": self.resolution,
            "links": list(self.links),
        }


@dataclass(frozen=True)
class Catalog:
    """The models of one catalog file.

    Attributes:
        entries: the models in file order.
        base_dir: the catalog file's folder; relative source paths are resolved against it.
    """

    entries: tuple[ModelEntry, ...]
    base_dir: Path
    _by_id: Mapping[str, ModelEntry] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_id", {entry.id: entry for entry in self.entries})

    def get(self, model_id: str) -> ModelEntry:
        """The entry with this id.

        Raises:
            CatalogError: no model has this id.
        """
        try:
            return self._by_id[model_id]
        except KeyError:
            raise CatalogError(
                f"no model with id {model_id!r} in the catalog at {self.base_dir} "
                f"({len(self.entries)} models); check the id against the catalog file"
            ) from None

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[ModelEntry]:
        return iter(self.entries)


def load_catalog(path: str | Path) -> Catalog:
    """Read and validate a YAML catalog: `{version: 1, models: [{id, name, source, ...}]}`.

    Python factories are not imported here; that happens when a model is sampled.

    Raises:
        CatalogError: the file is missing or not YAML, or a model is invalid; the message
            names the file, the model (position and id) and the field.
    """
    path = Path(path)
    document = _read_yaml(path)
    models = _check_top_level(document, path)
    base_dir = path.resolve().parent

    entries: list[ModelEntry] = []
    first_position: dict[str, int] = {}
    for position, raw in enumerate(models):
        entry = _parse_entry(raw, position, base_dir, path)
        if entry.id in first_position:
            raise CatalogError(
                f"{path}: duplicate model id {entry.id!r} at models[{first_position[entry.id]}] "
                f"and models[{position}]; every id must be unique"
            )
        first_position[entry.id] = position
        entries.append(entry)

    logger.info("loaded catalog %s: %d models", path, len(entries))
    return Catalog(entries=tuple(entries), base_dir=base_dir)


def list_image_files(path: str, base_dir: Path) -> list[Path]:
    """The image files an `images` source names, sorted by path.

    Args:
        path: a folder (its image files, not recursive) or a glob (`**` recurses); relative
            paths are resolved against `base_dir`.
        base_dir: the catalog file's folder.
    """
    resolved = resolve_source_path(path, base_dir)
    if _is_glob(path):
        candidates = [Path(name) for name in glob.glob(str(resolved), recursive=True)]
    elif resolved.is_dir():
        candidates = list(resolved.iterdir())
    else:
        candidates = []
    images = [p for p in candidates if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    return sorted(images, key=lambda p: p.as_posix())


def resolve_source_path(path: str, base_dir: Path) -> Path:
    """`path` made absolute against `base_dir` (a glob stays a pattern)."""
    return base_dir / Path(path).expanduser()


def source_root(path: str, base_dir: Path) -> Path:
    """The folder an `images` source's files are named relative to (a glob's fixed prefix)."""
    resolved = resolve_source_path(path, base_dir)
    if not _is_glob(path):
        return resolved
    return Path(*_leading_fixed_parts(resolved.parts))


def _leading_fixed_parts(parts: tuple[str, ...]) -> Iterator[str]:
    for part in parts:
        if _is_glob(part):
            return
        yield part


def _is_glob(path: str) -> bool:
    return any(char in _GLOB_CHARS for char in path)


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CatalogError(
            f"catalog file {path} does not exist; pass the path of a YAML catalog"
        ) from None
    except (OSError, UnicodeDecodeError) as err:
        raise CatalogError(f"cannot read catalog file {path}: {err}") from err

    # The C loader parses large catalogs several times faster; PyYAML may lack it.
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        return yaml.load(text, Loader=loader)
    except yaml.YAMLError as err:
        raise CatalogError(f"catalog file {path} is not valid YAML: {err}") from err


def _check_top_level(document: Any, path: Path) -> list[Any]:
    if not isinstance(document, dict):
        raise CatalogError(
            f"{path}: the top level must be a mapping with a 'models' list, "
            f"got {type(document).__name__}"
        )
    unknown = sorted(str(key) for key in set(document) - {"version", "models"})
    if unknown:
        raise CatalogError(
            f"{path}: unknown top-level field(s) {unknown}; allowed: 'models', 'version'"
        )
    version = document.get("version", CATALOG_VERSION)
    if version != CATALOG_VERSION:
        raise CatalogError(
            f"{path}: catalog version {version!r} is not supported; expected {CATALOG_VERSION}"
        )
    models = document.get("models")
    if not isinstance(models, list) or not models:
        raise CatalogError(
            f"{path}: 'models' must be a non-empty list of models, got {models!r:.80}"
        )
    return models


def _parse_entry(raw: Any, position: int, base_dir: Path, path: Path) -> ModelEntry:
    where = f"{path}: models[{position}]"
    if not isinstance(raw, dict):
        raise CatalogError(f"{where} must be a mapping of fields, got {type(raw).__name__}")
    if isinstance(raw.get("id"), str):
        where += f" (id {raw['id']!r})"

    unknown = sorted(str(name) for name in set(raw) - set(_FIELDS))
    if unknown:
        raise CatalogError(
            f"{where}: unknown field(s) {unknown}; allowed fields: {sorted(_FIELDS)}"
        )
    missing = [name for name in _REQUIRED_FIELDS if name not in raw]
    if missing:
        raise CatalogError(f"{where}: missing required field(s) {missing}")

    values = {}
    for name, (parse, default) in _FIELDS.items():
        values[name] = parse(raw[name], f"{where}: field {name!r}") if name in raw else default
    values["source"] = _parse_source(raw["source"], where, base_dir)
    return ModelEntry(**values)


def _parse_text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise CatalogError(
            f"{where} must be a string, got {type(value).__name__} {value!r}; quote it in YAML"
        )
    return value


def _parse_id(value: Any, where: str) -> str:
    model_id = _parse_text(value, where)
    if not MODEL_ID_PATTERN.match(model_id):
        raise CatalogError(
            f"{where} is {model_id!r}, not a slug: use 1-128 characters of lowercase letters, "
            "digits, '.', '_' or '-', starting with a letter or digit"
        )
    return model_id


def _parse_text_list(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise CatalogError(f"{where} must be a list of strings, got {value!r:.80}")
    return tuple(value)


def _parse_resolution(value: Any, where: str) -> int | None:
    if value is None:
        return None
    # bool is an int in Python; `resolution: yes` is a typo, not 1 pixel.
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise CatalogError(f"{where} must be a positive integer (pixels), got {value!r}")
    return value


def _parse_passthrough(value: Any, where: str) -> Any:
    return value


def _parse_source(value: Any, where: str, base_dir: Path) -> SourceSpec:
    if not isinstance(value, dict):
        raise CatalogError(
            f"{where}: field 'source' must be a mapping with a 'kind', got {value!r:.80}"
        )
    kind = value.get("kind")
    if kind not in _SOURCE_PARSERS:
        raise CatalogError(
            f"{where}: field 'source.kind' is {kind!r}, an unknown source kind; "
            f"expected one of {sorted(_SOURCE_PARSERS)}"
        )
    allowed = _SOURCE_FIELDS[kind]
    unknown = sorted(str(name) for name in set(value) - allowed)
    if unknown:
        raise CatalogError(
            f"{where}: unknown field(s) {unknown} in 'source' of kind {kind!r}; "
            f"allowed fields: {sorted(allowed)}"
        )
    return _SOURCE_PARSERS[kind](value, where, base_dir)


def _parse_images_source(value: dict[str, Any], where: str, base_dir: Path) -> SourceSpec:
    label = f"{where}: field 'source.path'"
    if "path" not in value:
        raise CatalogError(f"{label} is missing; an 'images' source needs a folder or a glob")
    path = _parse_text(value["path"], label)
    if not list_image_files(path, base_dir):
        raise CatalogError(
            f"{label} {path!r} (resolved to {resolve_source_path(path, base_dir)}) matches no "
            f"image files with a suffix in {sorted(IMAGE_SUFFIXES)}; fix the path, or "
            "generate the samples first"
        )
    return SourceSpec(kind="images", path=path)


def _parse_python_source(value: dict[str, Any], where: str, base_dir: Path) -> SourceSpec:
    label = f"{where}: field 'source.factory'"
    if "factory" not in value:
        raise CatalogError(f"{label} is missing; a 'python' source needs 'pkg.module:callable'")
    factory = _parse_text(value["factory"], label)
    if not FACTORY_PATTERN.match(factory):
        raise CatalogError(f"{label} {factory!r} is malformed; expected 'pkg.module:callable'")

    label = f"{where}: field 'source.kwargs'"
    kwargs = value.get("kwargs") or {}
    if not isinstance(kwargs, dict) or not all(isinstance(key, str) for key in kwargs):
        raise CatalogError(
            f"{label} must be a mapping of argument names to values, got {kwargs!r:.80}"
        )
    _check_json_like(kwargs, label)
    return SourceSpec(kind="python", factory=factory, kwargs=kwargs)


def _check_json_like(value: Any, where: str) -> None:
    # kwargs enter the model's fingerprint as canonical JSON, so they must round-trip.
    try:
        json.dumps(value, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise CatalogError(
            f"{where} must hold only strings, numbers, booleans, null, lists and mappings "
            f"with string keys (finite numbers only): {err}"
        ) from err


_FIELDS: dict[str, tuple[Callable[[Any, str], Any], Any]] = {
    "id": (_parse_id, None),
    "name": (_parse_text, None),
    "description": (_parse_text, ""),
    "tags": (_parse_text_list, ()),
    "creator": (_parse_text, ""),
    "license": (_parse_text, ""),
    "architecture": (_parse_text, ""),
    "resolution": (_parse_resolution, None),
    "links": (_parse_text_list, ()),
    # Parsed separately: it needs the catalog's folder.
    "source": (_parse_passthrough, None),
}
_REQUIRED_FIELDS = ("id", "name", "source")
_SOURCE_PARSERS: dict[str, Callable[[dict[str, Any], str, Path], SourceSpec]] = {
    "images": _parse_images_source,
    "python": _parse_python_source,
}
_SOURCE_FIELDS = {"images": {"kind", "path"}, "python": {"kind", "factory", "kwargs"}}

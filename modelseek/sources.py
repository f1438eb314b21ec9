"""Model sources: deterministic, chunked sampling of a catalog model, and digests of its content.

A `python` source names a factory, "pkg.module:callable". The sampler protocol it follows:

- `factory(**kwargs)` returns a sampler object (kwargs from the catalog entry);
- `sampler.sample(n: int, seed: int) -> np.ndarray` returns (n, h, w, 3) uint8 RGB images
  and must be deterministic for a given `(n, seed)`; `seed` is in [0, 2**32);
- optionally `sampler.weight_files() -> list[Path]` lists the files its samples depend on
  (weights, configs), whose contents enter the model's digest so that new weights reindex it.

Indexing splits a model's samples into chunks; chunk `[start, start + size)` is a pure
function of `(start, size, seed)`, so a retried Ray task returns the very same images.
"""

import hashlib
import importlib
import json
import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from modelseek.catalog import ModelEntry, list_image_files, source_root, thaw
from modelseek.errors import BadImage, CatalogError
from modelseek.images import decode_image

logger = logging.getLogger(__name__)

_HASH_BLOCK_BYTES = 1 << 20


class ModelSource(Protocol):
    """What indexing needs from a model: how many images, chunks of them, a content digest."""

    def count(self, requested: int) -> int:
        """How many images this source yields when `requested` are asked for."""
        ...

    def load_chunk(self, start: int, size: int, seed: int) -> list[np.ndarray]:
        """Images `start .. start + size - 1` of the model's sequence for `seed`.

        Returns:
            `size` arrays, each (h, w, 3) uint8 RGB; identical for identical arguments.
        """
        ...

    def digest(self) -> str:
        """sha256 hex of everything that determines the samples."""
        ...


class ImageFolderSource:
    """Samples somebody generated, in a folder or a glob: drawn without replacement.

    The sequence for `seed` is a permutation of the files sorted by path, so the first
    `count(n)` images of any seed are a uniform subsample of the folder.
    """

    def __init__(self, entry: ModelEntry, base_dir: Path) -> None:
        self.model_id = entry.id
        self.root = source_root(entry.source.path, base_dir)
        self.files = list_image_files(entry.source.path, base_dir)
        if not self.files:
            raise CatalogError(
                f"model {entry.id!r}: source path {entry.source.path!r} (under {base_dir}) "
                "matches no image files any more; regenerate the samples or fix the catalog"
            )
        self._digest: str | None = None

    def count(self, requested: int) -> int:
        return min(requested, len(self.files))

    def load_chunk(self, start: int, size: int, seed: int) -> list[np.ndarray]:
        _check_chunk(self.model_id, start, size, len(self.files))
        order = np.random.default_rng(seed).permutation(len(self.files))
        return [self._read(self.files[i]) for i in order[start : start + size]]

    def digest(self) -> str:
        if self._digest is None:
            hasher = hashlib.sha256(b"images\0")
            for path in self.files:
                relative = path.relative_to(self.root).as_posix()
                hasher.update(f"{relative}\0{hash_file(path)}\n".encode())
            self._digest = hasher.hexdigest()
        return self._digest

    def _read(self, path: Path) -> np.ndarray:
        try:
            return decode_image(path.read_bytes())
        except (BadImage, OSError) as err:
            raise CatalogError(
                f"model {self.model_id!r}: cannot read sample {path}: {err}; replace or "
                "delete the file"
            ) from err


class PythonSource:
    """A generative model run in-process through a factory (see the module docstring)."""

    def __init__(self, entry: ModelEntry, base_dir: Path) -> None:
        self.model_id = entry.id
        self.factory = entry.source.factory
        self.kwargs = thaw(entry.source.kwargs)
        self.sampler = _make_sampler(entry.id, self.factory, self.kwargs)
        self._digest: str | None = None

    def count(self, requested: int) -> int:
        return requested

    def load_chunk(self, start: int, size: int, seed: int) -> list[np.ndarray]:
        _check_chunk(self.model_id, start, size, None)
        images = self.sampler.sample(size, seed=derive_seed(seed, start))
        if (
            not isinstance(images, np.ndarray)
            or images.dtype != np.uint8
            or images.ndim != 4
            or images.shape[0] != size
            or images.shape[3] != 3
        ):
            got = (
                f"{images.dtype} {images.shape}"
                if isinstance(images, np.ndarray)
                else type(images).__name__
            )
            raise CatalogError(
                f"model {self.model_id!r}: {self.factory} sampler.sample({size}, seed) returned "
                f"{got}; expected a uint8 array of shape ({size}, h, w, 3), RGB"
            )
        return list(images)

    def digest(self) -> str:
        if self._digest is None:
            hasher = hashlib.sha256(b"python\0")
            hasher.update(self.factory.encode() + b"\0")
            hasher.update(json.dumps(self.kwargs, sort_keys=True).encode() + b"\0")
            for name, file_digest in sorted(self._weight_digests()):
                hasher.update(f"{name}\0{file_digest}\n".encode())
            self._digest = hasher.hexdigest()
        return self._digest

    def _weight_digests(self) -> Iterable[tuple[str, str]]:
        weight_files = getattr(self.sampler, "weight_files", None)
        if weight_files is None:
            return []
        digests = []
        for path in map(Path, weight_files()):
            if not path.is_file():
                raise CatalogError(
                    f"model {self.model_id!r}: {self.factory} declares weight file {path}, "
                    "which does not exist; reinstall the model's package"
                )
            # The name, not the full path: installs in different places give one digest.
            digests.append((path.name, hash_file(path)))
        return digests


def open_source(entry: ModelEntry, base_dir: Path) -> ModelSource:
    """The source that samples `entry`.

    Args:
        entry: a catalog model.
        base_dir: the catalog's folder, against which relative source paths resolve.

    Raises:
        CatalogError: unknown kind, a folder without images, or a factory that does not
            import or does not build a sampler.
    """
    source_class = SOURCE_KINDS.get(entry.source.kind)
    if source_class is None:
        raise CatalogError(
            f"model {entry.id!r}: unknown source kind {entry.source.kind!r}; expected one "
            f"of {sorted(SOURCE_KINDS)}"
        )
    return source_class(entry, base_dir)


def derive_seed(seed: int, start: int) -> int:
    """The seed of the chunk that begins at image `start`: in [0, 2**32), well mixed.

    32 bits because many samplers pass it to `np.random.RandomState`, which takes no more.
    """
    digest = hashlib.sha256(f"modelseek-chunk:{seed}:{start}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def hash_file(path: Path) -> str:
    """sha256 hex of a file's bytes, read in blocks."""
    hasher = hashlib.sha256()
    with path.open("rb") as stream:
        while block := stream.read(_HASH_BLOCK_BYTES):
            hasher.update(block)
    return hasher.hexdigest()


def _check_chunk(model_id: str, start: int, size: int, available: int | None) -> None:
    if start < 0 or size < 1 or (available is not None and start + size > available):
        limit = "" if available is None else f" within its {available} images"
        raise ValueError(
            f"model {model_id!r}: chunk start={start}, size={size} is not a non-empty range"
            f"{limit}; plan chunks with count()"
        )


def _make_sampler(model_id: str, factory: str, kwargs: dict[str, Any]) -> Any:
    create = _import_factory(model_id, factory)
    try:
        sampler = create(**kwargs)
    except (CatalogError, TypeError, ValueError, KeyError, OSError) as err:
        # A factory rejects bad kwargs (an unknown photo, a missing weight file) with one of
        # these; the user must learn which model and catalog entry to fix.
        raise CatalogError(
            f"model {model_id!r}: calling {factory}(**{kwargs}) failed: "
            f"{type(err).__name__}: {err}; fix the source's kwargs in the catalog"
        ) from err
    if not callable(getattr(sampler, "sample", None)):
        raise CatalogError(
            f"model {model_id!r}: {factory}(...) returned {type(sampler).__name__}, which has "
            "no sample(n, seed) method; the factory must return a sampler"
        )
    return sampler


def _import_factory(model_id: str, factory: str) -> Callable[..., Any]:
    module_name, _, attribute_path = factory.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as err:
        raise CatalogError(
            f"model {model_id!r}: cannot import module {module_name!r} of factory {factory!r}: "
            f"{err}; install the package that provides it or fix 'source.factory'"
        ) from err
    for attribute in attribute_path.split("."):
        if not hasattr(target, attribute):
            raise CatalogError(
                f"model {model_id!r}: factory {factory!r} not found: {module_name} has no "
                f"attribute {attribute_path!r}; fix 'source.factory' in the catalog"
            )
        target = getattr(target, attribute)
    if not callable(target):
        raise CatalogError(f"model {model_id!r}: factory {factory!r} is not callable")
    return target


SOURCE_KINDS: dict[str, Callable[[ModelEntry, Path], ModelSource]] = {
    "images": ImageFolderSource,
    "python": PythonSource,
}

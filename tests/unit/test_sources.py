"""Model sources: chunks are deterministic and partition the sequence; digests track content."""

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from modelseek.catalog import ModelEntry, SourceSpec
from modelseek.errors import CatalogError
from modelseek.sources import ImageFolderSource, PythonSource, derive_seed, open_source

FOLDER_SIZE = 10
THIS_MODULE = __name__


class RecordingSampler:
    """Random images drawn from the seed it is given; remembers those seeds.

    `label` changes nothing but the catalog kwargs, and so the digest.
    """

    def __init__(self, label: int = 7, shape: tuple[int, ...] = (4, 4, 3), dtype: str = "uint8"):
        self.label = label
        self.shape = shape
        self.dtype = dtype
        self.seeds: list[int] = []

    def sample(self, n: int, seed: int) -> np.ndarray:
        self.seeds.append(seed)
        rng = np.random.default_rng(seed)
        return rng.integers(0, 256, (n, *self.shape)).astype(self.dtype)


class WrongCountSampler(RecordingSampler):
    def sample(self, n: int, seed: int) -> np.ndarray:
        return super().sample(n + 1, seed)


class WeightedSampler(RecordingSampler):
    def __init__(self, weights: str) -> None:
        super().__init__()
        self.weights = Path(weights)

    def weight_files(self) -> list[Path]:
        return [self.weights]


def make_recording(**kwargs: Any) -> RecordingSampler:
    if "shape" in kwargs:
        kwargs["shape"] = tuple(kwargs["shape"])
    return RecordingSampler(**kwargs)


def make_wrong_count() -> WrongCountSampler:
    return WrongCountSampler()


def make_weighted(weights: str) -> WeightedSampler:
    return WeightedSampler(weights)


def make_not_a_sampler() -> str:
    return "no sample method here"


def entry_for(source: SourceSpec, model_id: str = "m1") -> ModelEntry:
    return ModelEntry(model_id, "M", "", (), "", "", "", None, (), source)


def python_entry(factory: str, **kwargs: Any) -> ModelEntry:
    spec = SourceSpec(kind="python", factory=f"{THIS_MODULE}:{factory}", kwargs=kwargs)
    return entry_for(spec, "py-model")


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    """Ten 3x3 images; image `i` has red value `10 * i`, so a pixel tells which file it is."""
    samples = tmp_path / "samples"
    samples.mkdir()
    for index in range(FOLDER_SIZE):
        Image.new("RGB", (3, 3), (10 * index, 0, 0)).save(samples / f"{index:02d}.png")
    return samples


def folder_source(folder: Path) -> ImageFolderSource:
    source = open_source(entry_for(SourceSpec(kind="images", path=folder.name)), folder.parent)
    assert isinstance(source, ImageFolderSource)
    return source


def file_indices(images: list[np.ndarray]) -> list[int]:
    return [int(image[0, 0, 0]) // 10 for image in images]


def test_folder_count_is_capped_by_its_files(folder: Path) -> None:
    source = folder_source(folder)

    assert source.count(4) == 4
    assert source.count(1000) == FOLDER_SIZE


def test_folder_chunk_is_deterministic(folder: Path) -> None:
    first = folder_source(folder).load_chunk(2, 5, seed=3)
    second = folder_source(folder).load_chunk(2, 5, seed=3)

    assert len(first) == 5
    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))
    assert all(image.shape == (3, 3, 3) and image.dtype == np.uint8 for image in first)


def test_folder_seeds_give_different_orders(folder: Path) -> None:
    source = folder_source(folder)

    orders = {tuple(file_indices(source.load_chunk(0, FOLDER_SIZE, seed))) for seed in range(4)}

    assert len(orders) == 4
    assert all(sorted(order) == list(range(FOLDER_SIZE)) for order in orders)


def test_folder_chunks_partition_the_permutation(folder: Path) -> None:
    source = folder_source(folder)
    whole = file_indices(source.load_chunk(0, FOLDER_SIZE, seed=11))

    chunks = [source.load_chunk(start, size, seed=11) for start, size in [(0, 4), (4, 4), (8, 2)]]

    assert sum((file_indices(chunk) for chunk in chunks), []) == whole
    assert sorted(whole) == list(range(FOLDER_SIZE))


def test_folder_chunk_past_the_end_is_refused(folder: Path) -> None:
    with pytest.raises(ValueError, match="within its 10 images; plan chunks with count"):
        folder_source(folder).load_chunk(8, 4, seed=0)


def test_folder_converts_gray_and_rgba_to_rgb(folder: Path) -> None:
    Image.new("L", (3, 3), 200).save(folder / "gray.png")
    Image.new("RGBA", (3, 3), (0, 0, 0, 0)).save(folder / "clear.png")
    source = folder_source(folder)

    images = source.load_chunk(0, source.count(100), seed=0)

    colours = {tuple(image[0, 0]) for image in images}
    assert (200, 200, 200) in colours
    assert (255, 255, 255) in colours  # transparent composited on white, not black


def test_folder_reports_a_broken_file_with_model_and_path(folder: Path) -> None:
    (folder / "05.png").write_bytes(b"garbage")
    source = folder_source(folder)

    with pytest.raises(CatalogError, match=r"model 'm1': cannot read sample .*05\.png"):
        source.load_chunk(0, FOLDER_SIZE, seed=0)


def test_folder_digest_tracks_file_contents_not_location(folder: Path, tmp_path: Path) -> None:
    before = folder_source(folder).digest()
    moved = tmp_path / "elsewhere" / "samples"
    shutil.copytree(folder, moved)
    assert folder_source(moved).digest() == before

    Image.new("RGB", (3, 3), (1, 2, 3)).save(folder / "03.png")

    assert folder_source(folder).digest() != before
    assert len(before) == 64


def test_folder_digest_tracks_file_names(folder: Path) -> None:
    before = folder_source(folder).digest()

    (folder / "09.png").rename(folder / "99.png")

    assert folder_source(folder).digest() != before


def test_python_chunk_seed_comes_from_seed_and_start() -> None:
    source = open_source(python_entry("make_recording"), Path("."))
    assert isinstance(source, PythonSource)

    first = source.load_chunk(0, 3, seed=5)
    again = source.load_chunk(0, 3, seed=5)
    source.load_chunk(3, 3, seed=5)
    source.load_chunk(0, 3, seed=6)

    sampler = source.sampler
    assert sampler.seeds[0] == sampler.seeds[1] == derive_seed(5, 0)
    assert len(set(sampler.seeds[1:])) == 3
    assert all(0 <= seed < 2**32 for seed in sampler.seeds)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert source.count(1234) == 1234


@pytest.mark.parametrize(
    ("kwargs", "got"),
    [
        ({"dtype": "float32"}, "float32 (2, 4, 4, 3)"),
        ({"shape": [4, 4]}, "uint8 (2, 4, 4)"),
        ({"shape": [4, 4, 4]}, "uint8 (2, 4, 4, 4)"),
    ],
)
def test_python_sample_of_wrong_type_names_model_and_what_came(
    kwargs: dict[str, Any], got: str
) -> None:
    source = open_source(python_entry("make_recording", **kwargs), Path("."))

    with pytest.raises(CatalogError) as info:
        source.load_chunk(0, 2, seed=0)

    message = str(info.value)
    assert "model 'py-model'" in message
    assert f"returned {got}" in message
    assert "expected a uint8 array of shape (2, h, w, 3)" in message


def test_python_sample_of_wrong_count_is_refused() -> None:
    source = open_source(python_entry("make_wrong_count"), Path("."))

    with pytest.raises(CatalogError, match=r"returned uint8 \(3, 4, 4, 3\)"):
        source.load_chunk(0, 2, seed=0)


def test_python_missing_module_names_model_factory_and_remedy() -> None:
    spec = SourceSpec(kind="python", factory="no_such_package_xyz.gen:make")

    with pytest.raises(CatalogError) as info:
        open_source(entry_for(spec, "gan-x"), Path("."))

    message = str(info.value)
    assert "model 'gan-x'" in message
    assert "'no_such_package_xyz.gen:make'" in message
    assert "install the package" in message


def test_python_missing_attribute_is_named() -> None:
    with pytest.raises(CatalogError, match="has no attribute 'make_nothing'"):
        open_source(python_entry("make_nothing"), Path("."))


def test_python_bad_kwargs_are_blamed_on_the_catalog() -> None:
    with pytest.raises(CatalogError, match="fix the source's kwargs"):
        open_source(python_entry("make_recording", colour="red"), Path("."))


def test_python_factory_must_return_a_sampler() -> None:
    with pytest.raises(CatalogError, match="returned str, which has no sample"):
        open_source(python_entry("make_not_a_sampler"), Path("."))


def test_python_digest_tracks_kwargs_and_weight_files(tmp_path: Path) -> None:
    weights = tmp_path / "weights.bin"
    weights.write_bytes(b"v1")
    entry = python_entry("make_weighted", weights=str(weights))
    before = open_source(entry, tmp_path).digest()
    assert open_source(entry, tmp_path).digest() == before

    weights.write_bytes(b"v2")
    assert open_source(entry, tmp_path).digest() != before

    other_kwargs = open_source(python_entry("make_recording", label=1), tmp_path).digest()
    assert other_kwargs != open_source(python_entry("make_recording", label=2), tmp_path).digest()


def test_python_missing_weight_file_is_reported(tmp_path: Path) -> None:
    source = open_source(python_entry("make_weighted", weights=str(tmp_path / "gone")), tmp_path)

    with pytest.raises(CatalogError, match="declares weight file .*gone, which does not exist"):
        source.digest()


def test_unknown_kind_is_refused() -> None:
    entry = entry_for(SourceSpec(kind="diffusers", path="pipe"))

    with pytest.raises(CatalogError, match="unknown source kind 'diffusers'"):
        open_source(entry, Path("."))

"""The demo zoo: prepared folders, a catalog that loads, and samplers that really sample."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from modelseek.catalog import Catalog, load_catalog
from modelseek.demo.prepare import MNIST_PER_DIGIT, QUERY_SEED, prepare_demo, sample_query_image
from modelseek.demo.samplers import PHOTOS, face_dcgan, lfw_crops, photo_variations
from modelseek.errors import CatalogError
from modelseek.images import decode_image
from modelseek.sources import open_source

METADATA_FIELDS = ("name", "description", "tags", "creator", "license", "architecture")


@pytest.fixture(scope="module")
def demo_catalog_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare_demo(tmp_path_factory.mktemp("demo"))


@pytest.fixture(scope="module")
def demo_catalog(demo_catalog_path: Path) -> Catalog:
    return load_catalog(demo_catalog_path)


def test_prepare_writes_500_white_on_black_digits_per_class(demo_catalog_path: Path) -> None:
    mnist = demo_catalog_path.parent / "mnist"

    assert sorted(p.name for p in mnist.iterdir()) == [str(digit) for digit in range(10)]
    for digit in range(10):
        files = sorted((mnist / str(digit)).glob("*.png"))
        assert len(files) == MNIST_PER_DIGIT
        assert files[0].name == "0000.png" and files[-1].name == "0499.png"

    seven = np.asarray(Image.open(mnist / "7" / "0000.png"))
    assert seven.shape == (28, 28) and seven.dtype == np.uint8
    assert seven.max() == 255 and np.median(seven) == 0


def test_prepare_is_idempotent(demo_catalog_path: Path) -> None:
    data_dir = demo_catalog_path.parent
    sample = data_dir / "mnist" / "3" / "0042.png"
    stamps = (sample.stat().st_mtime_ns, demo_catalog_path.stat().st_mtime_ns)

    assert prepare_demo(data_dir) == demo_catalog_path

    assert (sample.stat().st_mtime_ns, demo_catalog_path.stat().st_mtime_ns) == stamps
    assert not [p for p in data_dir.rglob(".*")]  # no temporary leftovers


def test_prepare_completes_a_missing_digit(tmp_path: Path) -> None:
    data_dir = tmp_path / "demo"
    (data_dir / "mnist").mkdir(parents=True)
    for digit in range(10):
        if digit != 4:
            # Stand-ins for digits already written: they must be left alone.
            (data_dir / "mnist" / str(digit)).mkdir()

    prepare_demo(data_dir)

    assert len(list((data_dir / "mnist" / "4").glob("*.png"))) == MNIST_PER_DIGIT
    assert not list((data_dir / "mnist" / "5").iterdir())


def test_demo_catalog_lists_real_models_with_metadata(demo_catalog: Catalog) -> None:
    ids = {entry.id for entry in demo_catalog}

    assert len(demo_catalog) >= 18
    assert {f"mnist-digit-{digit}" for digit in range(10)} <= ids
    assert {"face-dcgan-64", "photo-cat", "photo-coffee", "photo-temple", "photo-flower"} <= ids
    for entry in demo_catalog:
        assert all(getattr(entry, name) for name in METADATA_FIELDS), entry.id
        assert entry.resolution is not None and entry.links, entry.id

    face = demo_catalog.get("face-dcgan-64")
    assert (face.architecture, face.resolution, face.license) == ("DCGAN", 64, "MIT")
    assert face.source.factory == "modelseek.demo.samplers:face_dcgan"
    seven = demo_catalog.get("mnist-digit-7")
    assert seven.name == "Handwritten digit 7 (MNIST)"
    assert seven.description.startswith("handwritten digit seven, white ink on black")
    assert "digit" in seven.tags


def test_every_demo_source_opens_and_yields_a_chunk(demo_catalog: Catalog) -> None:
    for entry in demo_catalog:
        source = open_source(entry, demo_catalog.base_dir)

        images = source.load_chunk(0, 3, seed=1)

        side = entry.resolution
        assert [image.shape for image in images] == [(side, side, 3)] * 3, entry.id
        assert all(image.dtype == np.uint8 for image in images), entry.id
        assert len(source.digest()) == 64


def test_face_dcgan_is_deterministic_per_seed_and_varied() -> None:
    sampler = face_dcgan()

    faces = sampler.sample(6, seed=0)

    assert faces.shape == (6, 64, 64, 3) and faces.dtype == np.uint8
    assert np.array_equal(faces, sampler.sample(6, seed=0))
    assert not np.array_equal(faces, sampler.sample(6, seed=1))
    assert faces.std() > 20  # not constant, not collapsed
    assert np.abs(faces[0].astype(int) - faces[1]).mean() > 10  # two different faces
    assert [path.name for path in sampler.weight_files()] == ["weights.tar"]
    assert all(path.is_file() for path in sampler.weight_files())


@pytest.mark.parametrize("name", sorted(PHOTOS))
def test_every_bundled_photo_loads_offline(name: str) -> None:
    views = photo_variations(name, size=32).sample(4, seed=2)

    assert views.shape == (4, 32, 32, 3) and views.dtype == np.uint8
    assert np.array_equal(views, photo_variations(name, size=32).sample(4, seed=2))
    assert len({view.tobytes() for view in views}) == 4


def test_photo_variations_stay_close_to_the_photo() -> None:
    cat = photo_variations("chelsea", size=48).sample(32, seed=0).astype(float)
    coffee = photo_variations("coffee", size=48).sample(32, seed=0).astype(float)

    within = np.abs(cat[:16].mean(axis=0) - cat[16:].mean(axis=0)).mean()
    between = np.abs(cat.mean(axis=0) - coffee.mean(axis=0)).mean()

    assert within < between / 2


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"name": "eagle"}, "unknown demo photo 'eagle'"),
        ({"name": "coffee", "crop": 0.0}, "expected 0 < crop <= 1"),
        ({"name": "coffee", "size": 4}, "8 <= size <= 1024"),
    ],
)
def test_photo_variations_rejects_bad_arguments(kwargs: dict, expected: str) -> None:
    with pytest.raises(CatalogError, match=expected):
        photo_variations(**kwargs)


def test_lfw_faces_and_backgrounds_differ() -> None:
    faces = lfw_crops(faces=True, size=32).sample(64, seed=0).astype(float)
    backgrounds = lfw_crops(faces=False, size=32).sample(64, seed=0).astype(float)

    assert faces.shape == (64, 32, 32, 3)
    # Faces are full of edges (eyes, mouth, hairline); the background crops are smooth
    # patches: measured 15 against 3 mean absolute horizontal gradient.
    face_edges = np.abs(np.diff(faces, axis=2)).mean()
    background_edges = np.abs(np.diff(backgrounds, axis=2)).mean()
    assert face_edges > 3 * background_edges


@pytest.mark.parametrize("model_id", ["photo-cat", "mnist-digit-3"])
def test_query_image_is_a_png_sample_of_the_model(
    demo_catalog_path: Path, tmp_path: Path, model_id: str
) -> None:
    path = sample_query_image(demo_catalog_path, model_id, tmp_path / "queries")

    assert path == tmp_path / "queries" / f"{model_id}-{QUERY_SEED}.png"
    entry = load_catalog(demo_catalog_path).get(model_id)
    expected = open_source(entry, demo_catalog_path.parent).load_chunk(0, 1, QUERY_SEED)[0]
    assert np.array_equal(decode_image(path.read_bytes()), expected)


def test_query_image_of_an_unknown_model_names_it(demo_catalog_path: Path, tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="no model with id 'nobody'"):
        sample_query_image(demo_catalog_path, "nobody", tmp_path)

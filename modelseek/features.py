"""Feature spaces: encoders mapping images and texts to L2-normalised `d`-dim features."""

import functools
import hashlib
import logging
import math
import os
import re
import socket
import threading
import urllib.parse
import urllib.request
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from modelseek.errors import EncoderUnavailable
from modelseek.lite import (
    LITE_ENCODER,
    LITE_MODEL,
    lite_space_id,
    load_lite_model,
    why_lite_unavailable,
)

logger = logging.getLogger(__name__)

DEFAULT_ENCODER = "clip:ViT-B-32:laion2b_s34b_b79k"
HERMETIC_ENCODER = "hermetic"

# encoders/hermetic-tiny.json: a 2-layer ViT (64 px, patch 16, width 128) and a 2-layer text
# tower. With random weights a class token carries the same value for every image, and so
# did the features (cosine 0.94 between models of the demo zoo); the config averages the
# patch tokens instead and skips the pre-LayerNorm, which spreads features by content
# (cosine 0.36) and lets the hermetic space tell models apart in tests.
HERMETIC_MODEL = "hermetic-tiny"
HERMETIC_SEED = 0
ENCODER_CONFIG_DIR = Path(__file__).parent / "encoders"
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")
ENCODE_BATCH_SIZE = 256
NETWORK_PROBE_TIMEOUT_S = 2.0
ID_DIGEST_CHARS = 12

# Where open_clip's registry puts the default encoder's weights. Kept here so that
# `pick_demo_encoder` can look in the cache without importing open_clip (about 3 s more than
# torch); a unit test checks it against the registry.
DEFAULT_ENCODER_PRETRAINED_CFG = {"hf_hub": "laion/CLIP-ViT-B-32-laion2B-s34B-b79K/"}

_ACCEPTED_FORMS = (
    f"'{LITE_ENCODER}', '{HERMETIC_ENCODER}', 'clip:MODEL:TAG' (an open_clip pretrained tag, e.g. "
    f"'{DEFAULT_ENCODER}') or 'clip:MODEL:PATH' (a local checkpoint, e.g. "
    "'clip:ViT-B-32:/path/to/open_clip_pytorch_model.bin')"
)
_TAG_PATTERN = re.compile(r"[A-Za-z0-9_.\-]+")
_OPEN_CLIP_SCHEMAS = ("hf-hub", "local-dir")
_HF_WEIGHTS_NAME = "open_clip_pytorch_model.bin"
_HF_SAFE_WEIGHTS_NAME = "open_clip_model.safetensors"
_URL_CACHE_DIR = Path("~/.cache/clip")


@dataclass(frozen=True)
class EncoderSpec:
    """Which encoder builds a feature space; `parse_encoder_spec` makes one from text.

    Attributes:
        kind: "clip" (an open_clip model with trained weights), "lite" (EfficientNet-Lite0 and
            MiniLM joined by trained projections, offline; see `modelseek.lite`) or
            "hermetic" (a tiny open_clip model with fixed-seed random weights, for tests).
        model: an open_clip model name, e.g. "ViT-B-32", "effnet-lite0+minilm" or
            "hermetic-tiny".
        pretrained: an open_clip pretrained tag, an absolute checkpoint path, or None.
    """

    kind: str
    model: str
    pretrained: str | None

    @property
    def checkpoint_path(self) -> Path | None:
        """The local checkpoint file when `pretrained` is a path, else None."""
        if self.pretrained is None or not _looks_like_path(self.pretrained):
            return None
        return Path(self.pretrained)

    def __str__(self) -> str:
        if self.kind == "hermetic":
            return HERMETIC_ENCODER
        if self.kind == "lite":
            return LITE_ENCODER
        return f"{self.kind}:{self.model}:{self.pretrained}"


def parse_encoder_spec(text: str) -> EncoderSpec:
    """Parse an encoder as users write it (CLI `--encoder`, configuration).

    A checkpoint path is resolved to an absolute path here, because Ray workers run in another
    working directory.

    Args:
        text: "lite", "hermetic", "clip:MODEL:TAG" or "clip:MODEL:PATH"; a path is told from a
            tag by a path separator, a leading "~" or ".", or a checkpoint suffix (.pt, .pth,
            .bin, .safetensors).

    Raises:
        TypeError: `text` is not a string.
        ValueError: `text` has none of the accepted forms.
    """
    if not isinstance(text, str):
        raise TypeError(f"encoder must be a str, got {type(text).__name__}: {text!r}")

    stripped = text.strip()
    if stripped == HERMETIC_ENCODER:
        return EncoderSpec(kind="hermetic", model=HERMETIC_MODEL, pretrained=None)
    if stripped == LITE_ENCODER:
        return EncoderSpec(kind="lite", model=LITE_MODEL, pretrained=None)

    kind, _, rest = stripped.partition(":")
    model, _, pretrained = rest.partition(":")
    if kind != "clip" or not model or not pretrained or model in _OPEN_CLIP_SCHEMAS:
        raise ValueError(f"encoder {text!r} is not understood; expected {_ACCEPTED_FORMS}")

    if _looks_like_path(pretrained):
        pretrained = str(Path(pretrained).expanduser().resolve())
    elif not _TAG_PATTERN.fullmatch(pretrained):
        raise ValueError(
            f"encoder {text!r}: {pretrained!r} is neither a pretrained tag (letters, digits, "
            f"'_', '-', '.') nor a checkpoint path; expected {_ACCEPTED_FORMS}"
        )
    # open_clip names built-in models with '-' and maps '/' to it: one model, one id.
    return EncoderSpec(kind="clip", model=model.replace("/", "-"), pretrained=pretrained)


def _looks_like_path(pretrained: str) -> bool:
    return (
        "/" in pretrained
        or "\\" in pretrained
        or pretrained.startswith(("~", "."))
        or pretrained.lower().endswith(CHECKPOINT_SUFFIXES)
    )


class FeatureSpace:
    """An image and text encoder whose features are comparable by cosine similarity.

    Build one with `load_feature_space`; encoding may be called from several threads.

    Attributes:
        id: the feature space recorded in index manifests, e.g.
            "open_clip/ViT-B-32/laion2b_s34b_b79k", "open_clip/ViT-B-32/ckpt-<12 hex of the
            file's sha256>", "open_clip/hermetic-tiny/<12 hex of the state dict's sha256>" or
            "lite/effnet-lite0+minilm/<12 hex of the projection file's sha256>". Two spaces
            with one id give the same features.
        dim: `d`, the feature dimension.
        spec: the encoder this space was built from.
        device: the torch device the model runs on.
        temperature: `τ` of the contrastive loss the space was trained with (1 / exp of the
            model's `logit_scale`): 0.01 for OpenAI's and LAION's CLIP models. Scores divide
            cosines by it, so it belongs to the space, not to the service.
        preprocess_cfg: open_clip's image preprocessing settings of the model (size, mean,
            std, interpolation, resize_mode).
        model: the open_clip model (or the lite space's `LiteModel`), in eval mode (e.g. to
            save its weights as a checkpoint).
    """

    def __init__(
        self,
        spec: EncoderSpec,
        space_id: str,
        model: torch.nn.Module,
        tokenizer: Callable[[list[str]], torch.Tensor],
        dim: int,
        device: torch.device,
    ) -> None:
        self.spec = spec
        self.id = space_id
        self.dim = dim
        self.device = device
        self.temperature = float(torch.exp(-model.logit_scale.detach().float()).item())
        self.preprocess_cfg: dict[str, Any] = dict(model.visual.preprocess_cfg)
        self.model = model.eval()
        self._tokenizer = tokenizer
        self._check_preprocess_cfg()

    def __repr__(self) -> str:
        return f"FeatureSpace(id={self.id!r}, dim={self.dim}, device={str(self.device)!r})"

    def encode_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Encode RGB images of any sizes.

        Args:
            images: `n` uint8 arrays of shape (h, w, 3), RGB, sizes may differ; or one
                (n, h, w, 3) uint8 array.

        Returns:
            (n, d) float32, each row of unit L2 norm; (0, d) when `n` = 0.

        Raises:
            TypeError: an image is not a uint8 numpy array.
            ValueError: an image is not of shape (h, w, 3) with h, w >= 1.
        """
        _check_images(images)
        features = np.empty((len(images), self.dim), dtype=np.float32)
        for start in range(0, len(images), ENCODE_BATCH_SIZE):
            batch = images[start : start + ENCODE_BATCH_SIZE]
            with torch.inference_mode():
                pixels = preprocess_images(batch, self.preprocess_cfg, self.device)
                features[start : start + len(batch)] = _unit_rows(self.model.encode_image(pixels))
        return features

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Encode texts; the tokenizer truncates each to the model's context (77 tokens for CLIP).

        Args:
            texts: `n` strings.

        Returns:
            (n, d) float32, each row of unit L2 norm; (0, d) when `n` = 0.

        Raises:
            TypeError: `texts` is a single string, or holds something that is not a string.
        """
        _check_texts(texts)
        features = np.empty((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(texts), ENCODE_BATCH_SIZE):
            batch = list(texts[start : start + ENCODE_BATCH_SIZE])
            with torch.inference_mode():
                tokens = self._tokenizer(batch).to(self.device)
                features[start : start + len(batch)] = _unit_rows(self.model.encode_text(tokens))
        return features

    def _check_preprocess_cfg(self) -> None:
        size = self.preprocess_cfg["size"]
        square = isinstance(size, int) or (len(size) == 2 and size[0] == size[1])
        if not square or self.preprocess_cfg.get("resize_mode", "shortest") == "longest":
            raise EncoderUnavailable(
                f"{self.spec}: image preprocessing {self.preprocess_cfg} is not supported; "
                "expected a square size and resize_mode 'shortest' or 'squash'"
            )


def _unit_rows(features: torch.Tensor) -> np.ndarray:
    # Normalised again in float32 so that half-precision models also give unit rows.
    return F.normalize(features.float(), dim=-1).cpu().numpy()


def _check_images(images: Sequence[np.ndarray]) -> None:
    if isinstance(images, np.ndarray) and images.ndim == 3:
        raise TypeError(
            f"images must be a sequence of (h, w, 3) arrays, got one array of shape "
            f"{images.shape}; wrap a single image in a list"
        )
    for i, image in enumerate(images):
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
            kind = getattr(image, "dtype", type(image).__name__)
            raise TypeError(
                f"images[{i}] is {kind}; expected a uint8 numpy array (decode the image and "
                "convert it to 8-bit RGB first)"
            )
        if image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 1:
            raise ValueError(
                f"images[{i}] has shape {image.shape}; expected (h, w, 3) RGB with h, w >= 1 "
                "(convert gray or RGBA images to RGB first)"
            )


def _check_texts(texts: Sequence[str]) -> None:
    if isinstance(texts, str):
        raise TypeError(f"texts must be a sequence of strings, got one string {texts!r}")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] is {type(text).__name__}; expected str")


def preprocess_images(
    images: Sequence[np.ndarray], preprocess_cfg: dict[str, Any], device: torch.device | str
) -> torch.Tensor:
    """Batch version of open_clip's evaluation preprocessing, in torch instead of PIL.

    Images of one size are resized together: the shortest side to the model's size with
    antialiasing (as PIL does when it shrinks), in PIL's two passes rounded to 8-bit levels,
    then center-cropped and normalised with the model's mean and std. The result agrees with
    open_clip's PIL transform to within one 8-bit level per pass; most pixels are equal.

    Args:
        images: `n` uint8 (h, w, 3) RGB arrays (already checked), or one (n, h, w, 3) array.
        preprocess_cfg: open_clip's `model.visual.preprocess_cfg`; a square `size`,
            `resize_mode` "shortest" or "squash", `interpolation` "bicubic" or "bilinear".
        device: where the pixels are prepared and returned.

    Returns:
        (n, 3, s, s) float32 on `device`, `s` the model's image size.
    """
    size = preprocess_cfg["size"]
    side = size if isinstance(size, int) else int(size[0])
    pixels = torch.empty((len(images), 3, side, side), dtype=torch.float32, device=device)

    shapes: dict[tuple[int, int], list[int]] = {}
    for i, image in enumerate(images):
        shapes.setdefault(image.shape[:2], []).append(i)

    for indices in shapes.values():
        stacked = np.stack([images[i] for i in indices])
        batch = torch.from_numpy(stacked).to(device).permute(0, 3, 1, 2).float()
        pixels[torch.tensor(indices, device=device)] = _resize_and_crop(
            batch,
            side,
            resize_mode=preprocess_cfg.get("resize_mode", "shortest"),
            interpolation=preprocess_cfg.get("interpolation", "bicubic"),
        )

    mean = torch.tensor(preprocess_cfg["mean"], device=device).view(1, 3, 1, 1)
    std = torch.tensor(preprocess_cfg["std"], device=device).view(1, 3, 1, 1)
    return (pixels / 255.0 - mean) / std


def _resize_and_crop(
    batch: torch.Tensor, side: int, resize_mode: str, interpolation: str
) -> torch.Tensor:
    height, width = batch.shape[-2:]
    if resize_mode == "squash":
        new_size = (side, side)
    elif height <= width:
        # torchvision's rule for an int size: the long side is truncated, not rounded.
        new_size = (side, int(side * width / height))
    else:
        new_size = (int(side * height / width), side)

    # Width first, then height, each rounded and clipped to 8-bit levels: PIL's order. One 2-D
    # pass would keep the overshoot that PIL clips after the first pass, and differs from it by
    # up to 14 levels on noisy images; each pass here agrees with PIL's to one level (PIL
    # computes in fixed point).
    mode = "bilinear" if interpolation == "bilinear" else "bicubic"
    for size in ((height, new_size[1]), new_size):
        if size != tuple(batch.shape[-2:]):
            batch = F.interpolate(batch, size=size, mode=mode, align_corners=False, antialias=True)
            batch = batch.round_().clamp_(0, 255)

    top = int(round((new_size[0] - side) / 2.0))
    left = int(round((new_size[1] - side) / 2.0))
    return batch[:, :, top : top + side, left : left + side]


def load_feature_space(spec: str | EncoderSpec, device: str = "cpu") -> FeatureSpace:
    """Build a feature space, once per process for each (spec, device).

    Pretrained tags load from the local open_clip / Hugging Face cache without a network call
    when cached; otherwise they are downloaded, unless `HF_HUB_OFFLINE` is set or the hub
    cannot be reached within `NETWORK_PROBE_TIMEOUT_S`, in which case this fails at once.

    The first call may lower torch's (process-wide) thread count to the CPUs this process may
    use; see `limit_torch_threads`.

    Args:
        spec: an encoder as `parse_encoder_spec` accepts it, or an `EncoderSpec`.
        device: a torch device, e.g. "cpu" or "cuda:0".

    Raises:
        ValueError: `spec` or `device` is not understood.
        EncoderUnavailable: the model, its weights or the device are not available; the
            message says how to point at a local checkpoint.
    """
    if isinstance(spec, str):
        spec = parse_encoder_spec(spec)
    if not isinstance(spec, EncoderSpec):
        raise TypeError(f"spec must be a str or EncoderSpec, got {type(spec).__name__}")
    if spec.kind not in _BUILDERS:
        raise ValueError(
            f"encoder kind {spec.kind!r} is unknown; expected one of {sorted(_BUILDERS)}"
        )

    torch_device = _check_device(device)
    with _load_lock:
        limit_torch_threads()
        return _load_cached(spec, torch_device)


_load_lock = threading.Lock()


@functools.cache
def _load_cached(spec: EncoderSpec, device: torch.device) -> FeatureSpace:
    space = _BUILDERS[spec.kind](spec, device)
    logger.info("feature space %s loaded on %s (d=%d)", space.id, device, space.dim)
    return space


@functools.cache
def limit_torch_threads() -> int:
    """Lower torch's intra-op threads to the CPUs this process may use, once; returns the count.

    torch starts one thread per core of the machine, but a container's CPU quota (cgroup v2
    `cpu.max`) or a CPU affinity mask may allow fewer, and more threads than CPUs makes
    encoding slower. `OMP_NUM_THREADS` or `MKL_NUM_THREADS` (Ray sets the former from
    `num_cpus`) win: then nothing changes.
    """
    threads = torch.get_num_threads()
    if os.environ.get("OMP_NUM_THREADS") or os.environ.get("MKL_NUM_THREADS"):
        return threads
    usable = _usable_cpus()
    if threads > usable:
        torch.set_num_threads(usable)
        logger.info("torch threads lowered from %d to %d, the CPUs usable here", threads, usable)
    return min(threads, usable)


def _usable_cpus() -> int:
    if hasattr(os, "sched_getaffinity"):
        usable = len(os.sched_getaffinity(0))
    else:
        usable = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
    except (OSError, ValueError):
        return usable
    if quota != "max":
        usable = min(usable, max(1, math.ceil(int(quota) / int(period))))
    return usable


def _check_device(device: str) -> torch.device:
    try:
        torch_device = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"device {device!r} is not a torch device; expected e.g. 'cpu'") from err
    if torch_device.type == "cuda" and not torch.cuda.is_available():
        raise EncoderUnavailable(f"device {device!r} asked for, but torch sees no CUDA device")
    return torch_device


def _build_hermetic(spec: EncoderSpec, device: torch.device) -> FeatureSpace:
    open_clip = _import_open_clip()

    # A private RNG state: the weights depend on the seed alone and callers' draws do not move.
    with torch.random.fork_rng(devices=[]), _no_implicit_logging_config():
        torch.manual_seed(HERMETIC_SEED)
        model, _, _ = open_clip.create_model_and_transforms(spec.model, pretrained=None)
    space_id = f"open_clip/{spec.model}/{_state_dict_digest(model)}"

    return FeatureSpace(
        spec=spec,
        space_id=space_id,
        model=model.to(device),
        tokenizer=open_clip.get_tokenizer(spec.model),
        dim=open_clip.get_model_config(spec.model)["embed_dim"],
        device=device,
    )


def _build_clip(spec: EncoderSpec, device: torch.device) -> FeatureSpace:
    checkpoint = spec.checkpoint_path
    if checkpoint is not None:
        _check_checkpoint(checkpoint)

    open_clip = _import_open_clip()
    if spec.model not in open_clip.list_models():
        raise EncoderUnavailable(
            f"open_clip has no model {spec.model!r}; known models include "
            f"{open_clip.list_models()[:8]} (see open_clip.list_models())"
        )

    if checkpoint is not None:
        pretrained, preprocess_kwargs = str(checkpoint), {}
    else:
        pretrained, preprocess_kwargs = _resolve_tag(open_clip, spec)
    space_id = _clip_space_id(spec)

    try:
        with _no_implicit_logging_config():
            model, _, _ = open_clip.create_model_and_transforms(
                spec.model, pretrained=pretrained, device=device, **preprocess_kwargs
            )
    except Exception as err:
        raise EncoderUnavailable(
            f"{spec}: open_clip could not load weights {pretrained!r} into {spec.model!r} "
            f"({type(err).__name__}: {err}); {_local_checkpoint_hint(spec.model)}"
        ) from err

    return FeatureSpace(
        spec=spec,
        space_id=space_id,
        model=model,
        tokenizer=open_clip.get_tokenizer(spec.model),
        dim=open_clip.get_model_config(spec.model)["embed_dim"],
        device=device,
    )


def _build_lite(spec: EncoderSpec, device: torch.device) -> FeatureSpace:
    model, tokenizer = load_lite_model()
    return FeatureSpace(
        spec=spec,
        space_id=model.space_id,
        model=model.to(device),
        tokenizer=tokenizer,
        dim=model.dim,
        device=device,
    )


_BUILDERS: dict[str, Callable[[EncoderSpec, torch.device], FeatureSpace]] = {
    "clip": _build_clip,
    "hermetic": _build_hermetic,
    "lite": _build_lite,
}


def _import_open_clip() -> ModuleType:
    # Imported on first use: it costs about 3 s beyond torch, and parsing specs, reading
    # feature space ids and picking the demo encoder need none of it.
    import open_clip

    if HERMETIC_MODEL not in open_clip.list_models():
        open_clip.add_model_config(ENCODER_CONFIG_DIR)
    return open_clip


@contextmanager
def _no_implicit_logging_config() -> Iterator[None]:
    # open_clip logs through the root logger; in a process that configured no logging, the
    # first such record would install a stderr handler for the whole process (the implicit
    # `logging.basicConfig` of `logging.info`). A temporary NullHandler prevents that.
    root = logging.getLogger()
    if root.handlers:
        yield
        return
    handler = logging.NullHandler()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)


def _resolve_tag(open_clip: ModuleType, spec: EncoderSpec) -> tuple[str, dict[str, Any]]:
    """What to hand open_clip for a tag: a cached file (no network) or the tag (download).

    Returns:
        (pretrained, preprocess_kwargs): a cached file comes with the tag's preprocessing as
        `create_model_and_transforms` arguments, since open_clip applies it only when it is
        given the tag itself.
    """
    pretrained_cfg = open_clip.get_pretrained_cfg(spec.model, spec.pretrained)
    if not pretrained_cfg:
        raise EncoderUnavailable(
            f"open_clip has no pretrained tag {spec.pretrained!r} for {spec.model!r}; known "
            f"tags: {open_clip.list_pretrained_tags_by_model(spec.model)}; "
            f"or {_local_checkpoint_hint(spec.model)}"
        )

    cached = find_cached_checkpoint(pretrained_cfg)
    if cached is not None:
        logger.info("loading %s from the local cache: %s", spec, cached)
        preprocess_kwargs = {
            "image_mean": pretrained_cfg.get("mean"),
            "image_std": pretrained_cfg.get("std"),
            "image_interpolation": pretrained_cfg.get("interpolation"),
            "image_resize_mode": pretrained_cfg.get("resize_mode"),
        }
        return str(cached), preprocess_kwargs

    reason = _why_no_download(pretrained_cfg)
    if reason:
        raise EncoderUnavailable(
            f"the weights of {spec} ({_weights_source(pretrained_cfg)}) are not in the local "
            f"cache and cannot be downloaded now: {reason}. Download them once with network "
            f"access, or {_local_checkpoint_hint(spec.model)}"
        )
    logger.info("downloading the weights of %s from %s", spec, _weights_source(pretrained_cfg))
    return spec.pretrained, {}


def _local_checkpoint_hint(model: str) -> str:
    return (
        f"point at a local checkpoint with --encoder clip:{model}:/path/to/"
        f"{_HF_WEIGHTS_NAME} (a .pt, .pth, .bin or .safetensors file of this model)"
    )


def _weights_source(pretrained_cfg: dict[str, Any]) -> str:
    if pretrained_cfg.get("hf_hub"):
        return f"huggingface.co/{pretrained_cfg['hf_hub'].rstrip('/')}"
    return pretrained_cfg.get("url", "")


def find_cached_checkpoint(pretrained_cfg: dict[str, Any]) -> Path | None:
    """The local file of an open_clip pretrained config, if downloaded before; no network.

    Looks where open_clip downloads: the Hugging Face hub cache (`HF_HOME`, `HF_HUB_CACHE`)
    for `hf_hub` configs, preferring the safetensors file as open_clip does, and
    `~/.cache/clip` for `url` configs.

    Args:
        pretrained_cfg: an entry of open_clip's registry (`open_clip.get_pretrained_cfg`).
    """
    hf_hub = pretrained_cfg.get("hf_hub", "")
    if hf_hub:
        from huggingface_hub import try_to_load_from_cache

        repo_id, filename = os.path.split(hf_hub)
        filename = filename or _HF_WEIGHTS_NAME
        candidates = [_safetensors_name(filename), filename]
        for candidate in candidates:
            found = try_to_load_from_cache(repo_id, candidate)
            if isinstance(found, str):
                return Path(found)
        return None

    url = pretrained_cfg.get("url", "")
    if url:
        target = _URL_CACHE_DIR.expanduser() / os.path.basename(url)
        return target if target.is_file() else None
    return None


def _safetensors_name(filename: str) -> str:
    # The safetensors twin open_clip looks for first (its `_get_safe_alternatives`).
    if filename == _HF_WEIGHTS_NAME:
        return _HF_SAFE_WEIGHTS_NAME
    if filename.endswith((".bin", ".pth")):
        return filename[:-4] + ".safetensors"
    return filename


def _why_no_download(pretrained_cfg: dict[str, Any]) -> str:
    """Why a download cannot start now, or "" when it may; takes at most the probe timeout."""
    if hub_offline():
        return "HF_HUB_OFFLINE is set"
    if pretrained_cfg.get("hf_hub"):
        from huggingface_hub import constants

        url = constants.ENDPOINT
    else:
        url = pretrained_cfg.get("url", "")
    if not can_reach(url):
        host = urllib.parse.urlsplit(url).hostname
        return f"{host} cannot be reached within {NETWORK_PROBE_TIMEOUT_S} s"
    return ""


def hub_offline() -> bool:
    """Whether the user asked for no network (`HF_HUB_OFFLINE`, read now, not at import)."""
    value = os.environ.get("HF_HUB_OFFLINE", "").strip().upper()
    return value in {"1", "ON", "YES", "TRUE"}


def can_reach(url: str, timeout_s: float = NETWORK_PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to `url`'s host (or the proxy for it) opens within `timeout_s`.

    Without this, a machine with no network spends about 46 s in the hub client's retries
    before a missing checkpoint fails. The probe runs in a daemon thread because name lookup
    ignores socket timeouts.
    """
    parts = urllib.parse.urlsplit(url)
    proxy = urllib.request.getproxies().get(parts.scheme)
    target = urllib.parse.urlsplit(proxy) if proxy else parts
    if not target.hostname:
        return False
    port = target.port or (443 if target.scheme == "https" else 80)

    reached = threading.Event()

    def probe() -> None:
        try:
            with socket.create_connection((target.hostname, port), timeout=timeout_s):
                reached.set()
        except OSError:
            pass

    thread = threading.Thread(target=probe, name="modelseek-network-probe", daemon=True)
    thread.start()
    thread.join(timeout_s)
    return reached.is_set()


def _check_checkpoint(path: Path) -> Path:
    if not path.is_file():
        raise EncoderUnavailable(
            f"checkpoint {str(path)!r} does not exist or is not a file; expected a local "
            "open_clip checkpoint (.pt, .pth, .bin or .safetensors) of the named model"
        )
    return path


def _clip_space_id(spec: EncoderSpec) -> str:
    checkpoint = spec.checkpoint_path
    if checkpoint is None:
        return f"open_clip/{spec.model}/{spec.pretrained}"
    digest = _file_digest(_check_checkpoint(checkpoint))
    return f"open_clip/{spec.model}/ckpt-{digest[:ID_DIGEST_CHARS]}"


def _file_digest(path: Path) -> str:
    stat = path.stat()
    return _file_digest_cached(path, stat.st_size, stat.st_mtime_ns)


@functools.cache
def _file_digest_cached(path: Path, size: int, mtime_ns: int) -> str:
    # size and mtime are part of the key so that a rewritten checkpoint is hashed again.
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def _state_dict_digest(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{flat.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:ID_DIGEST_CHARS]


def describe_feature_space(spec: str | EncoderSpec) -> str:
    """The id a feature space will have, loading no weights where the id does not need them.

    A pretrained tag costs nothing, a checkpoint path or the lite space one hash of a file
    (cached per process), and the hermetic encoder a build of its tiny model (cached per
    process).

    Raises:
        ValueError: `spec` is not understood.
        EncoderUnavailable: a checkpoint path, or the lite space's projection file, does not
            exist.
    """
    if isinstance(spec, str):
        spec = parse_encoder_spec(spec)
    if spec.kind == "clip":
        return _clip_space_id(spec)
    if spec.kind == "lite":
        return lite_space_id()
    return load_feature_space(spec).id


def pick_demo_encoder() -> str:
    """The encoder for the demo: the default one if its weights are cached, else the lite one.

    The hermetic encoder is the last resort, when the lite space's weight packages are not
    installed. Never touches the network and imports no open_clip or tower weights, so it
    answers in well under a second.
    """
    if find_cached_checkpoint(DEFAULT_ENCODER_PRETRAINED_CFG) is not None:
        return DEFAULT_ENCODER

    remedy = (
        "For CLIP features pass --encoder with a pretrained tag (downloaded on first use when "
        f"online), e.g. --encoder {DEFAULT_ENCODER}, or with a local checkpoint: "
        "--encoder clip:ViT-B-32:/path/to/open_clip_pytorch_model.bin"
    )
    missing = f"the weights of {DEFAULT_ENCODER} are not in the local Hugging Face cache"
    lite_problem = why_lite_unavailable()
    if not lite_problem:
        warnings.warn(
            f"{missing}, so the demo runs with the {LITE_ENCODER!r} encoder: EfficientNet-Lite0 "
            "image and MiniLM text features joined by projections trained on a few thousand "
            "captioned emoji, clip art, stamps and digits; rankings are meaningful but coarser "
            f"than CLIP's, and text queries far from that vocabulary rank poorly. {remedy}",
            UserWarning,
            stacklevel=2,
        )
        return LITE_ENCODER

    warnings.warn(
        f"{missing} and the {LITE_ENCODER!r} encoder is unavailable ({lite_problem}), so the "
        f"demo runs with the {HERMETIC_ENCODER!r} encoder: features from random weights, whose "
        f"text rankings are not meaningful. {remedy}",
        UserWarning,
        stacklevel=2,
    )
    return HERMETIC_ENCODER

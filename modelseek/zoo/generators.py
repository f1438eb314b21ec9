"""Small 28x28 generators of the evaluation zoo: a DCGAN and a convolutional VAE, CPU training.

Both nets are trained here on a few hundred to a few thousand grayscale images of one class
(or a few) and saved as one safetensors file whose metadata names the architecture, so that a
catalog entry needs only the file's path: `modelseek.zoo.generators:load_generator`.
"""

import functools
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from modelseek.errors import CatalogError

logger = logging.getLogger(__name__)

IMAGE_SIDE = 28
_BASE_SIDE = IMAGE_SIDE // 4  # two stride-2 (transposed) convolutions span 7 -> 28
FORMAT = "modelseek-zoo-generator/1"
# The whole config sits under one metadata key: safetensors writes several keys in a random
# order, and a rebuild must give byte-identical files (their digest fingerprints the model).
CONFIG_KEY = "modelseek_zoo_generator"


@dataclass(frozen=True)
class TrainSettings:
    """How long and how one generator trains.

    Attributes:
        epochs: passes over the training images.
        batch_size: images per optimiser step.
        latent_dim: the size of the latent code z.
        width: channels of the widest convolution (the first of the decoder).
    """

    epochs: int
    batch_size: int = 64
    latent_dim: int = 32
    width: int = 64


class Decoder(nn.Module):
    """z (n, latent_dim) -> (n, 1, 28, 28) logits: linear to 7x7, two transposed convolutions.

    The DCGAN's generator and the VAE's decoder share this shape; the DCGAN adds batch
    normalisation (its training needs it), the VAE does not (its samples come from N(0, I)).
    """

    def __init__(self, latent_dim: int, width: int, batch_norm: bool) -> None:
        super().__init__()
        norm: Callable[[int], nn.Module] = nn.BatchNorm2d if batch_norm else nn.Identity  # type: ignore[assignment]
        self.project = nn.Linear(latent_dim, width * _BASE_SIDE * _BASE_SIDE)
        self.width = width
        self.body = nn.Sequential(
            norm(width),
            nn.ReLU(),
            nn.ConvTranspose2d(width, width // 2, 4, stride=2, padding=1),
            norm(width // 2),
            nn.ReLU(),
            nn.ConvTranspose2d(width // 2, 1, 4, stride=2, padding=1),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        grid = self.project(z).view(-1, self.width, _BASE_SIDE, _BASE_SIDE)
        return self.body(grid)


class Encoder(nn.Module):
    """(n, 1, 28, 28) -> (n, out_dim): two stride-2 convolutions, then a linear map."""

    def __init__(self, width: int, out_dim: int, leaky: bool) -> None:
        super().__init__()
        activation = nn.LeakyReLU(0.2) if leaky else nn.ReLU()
        self.body = nn.Sequential(
            nn.Conv2d(1, width // 2, 4, stride=2, padding=1),
            activation,
            nn.Conv2d(width // 2, width, 4, stride=2, padding=1),
            activation,
            nn.Flatten(),
            nn.Linear(width * _BASE_SIDE * _BASE_SIDE, out_dim),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images)


def train_dcgan(images: np.ndarray, settings: TrainSettings, seed: int) -> Decoder:
    """A DCGAN trained on `images` (Adam 2e-4, beta1 0.5, one-sided label smoothing).

    Args:
        images: (n, 28, 28) uint8 grayscale training images.
        settings: epochs, batch size, latent size, width.
        seed: fixes initialisation, batch order and noise: the result is a pure function of
            the inputs on a given machine and torch thread count.

    Returns:
        The generator in eval mode; its outputs are logits of tanh pixels in [-1, 1].
    """
    torch.manual_seed(seed)
    generator = Decoder(settings.latent_dim, settings.width, batch_norm=True)
    critic = Encoder(settings.width, 1, leaky=True)
    optimisers = [
        torch.optim.Adam(net.parameters(), lr=2e-4, betas=(0.5, 0.999))
        for net in (generator, critic)
    ]
    pixels = torch.from_numpy(images).float().div(127.5).sub(1.0).unsqueeze(1)
    rng = torch.Generator().manual_seed(seed)

    for batch in _batches(pixels, settings, rng):
        noise = torch.randn(len(batch), settings.latent_dim, generator=rng)
        fake = torch.tanh(generator(noise))

        # Real targets of 0.9 keep the critic from saturating on the few images of one class,
        # the usual cause of collapse at this scale.
        real_logits, fake_logits = critic(batch), critic(fake.detach())
        critic_loss = F.binary_cross_entropy_with_logits(
            real_logits, torch.full_like(real_logits, 0.9)
        ) + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
        _step(optimisers[1], critic_loss)

        fooled = critic(fake)
        generator_loss = F.binary_cross_entropy_with_logits(fooled, torch.ones_like(fooled))
        _step(optimisers[0], generator_loss)

    return generator.eval()


class VAE(nn.Module):
    """A convolutional VAE: Gaussian posterior, Bernoulli pixels, standard normal prior."""

    def __init__(self, latent_dim: int, width: int) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.encoder = Encoder(width, 2 * latent_dim, leaky=False)
        self.decoder = Decoder(latent_dim, width, batch_norm=False)

    def loss(self, images: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        """The negative ELBO per image, (n, 1, 28, 28) images in [0, 1]."""
        mean, log_var = self.encoder(images).chunk(2, dim=1)
        noise = torch.randn(mean.shape, generator=rng)
        z = mean + noise * torch.exp(0.5 * log_var)
        logits = self.decoder(z)
        reconstruction = F.binary_cross_entropy_with_logits(logits, images, reduction="sum")
        kl = 0.5 * (mean.square() + log_var.exp() - 1.0 - log_var).sum()
        return (reconstruction + kl) / len(images)


def train_vae(images: np.ndarray, settings: TrainSettings, seed: int) -> Decoder:
    """A VAE trained on `images` (Adam 1e-3); returns its decoder, to sample from the prior.

    Args:
        images: (n, 28, 28) uint8 grayscale training images.
        settings: epochs, batch size, latent size, width.
        seed: fixes initialisation, batch order and noise (see `train_dcgan`).

    Returns:
        The decoder in eval mode; its outputs are logits of pixels in [0, 1].
    """
    torch.manual_seed(seed)
    vae = VAE(settings.latent_dim, settings.width)
    optimiser = torch.optim.Adam(vae.parameters(), lr=1e-3)
    pixels = torch.from_numpy(images).float().div(255.0).unsqueeze(1)
    rng = torch.Generator().manual_seed(seed)

    for batch in _batches(pixels, settings, rng):
        _step(optimiser, vae.loss(batch, rng))

    return vae.decoder.eval()


def _batches(
    pixels: torch.Tensor, settings: TrainSettings, rng: torch.Generator
) -> Iterator[torch.Tensor]:
    # Incomplete last batches are dropped: a batch of one breaks batch normalisation.
    batch_size = min(settings.batch_size, len(pixels))
    for _ in range(settings.epochs):
        order = torch.randperm(len(pixels), generator=rng)
        for start in range(0, len(pixels) - batch_size + 1, batch_size):
            yield pixels[order[start : start + batch_size]]


def _step(optimiser: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    optimiser.step()


TRAINERS: dict[str, Callable[[np.ndarray, TrainSettings, int], Decoder]] = {
    "dcgan": train_dcgan,
    "vae": train_vae,
}
# How each kind's decoder logits become pixels in [0, 1].
_OUTPUTS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "dcgan": lambda logits: (torch.tanh(logits) + 1.0) / 2.0,
    "vae": torch.sigmoid,
}


def train_generator(
    kind: str, images: np.ndarray, settings: TrainSettings, seed: int, path: Path
) -> float:
    """Train a generator of `kind` ("dcgan" or "vae") and save it to `path`; returns seconds.

    Raises:
        ValueError: an unknown kind, or images that are not (n, 28, 28) uint8 with n >= 2.
    """
    if kind not in TRAINERS:
        raise ValueError(f"unknown generator kind {kind!r}; expected one of {sorted(TRAINERS)}")
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ValueError(f"expected (n, 28, 28) uint8 images, got {images.dtype} {images.shape}")
    if len(images) < 2:
        raise ValueError(f"need at least 2 training images, got {len(images)}")

    started = time.perf_counter()
    # Gradients of saturated units underflow to denormal floats, which the CPU computes with
    # 20-40 times more cycles: flushing them to zero makes training that much faster.
    torch.set_flush_denormal(True)
    try:
        decoder = TRAINERS[kind](images, settings, seed)
    finally:
        torch.set_flush_denormal(False)
    seconds = time.perf_counter() - started
    save_generator(decoder, kind, settings, path)
    logger.info("trained %s on %d images in %.1f s: %s", kind, len(images), seconds, path)
    return seconds


def save_generator(decoder: Decoder, kind: str, settings: TrainSettings, path: Path) -> None:
    """The decoder's weights, with its kind and shape as JSON in the safetensors metadata."""
    config = {
        "format": FORMAT,
        "kind": kind,
        "latent_dim": settings.latent_dim,
        "width": settings.width,
        "batch_norm": kind == "dcgan",
    }
    state = {name: tensor.contiguous() for name, tensor in decoder.state_dict().items()}
    save_file(state, str(path), metadata={CONFIG_KEY: json.dumps(config, sort_keys=True)})


class ZooGeneratorSampler:
    """Samples of a saved zoo generator: (n, 28, 28, 3) uint8, gray in all three channels.

    Attributes:
        path: the safetensors file.
        kind: "dcgan" or "vae".
        decoder: latent (n, latent_dim) -> logits (n, 1, 28, 28).
    """

    def __init__(self, path: Path, kind: str, decoder: Decoder) -> None:
        self.path = path
        self.kind = kind
        self.decoder = decoder

    def sample(self, n: int, seed: int) -> np.ndarray:
        """(n, 28, 28, 3) uint8 images from N(0, I) latents of a generator seeded by `seed`."""
        rng = torch.Generator().manual_seed(seed)
        latents = torch.randn(n, self.decoder.project.in_features, generator=rng)
        with torch.inference_mode():
            gray = _OUTPUTS[self.kind](self.decoder(latents))
        pixels = gray.mul(255.0).round_().clamp_(0, 255).to(torch.uint8)
        return pixels.squeeze(1).unsqueeze(-1).expand(-1, -1, -1, 3).contiguous().numpy()

    def weight_files(self) -> list[Path]:
        """The weights file, whose digest enters the model's fingerprint."""
        return [self.path]


def load_generator(weights: str) -> ZooGeneratorSampler:
    """A sampler of the zoo generator saved at `weights` (a catalog `python` source factory).

    Raises:
        CatalogError: the file is missing or is not a zoo generator.
    """
    path = Path(weights).expanduser()
    if not path.is_file():
        raise CatalogError(
            f"zoo generator weights {path} do not exist; rebuild the zoo with "
            "scripts/build_eval_zoo.py"
        )
    kind, decoder = _load_decoder(path.resolve(), path.stat().st_mtime_ns)
    return ZooGeneratorSampler(path, kind, decoder)


@functools.lru_cache(maxsize=64)
def _load_decoder(path: Path, mtime_ns: int) -> tuple[str, Decoder]:
    # Keyed by mtime too, so that a rebuilt zoo in the same place is not served stale weights.
    with safe_open(str(path), framework="pt") as file:
        metadata = file.metadata() or {}
        state = {name: file.get_tensor(name) for name in file.keys()}  # noqa: SIM118
    try:
        config = json.loads(metadata[CONFIG_KEY])
        if config["format"] != FORMAT or config["kind"] not in _OUTPUTS:
            raise ValueError(f"format {config['format']!r}, kind {config['kind']!r}")
        decoder = Decoder(config["latent_dim"], config["width"], config["batch_norm"])
    except (KeyError, TypeError, ValueError) as err:
        raise CatalogError(
            f"{path} is not a zoo generator of format {FORMAT!r} ({type(err).__name__}: {err}); "
            "rebuild the zoo with scripts/build_eval_zoo.py"
        ) from err
    decoder.load_state_dict(state)
    return config["kind"], decoder.eval()

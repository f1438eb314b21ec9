"""Settings of every component as frozen dataclasses; environment overrides use `MODELSEEK_`."""

import dataclasses
import logging
import os
import typing
from dataclasses import dataclass
from typing import Any, TypeVar

logger = logging.getLogger(__name__)

ENV_PREFIX = "MODELSEEK_"
T = TypeVar("T")


@dataclass(frozen=True)
class IndexConfig:
    """How models are sampled and summarised.

    Attributes:
        samples_per_model: images drawn per model (a folder source may hold fewer).
        chunk_size: images per Ray task; each chunk has its own seed so a retry repeats it.
        seed: base seed; chunk `i` of a model is drawn with a seed derived from it and `i`.
        num_shards: how many shard files (and so scorer actors) the models are split into.
        lowrank_rank: `r`, the eigenpairs kept by the probabilistic-PCA covariance.
        full_covariance_max_bytes: keep full (d, d) covariances when all of them together
            fit in this many bytes (float32); past it only the low-rank form is stored.
        reservoir_size: raw sample features kept per model (Monte-Carlo baseline).
        thumbnails: sample thumbnails kept per model for the API and the web page.
        thumbnail_px: the side of a thumbnail, in pixels.
        keep_versions: index versions kept on storage; older ones are deleted.
    """

    samples_per_model: int = 512
    chunk_size: int = 128
    seed: int = 0
    num_shards: int = 2
    lowrank_rank: int = 16
    full_covariance_max_bytes: int = 512 * 1024**2
    reservoir_size: int = 128
    thumbnails: int = 4
    thumbnail_px: int = 64
    keep_versions: int = 3


@dataclass(frozen=True)
class ServeConfig:
    """How the HTTP service runs.

    Attributes:
        host: address the Serve HTTP proxy binds.
        port: its port.
        max_upload_bytes: the largest request body accepted (413 past it).
        max_image_pixels: the largest decoded image accepted, width times height.
        max_k: the largest number of results one query may ask for.
        shard_timeout_s: how long the aggregator waits for a scorer actor.
        encoder_batch_size: queries the encoder batches together.
        encoder_batch_wait_s: how long it waits to fill a batch.
        eps: `ε`, added to every covariance's diagonal for the Gaussian density.
        tau: `τ`, the temperature of the first-moment probabilities and of the second-moment
            and Monte-Carlo scores; None uses the one the index's feature space was trained
            with (recorded in its manifest), which is what the formulas assume.
        admin_token: bearer token of POST /v1/admin/reload; empty disables that route.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    max_upload_bytes: int = 8 * 1024**2
    max_image_pixels: int = 40_000_000
    max_k: int = 1000
    shard_timeout_s: float = 10.0
    encoder_batch_size: int = 16
    encoder_batch_wait_s: float = 0.005
    eps: float = 1e-3
    tau: float | None = None
    admin_token: str = ""


def with_env_overrides(config: T, section: str) -> T:
    """Return `config` with fields replaced by `MODELSEEK_<SECTION>_<FIELD>` variables.

    Args:
        config: a frozen dataclass instance.
        section: the name the variables use for this component, e.g. "SERVE".

    Raises:
        ValueError: a variable holds a value that does not parse as the field's type.
    """
    changes: dict[str, Any] = {}
    for field in dataclasses.fields(config):
        name = f"{ENV_PREFIX}{section}_{field.name}".upper()
        raw = os.environ.get(name)
        if raw is None:
            continue
        kind = _value_type(field)
        try:
            changes[field.name] = None if _is_optional(field) and raw == "" else kind(raw)
        except ValueError as err:
            raise ValueError(f"{name}={raw!r} is not a valid {kind.__name__}") from err
        logger.info("setting %s=%r from the environment", field.name, changes[field.name])
    return dataclasses.replace(config, **changes)


def _value_type(field: dataclasses.Field) -> type:
    """The type a field's value parses as: `float` for `float | None`."""
    args = [a for a in typing.get_args(field.type) if a is not type(None)]
    return args[0] if args else field.type


def _is_optional(field: dataclasses.Field) -> bool:
    return type(None) in typing.get_args(field.type)

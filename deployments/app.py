"""The Serve application builder: `serve run deployments.app:build_app index_root=DIR`."""

import logging
from typing import Any

from ray.serve import Application

from deployments.aggregator import Aggregator
from deployments.encoder import Encoder
from deployments.ingress import Ingress
from modelseek.config import ServeConfig, with_env_overrides
from modelseek.errors import EncoderMismatch, IndexCorrupt
from modelseek.features import describe_feature_space
from shards import store

logger = logging.getLogger(__name__)


def check_encoder(manifest: store.Manifest, encoder: str | None) -> str:
    """The encoder to serve `manifest` with; refuse one that is not the index's feature space.

    Raises:
        EncoderMismatch: naming both feature spaces and the remedy.
    """
    if encoder is None or encoder == manifest.encoder:
        return manifest.encoder
    requested = describe_feature_space(encoder)
    if requested != manifest.feature_space:
        raise EncoderMismatch(
            f"the index (version {manifest.version}) was built in feature space "
            f"{manifest.feature_space!r} (encoder {manifest.encoder!r}), but encoder "
            f"{encoder!r} gives {requested!r}; serve it with --encoder {manifest.encoder!r} "
            f"or re-index with --encoder {encoder!r}"
        )
    return encoder


def build_app(args: dict[str, Any]) -> Application:
    """Wire Ingress -> (Encoder, Aggregator -> ShardScorer actors) for the published index.

    Args:
        args: `index_root` (required), `encoder` (optional, must match the index), and
            `serve`, a dict of ServeConfig fields.

    Raises:
        IndexCorrupt: no index, an unreadable manifest, or a shard failing its checksum.
        EncoderMismatch: see `check_encoder`.
    """
    root = str(args["index_root"])
    cfg = with_env_overrides(ServeConfig(**args.get("serve", {})), "SERVE")
    try:
        manifest = store.read_manifest(root)
        store.verify_index(root, manifest)
    except store.StoreError as err:
        raise IndexCorrupt(str(err)) from err
    encoder = check_encoder(manifest, args.get("encoder"))
    logger.info(
        "serving %s: version %s, %d models, feature space %s",
        root,
        manifest.version,
        manifest.num_models,
        manifest.feature_space,
    )

    encoder_app = Encoder.bind(
        encoder, manifest.feature_space, cfg.encoder_batch_size, cfg.encoder_batch_wait_s
    )
    aggregator = Aggregator.options(user_config={"version": manifest.version}).bind(
        root, cfg.eps, cfg.tau, cfg.shard_timeout_s
    )
    return Ingress.bind(encoder_app, aggregator, cfg)

"""`Encoder`: the feature space as a Serve deployment that batches concurrent queries."""

import asyncio
import logging

import numpy as np
from ray import serve

from modelseek.errors import EncoderMismatch
from modelseek.features import load_feature_space

logger = logging.getLogger(__name__)


@serve.deployment(ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=64)
class Encoder:
    """Encodes query texts and images; concurrent requests share one forward pass."""

    def __init__(
        self, encoder: str, expected_feature_space: str, batch_size: int, batch_wait_s: float
    ):
        for method in (self.encode_texts, self.encode_images):
            method.set_max_batch_size(batch_size)
            method.set_batch_wait_timeout_s(batch_wait_s)
        self._space = load_feature_space(encoder)
        if self._space.id != expected_feature_space:
            # Same spec, other weights: e.g. a checkpoint file replaced after indexing.
            raise EncoderMismatch(
                f"encoder {encoder!r} now gives feature space {self._space.id!r}, but the index "
                f"was built in {expected_feature_space!r}; re-index with this encoder"
            )
        logger.info("encoder ready: %s (d = %d)", self._space.id, self._space.dim)

    def feature_space(self) -> str:
        return self._space.id

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def encode_texts(self, texts: list[str]) -> list[np.ndarray]:
        # The forward pass holds the GIL-free torch threads; running it off the event loop
        # lets the replica keep accepting requests for the next batch meanwhile.
        features = await asyncio.to_thread(self._space.encode_texts, texts)
        return list(features)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def encode_images(self, images: list[np.ndarray]) -> list[np.ndarray]:
        features = await asyncio.to_thread(self._space.encode_images, images)
        return list(features)

"""Locust load test of the search API: text and image searches, and model listings.

Run it as its own process, headless, against a running service:

    locust -f loadtest/locustfile.py --headless -u 8 -r 4 -t 30s --host http://127.0.0.1:8000

Never import it from tests or the package: locust patches the standard library with gevent at
import, which breaks once torch or Ray are loaded in the same process.
"""

import base64
import io
import logging
import random

from locust import HttpUser, between, task
from locust.clients import ResponseContextManager
from PIL import Image, ImageDraw

logger = logging.getLogger(__name__)

K = 10
TEXT_METHOD = "first_moment"
IMAGE_METHOD = "gaussian_density"
QUERY_IMAGE_PX = 64
QUERY_IMAGE_COUNT = 16

TEXT_QUERIES = (
    "a photo of a face",
    "a smiling woman with long hair",
    "handwritten digit seven",
    "a pencil sketch of a cat",
    "a landscape with mountains and a lake",
    "pixel art of a castle",
    "an anime character",
    "a red sports car",
    "clothes on a white background",
    "an oil painting of flowers",
)


def make_query_images(count: int, side_px: int, seed: int = 0) -> list[str]:
    """Base64 PNGs of random shapes on random backgrounds, drawn once so requests cost no CPU."""
    rng = random.Random(seed)
    encoded = []
    for _ in range(count):
        image = Image.new("RGB", (side_px, side_px), tuple(rng.randrange(256) for _ in range(3)))
        draw = ImageDraw.Draw(image)
        for _ in range(3):
            x0, y0 = rng.randrange(side_px // 2), rng.randrange(side_px // 2)
            box = (x0, y0, x0 + rng.randrange(8, side_px // 2), y0 + rng.randrange(8, side_px // 2))
            fill = tuple(rng.randrange(256) for _ in range(3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=fill)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        encoded.append(base64.b64encode(buffer.getvalue()).decode("ascii"))
    return encoded


QUERY_IMAGES = make_query_images(QUERY_IMAGE_COUNT, QUERY_IMAGE_PX)


def check_json(response: ResponseContextManager, key: str) -> None:
    """Fail a 2xx answer whose body is not JSON holding `key`; locust already fails non-2xx."""
    if not response.ok:
        return
    try:
        body = response.json()
    except ValueError:
        response.failure(f"answer is not JSON: {response.text[:200]!r}")
        return
    if key not in body:
        response.failure(f"answer lacks {key!r}: {sorted(body)}")


class SearchUser(HttpUser):
    """A visitor who mostly searches by text, sometimes by image, and now and then browses."""

    wait_time = between(0.05, 0.5)

    @task(6)
    def search_text(self) -> None:
        payload = {"text": random.choice(TEXT_QUERIES), "k": K, "method": TEXT_METHOD}
        with self.client.post(
            "/v1/search", json=payload, name="/v1/search text", catch_response=True
        ) as response:
            check_json(response, "results")

    @task(3)
    def search_image(self) -> None:
        payload = {"image": random.choice(QUERY_IMAGES), "k": K, "method": IMAGE_METHOD}
        with self.client.post(
            "/v1/search", json=payload, name="/v1/search image", catch_response=True
        ) as response:
            check_json(response, "results")

    @task(1)
    def list_models(self) -> None:
        with self.client.get("/v1/models", catch_response=True) as response:
            check_json(response, "models")

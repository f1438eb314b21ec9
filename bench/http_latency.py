"""Median and p95 latency of text and image searches against a running Modelseek service.

    python bench/http_latency.py --url http://127.0.0.1:8000 --repeats 50

Image queries are PNGs drawn from the demo zoo's face GAN (a fresh seed per query). Requests
go one at a time, so the figures are the latency of an idle service, not its throughput
(Locust in loadtest/ measures that).
"""

import argparse
import io
import statistics
import time

import httpx
import numpy as np
from PIL import Image


def face_pngs(count: int) -> list[bytes]:
    from modelseek.demo.samplers import face_dcgan

    images = face_dcgan().sample(count, seed=424_242)
    out = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        out.append(buffer.getvalue())
    return out


def time_requests(client: httpx.Client, requests: list[dict]) -> list[float]:
    latencies_ms = []
    for request in requests:
        started = time.perf_counter()
        answer = client.post("/v1/search", **request)
        latencies_ms.append((time.perf_counter() - started) * 1e3)
        answer.raise_for_status()
    return latencies_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()

    texts = [
        "a human face portrait",
        "handwritten digit seven",
        "a photo of a cat",
        "a rocket on a launch pad",
        "coffee cup",
    ]
    text_requests = [
        {"json": {"text": texts[i % len(texts)], "k": 10}} for i in range(args.repeats)
    ]
    image_requests = [
        {"files": {"image": ("q.png", png)}, "data": {"k": "10"}} for png in face_pngs(args.repeats)
    ]
    with httpx.Client(base_url=args.url, timeout=60) as client:
        time_requests(client, text_requests[:3] + image_requests[:3])  # warm the replicas
        for name, requests in (("text", text_requests), ("image", image_requests)):
            ms = time_requests(client, requests)
            print(
                f"{name:>5} queries: n={len(ms)} median {statistics.median(ms):.1f} ms, "
                f"p95 {np.percentile(ms, 95):.1f} ms"
            )


if __name__ == "__main__":
    main()

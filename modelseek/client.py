"""Python API of a running Modelseek service: every query kind, as `Client(url).search(...)`.

from modelseek.client import Client
client = Client("http://127.0.0.1:8000")
client.search(text="a bird that talks", k=5)
client.search(queries=[{"text": "a dog"}, {"text": "a cartoon", "weight": -1}])
client.search(images=["a.png", "b.png"], filters={"tags_any": ["photo"]})
client.similar("face-dcgan-64", k=5)
"""

import base64
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from modelseek.errors import ModelseekError

logger = logging.getLogger(__name__)

ImageInput = str | Path | bytes


def encode_image(image: ImageInput) -> str:
    """Base64 of an image file's bytes, given its path or the bytes themselves."""
    data = image if isinstance(image, bytes) else Path(image).read_bytes()
    return base64.b64encode(data).decode()


class ServiceError(ModelseekError):
    """The service answered with an error; `status` and `code` are its HTTP status and code."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(f"HTTP {status} {code}: {message}")
        self.status, self.code = status, code


class Client:
    """A synchronous client of the HTTP API; use it as a context manager or call close()."""

    def __init__(self, url: str = "http://127.0.0.1:8000", timeout_s: float = 60.0):
        self._http = httpx.Client(base_url=url, timeout=timeout_s)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def search(
        self,
        text: str | None = None,
        image: ImageInput | None = None,
        images: Sequence[ImageInput] | None = None,
        model: str | None = None,
        queries: Sequence[dict[str, Any]] | None = None,
        k: int = 10,
        method: str | None = None,
        filters: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """One search; give exactly one of text, image, images, model or queries.

        In `queries`, a part's "image" or "images" may be paths or bytes; they are encoded.

        Raises:
            ServiceError: the service refused the query (its message says why).
        """
        body: dict[str, Any] = {"k": k}
        if text is not None:
            body["text"] = text
        if image is not None:
            body["image"] = encode_image(image)
        if images is not None:
            body["images"] = [encode_image(i) for i in images]
        if model is not None:
            body["model"] = model
        if queries is not None:
            body["queries"] = [_encode_part(part) for part in queries]
        if method is not None:
            body["method"] = method
        if filters:
            body["filters"] = filters
        return self.search_body(body)

    def search_body(self, body: dict[str, Any]) -> dict[str, Any]:
        """POST a prepared JSON body (see the README's API section) to /v1/search."""
        return self._post("/v1/search", body)

    def similar(self, model_id: str, k: int = 10) -> dict[str, Any]:
        """Models nearest to `model_id` by Fréchet distance."""
        return self._get(f"/v1/models/{model_id}/similar", params={"k": k})

    def models(self) -> list[dict[str, Any]]:
        return self._get("/v1/models")["models"]

    def model(self, model_id: str) -> dict[str, Any]:
        return self._get(f"/v1/models/{model_id}")

    def health(self) -> dict[str, Any]:
        return self._get("/healthz", ok_statuses=(200, 503))

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return _checked(self._http.post(path, json=body))

    def _get(self, path: str, params=None, ok_statuses=(200,)) -> dict[str, Any]:
        return _checked(self._http.get(path, params=params), ok_statuses)


def _encode_part(part: dict[str, Any]) -> dict[str, Any]:
    encoded = dict(part)
    if "image" in encoded and not isinstance(encoded["image"], str):
        encoded["image"] = encode_image(encoded["image"])
    if "images" in encoded:
        encoded["images"] = [
            i if isinstance(i, str) else encode_image(i) for i in encoded["images"]
        ]
    return encoded


def _checked(answer: httpx.Response, ok_statuses=(200,)) -> dict[str, Any]:
    payload = answer.json()
    if answer.status_code not in ok_statuses:
        error = payload.get("error", {}) if isinstance(payload, dict) else {}
        raise ServiceError(
            answer.status_code, error.get("code", "unknown"), error.get("message", answer.text)
        )
    return payload

"""Search requests: parsing and validating what a client sends, before any model is touched."""

import base64
import binascii
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelseek.config import ServeConfig
from modelseek.errors import BadQuery
from modelseek.images import decode_image

logger = logging.getLogger(__name__)

# Methods a client may name; the low-rank forms are the defaults because they scale.
SEARCH_METHODS = (
    "first_moment",
    "first_second_moment",
    "first_second_moment_full",
    "gaussian_density",
    "gaussian_density_full",
    "monte_carlo",
)
DEFAULT_METHOD = {"text": "first_second_moment", "image": "gaussian_density"}
DEFAULT_K = 10
MAX_TEXT_CHARS = 1000
REQUEST_FIELDS = ("text", "image", "k", "method")


@dataclass(frozen=True)
class SearchRequest:
    """One validated query: exactly one of `text` or `image`.

    Attributes:
        text: the query text, stripped, or None.
        image: uint8 (h, w, 3) RGB, or None.
        k: results wanted, 1 <= k <= the configured maximum.
        method: a name from SEARCH_METHODS.
    """

    text: str | None
    image: np.ndarray | None
    k: int
    method: str

    @property
    def modality(self) -> str:
        return "text" if self.text is not None else "image"


def parse_search_fields(fields: dict[str, Any], image_bytes: bytes | None, cfg: ServeConfig):
    """Validate the fields of a search, from JSON or a multipart form.

    Args:
        fields: `text`, `k`, `method` (and in JSON, `image` as base64).
        image_bytes: an uploaded file's bytes (multipart), else None.
        cfg: limits on `k`, upload and image size.

    Raises:
        BadQuery: a field is missing, of the wrong type or out of range.
        BadImage, PayloadTooLarge: the image cannot be used.
    """
    unknown = sorted(set(fields) - set(REQUEST_FIELDS))
    if unknown:
        raise BadQuery(f"unknown field(s) {unknown}; a search takes {list(REQUEST_FIELDS)}")
    if fields.get("image") is not None:
        if image_bytes is not None:
            raise BadQuery("send the image either as a file or as base64, not both")
        image_bytes = _decode_base64(fields["image"])
    text = _parse_text(fields.get("text"))

    if (text is None) == (image_bytes is None):
        raise BadQuery(
            "a search needs exactly one of 'text' or 'image'"
            + (" (both were given)" if text is not None else "")
        )
    image = None if image_bytes is None else decode_image(image_bytes, cfg.max_image_pixels)
    modality = "text" if text is not None else "image"
    return SearchRequest(
        text=text,
        image=image,
        k=_parse_k(fields.get("k", DEFAULT_K), cfg.max_k),
        method=_parse_method(fields.get("method"), modality),
    )


def _parse_text(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadQuery(f"'text' must be a string, got {type(value).__name__}")
    text = value.strip()
    if not text:
        raise BadQuery("'text' is empty; write what the models should generate")
    if len(text) > MAX_TEXT_CHARS:
        raise BadQuery(f"'text' has {len(text)} characters, at most {MAX_TEXT_CHARS} are allowed")
    return text


def _parse_k(value: Any, max_k: int) -> int:
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadQuery(f"'k' must be an integer, got {value!r}")
    if not 1 <= value <= max_k:
        raise BadQuery(f"'k' must be between 1 and {max_k}, got {value}")
    return value


def _parse_method(value: Any, modality: str) -> str:
    if value is None or value == "":
        return DEFAULT_METHOD[modality]
    if value not in SEARCH_METHODS:
        raise BadQuery(f"unknown method {value!r}; expected one of {list(SEARCH_METHODS)}")
    return value


def _decode_base64(value: Any) -> bytes:
    if not isinstance(value, str):
        raise BadQuery(f"'image' must be a base64 string, got {type(value).__name__}")
    payload = value.split(",", 1)[1] if value.startswith("data:") else value
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as err:
        raise BadQuery(f"'image' is not valid base64 ({err})") from err

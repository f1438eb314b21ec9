"""Search requests: parsing and validating what a client sends, before any model is touched.

A search is one of: a `text`, an `image`, an image set (`images`, e.g. a small data set to
fine-tune on), a `model` (similar models), or `queries`, a weighted mix of the first three
combined as a product of experts. Any of them may carry `filters` on catalog fields.
"""

import base64
import binascii
import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from modelseek.config import ServeConfig
from modelseek.errors import BadQuery, PayloadTooLarge
from modelseek.images import decode_image
from shards.filters import Filters

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
DEFAULT_METHOD = {
    "text": "first_second_moment",
    "image": "gaussian_density",
    "images": "gaussian_density",
}
DEFAULT_K = 10
MAX_TEXT_CHARS = 1000
MAX_IMAGE_SET = 256
MAX_EXPERTS = 8
QUERY_KINDS = ("text", "image", "images", "model", "queries")
REQUEST_FIELDS = (*QUERY_KINDS, "k", "method", "filters")
PART_FIELDS = ("text", "image", "images", "weight", "method")
FILTER_FIELDS = {
    "tags_any": list,
    "tags_all": list,
    "tags_none": list,
    "licenses": list,
    "architectures": list,
    "min_resolution": int,
    "max_resolution": int,
}


@dataclass(frozen=True)
class QueryPart:
    """One expert of a search before encoding.

    Attributes:
        modality: "text", "image" or "images" (an image set, scored by the mean per image).
        text: the text, for "text".
        images: uint8 (h, w, 3) RGB arrays: one for "image", several for "images".
        method: a name from SEARCH_METHODS.
        weight: the expert's weight in a product of experts.
    """

    modality: str
    text: str | None = None
    images: tuple[np.ndarray, ...] = ()
    method: str = "first_moment"
    weight: float = 1.0


@dataclass(frozen=True)
class SearchRequest:
    """One validated search: `parts` to encode and combine, or a model to find neighbours of."""

    parts: tuple[QueryPart, ...]
    similar_to: str | None
    k: int
    filters: Filters = field(default_factory=Filters)

    @property
    def kind(self) -> str:
        if self.similar_to is not None:
            return "similar"
        if len(self.parts) > 1:
            return "multimodal"
        return {"images": "image_set"}.get(self.parts[0].modality, self.parts[0].modality)


def parse_search_fields(
    fields: dict[str, Any], uploads: dict[str, list[bytes]], cfg: ServeConfig
) -> SearchRequest:
    """Validate a search from JSON, or from a multipart form and its uploaded files.

    Args:
        fields: the JSON object, or the form's text fields (filters as a JSON string).
        uploads: uploaded files by field name ("image": one file, "images": a set).
        cfg: limits on `k`, upload and image size.

    Raises:
        BadQuery: a field is missing, of the wrong type or out of range.
        BadImage, PayloadTooLarge: an image cannot be used.
    """
    unknown = sorted(set(fields) - set(REQUEST_FIELDS))
    if unknown:
        raise BadQuery(f"unknown field(s) {unknown}; a search takes {list(REQUEST_FIELDS)}")
    given = [kind for kind in QUERY_KINDS if fields.get(kind) is not None or uploads.get(kind)]
    if len(given) != 1:
        raise BadQuery(
            f"a search needs exactly one of {list(QUERY_KINDS)}, got {given or 'none'}; "
            "to mix a text and an image, send them as 'queries'"
        )
    kind = given[0]
    k = _parse_k(fields.get("k", DEFAULT_K), cfg.max_k)
    filters = parse_filters(fields.get("filters"))

    if kind == "model":
        if fields.get("method") not in (None, "", "frechet"):
            raise BadQuery("similar-model searches rank by Fréchet distance; omit 'method'")
        return SearchRequest((), _parse_model_id(fields["model"]), k, filters)
    if kind == "queries":
        if fields.get("method") is not None:
            raise BadQuery("with 'queries', give each part its own 'method'")
        parts = _parse_parts(fields["queries"], cfg)
    else:
        part_fields = {kind: fields.get(kind), "method": fields.get("method")}
        parts = (_parse_part(part_fields, uploads, cfg, where="the search"),)
    return SearchRequest(parts, None, k, filters)


def _parse_parts(value: Any, cfg: ServeConfig) -> tuple[QueryPart, ...]:
    if not isinstance(value, list) or not value:
        raise BadQuery("'queries' must be a non-empty list of {text|image|images, weight}")
    if len(value) > MAX_EXPERTS:
        raise BadQuery(f"'queries' has {len(value)} parts, at most {MAX_EXPERTS} are allowed")
    parts = []
    for i, part in enumerate(value):
        if not isinstance(part, dict):
            raise BadQuery(f"queries[{i}] must be an object, got {type(part).__name__}")
        unknown = sorted(set(part) - set(PART_FIELDS))
        if unknown:
            raise BadQuery(
                f"queries[{i}]: unknown field(s) {unknown}; a part takes {list(PART_FIELDS)}"
            )
        parts.append(_parse_part(part, {}, cfg, where=f"queries[{i}]"))
    if all(p.weight == 0 for p in parts):
        raise BadQuery("every weight in 'queries' is 0; give at least one a non-zero weight")
    return tuple(parts)


def _parse_part(
    fields: dict[str, Any], uploads: dict[str, list[bytes]], cfg: ServeConfig, where: str
) -> QueryPart:
    given = [m for m in ("text", "image", "images") if fields.get(m) is not None or uploads.get(m)]
    if len(given) != 1:
        raise BadQuery(f"{where} needs exactly one of 'text', 'image', 'images', got {given}")
    modality = given[0]
    method = _parse_method(fields.get("method"), modality)
    weight = _parse_weight(fields.get("weight", 1.0), where)
    if modality == "text":
        return QueryPart("text", text=_parse_text(fields["text"]), method=method, weight=weight)
    if modality == "image":
        data = uploads["image"][0] if uploads.get("image") else _decode_base64(fields["image"])
        image = decode_image(data, cfg.max_image_pixels)
        return QueryPart("image", images=(image,), method=method, weight=weight)
    blobs = uploads.get("images") or _decode_image_list(fields["images"], where)
    _check_image_set_size(len(blobs), where)
    images = tuple(decode_image(blob, cfg.max_image_pixels) for blob in blobs)
    return QueryPart("images", images=images, method=method, weight=weight)


def _check_image_set_size(count: int, where: str) -> None:
    if count == 0:
        raise BadQuery(f"{where}: the image set is empty; send 1 to {MAX_IMAGE_SET} images")
    if count > MAX_IMAGE_SET:
        raise PayloadTooLarge(
            f"{where}: the image set has {count} images, at most {MAX_IMAGE_SET} are "
            "accepted; send a random subset (the score is a mean over images)"
        )


def _decode_image_list(value: Any, where: str) -> list[bytes]:
    if not isinstance(value, list):
        raise BadQuery(f"{where}: 'images' must be a list of base64 strings")
    _check_image_set_size(len(value), where)
    return [_decode_base64(item) for item in value]


def parse_filters(value: Any) -> Filters:
    """Filters from a JSON object; conflicting bounds are allowed and match nothing."""
    if value is None:
        return Filters()
    if not isinstance(value, dict):
        raise BadQuery(f"'filters' must be an object, got {type(value).__name__}")
    unknown = sorted(set(value) - set(FILTER_FIELDS))
    if unknown:
        raise BadQuery(f"unknown filter(s) {unknown}; filters are {list(FILTER_FIELDS)}")
    parsed: dict[str, Any] = {}
    for name, raw in value.items():
        if FILTER_FIELDS[name] is int:
            if isinstance(raw, bool) or not isinstance(raw, int):
                raise BadQuery(f"filter {name!r} must be an integer, got {raw!r}")
            parsed[name] = raw
        else:
            if isinstance(raw, str):
                raw = [raw]
            if not isinstance(raw, list) or not all(isinstance(v, str) for v in raw):
                raise BadQuery(f"filter {name!r} must be a list of strings, got {raw!r}")
            parsed[name] = tuple(raw)
    return Filters(**parsed)


def _parse_model_id(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise BadQuery(f"'model' must be a model id (see GET /v1/models), got {value!r}")
    return value.strip()


def _parse_weight(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadQuery(f"{where}: 'weight' must be a number, got {value!r}")
    if not math.isfinite(value):
        raise BadQuery(f"{where}: 'weight' must be finite, got {value!r}")
    return float(value)


def _parse_text(value: Any) -> str:
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
        raise BadQuery(f"an image must be a base64 string, got {type(value).__name__}")
    payload = value.split(",", 1)[1] if value.startswith("data:") else value
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as err:
        raise BadQuery(f"an image is not valid base64 ({err})") from err

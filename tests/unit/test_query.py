"""Validation of search requests, without a service."""

import base64
import io

import numpy as np
import pytest
from PIL import Image

from modelseek.config import ServeConfig
from modelseek.errors import BadImage, BadQuery, PayloadTooLarge
from modelseek.query import MAX_IMAGE_SET, parse_search_fields
from shards.filters import Filters

CFG = ServeConfig()


def png_b64(side: int = 4) -> str:
    out = io.BytesIO()
    Image.fromarray(np.full((side, side, 3), 200, np.uint8)).save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


def test_text_search_gets_defaults():
    request = parse_search_fields({"text": "  a cat  "}, {}, CFG)
    assert request.kind == "text" and request.k == 10 and request.filters == Filters()
    assert request.parts[0].text == "a cat" and request.parts[0].method == "first_second_moment"


def test_image_from_base64_and_from_upload_decode_alike():
    data = base64.b64decode(png_b64())
    from_json = parse_search_fields({"image": png_b64(), "k": "3"}, {}, CFG)
    from_form = parse_search_fields({"k": "3"}, {"image": [data]}, CFG)
    assert from_json.k == from_form.k == 3 and from_json.parts[0].method == "gaussian_density"
    np.testing.assert_array_equal(from_json.parts[0].images[0], from_form.parts[0].images[0])


def test_image_set_multimodal_similar_and_filters():
    image_set = parse_search_fields({"images": [png_b64()] * 3}, {}, CFG)
    assert image_set.kind == "image_set" and len(image_set.parts[0].images) == 3
    mixed = parse_search_fields(
        {
            "queries": [
                {"text": "dog"},
                {"text": "cartoon", "weight": -1, "method": "first_moment"},
            ],
            "filters": {"tags_any": "photo", "min_resolution": 64},
        },
        {},
        CFG,
    )
    assert mixed.kind == "multimodal" and [p.weight for p in mixed.parts] == [1.0, -1.0]
    assert mixed.filters == Filters(tags_any=("photo",), min_resolution=64)
    similar = parse_search_fields({"model": "face-dcgan-64", "k": 3}, {}, CFG)
    assert similar.kind == "similar" and similar.similar_to == "face-dcgan-64"


@pytest.mark.parametrize(
    ("fields", "error", "words"),
    [
        ({}, BadQuery, "exactly one"),
        ({"text": "a", "image": png_b64()}, BadQuery, "'queries'"),
        ({"text": ""}, BadQuery, "empty"),
        ({"text": "a" * 1001}, BadQuery, "at most 1000"),
        ({"text": "a", "k": True}, BadQuery, "integer"),
        ({"text": "a", "k": 1001}, BadQuery, "between 1 and 1000"),
        ({"text": "a", "method": "cosine"}, BadQuery, "unknown method"),
        ({"model": "x", "method": "gaussian_density"}, BadQuery, "Fréchet"),
        ({"queries": [{"text": "a", "weight": float("nan")}]}, BadQuery, "finite"),
        ({"queries": [{"text": "a", "weight": 0}]}, BadQuery, "every weight"),
        ({"queries": [{"text": "a", "colour": 1}]}, BadQuery, "unknown field"),
        ({"queries": [{"text": "a"}] * 9}, BadQuery, "at most 8"),
        ({"images": []}, BadQuery, "empty"),
        ({"images": [png_b64(1)] * (MAX_IMAGE_SET + 1)}, PayloadTooLarge, "at most 256"),
        ({"image": "!!!"}, BadQuery, "base64"),
        ({"image": base64.b64encode(b"not an image").decode()}, BadImage, "identify"),
        ({"text": "a", "filters": {"tags_any": [1]}}, BadQuery, "list of strings"),
        ({"text": "a", "filters": []}, BadQuery, "must be an object"),
    ],
)
def test_bad_requests_name_the_problem(fields, error, words):
    with pytest.raises(error, match=words):
        parse_search_fields(fields, {}, CFG)

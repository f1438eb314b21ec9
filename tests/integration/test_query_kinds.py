"""Similar models, image sets, products of experts and filters, through HTTP against a
single-process reference over the same index."""

import base64
import io

import numpy as np
import pytest
import torch
from PIL import Image

from modelseek.catalog import load_catalog
from modelseek.features import load_feature_space
from modelseek.sources import open_source
from shards import store
from shards.frechet import LowRankGaussians, frechet_distance_lowrank
from shards.queries import Expert, poe_offset, score_experts
from shards.scoring import ScoringTables
from shards.stats import concat_shards

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def whole(zoo):
    """The whole index as one shard, for single-process references."""
    root = zoo[1]
    manifest = store.read_manifest(root)
    return concat_shards([store.load_shard(root, manifest, i) for i in range(len(manifest.shards))])


def b64_png(image: np.ndarray) -> str:
    out = io.BytesIO()
    Image.fromarray(image).save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


def samples(catalog_path, model_id: str, count: int, seed: int = 55_555) -> list[np.ndarray]:
    catalog = load_catalog(catalog_path)
    return open_source(catalog.get(model_id), catalog.base_dir).load_chunk(0, count, seed)


def test_similar_models_equal_brute_force_frechet_and_exclude_the_query(http, whole):
    body = http.get("/v1/models/mnist-digit-3/similar", params={"k": 3}).json()

    gaussians = LowRankGaussians.from_arrays(
        whole.means, whole.eigvals, whole.eigvecs, whole.residuals
    )
    row = whole.ids.index("mnist-digit-3")
    exact = frechet_distance_lowrank(gaussians.take(torch.tensor([row])), gaussians).numpy()
    expected = sorted((d, i) for i, d in zip(whole.ids, exact, strict=True) if i != whole.ids[row])
    assert [r["model_id"] for r in body["results"]] == [i for _, i in expected[:3]]
    np.testing.assert_allclose(
        [r["distance"] for r in body["results"]], [d for d, _ in expected[:3]], rtol=1e-6
    )
    assert body["method"] == "frechet" and body["results"][0]["probability"] is None
    post = http.post("/v1/search", json={"model": "mnist-digit-3", "k": 3}).json()
    assert post["results"] == body["results"]


def test_image_set_from_one_model_ranks_it_first(zoo, http):
    images = [b64_png(img) for img in samples(zoo[0], "mnist-digit-7", 12)]
    body = http.post("/v1/search", json={"images": images, "k": 3}).json()
    assert body["query"]["kind"] == "image_set" and body["method"] == "gaussian_density"
    assert body["results"][0]["model_id"] == "mnist-digit-7"


def test_product_of_experts_over_shards_equals_single_process(zoo, http, whole):
    face, digit = samples(zoo[0], "face-dcgan-64", 1)[0], samples(zoo[0], "mnist-digit-1", 1)[0]
    parts = [
        {"text": "a face", "weight": 1.0},
        {"image": b64_png(face), "weight": 0.7, "method": "gaussian_density"},
        {"image": b64_png(digit), "weight": -0.5, "method": "first_moment"},
    ]
    body = http.post("/v1/search", json={"queries": parts, "k": 5}).json()

    space = load_feature_space("hermetic")
    experts = [
        Expert("first_second_moment", space.encode_texts(["a face"]), 1.0),
        Expert("gaussian_density", space.encode_images([face]), 0.7),
        Expert("first_moment", space.encode_images([digit]), -0.5),
    ]
    # The service scores at the temperature the feature space was trained with (hermetic: 0.07).
    tau = store.read_manifest(zoo[1]).temperature
    assert tau == pytest.approx(space.temperature)
    tables = ScoringTables.build(whole, eps=1e-3, tau=tau)
    local = score_experts(tables, experts)
    final = local.scores.numpy() - poe_offset(experts, local.expert_lse)
    order = sorted(range(len(final)), key=lambda i: (-final[i], whole.ids[i]))
    assert body["method"] == "product_of_experts"
    assert [r["model_id"] for r in body["results"]] == [whole.ids[i] for i in order]
    # A score is a weighted sum of float32 terms as large as ~600 (log densities; float32's
    # spacing there is 6e-5), so a score near 0 (the top one here, -0.02) agrees only to about
    # 1e-4 in absolute terms, whichever side rounds it.
    np.testing.assert_allclose(
        [r["score"] for r in body["results"]], final[order], rtol=1e-4, atol=2e-4
    )
    assert sum(r["probability"] for r in body["results"]) == pytest.approx(1, abs=1e-5)


def test_filters_apply_before_top_k(http):
    digits = http.post(
        "/v1/search", json={"text": "a face", "k": 3, "filters": {"tags_any": ["digit"]}}
    ).json()
    assert [r["model_id"].startswith("mnist-digit") for r in digits["results"]] == [True] * 3
    assert sum(r["probability"] for r in digits["results"]) == pytest.approx(1, abs=1e-5)

    nothing = http.post(
        "/v1/search",
        json={"text": "a face", "k": 3, "filters": {"min_resolution": 100, "max_resolution": 10}},
    )
    assert nothing.status_code == 200 and nothing.json()["results"] == []


def test_k_larger_than_the_collection_returns_every_model(http):
    body = http.post("/v1/search", json={"text": "anything", "k": 1000}).json()
    assert len(body["results"]) == 5


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"model": "no-such-model"}, 404, "no-such-model"),
        ({"queries": [{"text": "a", "weight": 0}, {"text": "b", "weight": 0}]}, 400, "weight"),
        ({"queries": []}, 400, "non-empty"),
        ({"images": []}, 400, "empty"),
        ({"text": "a", "filters": {"colour": ["red"]}}, 400, "unknown filter"),
        ({"text": "a", "filters": {"min_resolution": "big"}}, 400, "integer"),
    ],
)
def test_bad_query_kinds_get_a_clear_4xx(http, body, status, words):
    answer = http.post("/v1/search", json=body)
    assert answer.status_code == status, answer.text
    message = answer.json()["error"]["message"]
    assert words in message and "Traceback" not in message and "ray::" not in message


def test_nan_weight_and_oversized_image_set_are_refused(http):
    nan = http.post(
        "/v1/search",
        content=b'{"queries": [{"text": "a", "weight": NaN}]}',
        headers={"content-type": "application/json"},
    )
    assert nan.status_code == 400 and "finite" in nan.json()["error"]["message"]
    tiny = b64_png(np.zeros((2, 2, 3), np.uint8))
    many = http.post("/v1/search", json={"images": [tiny] * 300})
    assert many.status_code == 413 and "at most 256" in many.json()["error"]["message"]


def test_unknown_model_errors_carry_no_remote_traceback(http):
    for path in ("/v1/models/nope", "/v1/models/nope/similar", "/v1/models/nope/thumbnails/0"):
        answer = http.get(path)
        assert answer.status_code == 404
        assert "Traceback" not in answer.json()["error"]["message"]


def test_python_client_speaks_every_query_kind(zoo, service, tmp_path):
    from modelseek.client import Client, ServiceError

    path = tmp_path / "face.png"
    path.write_bytes(base64.b64decode(b64_png(samples(zoo[0], "face-dcgan-64", 1)[0])))
    with Client(service) as client:
        assert len(client.models()) == 5 and client.health()["status"] == "ok"
        assert client.search(text="a digit", k=2)["method"] == "first_second_moment"
        assert client.search(image=path, k=2)["query"]["kind"] == "image"
        assert client.search(images=[path, path.read_bytes()], k=2)["query"]["kind"] == "image_set"
        mixed = client.search(queries=[{"text": "a face"}, {"image": path, "weight": -1}], k=2)
        assert mixed["method"] == "product_of_experts"
        assert len(client.similar("face-dcgan-64", k=2)["results"]) == 2
        with pytest.raises(ServiceError) as err:
            client.search(text="a", method="cosine")
        assert err.value.status == 400 and err.value.code == "bad_query"


def test_cli_query_prints_ranked_answers_and_fails_cleanly(service, capsys):
    from modelseek.cli import main

    assert (
        main(
            ["query", "a face", "--not", "a digit", "--tag", "digit", "--k", "2", "--url", service]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "multimodal query 'a face - a digit'" in out and out.count("mnist-digit-") == 2
    assert main(["query", "--similar", "mnist-digit-1", "--k", "2", "--url", service]) == 0
    assert "distance=" in capsys.readouterr().out
    assert main(["query", "--similar", "nope", "--url", service]) == 2
    assert "no model with id 'nope'" in capsys.readouterr().err

"""Catalog loading: valid files parse with defaults; each kind of mistake names model and field."""

import json
import pickle
from pathlib import Path
from typing import Any

import pytest
import yaml
from PIL import Image

from modelseek.catalog import Catalog, ModelEntry, SourceSpec, list_image_files, load_catalog
from modelseek.errors import CatalogError

FACTORY = "some_package.models:make_sampler"


@pytest.fixture()
def catalog_dir(tmp_path: Path) -> Path:
    samples = tmp_path / "samples" / "cats"
    samples.mkdir(parents=True)
    for index in range(3):
        Image.new("RGB", (8, 8), (index, 0, 0)).save(samples / f"{index}.png")
    (samples / "notes.txt").write_text("not an image")
    return tmp_path


def python_model(model_id: str = "gan-a") -> dict[str, Any]:
    return {"id": model_id, "name": "GAN A", "source": {"kind": "python", "factory": FACTORY}}


def write_catalog(directory: Path, models: list[Any], **top: Any) -> Path:
    path = directory / "catalog.yaml"
    path.write_text(yaml.safe_dump({**top, "models": models}, sort_keys=False))
    return path


def load_error(directory: Path, models: list[Any], **top: Any) -> str:
    with pytest.raises(CatalogError) as info:
        load_catalog(write_catalog(directory, models, **top))
    return str(info.value)


def test_full_entry_parses_every_field(catalog_dir: Path) -> None:
    models = [
        {
            "id": "cats.v2",
            "name": "Cats",
            "description": "photos of cats",
            "tags": ["cat", "photo"],
            "creator": "Ann",
            "license": "MIT",
            "architecture": "StyleGAN2",
            "resolution": 256,
            "links": ["https://example.org/cats"],
            "source": {"kind": "images", "path": "samples/cats"},
        }
    ]
    catalog = load_catalog(write_catalog(catalog_dir, models, version=1))

    entry = catalog.get("cats.v2")
    assert catalog.base_dir == catalog_dir.resolve()
    assert entry.tags == ("cat", "photo")
    assert entry.links == ("https://example.org/cats",)
    assert entry.resolution == 256
    assert entry.source == SourceSpec(kind="images", path="samples/cats")
    assert entry.metadata() == {key: value for key, value in models[0].items() if key != "source"}
    assert json.loads(json.dumps(entry.metadata())) == entry.metadata()


def test_optional_fields_default_to_empty(catalog_dir: Path) -> None:
    entry = load_catalog(write_catalog(catalog_dir, [python_model()])).entries[0]

    assert (entry.description, entry.tags, entry.creator, entry.license) == ("", (), "", "")
    assert (entry.architecture, entry.resolution, entry.links) == ("", None, ())


def test_python_kwargs_are_read_only_hashable_and_picklable(catalog_dir: Path) -> None:
    model = python_model()
    model["source"]["kwargs"] = {"name": "cat", "sizes": [1, 2], "opts": {"b": 1, "a": None}}
    entry = load_catalog(write_catalog(catalog_dir, [model])).entries[0]

    assert entry.source.kwargs["sizes"] == (1, 2)
    with pytest.raises(TypeError):
        entry.source.kwargs["name"] = "dog"  # type: ignore[index]
    assert pickle.loads(pickle.dumps(entry)) == entry
    assert hash(entry) == hash(pickle.loads(pickle.dumps(entry)))
    assert entry.source.to_dict() == {
        "kind": "python",
        "path": None,
        "factory": FACTORY,
        "kwargs": {"name": "cat", "opts": {"a": None, "b": 1}, "sizes": [1, 2]},
    }


def test_source_to_dict_is_canonical_whatever_the_key_order() -> None:
    first = SourceSpec(kind="python", factory=FACTORY, kwargs={"a": 1, "b": {"y": 2, "x": 3}})
    second = SourceSpec(kind="python", factory=FACTORY, kwargs={"b": {"x": 3, "y": 2}, "a": 1})

    assert json.dumps(first.to_dict()) == json.dumps(second.to_dict())
    assert first == second


def test_get_unknown_id_names_it(catalog_dir: Path) -> None:
    catalog = load_catalog(write_catalog(catalog_dir, [python_model()]))

    with pytest.raises(CatalogError, match="no model with id 'missing'"):
        catalog.get("missing")


def test_factory_is_not_imported_at_load_time(catalog_dir: Path) -> None:
    model = python_model()
    model["source"]["factory"] = "package_that_does_not_exist_42.module:factory"

    assert len(load_catalog(write_catalog(catalog_dir, [model]))) == 1


def test_unknown_field_names_model_field_and_allowed_ones(catalog_dir: Path) -> None:
    model = python_model("gan-a")
    model["tag"] = ["face"]

    message = load_error(catalog_dir, [model])

    assert "models[0] (id 'gan-a')" in message
    assert "unknown field(s) ['tag']" in message
    assert "'tags'" in message and "'resolution'" in message


@pytest.mark.parametrize("field", ["id", "name", "source"])
def test_missing_required_field_is_named(catalog_dir: Path, field: str) -> None:
    model = python_model()
    del model[field]

    message = load_error(catalog_dir, [python_model("first"), model])

    assert "models[1]" in message
    assert f"missing required field(s) ['{field}']" in message


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("name", 2024, "field 'name' must be a string, got int 2024"),
        ("tags", "face", "field 'tags' must be a list of strings"),
        ("tags", ["face", 3], "field 'tags' must be a list of strings"),
        ("resolution", True, "field 'resolution' must be a positive integer"),
        ("resolution", -64, "field 'resolution' must be a positive integer"),
        ("links", {"a": 1}, "field 'links' must be a list of strings"),
    ],
)
def test_wrong_type_names_model_and_field(
    catalog_dir: Path, field: str, value: Any, expected: str
) -> None:
    model = {**python_model("gan-a"), field: value}

    message = load_error(catalog_dir, [model])

    assert "models[0] (id 'gan-a')" in message
    assert expected in message


@pytest.mark.parametrize("bad_id", ["Cats", "-cats", "cats/v1", "", "a" * 129, "cat s"])
def test_bad_id_slug_is_rejected(catalog_dir: Path, bad_id: str) -> None:
    message = load_error(catalog_dir, [python_model(bad_id)])

    assert f"field 'id' is {bad_id!r}, not a slug" in message


def test_numeric_id_asks_to_quote_it(catalog_dir: Path) -> None:
    message = load_error(catalog_dir, [{**python_model(), "id": 7}])

    assert "field 'id' must be a string, got int 7; quote it in YAML" in message


def test_duplicate_ids_name_both_positions(catalog_dir: Path) -> None:
    models = [python_model("gan-a"), python_model("gan-b"), python_model("gan-a")]

    message = load_error(catalog_dir, models)

    assert "duplicate model id 'gan-a' at models[0] and models[2]" in message


def test_unknown_source_kind_lists_the_known_ones(catalog_dir: Path) -> None:
    model = {**python_model("gan-a"), "source": {"kind": "onnx", "path": "x.onnx"}}

    message = load_error(catalog_dir, [model])

    assert "(id 'gan-a')" in message
    assert "field 'source.kind' is 'onnx'" in message
    assert "['images', 'python']" in message


def test_unknown_source_field_is_named(catalog_dir: Path) -> None:
    model = python_model("gan-a")
    model["source"]["path"] = "weights.pt"

    message = load_error(catalog_dir, [model])

    assert "unknown field(s) ['path'] in 'source' of kind 'python'" in message
    assert "['factory', 'kind', 'kwargs']" in message


def test_images_source_without_images_names_resolved_path(catalog_dir: Path) -> None:
    (catalog_dir / "empty").mkdir()
    model = {"id": "dogs", "name": "Dogs", "source": {"kind": "images", "path": "empty"}}

    message = load_error(catalog_dir, [model])

    assert "(id 'dogs')" in message
    assert "field 'source.path' 'empty'" in message
    assert f"resolved to {catalog_dir.resolve() / 'empty'}" in message
    assert "matches no image files" in message


def test_images_source_accepts_a_glob(catalog_dir: Path) -> None:
    model = {"id": "cats", "name": "Cats", "source": {"kind": "images", "path": "samples/*/*.png"}}

    catalog = load_catalog(write_catalog(catalog_dir, [model]))

    files = list_image_files(catalog.entries[0].source.path, catalog.base_dir)
    assert [path.name for path in files] == ["0.png", "1.png", "2.png"]


@pytest.mark.parametrize("factory", ["no_colon", "pkg.module:", ":make", "pkg..mod:make", "a:b:c"])
def test_malformed_factory_is_rejected(catalog_dir: Path, factory: str) -> None:
    model = python_model("gan-a")
    model["source"]["factory"] = factory

    message = load_error(catalog_dir, [model])

    assert f"field 'source.factory' {factory!r} is malformed" in message
    assert "'pkg.module:callable'" in message


def test_kwargs_that_are_not_json_are_rejected(catalog_dir: Path) -> None:
    path = catalog_dir / "catalog.yaml"
    path.write_text(
        "models:\n  - id: gan-a\n    name: A\n    source:\n      kind: python\n"
        f"      factory: {FACTORY}\n      kwargs: {{since: 2024-01-31}}\n"
    )

    with pytest.raises(CatalogError, match="field 'source.kwargs' must hold only strings"):
        load_catalog(path)


def test_yaml_syntax_error_names_the_file(catalog_dir: Path) -> None:
    path = catalog_dir / "broken.yaml"
    path.write_text("models:\n  - id: [unclosed\n")

    with pytest.raises(CatalogError, match=f"catalog file {path} is not valid YAML"):
        load_catalog(path)


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="nowhere.yaml does not exist"):
        load_catalog(tmp_path / "nowhere.yaml")


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ({"models": []}, "'models' must be a non-empty list"),
        ({"version": 2, "models": [{}]}, "catalog version 2 is not supported"),
        ({"modles": []}, "unknown top-level field(s) ['modles']"),
        (["a", "b"], "the top level must be a mapping"),
    ],
)
def test_bad_top_level_is_explained(tmp_path: Path, document: Any, expected: str) -> None:
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(document))

    with pytest.raises(CatalogError) as info:
        load_catalog(path)

    assert expected in str(info.value)
    assert str(path) in str(info.value)


def test_catalog_built_directly_supports_get() -> None:
    spec = SourceSpec(kind="python", factory=FACTORY)
    entry = ModelEntry("m1", "M", "", (), "", "", "", None, (), spec)

    catalog = Catalog(entries=(entry,), base_dir=Path("/"))

    assert catalog.get("m1") is entry
    assert list(catalog) == [entry]
    assert len(catalog) == 1

"""Indexing and serving refuse what is broken and never lose the published index."""

import pytest
import yaml

from modelseek.errors import CatalogError, EncoderMismatch, IndexCorrupt
from shards import store

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_serving_an_index_with_a_corrupt_shard_is_refused_naming_the_file(tmp_path, zoo):
    import shutil

    from deployments.app import build_app

    root = tmp_path / "index"
    shutil.copytree(zoo[1], root)
    manifest = store.read_manifest(root)
    shard = store.version_dir(root, manifest.version) / manifest.shards[0].file
    shard.write_bytes(shard.read_bytes()[:-10] + b"0123456789")

    with pytest.raises(IndexCorrupt, match=f"{shard.name} fails its checksum"):
        build_app({"index_root": str(root)})


def test_serving_with_another_encoder_is_refused_naming_both(tmp_path, zoo):
    from deployments.app import check_encoder
    from modelseek.features import HERMETIC_MODEL

    manifest = store.read_manifest(zoo[1])
    ckpt = tmp_path / "other.pt"
    import torch

    from modelseek.features import load_feature_space

    model = load_feature_space("hermetic")
    state = {k: v + 0.01 for k, v in model.model.state_dict().items()}
    torch.save(state, ckpt)
    with pytest.raises(EncoderMismatch) as err:
        check_encoder(manifest, f"clip:{HERMETIC_MODEL}:{ckpt}")
    assert manifest.feature_space in str(err.value) and "ckpt-" in str(err.value)


def test_a_failing_model_publishes_nothing_and_keeps_the_old_version(tmp_path, zoo):
    import shutil

    from actors.indexing import IndexingFailed, build_index
    from tests.integration.conftest import INDEX_SETTINGS

    catalog, root_src, _ = zoo
    root = tmp_path / "index"
    shutil.copytree(root_src, root)
    before = store.read_current_version(root)
    broken = tmp_path / "catalog.yaml"
    document = yaml.safe_load(catalog.read_text())
    document["models"].append(
        {
            "id": "broken-sampler",
            "name": "Broken",
            "source": {
                "kind": "python",
                "factory": "modelseek.demo.samplers:photo_variations",
                "kwargs": {"name": "no-such-photo"},
            },
        }
    )
    broken.write_text(yaml.safe_dump(document))

    with pytest.raises((IndexingFailed, CatalogError), match="broken-sampler"):
        build_index(broken, root, "hermetic", INDEX_SETTINGS, progress=False)

    assert store.read_current_version(root) == before
    store.verify_index(root, store.read_manifest(root))

"""A local Ray cluster, a small real zoo indexed with Ray tasks, and the service over HTTP."""

import socket
from pathlib import Path

import httpx
import pytest
import yaml

from modelseek.config import IndexConfig

ray = pytest.importorskip("ray")

SMALL_ZOO = ("face-dcgan-64", "lfw-backgrounds", "mnist-digit-1", "mnist-digit-3", "mnist-digit-7")
INDEX_SETTINGS = IndexConfig(
    samples_per_model=192, chunk_size=64, num_shards=2, lowrank_rank=8, reservoir_size=64
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_small_catalog(demo_catalog: Path, out: Path, model_ids=SMALL_ZOO) -> Path:
    """A catalog of a few demo models, with folder paths made absolute."""
    document = yaml.safe_load(demo_catalog.read_text())
    models = [m for m in document["models"] if m["id"] in model_ids]
    for model in models:
        if model["source"]["kind"] == "images":
            model["source"]["path"] = str(demo_catalog.parent / model["source"]["path"])
    out.write_text(yaml.safe_dump({"version": 1, "models": models}, sort_keys=False))
    return out


@pytest.fixture(scope="session")
def ray_cluster():
    # Serve replicas and scorer actors reserve fractions of a CPU for as long as they live; with
    # the 2 real cores as 2 logical CPUs, an indexing task (1 CPU) would wait for them forever.
    ray.init(address="local", num_cpus=4, include_dashboard=False, configure_logging=False)
    yield
    from ray import serve

    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="session")
def demo_catalog(tmp_path_factory) -> Path:
    from modelseek.demo.prepare import prepare_demo

    return prepare_demo(tmp_path_factory.mktemp("demo"))


@pytest.fixture(scope="session")
def zoo(tmp_path_factory, demo_catalog, ray_cluster):
    """(catalog path, index root, first IndexReport) of the small zoo, indexed once."""
    from actors.indexing import build_index

    folder = tmp_path_factory.mktemp("zoo")
    catalog = write_small_catalog(demo_catalog, folder / "catalog.yaml")
    report = build_index(catalog, folder / "index", "hermetic", INDEX_SETTINGS, progress=False)
    return catalog, folder / "index", report


@pytest.fixture(scope="session")
def service(zoo):
    """Base URL of the Serve application answering for the small zoo."""
    from modelseek.cli import start_service

    port = free_port()
    start_service(zoo[1], None, "127.0.0.1", port)
    url = f"http://127.0.0.1:{port}"
    with httpx.Client(timeout=60) as client:
        assert client.get(f"{url}/healthz").status_code == 200
    return url


@pytest.fixture()
def http(service):
    with httpx.Client(base_url=service, timeout=60) as client:
        yield client

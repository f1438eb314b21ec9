"""The `modelseek` command: index a catalog, serve an index, query a service, run the demo."""

import argparse
import importlib
import json
import logging
import os
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx

from modelseek.catalog import load_catalog
from modelseek.client import Client, encode_image
from modelseek.config import IndexConfig, ServeConfig, with_env_overrides
from modelseek.errors import ModelseekError

logger = logging.getLogger(__name__)

DEFAULT_URL = "http://127.0.0.1:8000"
DEMO_DIR = Path(os.environ.get("MODELSEEK_DEMO_DIR", "~/.modelseek/demo")).expanduser()
# The app is loaded by its import path, as `serve run deployments.app:build_app` loads it,
# so the CLI and a Serve config file start exactly the same application.
APP_IMPORT_PATH = "deployments.app"
DEMO_QUERIES = (
    ("text", "a human face portrait"),
    ("text", "handwritten digit seven"),
    ("text", "a photo of a cat"),
    ("image", "face-dcgan-64"),
    ("image", "mnist-digit-3"),
    ("similar", "mnist-digit-7"),
)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Library warnings (e.g. the demo falling back to the hermetic encoder) read as log lines.
    logging.captureWarnings(True)
    # One INFO line per HTTP request (httpx) drowns the answers the CLI prints.
    logging.getLogger("httpx").setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    try:
        return args.run(args)
    except (ModelseekError, FileNotFoundError, ValueError) as err:
        print(f"modelseek {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="modelseek", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    commands = parser.add_subparsers(dest="command", required=True)

    index = commands.add_parser("index", help="sample, encode and summarise a catalog's models")
    index.add_argument("--catalog", required=True, type=Path, help="catalog YAML file")
    index.add_argument("--index", required=True, type=Path, help="index root folder")
    _add_encoder_arg(index)
    _add_index_args(index)
    index.set_defaults(run=run_index)

    serve = commands.add_parser("serve", help="serve an index over HTTP until Ctrl-C")
    serve.add_argument("--index", required=True, type=Path, help="index root folder")
    serve.add_argument("--encoder", help="must match the index; default: the index's own")
    _add_serve_args(serve)
    serve.set_defaults(run=run_serve)

    query = commands.add_parser(
        "query", help="ask a running service (text, image, image set, similar models, mixes)"
    )
    query.add_argument("text", nargs="?", help="query text")
    query.add_argument("--image", type=Path, help="query image or sketch file")
    query.add_argument(
        "--images",
        type=Path,
        nargs="+",
        help="an image set (files, or one folder): which model to fine-tune from",
    )
    query.add_argument("--similar", metavar="MODEL_ID", help="models similar to this one")
    query.add_argument(
        "--not",
        dest="negative",
        metavar="TEXT",
        help="a concept to stay away from (weight -1 in a product of experts)",
    )
    query.add_argument("--k", type=int, default=5)
    query.add_argument("--method", help="scoring method; default depends on the modality")
    query.add_argument("--tag", action="append", default=[], help="any of these tags")
    query.add_argument("--require-tag", action="append", default=[], help="all of these tags")
    query.add_argument("--exclude-tag", action="append", default=[], help="none of these tags")
    query.add_argument("--license", action="append", default=[])
    query.add_argument("--architecture", action="append", default=[])
    query.add_argument("--min-resolution", type=int)
    query.add_argument("--max-resolution", type=int)
    query.add_argument("--url", default=DEFAULT_URL)
    query.add_argument("--json", action="store_true", help="print the raw JSON answer")
    query.set_defaults(run=run_query)

    reload = commands.add_parser(
        "reload", help="make a running service serve the index version just published"
    )
    reload.add_argument("--url", default=DEFAULT_URL)
    reload.add_argument(
        "--token",
        default=os.environ.get("MODELSEEK_SERVE_ADMIN_TOKEN"),
        help="the service's admin token (default: $MODELSEEK_SERVE_ADMIN_TOKEN)",
    )
    reload.set_defaults(run=run_reload)

    demo = commands.add_parser("demo", help="index the built-in zoo, serve it, show answers")
    demo.add_argument("--data-dir", type=Path, default=DEMO_DIR)
    demo.add_argument("--encoder", help="default: CLIP ViT-B-32 if cached, else lite")
    demo.add_argument("--exit", action="store_true", help="stop after the example queries")
    _add_index_args(demo)
    _add_serve_args(demo)
    demo.set_defaults(run=run_demo)

    bench = commands.add_parser(
        "bench", help="time every scoring method on simulated collections (the paper's Table 3)"
    )
    _add_bench_args(bench)
    bench.set_defaults(run=run_bench)

    evaluate = commands.add_parser(
        "eval", help="the paper's evaluation protocol on a zoo (image, sketch and text queries)"
    )
    _add_eval_args(evaluate)
    evaluate.set_defaults(run=run_eval)
    return parser


def _add_eval_args(parser: argparse.ArgumentParser) -> None:
    from modelseek.protocol import DEFAULT_WORK_DIR, MAX_QUERIES_PER_MODEL

    parser.add_argument("zoo", type=Path, help="zoo folder (catalog.yaml, zoo.json, queries/)")
    parser.add_argument(
        "--encoders", default="lite,hermetic", help="comma-separated feature spaces to evaluate"
    )
    parser.add_argument(
        "--samples-per-model",
        type=int,
        default=IndexConfig().samples_per_model,
        help="images sampled per model for its statistics",
    )
    parser.add_argument(
        "--max-queries", type=int, default=MAX_QUERIES_PER_MODEL, help="image queries per model"
    )
    parser.add_argument("--out", type=Path, default=Path("eval/RESULTS.md"), help="report file")
    parser.add_argument(
        "--work-dir", type=Path, default=DEFAULT_WORK_DIR, help="where indexes are cached"
    )
    parser.add_argument(
        "--notes", type=Path, help="a markdown file of analysis to close the report with"
    )
    parser.add_argument(
        "--ray-address",
        help="join this Ray cluster ('auto' or host:port); default: start a private one",
    )


def _add_bench_args(parser: argparse.ArgumentParser) -> None:
    from modelseek.bench import add_arguments

    add_arguments(parser)


def _add_encoder_arg(parser: argparse.ArgumentParser) -> None:
    from modelseek.features import DEFAULT_ENCODER

    parser.add_argument(
        "--encoder",
        default=DEFAULT_ENCODER,
        help="feature space: 'clip:MODEL:PRETRAINED_TAG', 'clip:MODEL:/path/checkpoint', "
        "'lite' (EfficientNet-Lite0 + MiniLM, offline) or 'hermetic' (tiny random-weight model "
        f"for tests); default {DEFAULT_ENCODER}",
    )


def _add_index_args(parser: argparse.ArgumentParser) -> None:
    d = IndexConfig()
    parser.add_argument(
        "--samples", type=int, default=d.samples_per_model, help="images sampled per model"
    )
    parser.add_argument("--chunk-size", type=int, default=d.chunk_size, help="images per Ray task")
    parser.add_argument("--shards", type=int, default=d.num_shards, help="number of shards")
    parser.add_argument("--rank", type=int, default=d.lowrank_rank, help="covariance rank r")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument(
        "--ray-address",
        help="join this Ray cluster ('auto' or host:port); default: start a private one",
    )


def _add_serve_args(parser: argparse.ArgumentParser) -> None:
    d = ServeConfig()
    parser.add_argument("--host", default=d.host)
    parser.add_argument("--port", type=int, default=d.port)
    if not any(a.dest == "ray_address" for a in parser._actions):
        parser.add_argument(
            "--ray-address",
            help="join this Ray cluster ('auto' or host:port); default: start a private one",
        )


def index_config(args: argparse.Namespace) -> IndexConfig:
    for name in ("samples", "chunk_size", "shards", "rank"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    cfg = replace(
        IndexConfig(),
        samples_per_model=args.samples,
        chunk_size=args.chunk_size,
        num_shards=args.shards,
        lowrank_rank=args.rank,
        seed=args.seed,
    )
    return with_env_overrides(cfg, "INDEX")


def init_ray(address: str | None) -> None:
    """Join the Ray cluster at `address`, or start a private local one."""
    import ray

    # Serve replicas and scorer actors each reserve a fraction of a CPU for as long as they
    # live; two logical CPUs beyond the real ones keep indexing tasks (1 CPU each)
    # schedulable beside a running service on a small machine.
    num_cpus = None if address else (os.cpu_count() or 1) + 2
    # "local" starts a private instance even when another Ray runs on this machine; joining
    # one is explicit (--ray-address auto or host:port).
    ray.init(
        address=address or "local",
        num_cpus=num_cpus,
        include_dashboard=False,
        logging_level=logging.WARNING,
        log_to_driver=True,
        configure_logging=False,
    )


def shutdown_ray() -> None:
    import ray
    from ray import serve

    if ray.is_initialized():
        try:
            serve.shutdown()
        finally:
            ray.shutdown()


def run_index(args: argparse.Namespace) -> int:
    from actors.indexing import build_index

    cfg = index_config(args)
    load_catalog(args.catalog)  # a bad catalog fails in a second, not after starting Ray
    init_ray(args.ray_address)
    try:
        report = build_index(
            args.catalog,
            args.index,
            args.encoder,
            cfg,
            progress=not args.no_progress,
            on_progress=print,
        )
    finally:
        shutdown_ray()
    _print_index_report(report)
    return 0


def _print_index_report(report: Any) -> None:
    if report.published:
        print(
            f"published index version {report.version}: {report.models_total} models, "
            f"{report.models_sampled} sampled, {report.images_encoded} images encoded "
            f"in {report.seconds:.1f} s"
        )
    else:
        print(f"index version {report.version} is up to date ({report.seconds:.1f} s)")


# Lifecycle lines only: a line per request would drown the console under load.
SERVE_LOGGING = {"log_level": "INFO", "enable_access_log": False}


def start_service(index: Path, encoder: str | None, host: str, port: int) -> None:
    """Start Serve's HTTP proxy on host:port and deploy the application for `index` at /."""
    from ray import serve

    serve.start(http_options={"host": host, "port": port}, logging_config=SERVE_LOGGING)
    deploy_app(index, encoder)


def deploy_app(
    index: Path, encoder: str | None, name: str = "modelseek", route_prefix: str = "/"
) -> None:
    """Deploy (or update in place) the application for `index`; returns once it is ready."""
    from ray import serve

    build_app = importlib.import_module(APP_IMPORT_PATH).build_app
    app = build_app({"index_root": str(index), "encoder": encoder})
    serve.run(app, name=name, route_prefix=route_prefix, logging_config=SERVE_LOGGING)


def wait_for_ctrl_c(url: str) -> None:
    print(f"serving on {url} (web page at {url}/, API at {url}/v1/search); Ctrl-C stops")
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    try:
        while not stop["now"]:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    print("stopping")


def run_serve(args: argparse.Namespace) -> int:
    init_ray(args.ray_address)
    try:
        start_service(args.index, args.encoder, args.host, args.port)
        wait_for_ctrl_c(f"http://{args.host}:{args.port}")
    finally:
        shutdown_ray()
    return 0


def _b64(path: Path) -> str:
    return encode_image(path)


def _image_set(paths: list[Path]) -> list[Path]:
    if len(paths) == 1 and paths[0].is_dir():
        return sorted(p for p in paths[0].iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    return paths


def build_query_body(args: argparse.Namespace) -> dict[str, Any]:
    """The JSON body of POST /v1/search for the `query` command's arguments."""
    parts: list[dict[str, Any]] = []
    if args.text:
        parts.append({"text": args.text})
    if args.image:
        parts.append({"image": _b64(args.image)})
    if args.images:
        parts.append({"images": [_b64(p) for p in _image_set(args.images)]})
    if args.negative:
        parts.append({"text": args.negative, "weight": -1.0})
    if args.similar and parts:
        raise ValueError("--similar ranks models by their own statistics; give no other query")
    if not parts and not args.similar:
        raise ValueError("give a query: TEXT, --image, --images or --similar")

    filters = {
        "tags_any": args.tag,
        "tags_all": args.require_tag,
        "tags_none": args.exclude_tag,
        "licenses": args.license,
        "architectures": args.architecture,
        "min_resolution": args.min_resolution,
        "max_resolution": args.max_resolution,
    }
    body: dict[str, Any] = {"k": args.k}
    body["filters"] = {key: value for key, value in filters.items() if value not in (None, [])}
    if args.similar:
        return {**body, "model": args.similar}
    if len(parts) == 1:
        return {**body, **parts[0], **({"method": args.method} if args.method else {})}
    if args.method:
        for part in parts:
            part["method"] = args.method
    return {**body, "queries": parts}


def search_http(url: str, body: dict[str, Any], timeout_s: float = 60.0) -> dict[str, Any]:
    """POST one search body to a running service; ServiceError on 4xx/5xx."""
    with Client(url, timeout_s) as client:
        return client.search_body(body)


def _mixture_label(parts: list[dict[str, Any]]) -> str:
    """'a dog - a cartoon' for a mix; a weight other than ±1 is shown ('0.5 × a dog')."""
    label = ""
    for i, part in enumerate(parts):
        name = part.get("text") or f"{part['images']} image(s)"
        weight = float(part.get("weight", 1.0))
        sign = "-" if weight < 0 else "+"
        if abs(weight) != 1.0:
            name = f"{abs(weight):g} × {name}"
        label += (f"-{name}" if sign == "-" else name) if i == 0 else f" {sign} {name}"
    return label


def print_results(body: dict[str, Any]) -> None:
    query = body["query"]
    label = (
        f"similar to {query['similar_to']}"
        if query["similar_to"]
        else _mixture_label(query["parts"])
    )
    print(
        f"\n{query['kind']} query {label!r}, method {body['method']}, "
        f"index {body['index_version']}, {body['timings_ms']['total']:.1f} ms"
    )
    for row in body["results"]:
        if row["probability"] is None:
            figure = f"distance={row['distance']:.4g}"
        else:
            figure = f"p={row['probability']:.3f} score={row['score']:.4g}"
        print(f"  {row['rank']:>2}. {row['model_id']:<24} {figure}  {row['name']}")
    if not body["results"]:
        print("  (no model matches the filters)")
    for shard in body["missing_shards"]:
        print(f"  warning: shard {shard['shard']} ({shard['models']} models) did not answer")


def run_query(args: argparse.Namespace) -> int:
    body = build_query_body(args)
    try:
        answer = search_http(args.url, body)
    except httpx.HTTPError as err:
        print(f"modelseek query: cannot reach {args.url}: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(answer, indent=2))
    else:
        print_results(answer)
    return 0


def run_reload(args: argparse.Namespace) -> int:
    if not args.token:
        raise ValueError("no admin token: pass --token or set MODELSEEK_SERVE_ADMIN_TOKEN")
    headers = {"authorization": f"Bearer {args.token}"}
    try:
        answer = httpx.post(f"{args.url}/v1/admin/reload", headers=headers, timeout=120)
    except httpx.HTTPError as err:
        print(f"modelseek reload: cannot reach {args.url}: {err}", file=sys.stderr)
        return 2
    body = answer.json()
    if answer.status_code != 200:
        print(
            f"modelseek reload: HTTP {answer.status_code}: {body['error']['message']}",
            file=sys.stderr,
        )
        return 2
    print(f"serving index version {body['version']} (was {body['previous']})")
    return 0


def run_demo(args: argparse.Namespace) -> int:
    from actors.indexing import build_index
    from modelseek.demo.prepare import prepare_demo, sample_query_image
    from modelseek.features import HERMETIC_ENCODER, pick_demo_encoder

    catalog = prepare_demo(args.data_dir)
    encoder = args.encoder or pick_demo_encoder()
    if encoder == HERMETIC_ENCODER:
        print(
            "note: random-weight (hermetic) features: text rankings mean nothing, and image "
            "rankings are rough; see README, 'Feature space'"
        )
    index_root = args.data_dir / "index"
    url = f"http://{args.host}:{args.port}"
    init_ray(args.ray_address)
    try:
        report = build_index(
            catalog,
            index_root,
            encoder,
            index_config(args),
            progress=not args.no_progress,
            on_progress=print,
        )
        _print_index_report(report)
        start_service(index_root, encoder, args.host, args.port)
        for modality, value in DEMO_QUERIES:
            if modality == "text":
                print_results(search_http(url, {"text": value, "k": 5}))
            elif modality == "similar":
                print_results(search_http(url, {"model": value, "k": 5}))
            else:
                image = sample_query_image(catalog, value, args.data_dir / "queries")
                print(f"\n(image sampled from {value!r} with a seed not used for indexing)")
                print_results(search_http(url, {"image": _b64(image), "k": 5}))
        if not args.exit:
            wait_for_ctrl_c(url)
    finally:
        shutdown_ray()
    return 0


def run_bench(args: argparse.Namespace) -> int:
    from modelseek.bench import command_line, config_from_args, render_markdown
    from modelseek.bench import run_bench as measure

    cfg = config_from_args(args)
    report = render_markdown(measure(cfg, command_line(cfg, args.out)))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report)
    print(report)
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from modelseek import protocol
    from modelseek.errors import CatalogError
    from modelseek.protocol_report import write_report

    started = time.perf_counter()
    encoders = tuple(e.strip() for e in args.encoders.split(",") if e.strip())
    if not encoders:
        raise ValueError(f"--encoders names no feature space: {args.encoders!r}; e.g. lite")
    for name in ("samples_per_model", "max_queries"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    cfg = protocol.EvalConfig(
        zoo_dir=args.zoo,
        encoders=encoders,
        samples_per_model=args.samples_per_model,
        max_queries_per_model=args.max_queries,
        work_dir=args.work_dir,
        out=args.out,
        index=with_env_overrides(IndexConfig(), "INDEX"),
    )
    notes = args.notes.read_text() if args.notes else ""
    zoo = protocol.load_zoo(cfg.zoo_dir)
    zoo_print = zoo.fingerprint()
    init_ray(args.ray_address)
    try:
        built = {encoder: protocol.index_zoo(cfg, zoo, encoder) for encoder in encoders}
    finally:
        shutdown_ray()
    query_sets = protocol.build_query_sets(zoo, cfg.max_queries_per_model)
    results = [protocol.evaluate_space(cfg, zoo, e, *built[e], query_sets) for e in encoders]
    command = "modelseek " + " ".join(sys.argv[1:]) if sys.argv[1:] else "modelseek eval"
    if zoo.fingerprint() != zoo_print:
        raise CatalogError(
            f"the zoo at {zoo.root} changed during the evaluation (rebuilt?); rerun once its "
            "build has finished"
        )
    wall_s = time.perf_counter() - started
    summary = write_report(cfg, zoo, query_sets, results, command, wall_s, notes)
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())

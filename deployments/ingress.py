"""`Ingress`: the HTTP API (starlette) in front of the encoder and the aggregator.

Every error leaves as `{"error": {"code", "message"}}` with the status of its class in
`modelseek.errors`; this module is the one place where that mapping happens.
"""

import asyncio
import hmac
import json
import logging
import time
from dataclasses import asdict
from importlib import resources
from typing import Any, Protocol

import numpy as np
import ray
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from deployments.aggregator import SearchResult
from deployments.metrics import ServiceMetrics
from modelseek.config import ServeConfig
from modelseek.errors import (
    BadQuery,
    Forbidden,
    IndexRefused,
    ModelseekError,
    NotFound,
    PayloadTooLarge,
)
from modelseek.query import (
    DEFAULT_K,
    MAX_IMAGE_SET,
    QueryPart,
    SearchRequest,
    parse_search_fields,
)
from shards.filters import Filters
from shards.queries import Expert

logger = logging.getLogger(__name__)


class SearchBackend(Protocol):
    """What the HTTP layer needs from the rest of the service."""

    async def encode(self, part: QueryPart) -> np.ndarray: ...

    async def search(self, experts: list[Expert], k: int, filters: Filters) -> SearchResult: ...

    async def similar(self, model_id: str, k: int, filters: Filters) -> SearchResult: ...

    async def list_models(self) -> list[dict[str, Any]]: ...

    async def get_model(self, model_id: str) -> dict[str, Any]: ...

    async def thumbnail(self, model_id: str, number: int) -> bytes: ...

    async def health(self) -> dict[str, Any]: ...

    async def reload(self) -> dict[str, Any]: ...


class ServeBackend:
    """The backend made of Serve deployment handles."""

    def __init__(self, encoder: DeploymentHandle, aggregator: DeploymentHandle):
        self._encoder, self._aggregator = encoder, aggregator

    async def encode(self, part: QueryPart) -> np.ndarray:
        """(m, d) float32 features of a query part; an image set's images batch together."""
        if part.text is not None:
            rows = [await self._encoder.encode_texts.remote(part.text)]
        else:
            rows = await asyncio.gather(
                *(self._encoder.encode_images.remote(image) for image in part.images)
            )
        return np.stack(rows).astype(np.float32)

    async def search(self, experts: list[Expert], k: int, filters: Filters) -> SearchResult:
        return await self._aggregator.search.remote(experts, k, filters)

    async def similar(self, model_id: str, k: int, filters: Filters) -> SearchResult:
        result = await self._aggregator.similar.remote(model_id, k, filters)
        if result is None:
            raise unknown_model(model_id)
        return result

    async def list_models(self) -> list[dict[str, Any]]:
        return await self._aggregator.list_models.remote()

    async def get_model(self, model_id: str) -> dict[str, Any]:
        record = await self._aggregator.get_model.remote(model_id)
        if record is None:
            raise unknown_model(model_id)
        return record

    async def thumbnail(self, model_id: str, number: int) -> bytes:
        data = await self._aggregator.thumbnail.remote(model_id, number)
        if data is None:
            raise NotFound(f"model {model_id!r} has no thumbnail {number}")
        return data

    async def health(self) -> dict[str, Any]:
        return await self._aggregator.health.remote()

    async def reload(self) -> dict[str, Any]:
        outcome = await self._aggregator.reload.remote()
        if "error" in outcome:
            raise IndexRefused(outcome["error"])
        return outcome


def unknown_model(model_id: str) -> NotFound:
    return NotFound(f"no model with id {model_id!r}; GET /v1/models lists them")


def error_response(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def _unwrap(err: BaseException) -> BaseException:
    """The user-level error inside a Ray task error, which is what the client should see."""
    while isinstance(err, ray.exceptions.RayTaskError) and err.cause is not None:
        err = err.cause
    return err


async def read_body(request: Request, limit_bytes: int) -> bytes:
    """The request body, refusing it as soon as it exceeds `limit_bytes`."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit_bytes:
        raise PayloadTooLarge(f"request body of {declared} bytes exceeds the {limit_bytes} limit")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit_bytes:
            raise PayloadTooLarge(f"request body exceeds the {limit_bytes} byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


async def parse_search_request(request: Request, cfg: ServeConfig) -> SearchRequest:
    """A SearchRequest from a JSON body, or a multipart form with `image` or `images` files."""
    body = await read_body(request, cfg.max_upload_bytes)
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        request._body = body  # starlette re-reads a cached body when parsing the form
        form = await request.form(max_files=MAX_IMAGE_SET + 1, max_part_size=cfg.max_upload_bytes)
        uploads: dict[str, list[bytes]] = {}
        fields: dict[str, Any] = {}
        for key, value in form.multi_items():
            if hasattr(value, "read"):
                uploads.setdefault(key, []).append(await value.read())
            else:
                fields[key] = value
        if isinstance(fields.get("filters"), str):
            fields["filters"] = _json_field(fields["filters"], "filters")
        return parse_search_fields(fields, uploads, cfg)
    fields = _json_field(body, "body")
    if not isinstance(fields, dict):
        raise BadQuery(f"body must be a JSON object, got {type(fields).__name__}")
    return parse_search_fields(fields, {}, cfg)


def _json_field(text: str | bytes, what: str) -> Any:
    try:
        return json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BadQuery(f"{what} is not valid JSON ({err}); send application/json") from err


def describe_query(query: SearchRequest) -> dict[str, Any]:
    """What the response echoes of the query (never the image bytes)."""
    parts = [
        {
            "modality": p.modality,
            "method": p.method,
            "weight": p.weight,
            **({"text": p.text} if p.text is not None else {"images": len(p.images)}),
        }
        for p in query.parts
    ]
    return {
        "kind": query.kind,
        "k": query.k,
        "parts": parts,
        "similar_to": query.similar_to,
        "filters": {k: v for k, v in asdict(query.filters).items() if v not in ((), None)},
    }


def query_method(query: SearchRequest) -> str:
    if query.similar_to is not None:
        return "frechet"
    return query.parts[0].method if len(query.parts) == 1 else "product_of_experts"


def create_http_app(backend: SearchBackend, cfg: ServeConfig, metrics: ServiceMetrics):
    """The starlette application serving the API, the metrics and the web page."""

    async def answer(query: SearchRequest, started: float) -> Response:
        decoded = time.perf_counter()
        if query.similar_to is not None:
            result = await backend.similar(query.similar_to, query.k, query.filters)
        else:
            features = await asyncio.gather(*(backend.encode(p) for p in query.parts))
            experts = [
                Expert(p.method, f, p.weight) for p, f in zip(query.parts, features, strict=True)
            ]
            encoded = time.perf_counter()
            result = await backend.search(experts, query.k, query.filters)
        stage_s = {
            "decode": decoded - started,
            "score": result.score_s,
            "merge": result.merge_s,
            "total": time.perf_counter() - started,
        }
        if query.similar_to is None:
            stage_s["encode"] = encoded - decoded
        for stage, seconds in stage_s.items():
            metrics.stage_seconds.labels(stage).observe(seconds)
        metrics.missing_shards.inc(len(result.missing_shards))
        return JSONResponse(
            {
                "query": describe_query(query),
                "method": query_method(query),
                "feature_space": result.feature_space,
                "index_version": result.version,
                "results": [asdict(r) for r in result.results],
                "missing_shards": result.missing_shards,
                "exact_distances_computed": result.exact_computed,
                "timings_ms": {stage: round(s * 1e3, 3) for stage, s in stage_s.items()},
            }
        )

    async def search(request: Request) -> Response:
        started = time.perf_counter()
        return await answer(await parse_search_request(request, cfg), started)

    async def similar(request: Request) -> Response:
        started = time.perf_counter()
        fields = {
            "model": request.path_params["model_id"],
            "k": request.query_params.get("k", DEFAULT_K),
        }
        return await answer(parse_search_fields(fields, {}, cfg), started)

    async def list_models(request: Request) -> Response:
        models = await backend.list_models()
        metrics.models_served.set(len(models))
        return JSONResponse({"models": models, "count": len(models)})

    async def get_model(request: Request) -> Response:
        return JSONResponse(await backend.get_model(request.path_params["model_id"]))

    async def thumbnail(request: Request) -> Response:
        data = await backend.thumbnail(
            request.path_params["model_id"], request.path_params["number"]
        )
        return Response(data, media_type="image/png")

    async def health(request: Request) -> Response:
        state = await backend.health()
        return JSONResponse(state, status_code=200 if state["status"] == "ok" else 503)

    async def reload(request: Request) -> Response:
        expected = f"Bearer {cfg.admin_token}"
        if not cfg.admin_token:
            raise Forbidden("the admin API is disabled; set MODELSEEK_SERVE_ADMIN_TOKEN")
        if not hmac.compare_digest(request.headers.get("authorization", ""), expected):
            raise Forbidden("missing or wrong admin token (Authorization: Bearer <token>)")
        return JSONResponse(await backend.reload())

    async def prometheus(request: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def page(request: Request) -> Response:
        html = resources.files("modelseek").joinpath("web/index.html").read_text()
        return HTMLResponse(html)

    routes = [
        Route("/", page),
        Route("/healthz", health),
        Route("/v1/admin/reload", reload, methods=["POST"]),
        Route("/metrics", prometheus),
        Route("/v1/search", search, methods=["POST"]),
        Route("/v1/models", list_models),
        Route("/v1/models/{model_id}", get_model),
        Route("/v1/models/{model_id}/similar", similar),
        Route("/v1/models/{model_id}/thumbnails/{number:int}", thumbnail),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={
            ModelseekError: _modelseek_error,
            HTTPException: _http_error,
            Exception: _any_error,
        },
    )
    app.add_middleware(_CountRequests, metrics=metrics)
    return app


async def _modelseek_error(request: Request, err: ModelseekError) -> Response:
    # An error raised in another replica arrives wrapped, its str() a remote traceback.
    err = _unwrap(err)
    logger.debug("%s %s -> %s: %s", request.method, request.url.path, err.code, err)
    return error_response(err.http_status, err.code, str(err))


async def _http_error(request: Request, err: HTTPException) -> Response:
    code = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code, "http_error")
    return error_response(
        err.status_code, code, f"{request.method} {request.url.path}: {err.detail}"
    )


async def _any_error(request: Request, err: Exception) -> Response:
    cause = _unwrap(err)
    if isinstance(cause, ModelseekError):
        return await _modelseek_error(request, cause)
    if isinstance(cause, ValueError):
        # Kernels raise ValueError for a query the index cannot answer (a full-covariance
        # method on a low-rank index): the client's choice, not a server fault.
        return error_response(400, "bad_query", str(cause))
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(500, "internal", f"{type(cause).__name__}: {cause}")


class _CountRequests:
    """ASGI middleware counting requests by route template and status."""

    def __init__(self, app, metrics: ServiceMetrics):
        self._app, self._metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self._app(scope, receive, send)
        status = {"code": 500}

        async def capture(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self._app(scope, receive, capture)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", "unmatched")
            self._metrics.requests.labels(template, scope["method"], str(status["code"])).inc()


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=128)
@serve.ingress()
class Ingress:
    """The HTTP entry point; validation happens here, before any model is touched."""

    def __init__(self, encoder: DeploymentHandle, aggregator: DeploymentHandle, cfg: ServeConfig):
        self._backend = ServeBackend(encoder, aggregator)
        self._cfg = cfg
        self._metrics = ServiceMetrics.create()

    def __serve_build_asgi_app__(self):
        return create_http_app(self._backend, self._cfg, self._metrics)

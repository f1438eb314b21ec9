"""`Ingress`: the HTTP API (starlette) in front of the encoder and the aggregator.

Every error leaves as `{"error": {"code", "message"}}` with the status of its class in
`modelseek.errors`; this module is the one place where that mapping happens.
"""

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
from modelseek.errors import BadQuery, ModelseekError, PayloadTooLarge
from modelseek.query import SearchRequest, parse_search_fields

logger = logging.getLogger(__name__)


class SearchBackend(Protocol):
    """What the HTTP layer needs from the rest of the service."""

    async def encode(self, request: SearchRequest) -> np.ndarray: ...

    async def search(self, features: np.ndarray, method: str, k: int) -> SearchResult: ...

    async def list_models(self) -> list[dict[str, Any]]: ...

    async def get_model(self, model_id: str) -> dict[str, Any]: ...

    async def thumbnail(self, model_id: str, number: int) -> bytes: ...

    async def health(self) -> dict[str, Any]: ...


class ServeBackend:
    """The backend made of Serve deployment handles."""

    def __init__(self, encoder: DeploymentHandle, aggregator: DeploymentHandle):
        self._encoder, self._aggregator = encoder, aggregator

    async def encode(self, request: SearchRequest) -> np.ndarray:
        if request.text is not None:
            return await self._encoder.encode_texts.remote(request.text)
        return await self._encoder.encode_images.remote(request.image)

    async def search(self, features: np.ndarray, method: str, k: int) -> SearchResult:
        return await self._aggregator.search.remote(features, method, k)

    async def list_models(self) -> list[dict[str, Any]]:
        return await self._aggregator.list_models.remote()

    async def get_model(self, model_id: str) -> dict[str, Any]:
        return await self._aggregator.get_model.remote(model_id)

    async def thumbnail(self, model_id: str, number: int) -> bytes:
        return await self._aggregator.thumbnail.remote(model_id, number)

    async def health(self) -> dict[str, Any]:
        return await self._aggregator.health.remote()


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
    """A SearchRequest from a JSON body or a multipart form with an `image` file."""
    body = await read_body(request, cfg.max_upload_bytes)
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        request._body = body  # starlette re-reads a cached body when parsing the form
        form = await request.form(max_files=1, max_part_size=cfg.max_upload_bytes)
        upload = form.get("image")
        image_bytes = await upload.read() if hasattr(upload, "read") else None
        fields = {key: value for key, value in form.items() if key != "image"}
        return parse_search_fields(fields, image_bytes, cfg)
    try:
        fields = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BadQuery(f"body is not valid JSON ({err}); send application/json") from err
    if not isinstance(fields, dict):
        raise BadQuery(f"body must be a JSON object, got {type(fields).__name__}")
    return parse_search_fields(fields, None, cfg)


def create_http_app(backend: SearchBackend, cfg: ServeConfig, metrics: ServiceMetrics):
    """The starlette application serving the API, the metrics and the web page."""

    async def search(request: Request) -> Response:
        started = time.perf_counter()
        query = await parse_search_request(request, cfg)
        decoded = time.perf_counter()
        features = await backend.encode(query)
        encoded = time.perf_counter()
        result = await backend.search(np.asarray(features, np.float32)[None], query.method, query.k)
        total_s = time.perf_counter() - started
        stage_s = {
            "decode": decoded - started,
            "encode": encoded - decoded,
            "score": result.score_s,
            "merge": result.merge_s,
            "total": total_s,
        }
        for stage, seconds in stage_s.items():
            metrics.stage_seconds.labels(stage).observe(seconds)
        metrics.missing_shards.inc(len(result.missing_shards))
        return JSONResponse(
            {
                "query": {"modality": query.modality, "text": query.text, "k": query.k},
                "method": query.method,
                "index_version": result.version,
                "results": [asdict(r) for r in result.results[0]],
                "missing_shards": result.missing_shards,
                "timings_ms": {stage: round(s * 1e3, 3) for stage, s in stage_s.items()},
            }
        )

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

    async def prometheus(request: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def page(request: Request) -> Response:
        html = resources.files("modelseek").joinpath("web/index.html").read_text()
        return HTMLResponse(html)

    routes = [
        Route("/", page),
        Route("/healthz", health),
        Route("/metrics", prometheus),
        Route("/v1/search", search, methods=["POST"]),
        Route("/v1/models", list_models),
        Route("/v1/models/{model_id}", get_model),
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

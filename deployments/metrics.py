"""Prometheus metrics of the HTTP service, in a registry of their own (not the global one)."""

import logging
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

logger = logging.getLogger(__name__)

STAGES = ("decode", "encode", "score", "merge", "total")
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


@dataclass(frozen=True)
class ServiceMetrics:
    """Every metric the ingress exports; one histogram per stage of a search."""

    registry: CollectorRegistry
    requests: Counter
    stage_seconds: Histogram
    request_bytes: Histogram
    missing_shards: Counter
    models_served: Gauge

    @classmethod
    def create(cls) -> "ServiceMetrics":
        registry = CollectorRegistry(auto_describe=True)
        return cls(
            registry=registry,
            requests=Counter(
                "modelseek_http_requests",
                "HTTP requests by route template, method and status code.",
                ["route", "method", "status"],
                registry=registry,
            ),
            stage_seconds=Histogram(
                "modelseek_search_stage_seconds",
                "Time spent in each stage of a search.",
                ["stage"],
                buckets=LATENCY_BUCKETS_S,
                registry=registry,
            ),
            request_bytes=Histogram(
                "modelseek_search_request_bytes",
                "Size of search request bodies.",
                buckets=(256, 4096, 65536, 262144, 1048576, 4194304, 16777216),
                registry=registry,
            ),
            missing_shards=Counter(
                "modelseek_missing_shards",
                "Shard answers missing from search results (timeouts or failures).",
                registry=registry,
            ),
            models_served=Gauge(
                "modelseek_models_served",
                "Models in the index version being served.",
                registry=registry,
            ),
        )

"""Every Prometheus metric the service exports, built on an injectable registry.

Names carry base units (``_seconds``, ``_total``); labels are bounded (routes are route templates,
never stream ids).

With several worker processes on one port, a scrape reaches one worker at random, so each worker
records into prometheus_client's per-process files under ``PROMETHEUS_MULTIPROC_DIR`` and every
scrape aggregates all of them (``exposition``). prometheus_client decides at import time whether
values go to those files, so the variable must be set before the process imports it; the
supervisor sets it before it starts the workers. Gauges say how their per-process values combine.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector

from .errors import ServiceError
from .model_stats import ModelStats

__all__ = [
    "LATENCY_BUCKETS_S",
    "READING_OUTCOMES",
    "REDIS_OPERATIONS",
    "SUBSCRIBER_TRANSPORTS",
    "Metrics",
]

# Sub-millisecond resolution where the service lives, up to the seconds a Redis outage costs.
LATENCY_BUCKETS_S = (
    0.0001,
    0.00025,
    0.0005,
    0.00075,
    0.001,
    0.0025,
    0.005,
    0.0075,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)

READING_OUTCOMES = ("applied", "duplicate", "stale", "rejected", "failed")
FORECAST_OUTCOMES = ("answered", "rejected", "failed")
HORIZON_BUCKETS = (0, 1, 2, 4, 8, 12, 16, 24, 32, 64, 128, 256, 512, 1024)
SUBSCRIBER_TRANSPORTS = ("sse", "ws")
# The operations lstm_redis_errors_total and lstm_redis_duration_seconds count: every one is
# exported from the start, so that a rate over the first errors sees them (a series that appears
# with its first error would hide that error from rate() and increase()).
REDIS_OPERATIONS = (
    "load",
    "commit",
    "get",
    "delete",
    "ping",
    "read_log",
    "connect",
    "scan",
    "quota",
    "subscribe",
)


def _error_codes() -> list[str]:
    """The code of every error the service answers with (the error tree, its root included)."""
    codes, pending = set(), [ServiceError]
    while pending:
        cls = pending.pop()
        codes.add(cls.code)
        pending += cls.__subclasses__()
    return sorted(codes)


class Metrics:
    """The service's metrics. ``multiprocess_dir``: the ``PROMETHEUS_MULTIPROC_DIR`` this process
    records into, when several processes serve one port; ``exposition`` then aggregates them."""

    def __init__(
        self, registry: CollectorRegistry | None = None, multiprocess_dir: Path | None = None
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.multiprocess_dir = multiprocess_dir
        r = self.registry
        self.request_seconds = Histogram(
            "lstm_http_request_duration_seconds",
            "HTTP request latency by route template, method and status",
            ["route", "method", "status"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.readings = Counter(
            "lstm_readings_total",
            "Queued readings by outcome: applied, duplicate (a retry answered from stored "
            "results), stale (409 stale_seq), rejected (409 model_version_mismatch, 429 "
            "quota_exceeded), failed (503: Redis or contention). Requests refused before "
            "queueing (400, 404, 413, 503 overloaded) count in "
            "lstm_http_request_duration_seconds by status.",
            ["outcome"],
            registry=r,
        )
        self.redis_errors = Counter(
            "lstm_redis_errors_total",
            "Redis calls that failed, by operation",
            ["operation"],
            registry=r,
        )
        self.redis_up = Gauge(
            "lstm_redis_up",
            "1 when Redis answered the PING that the scrape of this endpoint made (within "
            "--redis-timeout-s), else 0",
            registry=r,
            multiprocess_mode="livemostrecent",
        )
        self.redis_seconds = Histogram(
            "lstm_redis_duration_seconds",
            "Redis round trip latency by operation",
            ["operation"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.queue_wait_seconds = Histogram(
            "lstm_queue_wait_seconds",
            "Time a request's readings wait in the queue before their batch starts",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.inference_seconds = Histogram(
            "lstm_inference_duration_seconds",
            "onnxruntime time per batch and model",
            ["model"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.batch_readings = Histogram(
            "lstm_batch_readings",
            "Readings per batch",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.cas_conflicts = Counter(
            "lstm_cas_conflicts_total",
            "Stream writes that lost a compare-and-set race and were recomputed",
            registry=r,
        )
        self.state_cache = Counter(
            "lstm_state_cache_total",
            "Streams a batch planned, by where their state came from: hit (the record this "
            "process last wrote, and it was current), stale (that record, but another process "
            "had advanced, ended or expired the stream: read and recomputed, not counted in "
            "lstm_cas_conflicts_total), miss (read from Redis)",
            ["result"],
            registry=r,
        )
        self.streams_expired = Counter(
            "lstm_streams_expired_total",
            "Stream states Redis removed because the stream was idle for --state-ttl-s, as "
            "Redis reports them (keyspace notifications, heard by one process per replica: "
            "take max, not sum, across replicas). Stays 0 where notify-keyspace-events cannot "
            "be enabled; expiries while that process is disconnected from Redis are missed.",
            ["model"],
            registry=r,
        )
        self.queue_readings = Gauge(
            "lstm_queue_readings",
            "Readings waiting for a batch",
            registry=r,
            multiprocess_mode="livesum",
        )
        # A gauge with labels, not an Info metric: Info does not work with several processes.
        self.model_info = Gauge(
            "lstm_model_info",
            "Served models (value 1)",
            ["model", "version"],
            registry=r,
            multiprocess_mode="max",
        )
        self.subscribers = Gauge(
            "lstm_subscribers",
            "Open event subscriber connections by transport: sse (one stream or several) or ws "
            "(WebSocket)",
            ["transport"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.subscribed_streams = Gauge(
            "lstm_subscribed_streams",
            "Streams this process has subscribed in Redis (each shared by all its subscribers)",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.subscribers_closed = Counter(
            "lstm_subscribers_closed_total",
            "Subscriptions the service ended: too_slow (its queue passed "
            "--subscriber-buffer-events) or shutdown",
            ["reason"],
            registry=r,
        )
        self.http_errors = Counter(
            "lstm_http_errors_total",
            "Requests answered with an error, by the code of its error body (overloaded, "
            "redis_unavailable, stale_seq, ...; /v2 answers by the same codes). A bulk request's "
            "per-item errors are not counted.",
            ["code"],
            registry=r,
        )
        self.forecasts = Counter(
            "lstm_forecasts_total",
            "Stream forecasts (and what-ifs) by outcome: answered, rejected (the request or its "
            "item refused: 400, 404, 409, 413), failed (503: Redis, or the service overloaded). "
            "One per stream of a request; never counted in lstm_readings_total.",
            ["outcome"],
            registry=r,
        )
        self.forecast_horizon_steps = Histogram(
            "lstm_forecast_horizon_steps",
            "Horizon of each answered stream forecast, in steps (0: what-if readings only)",
            buckets=HORIZON_BUCKETS,
            registry=r,
        )
        self.worker_restarts = Counter(
            "lstm_worker_restarts_total",
            "Worker processes the supervisor restarted after one died (--workers above 1; "
            "always 0 in a single process)",
            registry=r,
        )
        self.model_stats = ModelStats(r)
        self._request_series: dict[tuple[str, str, int], Histogram] = {}
        for reason in ("too_slow", "shutdown"):
            self.subscribers_closed.labels(reason)
        for transport in SUBSCRIBER_TRANSPORTS:
            self.subscribers.labels(transport)
        for outcome in READING_OUTCOMES:
            self.readings.labels(outcome)
        for outcome in FORECAST_OUTCOMES:
            self.forecasts.labels(outcome)
        for result in ("hit", "stale", "miss"):
            self.state_cache.labels(result)
        for operation in REDIS_OPERATIONS:
            self.redis_errors.labels(operation)
        for code in _error_codes():
            self.http_errors.labels(code)

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """``request_seconds`` for one request; the labelled series are looked up once each
        (``labels()`` validates and locks on every call, a few µs per request)."""
        key = (route, method, status)
        child = self._request_series.get(key)
        if child is None:
            child = self._request_series[key] = self.request_seconds.labels(
                route, method, str(status)
            )
        child.observe(seconds)

    def _scrape_registry(self) -> CollectorRegistry:
        """This process's registry, or one that reads every process's files anew."""
        if self.multiprocess_dir is None:
            return self.registry
        registry = CollectorRegistry()  # fresh per scrape: the collector reads the files anew
        MultiProcessCollector(  # type: ignore[no-untyped-call]
            registry, path=str(self.multiprocess_dir)
        )
        return registry

    def exposition(self) -> bytes:
        """The Prometheus text of this process, or of every process sharing the directory."""
        return generate_latest(self._scrape_registry())

    def collect(self) -> Iterable[Metric]:
        """The metric families, summed over every process sharing the directory."""
        return self._scrape_registry().collect()

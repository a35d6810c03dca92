"""Per-model request statistics, kept as Prometheus counters and read back as Triton's statistics
JSON (``GET /v2/models/{m}/stats``).

They are Prometheus counters rather than numbers in memory so that with several workers every
worker records into the shared per-process files and one scrape (or one stats request, whichever
worker answers it) sums them all.

Triton's meaning is kept: a request (one stream's readings from one request) counts once in
``success`` or ``fail`` with its time from queueing to answer; ``queue`` is its wait for a batch;
``compute_input`` (reading state, planning), ``compute_infer`` (onnxruntime) and
``compute_output`` (writing state and events, answering) are its batch's phases, each counted once
for every request in the batch, as Triton counts a batched execution once per request in it.
``execution_count`` counts model calls (a batch makes one per model and length bucket), and
``batch_stats`` breaks them down by the number of streams in the call.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.metrics_core import Metric

__all__ = ["PHASES", "ModelStats", "Tally", "triton_statistics"]

PHASES = ("queue", "compute_input", "compute_infer", "compute_output")
_BATCH_PHASES = ("compute_input", "compute_infer", "compute_output")


@dataclass(slots=True)
class Tally:
    """One model's share of one batch, recorded in one go when the batch is done."""

    units: int = 0  # requests the batch took (each pays its compute_input)
    queued: int = 0
    queue_s: float = 0.0
    success: int = 0
    success_s: float = 0.0
    fail: int = 0
    fail_s: float = 0.0
    inferred: int = 0  # requests whose streams ran through the model
    infer_s: float = 0.0  # summed per request
    executions: list[tuple[int, float]] = field(default_factory=list)  # (streams, seconds)


class ModelStats:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "lstm_model_requests_total",
            "Requests answered, by model and outcome: success (applied, or a retry answered "
            "from stored results) or fail (any error after queueing); one request's readings "
            "of one stream count once",
            ["model", "outcome"],
            registry=registry,
        )
        self.request_seconds = Counter(
            "lstm_model_request_seconds_total",
            "Time from queueing to answer, summed over the requests of lstm_model_requests_total",
            ["model", "outcome"],
            registry=registry,
        )
        self.phase_requests = Counter(
            "lstm_model_phase_requests_total",
            "Requests that went through each phase: queue (waiting for a batch), compute_input "
            "(reading state, planning), compute_infer (onnxruntime), compute_output (writing "
            "state and events, answering)",
            ["model", "phase"],
            registry=registry,
        )
        self.phase_seconds = Counter(
            "lstm_model_phase_seconds_total",
            "Time in each phase, summed per request: a batch's phase counts once for each "
            "request in the batch",
            ["model", "phase"],
            registry=registry,
        )
        self.executions = Counter(
            "lstm_model_executions_total",
            "Model calls by model and batch size (streams in the call)",
            ["model", "batch_size"],
            registry=registry,
        )
        self.execution_seconds = Counter(
            "lstm_model_execution_seconds_total",
            "Time per phase of the batches that made the model calls, by model and batch size",
            ["model", "batch_size", "phase"],
            registry=registry,
        )
        self.last_inference = Gauge(
            "lstm_model_last_inference_timestamp_seconds",
            "When a request of the model was last answered successfully (Unix seconds)",
            ["model"],
            registry=registry,
            multiprocess_mode="max",
        )
        self._series: dict[str, _Series] = {}
        self._batches: dict[tuple[str, int], tuple[Counter, list[Counter]]] = {}

    def register(self, model: str) -> None:
        """Create the model's series up front, so that they read 0 rather than missing, and
        keep them: ``labels()`` validates and locks on every call, and a batch updates a dozen."""
        self._series[model] = _Series(
            success=(
                self.requests.labels(model, "success"),
                self.request_seconds.labels(model, "success"),
            ),
            fail=(self.requests.labels(model, "fail"), self.request_seconds.labels(model, "fail")),
            phases={
                phase: (
                    self.phase_requests.labels(model, phase),
                    self.phase_seconds.labels(model, phase),
                )
                for phase in PHASES
            },
            last_inference=self.last_inference.labels(model),
        )

    def _batch_series(self, model: str, size: int) -> tuple[Counter, list[Counter]]:
        key = (model, size)
        series = self._batches.get(key)
        if series is None:
            label = str(size)
            series = self._batches[key] = (
                self.executions.labels(model, label),
                [self.execution_seconds.labels(model, label, p) for p in _BATCH_PHASES],
            )
        return series

    def record(self, model: str, tally: Tally, input_s: float, output_s: float) -> None:
        """Record a batch's tally; ``input_s`` and ``output_s``: the batch's compute_input and
        compute_output times (the latter for the requests that ran through the model)."""
        series = self._series.get(model)
        if series is None:
            self.register(model)
            series = self._series[model]
        if tally.success:
            count, seconds = series.success
            count.inc(tally.success)
            seconds.inc(tally.success_s)
            series.last_inference.set(time.time())
        if tally.fail:
            count, seconds = series.fail
            count.inc(tally.fail)
            seconds.inc(tally.fail_s)
        phases = series.phases
        for phase, n, total in (
            ("queue", tally.queued, tally.queue_s),
            ("compute_input", tally.units, tally.units * input_s),
            ("compute_infer", tally.inferred, tally.infer_s),
            ("compute_output", tally.inferred, tally.inferred * output_s),
        ):
            if n:
                count, seconds = phases[phase]
                count.inc(n)
                seconds.inc(total)
        for size, infer_s in tally.executions:
            executions, phase_seconds = self._batch_series(model, size)
            executions.inc()
            for counter, value in zip(phase_seconds, (input_s, infer_s, output_s), strict=True):
                counter.inc(value)


@dataclass(slots=True)
class _Series:
    """One model's labelled series."""

    success: tuple[Counter, Counter]  # requests, seconds
    fail: tuple[Counter, Counter]
    phases: dict[str, tuple[Counter, Counter]]
    last_inference: Gauge


def _ns(seconds: float) -> int:
    return round(seconds * 1e9)


def _pair(count: float, seconds: float) -> dict[str, int]:
    return {"count": int(count), "ns": _ns(seconds)}


def triton_statistics(
    families: Iterable[Metric], models: Iterable[str], version: str = "1"
) -> dict[str, Any]:
    """Triton's ``/v2/models/stats`` JSON for ``models``, from collected metric families."""
    values: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    sizes: dict[str, set[int]] = {}  # the batch sizes each model has executed
    for family in families:
        for sample in family.samples:
            values[(sample.name, frozenset(sample.labels.items()))] = sample.value
            if sample.name == "lstm_model_executions_total":
                model = sample.labels["model"]
                sizes.setdefault(model, set()).add(int(sample.labels["batch_size"]))

    def get(name: str, **labels: str) -> float:
        return values.get((name, frozenset(labels.items())), 0.0)

    out = []
    for model in models:
        stats: dict[str, dict[str, int]] = {}
        for outcome in ("success", "fail"):
            stats[outcome] = _pair(
                get("lstm_model_requests_total", model=model, outcome=outcome),
                get("lstm_model_request_seconds_total", model=model, outcome=outcome),
            )
        for phase in PHASES:
            stats[phase] = _pair(
                get("lstm_model_phase_requests_total", model=model, phase=phase),
                get("lstm_model_phase_seconds_total", model=model, phase=phase),
            )
        stats["cache_hit"] = {"count": 0, "ns": 0}  # no response cache
        stats["cache_miss"] = {"count": 0, "ns": 0}
        executions = 0
        batch_stats = []
        for size in sorted(sizes.get(model, ())):
            label = str(size)
            count = get("lstm_model_executions_total", model=model, batch_size=label)
            executions += int(count)
            entry: dict[str, Any] = {"batch_size": size}
            for phase in _BATCH_PHASES:
                seconds = get(
                    "lstm_model_execution_seconds_total", model=model, batch_size=label, phase=phase
                )
                entry[phase] = _pair(count, seconds)
            batch_stats.append(entry)
        last = get("lstm_model_last_inference_timestamp_seconds", model=model)
        out.append(
            {
                "name": model,
                "version": version,
                "last_inference": int(last * 1000),
                "inference_count": stats["success"]["count"],
                "execution_count": executions,
                "inference_stats": stats,
                "batch_stats": batch_stats,
                "memory_usage": [],
            }
        )
    return {"model_stats": out}

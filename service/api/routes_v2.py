"""KServe v2 / Open Inference Protocol routes under /v2, with Triton's sequence extension, model
configuration and statistics, so that Triton's clients and tools (tritonclient, perf_analyzer)
work against the service unchanged.

An inference request is one stream's readings, queued as a ``Unit`` like a ``/v1`` request: the
same batching, compare-and-set state, events and exactly-once rules (``batcher.py``, ``plan.py``).
Errors here are v2's ``{"error": "message"}`` (the middleware in ``app.py`` writes them).
"""

from __future__ import annotations

import asyncio
from importlib import metadata
from typing import Any

from aiohttp import web

from ..core.errors import ModelNotFound
from ..core.model_stats import triton_statistics
from ..step.model import ServedModel
from ..step.plan import Unit, UnitResult
from .app_keys import BATCHER, METRICS, MODELS, SETTINGS, STORE, tenant_of
from .authn import charge_readings
from .routes_v1 import json_response, read_body
from .wire_v2 import HEADER_LENGTH, INPUT, OUTPUT, infer_response, parse_infer

__all__ = ["V2_PREFIX", "add_v2_routes"]

V2_PREFIX = "/v2"
# What Triton calls the protocol extensions a server supports (GET /v2).
EXTENSIONS = [
    "binary_tensor_data",
    "sequence",
    "statistics",
    "model_configuration",
    "parameters",
]
# The one version each model has in v2's terms; its fingerprint (/v1's model_version) names the
# same version.
VERSION = "1"


def _version() -> str:
    try:
        return metadata.version("lstm-serve")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def _model(request: web.Request) -> ServedModel:
    models = request.app[MODELS]
    name = request.match_info["model"]
    model = models.get(name)
    if model is None:
        raise ModelNotFound(f"unknown model {name!r}; served: {', '.join(sorted(models))}")
    version = request.match_info.get("version")
    if version is not None and version not in (VERSION, model.version):
        raise ModelNotFound(
            f"model {name!r} has no version {version!r}: its one version is {VERSION} "
            f"(also named by its fingerprint, {model.version})"
        )
    return model


async def server_metadata(request: web.Request) -> web.Response:
    return json_response({"name": "lstm-serve", "version": _version(), "extensions": EXTENSIONS})


async def live(request: web.Request) -> web.Response:
    return web.Response(status=200)


async def ready(request: web.Request) -> web.Response:
    await request.app[STORE].ping()  # raises RedisUnavailable -> 503
    return web.Response(status=200)


async def model_ready(request: web.Request) -> web.Response:
    _model(request)
    return web.Response(status=200)


def _tensor(name: str, size: int) -> dict[str, Any]:
    return {"name": name, "datatype": "FP32", "shape": [-1, -1, size]}


async def model_metadata(request: web.Request) -> web.Response:
    model = _model(request)
    return json_response(
        {
            "name": model.name,
            "versions": [VERSION],
            "platform": "onnxruntime_onnx",
            "inputs": [_tensor(INPUT, model.input_size)],
            "outputs": [_tensor(OUTPUT, model.output_size)],
        }
    )


async def model_config(request: web.Request) -> web.Response:
    """Triton's model configuration: a batching sequence model, so that Triton's tools send
    ``x`` as ``[1, T, input_size]`` and keep each sequence's requests in order."""
    model = _model(request)
    settings = request.app[SETTINGS]
    sequence_batching: dict[str, Any] = {
        "oldest": {
            "max_candidate_sequences": settings.queue_max_readings,
            "preferred_batch_size": [],
            "max_queue_delay_microseconds": 0,  # natural batching: no timer
            "preserve_ordering": False,
        },
        "control_input": [],
        "state": [],
    }
    if settings.state_ttl_s > 0:
        sequence_batching["max_sequence_idle_microseconds"] = int(settings.state_ttl_s * 1e6)
    return json_response(
        {
            "name": model.name,
            "platform": "onnxruntime_onnx",
            "backend": "onnxruntime",
            "version_policy": {"latest": {"num_versions": 1}},
            "max_batch_size": settings.batch_max_readings,
            "input": [
                {
                    "name": INPUT,
                    "data_type": "TYPE_FP32",
                    "format": "FORMAT_NONE",
                    "dims": [-1, model.input_size],
                    "is_shape_tensor": False,
                    "allow_ragged_batch": False,
                    "optional": False,
                }
            ],
            "output": [
                {
                    "name": OUTPUT,
                    "data_type": "TYPE_FP32",
                    "dims": [-1, model.output_size],
                    "label_filename": "",
                    "is_shape_tensor": False,
                }
            ],
            "sequence_batching": sequence_batching,
            "instance_group": [
                {"name": model.name, "kind": "KIND_CPU", "count": settings.workers, "gpus": []}
            ],
            "default_model_filename": "model.onnx",
            "parameters": {
                "fingerprint": {"string_value": model.version},
                "features": {"string_value": ",".join(model.features)},
                "outputs": {"string_value": ",".join(model.outputs)},
            },
        }
    )


async def model_stats(request: web.Request) -> web.Response:
    one = "model" in request.match_info
    names = [_model(request).name] if one else sorted(request.app[MODELS].keys())
    families = request.app[METRICS].collect()
    return json_response(triton_statistics(families, names, VERSION))


async def repository_index(request: web.Request) -> web.Response:
    return json_response(
        [
            {"name": name, "version": VERSION, "state": "READY", "reason": ""}
            for name in sorted(request.app[MODELS].keys())
        ]
    )


async def infer(request: web.Request) -> web.Response:
    model = _model(request)
    settings = request.app[SETTINGS]
    batcher = request.app[BATCHER]
    batcher.check_room()
    body = await read_body(request)
    parsed = parse_infer(
        body, request.headers.get(HEADER_LENGTH), model, settings.request_max_readings
    )
    charge_readings(request, len(parsed.readings))  # a request's steps
    future: asyncio.Future[UnitResult] = asyncio.get_running_loop().create_future()
    unit = Unit(
        model,
        parsed.stream,
        parsed.readings,
        future,
        tenant=tenant_of(request),
        start=parsed.start,
        end=parsed.end,
    )
    batcher.submit([unit])
    # shielded as in /v1: a client that goes away does not cancel its queued step
    result = await asyncio.shield(future)
    answer, json_length = infer_response(model, parsed, result)
    if json_length is None:
        return web.Response(body=answer, content_type="application/json")
    response = web.Response(body=answer, content_type="application/octet-stream")
    response.headers[HEADER_LENGTH] = str(json_length)
    return response


def add_v2_routes(app: web.Application) -> None:
    router = app.router
    bases = (V2_PREFIX + "/models/{model}", V2_PREFIX + "/models/{model}/versions/{version}")
    # aiohttp tries the routes under /v2/models in the order they were added: inference first.
    for base in reversed(bases):
        router.add_post(base + "/infer", infer)
    router.add_get(V2_PREFIX, server_metadata)
    router.add_get(V2_PREFIX + "/health/live", live)
    router.add_get(V2_PREFIX + "/health/ready", ready)
    router.add_post(V2_PREFIX + "/repository/index", repository_index)
    # before /v2/models/{model}, which would otherwise take "stats" for a model name
    router.add_get(V2_PREFIX + "/models/stats", model_stats)
    for base in bases:
        router.add_get(base, model_metadata)
        router.add_get(base + "/ready", model_ready)
        router.add_get(base + "/config", model_config)
        router.add_get(base + "/stats", model_stats)

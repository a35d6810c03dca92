"""The OpenAPI 3.1 document of the HTTP API, served at ``GET /openapi.json``.

Every path the app registers is described here, with its request body, every response it can give
and the error codes of DESIGN.md. The document is built from the running service's settings and
models, so the limits a client must respect are numbers rather than prose: the ``{model}``
parameter lists the served models by name, ``values`` and ``prediction`` have the models' input and
output sizes (when all served models agree; otherwise the description says where to look), and the
request limits are the configured ones. A document fetched from one deployment therefore describes
that deployment exactly; clients and fuzzers need no out-of-band knowledge.

Schemas are JSON Schema 2020-12 (OpenAPI 3.1's dialect) and closed (``additionalProperties:
false``) wherever the service is strict, so a field added to the wire without being documented
fails the contract test (tests/test_service_openapi.py).

The document is assembled here from one part per route family: ``v1`` (readings, streams, models,
operations), ``events`` (multi-stream subscriptions), ``v2`` (KServe v2), over ``common``; then
``security`` gives every operation the token and scope it needs (none without authentication).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

from aiohttp import web

from ...core.settings import Settings
from ...step.model import ServedModel
from ..app_keys import MODELS, SETTINGS
from ..routes_v1 import json_response
from .common import Schema, json_content, operation, parameters, ref, resp, responses
from .events import subscription_paths
from .forecast import forecast_paths, forecast_schemas
from .security import secure, security_schemes
from .v1 import stream_paths, v1_schemas
from .v2 import v2_paths, v2_schemas

__all__ = ["openapi_document", "openapi_json"]


def openapi_document(settings: Settings, models: dict[str, ServedModel]) -> dict[str, Any]:
    """The OpenAPI 3.1 document for a service with these settings and models."""
    try:
        app_version = version("lstm-serve")
    except PackageNotFoundError:  # running from a source tree that was never installed
        app_version = "0+unknown"
    paths: dict[str, Schema] = {
        **stream_paths("/v1/models/{model}", "", ["Model"]),
        **stream_paths("/v1", "Default", []),
        **forecast_paths("/v1/models/{model}", "", ["Model"]),
        **forecast_paths("/v1", "Default", []),
        **subscription_paths("/v1/models/{model}", "", ["Model"]),
        **subscription_paths("/v1", "Default", []),
        "/v1/models": {
            "get": operation(
                "listModels",
                "The served models and the default model",
                [],
                {"200": json_content(ref("ModelList"), "The served models.")},
                tags=["models"],
            )
        },
        "/v1/models/{model}": {
            "get": operation(
                "getModel",
                "One served model",
                ["Model"],
                {"200": json_content(ref("ModelInfo"), "The model."), "404": resp("NotFound")},
                tags=["models"],
            )
        },
        "/healthz": {
            "get": operation(
                "healthz",
                "Liveness: 200 while the process runs",
                [],
                {"200": json_content(ref("Health"), "Alive.")},
                tags=["operations"],
            )
        },
        "/readyz": {
            "get": operation(
                "readyz",
                "Readiness: 200 when Redis answers and the models are loaded",
                [],
                {"200": json_content(ref("Ready"), "Ready."), "503": resp("Unavailable")},
                tags=["operations"],
            )
        },
        "/metrics": {
            "get": operation(
                "metrics",
                "Prometheus metrics",
                [],
                {
                    "200": {
                        "description": "Prometheus text exposition format.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
                tags=["operations"],
            )
        },
        "/openapi.json": {
            "get": operation(
                "openapi",
                "This document",
                [],
                {"200": json_content({"type": "object"}, "The OpenAPI document.")},
                tags=["operations"],
            )
        },
        **v2_paths(models),
    }
    secure(paths, settings)
    default = settings.default_model or (next(iter(models)) if len(models) == 1 else None)
    auth = ""
    if settings.auth_tokens is not None:
        auth = (
            " Every operation but health, readiness, this document and /metrics needs a bearer "
            "token with the scope its security names (read, write or admin): without a valid "
            "one it answers 401 unauthenticated, on any path (unknown paths included), before "
            "anything else is checked; with one that lacks the scope, 403 forbidden. Writes "
            "beyond the tenant's readings per second answer 429 quota_exceeded."
        )
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "lstm-serve",
            "version": app_version,
            "description": (
                "Streaming LSTM inference: POST a stream's readings, get the model's predictions; "
                "each stream's state lives in Redis. Paths under /v1/models/{model} address a "
                "model by name; the short paths under /v1 address the default model "
                f"({default or 'none: several models are served'}). Errors are "
                '{"error": {"code", "message"}}; an unknown path answers 404 not_found and a '
                "method a path does not accept 405 method_not_allowed with Allow (see "
                "components.responses UnknownPath and MethodNotAllowed); an internal failure "
                "answers 500 internal_error without details. Paths under /v2 are KServe v2 / "
                "the Open Inference Protocol with Triton's sequence, binary tensor data, model "
                "configuration and statistics extensions: a request's sequence_id names its "
                "stream, the /v1 stream of that id. Their errors are "
                '{"error": "message"}, unknown paths and methods under /v2 included '
                "(V2UnknownPath, V2MethodNotAllowed)." + auth
            ),
        },
        "tags": [
            {"name": "readings", "description": "Apply readings, get predictions."},
            {"name": "streams", "description": "A stream's state and its end."},
            {"name": "forecasts", "description": "Forecasts and what-ifs, without writing."},
            {"name": "events", "description": "Subscriptions to a stream's predictions."},
            {"name": "models", "description": "The served models."},
            {"name": "operations", "description": "Health, readiness, metrics, this document."},
            {"name": "v2", "description": "KServe v2 / Open Inference Protocol (Triton's)."},
        ],
        "paths": paths,
        "components": {
            "schemas": {
                **v1_schemas(settings, models),
                **forecast_schemas(settings, models),
                **v2_schemas(settings, models),
            },
            "responses": responses(settings),
            "parameters": parameters(models),
            "securitySchemes": security_schemes(settings),
        },
    }


async def openapi_json(request: web.Request) -> web.Response:
    return json_response(openapi_document(request.app[SETTINGS], request.app[MODELS]))

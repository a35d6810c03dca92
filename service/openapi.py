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
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

from aiohttp import web

from .app_keys import MODELS, SETTINGS
from .model import ServedModel
from .plan import SEQ_MAX
from .routes_v1 import json_response
from .settings import Settings
from .wire import STREAM_ID

__all__ = ["openapi_document", "openapi_json"]

Schema = dict[str, Any]

# Error schemas and the codes each admits: errors.py's tree by status, plus the codes the error
# middleware gives aiohttp's own 404 (no such path) and 405.
_ERRORS: dict[str, list[str]] = {
    "Error400": ["invalid_request", "invalid_values", "invalid_stream_id"],
    "Error404": ["model_not_found", "stream_not_found"],
    "Error409": ["stale_seq", "model_version_mismatch"],
    "Error413": ["payload_too_large"],
    "Error503": ["redis_unavailable", "overloaded"],
    "UnknownPathError": ["not_found"],
    "MethodNotAllowedError": ["method_not_allowed"],
}
# A bulk item that fails carries its own error; these are the codes it can have.
_ITEM_CODES = [
    *_ERRORS["Error400"],
    *_ERRORS["Error409"],
    *_ERRORS["Error413"],
    *_ERRORS["Error503"],
]
_FLOAT32_MAX = 3.4e38
_EVENT_ID = r"^[0-9]+-[0-9]+$"
_CURSOR = r"^[A-Za-z0-9._:-]{1,128}~[0-9]+-[0-9]+(,[A-Za-z0-9._:-]{1,128}~[0-9]+-[0-9]+)*$"


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(required: list[str], properties: dict[str, Schema], closed: bool = True) -> Schema:
    schema: Schema = {"type": "object", "required": required, "properties": properties}
    if closed:
        schema["additionalProperties"] = False
    return schema


def _record(properties: dict[str, Schema]) -> Schema:
    """A closed object whose every property is required."""
    return _obj(list(properties), properties)


def _json(schema: Schema, description: str) -> Schema:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _sizes(models: dict[str, ServedModel], attr: str) -> Schema:
    """``minItems``/``maxItems`` for a per-model length, when every served model agrees."""
    sizes = {getattr(m, attr) for m in models.values()}
    if len(sizes) == 1:
        (n,) = sizes
        return {"minItems": n, "maxItems": n}
    return {}


def _schemas(settings: Settings, models: dict[str, ServedModel]) -> dict[str, Schema]:
    max_readings = settings.request_max_readings
    stream_pattern = f"^{STREAM_ID.pattern}$"
    reading_fields: dict[str, Schema] = {
        "values": _ref("Values"),
        "seq": _ref("Seq"),
        "ts": _ref("Ts"),
    }
    readings_list: Schema = {
        "type": "array",
        "minItems": 1,
        "maxItems": max_readings,
        "items": _ref("Reading"),
        "description": "Applied in order, all or nothing. Give `seq` on every reading or on none; "
        "given seqs must increase.",
    }
    error_detail = _obj(
        ["code", "message"],
        {
            "code": {"type": "string"},
            "message": {"type": "string", "description": "What went wrong and what to do."},
            "current_seq": {
                "type": "integer",
                "minimum": 0,
                "description": "With stale_seq: the stream's last applied seq.",
            },
            "stream_version": {
                "type": "string",
                "description": "With model_version_mismatch: the version that wrote the state.",
            },
            "model_version": {
                "type": "string",
                "description": "With model_version_mismatch: the served model's version.",
            },
        },
    )
    error_detail["allOf"] = [
        {
            "if": {"properties": {"code": {"const": "stale_seq"}}},
            "then": {"required": ["current_seq"]},
        },
        {
            "if": {"properties": {"code": {"const": "model_version_mismatch"}}},
            "then": {"required": ["stream_version", "model_version"]},
        },
    ]
    stream_results: dict[str, Schema] = {
        "generation": _ref("Generation"),
        "results": {"type": "array", "items": _ref("SeqResult"), "minItems": 1},
        "duplicate": {
            "const": True,
            "description": "Present on a retry: the stored results; nothing changed.",
        },
    }
    schemas: dict[str, Schema] = {
        "StreamId": {
            "type": "string",
            "pattern": stream_pattern,
            "description": "1 to 128 characters of A-Z a-z 0-9 . _ : -",
        },
        "Values": {
            "type": "array",
            "items": {"type": "number", "minimum": -_FLOAT32_MAX, "maximum": _FLOAT32_MAX},
            **_sizes(models, "input_size"),
            "description": "One finite number per model input (input_size of the addressed "
            "model; GET /v1/models lists the features), in raw sensor units.",
        },
        "Prediction": {
            "type": "array",
            "items": {"type": "number"},
            **_sizes(models, "output_size"),
            "description": "One number per model output (output_size), in raw units.",
        },
        "Seq": {
            "type": "integer",
            "minimum": 1,
            "maximum": SEQ_MAX,
            "description": "The reading's sequence number in its stream: above the last applied "
            "one (gaps allowed). Omitted: the service assigns the next number; given: a retry is "
            "safe.",
        },
        "Ts": {
            "type": ["number", "string"],
            "maxLength": 64,
            "description": "The reading's own time, kept with its event: Unix seconds or a short "
            "string.",
        },
        "Reading": _obj(["values"], reading_fields),
        "ReadingList": _obj(["readings"], {"readings": readings_list}),
        "StreamReadingsRequest": {
            "oneOf": [_ref("Reading"), _ref("ReadingList")],
            "description": "One reading, or several readings of the stream.",
        },
        "BulkReading": _obj(["stream", "values"], {"stream": _ref("StreamId"), **reading_fields}),
        "BulkReadingList": _obj(
            ["stream", "readings"], {"stream": _ref("StreamId"), "readings": readings_list}
        ),
        "BulkRequest": _obj(
            ["readings"],
            {
                "readings": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": max_readings,
                    "items": {"oneOf": [_ref("BulkReading"), _ref("BulkReadingList")]},
                    "description": f"Items for any streams; at most {max_readings} readings in "
                    "all (413 beyond). Items of one stream are applied in request order.",
                }
            },
        ),
        "SeqResult": _obj(
            ["seq", "prediction"], {"seq": _ref("Seq"), "prediction": _ref("Prediction")}
        ),
        "Generation": {
            "type": "integer",
            "description": "The stream's generation: a new one (creation time in ms) each time "
            "the stream starts afresh (after DELETE, expiry or a version reset).",
        },
        "ReadingsResponse": _obj(
            ["model", "model_version", "stream", "generation", "results"],
            {
                "model": {"type": "string"},
                "model_version": {"type": "string"},
                "stream": _ref("StreamId"),
                **stream_results,
            },
        ),
        "BulkItemResult": {
            "oneOf": [
                _obj(
                    ["stream", "generation", "results"],
                    {"stream": _ref("StreamId"), **stream_results},
                ),
                _obj(
                    ["stream", "error"],
                    {
                        "stream": {"description": "The item's stream as sent (any JSON value)."},
                        "error": {
                            **error_detail,
                            "properties": {
                                **error_detail["properties"],
                                "code": {"enum": _ITEM_CODES},
                            },
                        },
                    },
                ),
            ]
        },
        "BulkResponse": _obj(
            ["model", "model_version", "results"],
            {
                "model": {"type": "string"},
                "model_version": {"type": "string"},
                "results": {
                    "type": "array",
                    "items": _ref("BulkItemResult"),
                    "description": "One entry per request item, in request order.",
                },
            },
        ),
        "StreamState": _record(
            {
                "stream": _ref("StreamId"),
                "model": {"type": "string"},
                "model_version": {
                    "type": "string",
                    "description": "The version that wrote the state (may differ from the "
                    "served one).",
                },
                "generation": _ref("Generation"),
                "seq": {"type": "integer", "minimum": 1, "description": "Last applied seq."},
                "updated_at": {"type": "string", "format": "date-time"},
                "last_prediction": {"oneOf": [_ref("Prediction"), {"type": "null"}]},
                "expires_at": {
                    "type": ["string", "null"],
                    "format": "date-time",
                    "description": "null when streams never expire (--state-ttl-s 0).",
                },
            },
        ),
        "ModelInfo": _record(
            {
                "name": {"type": "string"},
                "version": {"type": "string"},
                "cell": {"type": "string"},
                "input_size": {"type": "integer", "minimum": 1},
                "hidden_size": {"type": "integer", "minimum": 1},
                "output_size": {"type": "integer", "minimum": 1},
                "num_layers": {"type": "integer", "minimum": 1},
                "features": {"type": "array", "items": {"type": "string"}},
                "outputs": {"type": "array", "items": {"type": "string"}},
            },
        ),
        "ModelList": _obj(
            ["models", "default_model"],
            {
                "models": {"type": "array", "items": _ref("ModelInfo")},
                "default_model": {
                    "type": ["string", "null"],
                    "description": "The model the short paths address; null when several are "
                    "served and none is the default.",
                },
            },
        ),
        "PredictionEvent": _obj(
            ["model", "model_version", "stream", "generation", "seq", "values", "prediction", "ts"],
            {
                "model": {"type": "string"},
                "model_version": {"type": "string"},
                "stream": _ref("StreamId"),
                "generation": _ref("Generation"),
                "seq": _ref("Seq"),
                "values": _ref("Values"),
                "prediction": _ref("Prediction"),
                "ts": {"type": "number", "description": "Commit time, Unix seconds."},
                "reading_ts": {
                    "type": ["number", "string"],
                    "description": "The reading's own `ts`, present when it carried one.",
                },
            },
        ),
        "ErrorDetail": error_detail,
        "Health": _obj(["status"], {"status": {"const": "alive"}}),
        "Ready": _obj(
            ["status", "models"],
            {
                "status": {"const": "ready"},
                "models": {"type": "array", "items": {"type": "string"}},
            },
        ),
    }
    for name, codes in _ERRORS.items():
        schemas[name] = _obj(
            ["error"],
            {"error": {"allOf": [_ref("ErrorDetail")], "properties": {"code": {"enum": codes}}}},
        )
    return schemas


_RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before retrying (with the same seq).",
        "required": True,
        "schema": {"type": "integer", "minimum": 1},
    }
}


def _responses(settings: Settings) -> dict[str, Schema]:
    def error(schema: str, description: str, **extra: Any) -> Schema:
        return {**_json(_ref(schema), description), **extra}

    return {
        "BadRequest": error(
            "Error400",
            "invalid_request: not JSON, not an object, unknown or missing fields, a bad seq or ts; "
            "invalid_values: values not exactly input_size finite numbers; invalid_stream_id.",
        ),
        "NotFound": error(
            "Error404",
            "model_not_found: no such model served (or, on a short path, several are served and "
            "none is the default); stream_not_found: the stream has no state.",
        ),
        "Conflict": error(
            "Error409",
            "stale_seq: a seq at or below the last applied one that is not a retry of the last "
            f"request, or readings without seq on a stream whose seq is {SEQ_MAX} (with "
            "current_seq); model_version_mismatch: the stream's state was written by "
            "another model version (with --on-version-mismatch refuse).",
        ),
        "PayloadTooLarge": error(
            "Error413",
            f"payload_too_large: a body over {settings.body_max_bytes} bytes, or more than "
            f"{settings.request_max_readings} readings in one request.",
        ),
        "Unavailable": error(
            "Error503",
            "redis_unavailable: Redis did not answer in time; overloaded: the queue is full or the "
            "service is stopping. Retry after Retry-After seconds with the same seq.",
            headers=_RETRY_AFTER,
        ),
        "UnknownPath": error("UnknownPathError", "not_found: no route has this path."),
        "MethodNotAllowed": error(
            "MethodNotAllowedError",
            "method_not_allowed: the path exists, the method does not.",
            headers={
                "Allow": {
                    "description": "The methods the path accepts, comma-separated.",
                    "required": True,
                    "schema": {"type": "string"},
                }
            },
        ),
    }


def _parameters(models: dict[str, ServedModel]) -> dict[str, Schema]:
    event_id = {"type": "string", "pattern": _EVENT_ID}
    return {
        "Model": {
            "name": "model",
            "in": "path",
            "required": True,
            "description": "A served model's name.",
            "schema": {"type": "string", "enum": sorted(models)},
        },
        "Stream": {
            "name": "stream",
            "in": "path",
            "required": True,
            "description": "The stream id.",
            "schema": _ref("StreamId"),
        },
        "After": {
            "name": "after",
            "in": "query",
            "description": "Resume after this event id ({generation}-{seq}).",
            "schema": event_id,
        },
        "From": {
            "name": "from",
            "in": "query",
            "description": "start: replay the stream's retained events from the first.",
            "schema": {"type": "string", "enum": ["start"]},
        },
        "Streams": {
            "name": "streams",
            "in": "query",
            "description": "The streams to follow, comma-separated (or give `prefix`).",
            "schema": {
                "type": "string",
                "pattern": f"^{STREAM_ID.pattern}(,{STREAM_ID.pattern})*$",
            },
        },
        "Prefix": {
            "name": "prefix",
            "in": "query",
            "description": "Follow every stream whose id starts with this, including streams "
            "that begin later (or give `streams`).",
            "schema": {"type": "string", "pattern": "^[A-Za-z0-9._:-]{0,128}$"},
        },
        "AfterCursor": {
            "name": "after",
            "in": "query",
            "description": "Resume after this cursor (an `id:` of this endpoint: "
            "STREAM~GENERATION-SEQ,...).",
            "schema": {"type": "string", "pattern": _CURSOR},
        },
        "LastEventCursor": {
            "name": "Last-Event-ID",
            "in": "header",
            "description": "Sent by an EventSource on reconnect: resume every stream after the "
            "cursor.",
            "schema": {"type": "string", "pattern": _CURSOR},
        },
        "LastEventId": {
            "name": "Last-Event-ID",
            "in": "header",
            "description": "Sent by an EventSource on reconnect: resume after this event id.",
            "schema": event_id,
        },
    }


def _param(name: str) -> Schema:
    return {"$ref": f"#/components/parameters/{name}"}


def _resp(name: str) -> Schema:
    return {"$ref": f"#/components/responses/{name}"}


def _operation(
    op_id: str, summary: str, params: list[str], responses: dict[str, Schema], **extra: Any
) -> Schema:
    op: Schema = {"operationId": op_id, "summary": summary, "responses": responses, **extra}
    if params:
        op["parameters"] = [_param(p) for p in params]
    return op


def _stream_paths(prefix: str, suffix: str, model_params: list[str]) -> dict[str, Schema]:
    """The per-model paths under ``prefix`` (long form, or the short form for the default)."""
    stream = [*model_params, "Stream"]
    body_limit = "See the 413 response for the size limits."
    return {
        f"{prefix}/streams/{{stream}}/readings": {
            "post": _operation(
                f"postReadings{suffix}",
                "Apply one or more readings of one stream and return the predictions",
                stream,
                {
                    "200": _json(
                        _ref("ReadingsResponse"),
                        "Applied (or, on a retry, the stored results marked duplicate).",
                    ),
                    "400": _resp("BadRequest"),
                    "404": _resp("NotFound"),
                    "409": _resp("Conflict"),
                    "413": _resp("PayloadTooLarge"),
                    "503": _resp("Unavailable"),
                },
                requestBody={
                    "required": True,
                    "description": "JSON whatever the Content-Type says. " + body_limit,
                    "content": {"application/json": {"schema": _ref("StreamReadingsRequest")}},
                },
                tags=["readings"],
            )
        },
        f"{prefix}/readings": {
            "post": _operation(
                f"postBulk{suffix}",
                "Apply readings of many streams; a failed item carries its own error",
                model_params,
                {
                    "200": _json(_ref("BulkResponse"), "One entry per item, in request order."),
                    "400": _resp("BadRequest"),
                    "404": _resp("NotFound"),
                    "413": _resp("PayloadTooLarge"),
                    "503": _resp("Unavailable"),
                },
                requestBody={
                    "required": True,
                    "description": "JSON whatever the Content-Type says. " + body_limit,
                    "content": {"application/json": {"schema": _ref("BulkRequest")}},
                },
                tags=["readings"],
            )
        },
        f"{prefix}/streams/{{stream}}": {
            "get": _operation(
                f"getStream{suffix}",
                "The stream's state",
                stream,
                {
                    "200": _json(_ref("StreamState"), "The stream's state."),
                    "400": _resp("BadRequest"),
                    "404": _resp("NotFound"),
                    "503": _resp("Unavailable"),
                },
                tags=["streams"],
            ),
            "delete": _operation(
                f"deleteStream{suffix}",
                "End the stream: its next reading starts a new generation from zero state",
                stream,
                {
                    "204": {"description": "Ended."},
                    "400": _resp("BadRequest"),
                    "404": _resp("NotFound"),
                    "503": _resp("Unavailable"),
                },
                tags=["streams"],
            ),
        },
        f"{prefix}/streams/{{stream}}/events": {
            "get": _operation(
                f"streamEvents{suffix}",
                "Follow the stream's predictions live (Server-Sent Events)",
                [*stream, "After", "From", "LastEventId"],
                {
                    "200": {
                        "description": "An event stream. Each event has `id: {generation}-{seq}` "
                        "and `data:` one PredictionEvent as JSON; reconnecting with "
                        "Last-Event-ID (or ?after=) resumes after that event, ?from=start "
                        "replays the retained events first. Two other event types carry no "
                        "id: `event: gap` (data `{after, lost_through, first_held, message}`: "
                        "events the log no longer holds) and `event: closed` (data "
                        "`{code, message}`: the service ended the stream, e.g. "
                        "`subscriber_too_slow` or `shutting_down`; reconnect to resume). "
                        "Comment lines are heartbeats.",
                        "content": {
                            "text/event-stream": {
                                "schema": {"type": "string"},
                                "x-event-data": _ref("PredictionEvent"),
                            }
                        },
                    },
                    "400": _resp("BadRequest"),
                    "404": _resp("NotFound"),
                    "503": _resp("Unavailable"),
                },
                tags=["events"],
            )
        },
    }


def _subscription_paths(prefix: str, suffix: str, model_params: list[str]) -> dict[str, Schema]:
    """The multi-stream SSE and WebSocket routes under ``prefix``."""
    return {
        f"{prefix}/events": {
            "get": _operation(
                f"multiStreamEvents{suffix}",
                "Follow several streams' predictions on one connection (Server-Sent Events)",
                [*model_params, "Streams", "Prefix", "AfterCursor", "From", "LastEventCursor"],
                {
                    "200": {
                        "description": "An event stream. Each event's `data:` is one "
                        "PredictionEvent (naming its stream) and its `id:` a cursor "
                        "`STREAM~GENERATION-SEQ,...` naming every followed stream's last event "
                        "(0-0: none yet); reconnecting with it as Last-Event-ID (or ?after=) "
                        "resumes every stream. `event: streams` (data `{streams}`, with the "
                        "cursor as id) lists the followed streams at the start and whenever a "
                        "prefix finds a new one; `event: gap` (data `{stream, after, "
                        "lost_through, first_held, message}`) and `event: closed` (data "
                        "`{code, message}`; codes as on the single-stream route, plus "
                        "`too_many_streams`) carry no event of their own. Comment lines are "
                        "heartbeats.",
                        "content": {
                            "text/event-stream": {
                                "schema": {"type": "string"},
                                "x-event-data": _ref("PredictionEvent"),
                            }
                        },
                    },
                    "400": _resp("BadRequest"),
                    "404": _resp("NotFound"),
                    "503": _resp("Unavailable"),
                },
                tags=["events"],
            )
        },
        f"{prefix}/events/ws": {
            "get": _operation(
                f"webSocketEvents{suffix}",
                "Follow streams over a WebSocket: subscribe and unsubscribe on a live connection",
                model_params,
                {
                    "101": {
                        "description": "Switching to the WebSocket protocol. The client sends "
                        'JSON control messages `{"op": "subscribe", "streams": [...] | "prefix": '
                        '"...", "after": {stream: id}?, "from": "start"?, "ref": any?}` and '
                        '`{"op": "unsubscribe", "streams" | "prefix", "ref"?}`; the service '
                        "answers "
                        '`{"type": "subscribed" | "unsubscribed", "streams", "ref"?}` and sends '
                        '`{"type": "event", "id", ...PredictionEvent}`, `{"type": "streams"}`, '
                        '`{"type": "gap", ...}`, `{"type": "error", "code", "message", "ref"?}` '
                        '(the connection stays open) and `{"type": "closed", "code", '
                        '"message"}` (then it closes). See the README.'
                    },
                    "400": _resp("BadRequest"),
                    "404": _resp("NotFound"),
                },
                tags=["events"],
            )
        },
    }


def openapi_document(settings: Settings, models: dict[str, ServedModel]) -> dict[str, Any]:
    """The OpenAPI 3.1 document for a service with these settings and models."""
    try:
        app_version = version("lstm-serve")
    except PackageNotFoundError:  # running from a source tree that was never installed
        app_version = "0+unknown"
    paths: dict[str, Schema] = {
        **_stream_paths("/v1/models/{model}", "", ["Model"]),
        **_stream_paths("/v1", "Default", []),
        **_subscription_paths("/v1/models/{model}", "", ["Model"]),
        **_subscription_paths("/v1", "Default", []),
        "/v1/models": {
            "get": _operation(
                "listModels",
                "The served models and the default model",
                [],
                {"200": _json(_ref("ModelList"), "The served models.")},
                tags=["models"],
            )
        },
        "/v1/models/{model}": {
            "get": _operation(
                "getModel",
                "One served model",
                ["Model"],
                {"200": _json(_ref("ModelInfo"), "The model."), "404": _resp("NotFound")},
                tags=["models"],
            )
        },
        "/healthz": {
            "get": _operation(
                "healthz",
                "Liveness: 200 while the process runs",
                [],
                {"200": _json(_ref("Health"), "Alive.")},
                tags=["operations"],
            )
        },
        "/readyz": {
            "get": _operation(
                "readyz",
                "Readiness: 200 when Redis answers and the models are loaded",
                [],
                {"200": _json(_ref("Ready"), "Ready."), "503": _resp("Unavailable")},
                tags=["operations"],
            )
        },
        "/metrics": {
            "get": _operation(
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
            "get": _operation(
                "openapi",
                "This document",
                [],
                {"200": _json({"type": "object"}, "The OpenAPI document.")},
                tags=["operations"],
            )
        },
    }
    default = settings.default_model or (next(iter(models)) if len(models) == 1 else None)
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
                "answers 500 internal_error without details."
            ),
        },
        "tags": [
            {"name": "readings", "description": "Apply readings, get predictions."},
            {"name": "streams", "description": "A stream's state and its end."},
            {"name": "events", "description": "Subscriptions to a stream's predictions."},
            {"name": "models", "description": "The served models."},
            {"name": "operations", "description": "Health, readiness, metrics, this document."},
        ],
        "paths": paths,
        "components": {
            "schemas": _schemas(settings, models),
            "responses": _responses(settings),
            "parameters": _parameters(models),
        },
    }


async def openapi_json(request: web.Request) -> web.Response:
    return json_response(openapi_document(request.app[SETTINGS], request.app[MODELS]))

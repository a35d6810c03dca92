"""What every route family's part of the OpenAPI document is built from: schema helpers, the
error codes by status, and the components (responses, parameters) that several families share.
"""

from __future__ import annotations

from typing import Any

from ...core.ids import STREAM_ID
from ...core.settings import Settings
from ...step.model import ServedModel
from ...step.plan import SEQ_MAX
from ..routes_v2 import VERSION
from ..wire_v2 import HEADER_LENGTH

Schema = dict[str, Any]

# Error schemas and the codes each admits: errors.py's tree by status, plus the codes the error
# middleware gives aiohttp's own 404 (no such path) and 405.
ERRORS: dict[str, list[str]] = {
    "Error400": ["invalid_request", "invalid_values", "invalid_stream_id", "forecast_unsupported"],
    "Error401": ["unauthenticated"],
    "Error403": ["forbidden"],
    "Error404": ["model_not_found", "stream_not_found"],
    "Error409": ["stale_seq", "model_version_mismatch"],
    "Error413": ["payload_too_large"],
    "Error429": ["quota_exceeded"],
    "Error503": ["redis_unavailable", "overloaded"],
    "UnknownPathError": ["not_found"],
    "MethodNotAllowedError": ["method_not_allowed"],
}
# A bulk item that fails carries its own error; these are the codes it can have.
ITEM_CODES = [
    *ERRORS["Error400"],
    *ERRORS["Error409"],
    *ERRORS["Error413"],
    *ERRORS["Error503"],
]
FLOAT32_MAX = 3.4e38
EVENT_ID = r"^[0-9]+-[0-9]+$"
CURSOR = r"^[A-Za-z0-9._:-]{1,128}~[0-9]+-[0-9]+(,[A-Za-z0-9._:-]{1,128}~[0-9]+-[0-9]+)*$"


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def obj(required: list[str], properties: dict[str, Schema], closed: bool = True) -> Schema:
    schema: Schema = {"type": "object", "required": required, "properties": properties}
    if closed:
        schema["additionalProperties"] = False
    return schema


def record(properties: dict[str, Schema]) -> Schema:
    """A closed object whose every property is required."""
    return obj(list(properties), properties)


def json_content(schema: Schema, description: str) -> Schema:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def agreed(models: dict[str, ServedModel], attr: str) -> int | None:
    """A per-model size, when every served model has the same."""
    sizes = {getattr(m, attr) for m in models.values()}
    return next(iter(sizes)) if len(sizes) == 1 else None


def sizes(models: dict[str, ServedModel], attr: str) -> Schema:
    """``minItems``/``maxItems`` for a per-model length, when every served model agrees."""
    n = agreed(models, attr)
    return {} if n is None else {"minItems": n, "maxItems": n}


_RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before retrying (with the same seq).",
        "required": True,
        "schema": {"type": "integer", "minimum": 1},
    }
}

_QUOTA_RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds until the request's readings fit the tenant's quota.",
        "required": True,
        "schema": {"type": "integer", "minimum": 1},
    }
}

_CHALLENGE = {
    "WWW-Authenticate": {
        "description": 'Bearer, with error="invalid_token" when a token was given.',
        "required": True,
        "schema": {"type": "string", "pattern": "^Bearer( |$)"},
    }
}

_ALLOW = {
    "Allow": {
        "description": "The methods the path accepts, comma-separated.",
        "required": True,
        "schema": {"type": "string"},
    }
}


def responses(settings: Settings) -> dict[str, Schema]:
    def error(schema: str, description: str, **extra: Any) -> Schema:
        return {**json_content(ref(schema), description), **extra}

    return {
        "BadRequest": error(
            "Error400",
            "invalid_request: not JSON, not an object, unknown or missing fields, a bad seq or ts; "
            "invalid_values: values not exactly input_size finite numbers, or a forecast's "
            "covariates missing, extra or not finite; invalid_stream_id; forecast_unsupported: a "
            "forecast horizon of 1 or more on a model without a feedback mapping.",
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
            f"{settings.request_max_readings} readings in one request (for a forecast: "
            "stream-steps, streams × (horizon + what-if readings)), or a forecast horizon over "
            f"{settings.forecast_max_horizon}.",
        ),
        "Unavailable": error(
            "Error503",
            "redis_unavailable: Redis did not answer in time; overloaded: the queue is full or the "
            "service is stopping. Retry after Retry-After seconds with the same seq.",
            headers=_RETRY_AFTER,
        ),
        "Unauthorized": error(
            "Error401",
            "unauthenticated: no bearer token, a malformed one, or one the service does not know "
            "(unknown or revoked).",
            headers=_CHALLENGE,
        ),
        "Forbidden": error("Error403", "forbidden: the token lacks the scope this request needs."),
        "QuotaExceeded": error(
            "Error429",
            "quota_exceeded: the tenant's readings per second are spent; nothing was applied. "
            "Retry after Retry-After seconds.",
            headers=_QUOTA_RETRY_AFTER,
        ),
        "UnknownPath": error("UnknownPathError", "not_found: no route has this path."),
        "MethodNotAllowed": error(
            "MethodNotAllowedError",
            "method_not_allowed: the path exists, the method does not.",
            headers=_ALLOW,
        ),
        # /v2 answers KServe v2's {"error": "message"}, for the same causes.
        "V2BadRequest": error(
            "V2Error",
            "Not JSON, not an inference request, a bad or missing sequence_id or seq, an input "
            "other than one FP32 x shaped [1, T, input_size], values that are not finite FP32 "
            f"numbers, a bad {HEADER_LENGTH} or binary data that does not match.",
        ),
        "V2NotFound": error("V2Error", "No such model served, or no such version of it."),
        "V2Conflict": error(
            "V2Error",
            "A seq at or below the stream's last applied one whose results are no longer held "
            "(a resent request of the stream's last one is answered as a duplicate), or the "
            "stream's state was written by another model version (with --on-version-mismatch "
            "refuse).",
        ),
        "V2PayloadTooLarge": error(
            "V2Error",
            f"A body over {settings.body_max_bytes} bytes, or more than "
            f"{settings.request_max_readings} steps in one request.",
        ),
        "V2Unavailable": error(
            "V2Error",
            "Redis did not answer in time, or the queue is full, or the service is stopping. "
            "Retry after Retry-After seconds with the same seq.",
            headers=_RETRY_AFTER,
        ),
        "V2Unauthorized": error(
            "V2Error",
            "No bearer token, a malformed one, or one the service does not know.",
            headers=_CHALLENGE,
        ),
        "V2Forbidden": error("V2Error", "The token lacks the scope this request needs."),
        "V2QuotaExceeded": error(
            "V2Error",
            "The tenant's readings per second are spent; nothing was applied. Retry after "
            "Retry-After seconds.",
            headers=_QUOTA_RETRY_AFTER,
        ),
        "V2UnknownPath": error("V2Error", "No route has this path under /v2."),
        "V2MethodNotAllowed": error(
            "V2Error", "The path exists under /v2, the method does not.", headers=_ALLOW
        ),
    }


def parameters(models: dict[str, ServedModel]) -> dict[str, Schema]:
    event_id = {"type": "string", "pattern": EVENT_ID}
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
            "schema": ref("StreamId"),
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
            "schema": {"type": "string", "pattern": CURSOR},
        },
        "LastEventCursor": {
            "name": "Last-Event-ID",
            "in": "header",
            "description": "Sent by an EventSource on reconnect: resume every stream after the "
            "cursor.",
            "schema": {"type": "string", "pattern": CURSOR},
        },
        "LastEventId": {
            "name": "Last-Event-ID",
            "in": "header",
            "description": "Sent by an EventSource on reconnect: resume after this event id.",
            "schema": event_id,
        },
        "Version": {
            "name": "version",
            "in": "path",
            "required": True,
            "description": f"The model's version: {VERSION}, or its fingerprint (the /v1 "
            "model_version); any other is 404.",
            "schema": {
                "type": "string",
                "enum": [VERSION, *sorted({m.version for m in models.values()})],
            },
        },
        "InferenceHeaderLength": {
            "name": HEADER_LENGTH,
            "in": "header",
            "description": "Binary tensor data: the body's first this many bytes are the JSON "
            "request, the rest the binary inputs.",
            "schema": {"type": "integer", "minimum": 1},
        },
    }


def param(name: str) -> Schema:
    return {"$ref": f"#/components/parameters/{name}"}


def resp(name: str) -> Schema:
    return {"$ref": f"#/components/responses/{name}"}


def operation(
    op_id: str, summary: str, params: list[str], responses: dict[str, Schema], **extra: Any
) -> Schema:
    op: Schema = {"operationId": op_id, "summary": summary, "responses": responses, **extra}
    if params:
        op["parameters"] = [param(p) for p in params]
    return op

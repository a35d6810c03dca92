"""The OpenAPI document's ``/v1`` REST part: readings, streams, models and operations schemas,
and the per-model stream paths (long form and the default model's short form)."""

from __future__ import annotations

from ...core.ids import STREAM_ID
from ...core.settings import Settings
from ...step.model import ServedModel
from ...step.plan import SEQ_MAX
from .common import (
    ERRORS,
    FLOAT32_MAX,
    ITEM_CODES,
    Schema,
    json_content,
    obj,
    operation,
    record,
    ref,
    resp,
    sizes,
)


def v1_schemas(settings: Settings, models: dict[str, ServedModel]) -> dict[str, Schema]:
    max_readings = settings.request_max_readings
    stream_pattern = f"^{STREAM_ID.pattern}$"
    reading_fields: dict[str, Schema] = {
        "values": ref("Values"),
        "seq": ref("Seq"),
        "ts": ref("Ts"),
    }
    readings_list: Schema = {
        "type": "array",
        "minItems": 1,
        "maxItems": max_readings,
        "items": ref("Reading"),
        "description": "Applied in order, all or nothing. Give `seq` on every reading or on none; "
        + (
            "given seqs must be consecutive, the first the stream's next (this service refuses "
            "gaps)."
            if settings.seq_gaps == "refuse"
            else "given seqs must increase."
        ),
    }
    error_detail = obj(
        ["code", "message"],
        {
            "code": {"type": "string"},
            "message": {"type": "string", "description": "What went wrong and what to do."},
            "current_seq": {
                "type": "integer",
                "minimum": 0,
                "description": "With stale_seq and seq_gap: the stream's last applied seq (0: "
                "none, a new or ended stream).",
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
            "if": {"properties": {"code": {"enum": ["stale_seq", "seq_gap"]}}},
            "then": {"required": ["current_seq"]},
        },
        {
            "if": {"properties": {"code": {"const": "model_version_mismatch"}}},
            "then": {"required": ["stream_version", "model_version"]},
        },
    ]
    stream_results: dict[str, Schema] = {
        "generation": ref("Generation"),
        "results": {"type": "array", "items": ref("SeqResult"), "minItems": 1},
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
            "items": {"type": "number", "minimum": -FLOAT32_MAX, "maximum": FLOAT32_MAX},
            **sizes(models, "input_size"),
            "description": "One finite number per model input (input_size of the addressed "
            "model; GET /v1/models lists the features), in raw sensor units.",
        },
        "Prediction": {
            "type": "array",
            "items": {"type": "number"},
            **sizes(models, "output_size"),
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
        "Reading": obj(["values"], reading_fields),
        "ReadingList": obj(["readings"], {"readings": readings_list}),
        "StreamReadingsRequest": {
            "oneOf": [ref("Reading"), ref("ReadingList")],
            "description": "One reading, or several readings of the stream.",
        },
        "BulkReading": obj(["stream", "values"], {"stream": ref("StreamId"), **reading_fields}),
        "BulkReadingList": obj(
            ["stream", "readings"], {"stream": ref("StreamId"), "readings": readings_list}
        ),
        "BulkRequest": obj(
            ["readings"],
            {
                "readings": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": max_readings,
                    "items": {"oneOf": [ref("BulkReading"), ref("BulkReadingList")]},
                    "description": f"Items for any streams; at most {max_readings} readings in "
                    "all (413 beyond). Items of one stream are applied in request order.",
                }
            },
        ),
        "SeqResult": obj(
            ["seq", "prediction"], {"seq": ref("Seq"), "prediction": ref("Prediction")}
        ),
        "Generation": {
            "type": "integer",
            "description": "The stream's generation: a new one (creation time in ms) each time "
            "the stream starts afresh (after DELETE, expiry or a version reset).",
        },
        "ReadingsResponse": obj(
            ["model", "model_version", "stream", "generation", "results"],
            {
                "model": {"type": "string"},
                "model_version": {"type": "string"},
                "stream": ref("StreamId"),
                **stream_results,
            },
        ),
        "BulkItemResult": {
            "oneOf": [
                obj(
                    ["stream", "generation", "results"],
                    {"stream": ref("StreamId"), **stream_results},
                ),
                obj(
                    ["stream", "error"],
                    {
                        "stream": {"description": "The item's stream as sent (any JSON value)."},
                        "error": {
                            **error_detail,
                            "properties": {
                                **error_detail["properties"],
                                "code": {"enum": ITEM_CODES},
                            },
                        },
                    },
                ),
            ]
        },
        "BulkResponse": obj(
            ["model", "model_version", "results"],
            {
                "model": {"type": "string"},
                "model_version": {"type": "string"},
                "results": {
                    "type": "array",
                    "items": ref("BulkItemResult"),
                    "description": "One entry per request item, in request order.",
                },
            },
        ),
        "StreamState": record(
            {
                "stream": ref("StreamId"),
                "model": {"type": "string"},
                "model_version": {
                    "type": "string",
                    "description": "The version that wrote the state (may differ from the "
                    "served one).",
                },
                "generation": ref("Generation"),
                "seq": {"type": "integer", "minimum": 1, "description": "Last applied seq."},
                "updated_at": {"type": "string", "format": "date-time"},
                "last_prediction": {"oneOf": [ref("Prediction"), {"type": "null"}]},
                "expires_at": {
                    "type": ["string", "null"],
                    "format": "date-time",
                    "description": "null when streams never expire (--state-ttl-s 0).",
                },
            },
        ),
        "ModelInfo": record(
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
        "ModelList": obj(
            ["models", "default_model"],
            {
                "models": {"type": "array", "items": ref("ModelInfo")},
                "default_model": {
                    "type": ["string", "null"],
                    "description": "The model the short paths address; null when several are "
                    "served and none is the default.",
                },
            },
        ),
        "PredictionEvent": obj(
            ["model", "model_version", "stream", "generation", "seq", "values", "prediction", "ts"],
            {
                "model": {"type": "string"},
                "model_version": {"type": "string"},
                "stream": ref("StreamId"),
                "generation": ref("Generation"),
                "seq": ref("Seq"),
                "values": ref("Values"),
                "prediction": ref("Prediction"),
                "ts": {"type": "number", "description": "Commit time, Unix seconds."},
                "reading_ts": {
                    "type": ["number", "string"],
                    "description": "The reading's own `ts`, present when it carried one.",
                },
            },
        ),
        "ErrorDetail": error_detail,
        "Health": obj(["status"], {"status": {"const": "alive"}}),
        "Ready": obj(
            ["status", "models"],
            {
                "status": {"const": "ready"},
                "models": {"type": "array", "items": {"type": "string"}},
            },
        ),
    }
    for name, codes in ERRORS.items():
        schemas[name] = obj(
            ["error"],
            {"error": {"allOf": [ref("ErrorDetail")], "properties": {"code": {"enum": codes}}}},
        )
    return schemas


def stream_paths(prefix: str, suffix: str, model_params: list[str]) -> dict[str, Schema]:
    """The per-model paths under ``prefix`` (long form, or the short form for the default)."""
    stream = [*model_params, "Stream"]
    body_limit = "See the 413 response for the size limits."
    return {
        f"{prefix}/streams/{{stream}}/readings": {
            "post": operation(
                f"postReadings{suffix}",
                "Apply one or more readings of one stream and return the predictions",
                stream,
                {
                    "200": json_content(
                        ref("ReadingsResponse"),
                        "Applied (or, on a retry, the stored results marked duplicate).",
                    ),
                    "400": resp("BadRequest"),
                    "404": resp("NotFound"),
                    "409": resp("Conflict"),
                    "413": resp("PayloadTooLarge"),
                    "503": resp("Unavailable"),
                },
                requestBody={
                    "required": True,
                    "description": "JSON whatever the Content-Type says. " + body_limit,
                    "content": {"application/json": {"schema": ref("StreamReadingsRequest")}},
                },
                tags=["readings"],
            )
        },
        f"{prefix}/readings": {
            "post": operation(
                f"postBulk{suffix}",
                "Apply readings of many streams; a failed item carries its own error",
                model_params,
                {
                    "200": json_content(
                        ref("BulkResponse"), "One entry per item, in request order."
                    ),
                    "400": resp("BadRequest"),
                    "404": resp("NotFound"),
                    "413": resp("PayloadTooLarge"),
                    "503": resp("Unavailable"),
                },
                requestBody={
                    "required": True,
                    "description": "JSON whatever the Content-Type says. " + body_limit,
                    "content": {"application/json": {"schema": ref("BulkRequest")}},
                },
                tags=["readings"],
            )
        },
        f"{prefix}/streams/{{stream}}": {
            "get": operation(
                f"getStream{suffix}",
                "The stream's state",
                stream,
                {
                    "200": json_content(ref("StreamState"), "The stream's state."),
                    "400": resp("BadRequest"),
                    "404": resp("NotFound"),
                    "503": resp("Unavailable"),
                },
                tags=["streams"],
            ),
            "delete": operation(
                f"deleteStream{suffix}",
                "End the stream: its next reading starts a new generation from zero state",
                stream,
                {
                    "204": {"description": "Ended."},
                    "400": resp("BadRequest"),
                    "404": resp("NotFound"),
                    "503": resp("Unavailable"),
                },
                tags=["streams"],
            ),
        },
        f"{prefix}/streams/{{stream}}/events": {
            "get": operation(
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
                                "x-event-data": ref("PredictionEvent"),
                            }
                        },
                    },
                    "400": resp("BadRequest"),
                    "404": resp("NotFound"),
                    "503": resp("Unavailable"),
                },
                tags=["events"],
            )
        },
    }

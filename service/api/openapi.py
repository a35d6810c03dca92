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

from ..core.ids import STREAM_ID
from ..core.model_stats import PHASES
from ..core.settings import Settings
from ..step.model import ServedModel
from ..step.plan import SEQ_MAX
from .app_keys import MODELS, SETTINGS
from .routes_v1 import json_response
from .routes_v2 import EXTENSIONS, V2_PREFIX, VERSION
from .wire_v2 import HEADER_LENGTH, INPUT, OUTPUT, SEQUENCE_ID_MAX

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


def _agreed(models: dict[str, ServedModel], attr: str) -> int | None:
    """A per-model size, when every served model has the same."""
    sizes = {getattr(m, attr) for m in models.values()}
    return next(iter(sizes)) if len(sizes) == 1 else None


def _sizes(models: dict[str, ServedModel], attr: str) -> Schema:
    """``minItems``/``maxItems`` for a per-model length, when every served model agrees."""
    n = _agreed(models, attr)
    return {} if n is None else {"minItems": n, "maxItems": n}


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
    schemas.update(_v2_schemas(settings, models))
    return schemas


def _dims(fixed: list[int], size: int | None, attr: str, meaning: str) -> Schema:
    """A tensor shape ``fixed + [size]``: a constant when ``size`` is known."""
    description = f"[{', '.join(map(str, fixed))}, {attr}]: {meaning}."
    if size is not None:
        return {"const": [*fixed, size], "description": description}
    return {
        "type": "array",
        "items": {"type": "integer", "minimum": -1},
        "minItems": len(fixed) + 1,
        "maxItems": len(fixed) + 1,
        "description": description,
    }


# Triton's required fields of a model configuration and of a model's statistics.
_CONFIG_REQUIRED = (
    "name", "platform", "backend", "max_batch_size", "input", "output", "sequence_batching",
    "instance_group", "version_policy",
)  # fmt: skip
_MODEL_STATS_REQUIRED = (
    "name", "version", "last_inference", "inference_count", "execution_count", "inference_stats",
    "batch_stats",
)  # fmt: skip
_INFERENCE_STATS = ("success", "fail", *PHASES, "cache_hit", "cache_miss")
_BATCH_STATS = ("compute_input", "compute_infer", "compute_output")


def _v2_schemas(settings: Settings, models: dict[str, ServedModel]) -> dict[str, Schema]:
    """The schemas of the KServe v2 routes (Triton's JSON where the service speaks Triton's
    extensions: open objects there, since Triton's own format may carry more fields)."""
    max_steps = settings.request_max_readings
    n_in, n_out = _agreed(models, "input_size"), _agreed(models, "output_size")
    steps: Schema = {"type": "integer", "minimum": 1, "maximum": max_steps}
    width: Schema = {"type": "integer", "minimum": 1} if n_in is None else {"const": n_in}

    def tensor_metadata(name: str, size: int | None, attr: str) -> Schema:
        return _record(
            {
                "name": {"const": name},
                "datatype": {"const": "FP32"},
                "shape": _dims([-1, -1], size, attr, "any number of sequences and steps"),
            }
        )

    def config_tensor(name: str, size: int | None, attr: str) -> Schema:
        return _obj(
            ["name", "data_type", "dims"],
            {
                "name": {"const": name},
                "data_type": {"const": "TYPE_FP32"},
                "dims": _dims([-1], size, attr, "per sequence, any number of steps"),
            },
            closed=False,
        )

    def infer_response(output: Schema) -> Schema:
        return _obj(
            ["model_name", "model_version", "parameters", "outputs"],
            {
                "model_name": {"type": "string"},
                "model_version": {"const": VERSION},
                "id": {"type": "string", "description": "The request's id, when it had one."},
                "parameters": _ref("V2InferResponseParameters"),
                "outputs": {"type": "array", "minItems": 1, "maxItems": 1, "items": output},
            },
        )

    output_fields: dict[str, Schema] = {
        "name": {"const": OUTPUT},
        "datatype": {"const": "FP32"},
        # Not spelled with prefixItems as the request's shape is: schemathesis (4.32) rewrites
        # prefixItems in response schemas into a form its 2020-12 validator refuses.
        "shape": {
            "type": "array",
            "items": {"type": "integer", "minimum": 1},
            "minItems": 3,
            "maxItems": 3,
            "description": "[1, T, output_size]: the request's T steps.",
        },
    }
    return {
        "V2Error": _record(
            {"error": {"type": "string", "description": "What went wrong and what to do."}}
        ),
        "V2ServerMetadata": _record(
            {
                "name": {"const": "lstm-serve"},
                "version": {"type": "string"},
                "extensions": {
                    "type": "array",
                    "items": {"type": "string"},
                    "description": f"The protocol extensions served: {', '.join(EXTENSIONS)}.",
                },
            }
        ),
        "V2ModelMetadata": _record(
            {
                "name": {"type": "string"},
                "versions": {"type": "array", "items": {"const": VERSION}, "minItems": 1},
                "platform": {"const": "onnxruntime_onnx"},
                "inputs": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": 1,
                    "items": tensor_metadata(INPUT, n_in, "input_size"),
                },
                "outputs": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": 1,
                    "items": tensor_metadata(OUTPUT, n_out, "output_size"),
                },
            }
        ),
        "V2ModelConfig": _obj(
            list(_CONFIG_REQUIRED),
            {
                "name": {"type": "string"},
                "platform": {"const": "onnxruntime_onnx"},
                "backend": {"const": "onnxruntime"},
                "max_batch_size": {
                    "const": settings.batch_max_readings,
                    "description": "The most readings in one batch (--batch-max-readings).",
                },
                "input": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": 1,
                    "items": config_tensor(INPUT, n_in, "input_size"),
                },
                "output": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": 1,
                    "items": config_tensor(OUTPUT, n_out, "output_size"),
                },
                "sequence_batching": _obj(
                    [],
                    {
                        "max_sequence_idle_microseconds": {
                            "type": "integer",
                            "minimum": 1,
                            "description": "The stream state's time to live; absent when "
                            "streams never expire.",
                        }
                    },
                    closed=False,
                ),
                "instance_group": {
                    "type": "array",
                    "items": _obj(
                        ["kind", "count"],
                        {
                            "kind": {"const": "KIND_CPU"},
                            "count": {
                                "type": "integer",
                                "minimum": 1,
                                "description": "Worker processes (--workers).",
                            },
                        },
                        closed=False,
                    ),
                },
                "version_policy": {"type": "object"},
                "parameters": {
                    "type": "object",
                    "additionalProperties": _record({"string_value": {"type": "string"}}),
                    "description": "fingerprint (the /v1 model_version), features and outputs "
                    "(comma-separated names).",
                },
            },
            closed=False,
        ),
        "V2StatDuration": _record(
            {
                "count": {"type": "integer", "minimum": 0},
                "ns": {"type": "integer", "minimum": 0, "description": "Summed time, ns."},
            }
        ),
        "V2ModelStats": _obj(
            list(_MODEL_STATS_REQUIRED),
            {
                "name": {"type": "string"},
                "version": {"const": VERSION},
                "last_inference": {
                    "type": "integer",
                    "minimum": 0,
                    "description": "When a request last succeeded, Unix ms (0: never).",
                },
                "inference_count": {"type": "integer", "minimum": 0},
                "execution_count": {
                    "type": "integer",
                    "minimum": 0,
                    "description": "Model calls.",
                },
                "inference_stats": _obj(
                    list(_INFERENCE_STATS),
                    {name: _ref("V2StatDuration") for name in _INFERENCE_STATS},
                    closed=False,
                ),
                "batch_stats": {
                    "type": "array",
                    "items": _obj(
                        ["batch_size", *_BATCH_STATS],
                        {
                            "batch_size": {
                                "type": "integer",
                                "minimum": 1,
                                "description": "Streams in one model call.",
                            },
                            **{name: _ref("V2StatDuration") for name in _BATCH_STATS},
                        },
                        closed=False,
                    ),
                },
            },
            closed=False,
        ),
        "V2ModelStatistics": _record(
            {
                "model_stats": {
                    "type": "array",
                    "items": _ref("V2ModelStats"),
                    "description": "One entry per model; counts and times summed over every "
                    "worker process.",
                }
            }
        ),
        "V2RepositoryIndex": {
            "type": "array",
            "items": _obj(
                ["name", "version", "state"],
                {
                    "name": {"type": "string"},
                    "version": {"const": VERSION},
                    "state": {"const": "READY"},
                    "reason": {"type": "string"},
                },
            ),
        },
        "V2SequenceId": {
            "oneOf": [
                {"type": "integer", "minimum": 1, "maximum": SEQUENCE_ID_MAX},
                {"type": "string", "pattern": f"^{STREAM_ID.pattern}$"},
            ],
            "description": 'The stream: an integer n is stream str(n) (42 and "42" are one '
            "stream, the /v1 stream 42); a string is the stream id itself.",
        },
        "V2TensorData": {
            "type": "array",
            "items": {
                "anyOf": [
                    {"type": "number", "minimum": -_FLOAT32_MAX, "maximum": _FLOAT32_MAX},
                    {"type": "array"},
                ]
            },
            "description": "The T*input_size values in row-major order, flat or nested as the "
            "shape; each a finite FP32 number.",
        },
        "V2InferRequest": _obj(
            ["parameters", "inputs"],
            {
                "id": {"type": "string", "description": "Echoed in the answer."},
                "parameters": _obj(
                    ["sequence_id"],
                    {
                        "sequence_id": _ref("V2SequenceId"),
                        "sequence_start": {
                            "type": "boolean",
                            "description": "Start the stream afresh (a new generation from "
                            "zero state) with this request.",
                        },
                        "sequence_end": {
                            "type": "boolean",
                            "description": "End the stream after this request: its next "
                            "request starts a new generation.",
                        },
                        "seq": {
                            **_ref("Seq"),
                            "description": "The first step's seq; the T steps take seq .. "
                            "seq+T-1. A resent request (same sequence_id and seq) answers its "
                            "stored outputs, marked duplicate; a lower seq whose results are "
                            "gone is 409. Omitted: each request is new steps.",
                        },
                        "binary_data_output": {
                            "type": "boolean",
                            "description": "Return every output as binary data.",
                        },
                    },
                    closed=False,
                ),
                "inputs": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": 1,
                    "items": {
                        **_obj(
                            ["name", "datatype", "shape"],
                            {
                                "name": {"const": INPUT},
                                "datatype": {"const": "FP32"},
                                "shape": {
                                    "type": "array",
                                    "prefixItems": [{"const": 1}, steps, width],
                                    "minItems": 3,
                                    "maxItems": 3,
                                    "description": "[1, T, input_size]: one stream, T steps "
                                    f"(at most {max_steps}).",
                                },
                                "data": _ref("V2TensorData"),
                                "parameters": _obj(
                                    [],
                                    {
                                        "binary_data_size": {
                                            "type": "integer",
                                            "minimum": 4,
                                            "description": "The tensor is this many bytes "
                                            "(4*T*size, float32 little-endian) of the body's "
                                            "binary part.",
                                        }
                                    },
                                    closed=False,
                                ),
                            },
                            closed=False,
                        ),
                        "oneOf": [
                            {"required": ["data"]},
                            {
                                "required": ["parameters"],
                                "properties": {"parameters": {"required": ["binary_data_size"]}},
                            },
                        ],
                    },
                    "description": f"One tensor, {INPUT}: T steps of one stream, in order; "
                    "its values in data or as binary data.",
                },
                "outputs": {
                    "type": "array",
                    "items": _obj(
                        ["name"],
                        {
                            "name": {"const": OUTPUT},
                            "parameters": _obj(
                                [],
                                {
                                    "binary_data": {
                                        "type": "boolean",
                                        "description": "Return this output as binary data.",
                                    }
                                },
                                closed=False,
                            ),
                        },
                        closed=False,
                    ),
                    "description": f"Optional: the one output is {OUTPUT}, always returned.",
                },
            },
            closed=False,
        ),
        "V2InferResponseParameters": _record(
            {
                "sequence_id": _ref("V2SequenceId"),
                "sequence_start": {"type": "boolean"},
                "sequence_end": {"type": "boolean"},
                "stream": _ref("StreamId"),
                "generation": _ref("Generation"),
                "seq": {**_ref("Seq"), "description": "The last step's seq."},
                "duplicate": {
                    "type": "boolean",
                    "description": "true: a resent request, answered with the stored outputs; "
                    "nothing changed.",
                },
            }
        ),
        "V2InferResponse": infer_response(
            _record(
                {
                    **output_fields,
                    "data": {
                        "type": "array",
                        "items": {"type": "number"},
                        "description": "The T*size predictions, row-major, in raw units.",
                    },
                }
            )
        ),
        "V2InferResponseHeader": infer_response(
            _record(
                {
                    **output_fields,
                    "parameters": _record(
                        {
                            "binary_data_size": {
                                "type": "integer",
                                "minimum": 4,
                                "description": "The output's bytes after the JSON: 4*T*size, "
                                "float32 little-endian.",
                            }
                        }
                    ),
                }
            )
        ),
    }


_RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before retrying (with the same seq).",
        "required": True,
        "schema": {"type": "integer", "minimum": 1},
    }
}

_ALLOW = {
    "Allow": {
        "description": "The methods the path accepts, comma-separated.",
        "required": True,
        "schema": {"type": "string"},
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
        "V2UnknownPath": error("V2Error", "No route has this path under /v2."),
        "V2MethodNotAllowed": error(
            "V2Error", "The path exists under /v2, the method does not.", headers=_ALLOW
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


def _v2_infer_examples(models: dict[str, ServedModel]) -> Schema:
    """Two inference requests to the first served model: JSON and binary answers."""
    n = models[min(models)].input_size
    request = {
        "id": "a1",
        "parameters": {"sequence_id": 42, "sequence_start": True, "seq": 1},
        "inputs": [{"name": INPUT, "datatype": "FP32", "shape": [1, 2, n], "data": [0.5] * 2 * n}],
    }
    binary = {**request, "parameters": {"sequence_id": "sensor-7", "binary_data_output": True}}
    return {
        "json": {"summary": "Start stream 42 with two steps", "value": request},
        "binary": {"summary": "Two steps of stream sensor-7, output in binary", "value": binary},
    }


def _v2_model_paths(
    base: str, suffix: str, params: list[str], examples: Schema
) -> dict[str, Schema]:
    """One model's KServe v2 routes under ``base`` (the model, or one version of it)."""
    not_found = {"404": _resp("V2NotFound")}
    binary_answer = (
        "With binary output asked for (binary_data_output, or the output's binary_data): the "
        f"JSON answer (V2InferResponseHeader, {HEADER_LENGTH} bytes) followed by the output's "
        "binary_data_size bytes, float32 little-endian."
    )
    return {
        base: {
            "get": _operation(
                f"v2ModelMetadata{suffix}",
                "The model's inputs and outputs",
                params,
                {"200": _json(_ref("V2ModelMetadata"), "The model's metadata."), **not_found},
                tags=["v2"],
            )
        },
        f"{base}/ready": {
            "get": _operation(
                f"v2ModelReady{suffix}",
                "Model readiness: 200 when the model is served",
                params,
                {"200": {"description": "Ready (no body)."}, **not_found},
                tags=["v2"],
            )
        },
        f"{base}/config": {
            "get": _operation(
                f"v2ModelConfig{suffix}",
                "The model's configuration in Triton's form",
                params,
                {
                    "200": _json(
                        _ref("V2ModelConfig"),
                        "A sequence-batching model configuration: x is [-1, input_size] per "
                        "sequence, y [-1, output_size].",
                    ),
                    **not_found,
                },
                tags=["v2"],
            )
        },
        f"{base}/stats": {
            "get": _operation(
                f"v2ModelStats{suffix}",
                "The model's request statistics in Triton's form",
                params,
                {
                    "200": _json(_ref("V2ModelStatistics"), "One entry, for this model."),
                    **not_found,
                },
                tags=["v2"],
            )
        },
        f"{base}/infer": {
            "post": _operation(
                f"v2Infer{suffix}",
                "Apply T steps of one stream (sequence_id) and return the predictions",
                [*params, "InferenceHeaderLength"],
                {
                    "200": {
                        "description": "Applied (or, for a resent request, the stored outputs "
                        "marked duplicate).",
                        "headers": {
                            HEADER_LENGTH: {
                                "description": "With a binary answer: the length of its JSON part.",
                                "schema": {"type": "integer", "minimum": 1},
                            }
                        },
                        "content": {
                            "application/json": {"schema": _ref("V2InferResponse")},
                            "application/octet-stream": {
                                "schema": {
                                    "type": "string",
                                    "contentMediaType": "application/octet-stream",
                                    "description": binary_answer,
                                },
                                "x-inference-header": _ref("V2InferResponseHeader"),
                            },
                        },
                    },
                    "400": _resp("V2BadRequest"),
                    **not_found,
                    "409": _resp("V2Conflict"),
                    "413": _resp("V2PayloadTooLarge"),
                    "503": _resp("V2Unavailable"),
                },
                requestBody={
                    "required": True,
                    "description": "JSON whatever the Content-Type says; or, with "
                    f"{HEADER_LENGTH}, that many bytes of JSON followed by the inputs' binary "
                    "data in input order. See the 413 response for the size limits.",
                    "content": {
                        "application/json": {
                            "schema": _ref("V2InferRequest"),
                            "examples": examples,
                        },
                        "application/octet-stream": {
                            "schema": {
                                "type": "string",
                                "contentMediaType": "application/octet-stream",
                                "description": f"The JSON request ({HEADER_LENGTH} bytes), "
                                "then x's binary_data_size bytes, float32 little-endian.",
                            },
                            "x-inference-header": _ref("V2InferRequest"),
                        },
                    },
                },
                tags=["v2"],
            )
        },
    }


def _v2_paths(models: dict[str, ServedModel]) -> dict[str, Schema]:
    """The KServe v2 / Open Inference Protocol routes: server, models, inference."""
    model = f"{V2_PREFIX}/models/{{model}}"
    examples = _v2_infer_examples(models)
    return {
        V2_PREFIX: {
            "get": _operation(
                "v2ServerMetadata",
                "The server's name, version and protocol extensions",
                [],
                {"200": _json(_ref("V2ServerMetadata"), "The server's metadata.")},
                tags=["v2"],
            )
        },
        f"{V2_PREFIX}/health/live": {
            "get": _operation(
                "v2ServerLive",
                "Liveness: 200 while the process runs",
                [],
                {"200": {"description": "Alive (no body)."}},
                tags=["v2"],
            )
        },
        f"{V2_PREFIX}/health/ready": {
            "get": _operation(
                "v2ServerReady",
                "Readiness: 200 when Redis answers and the models are loaded",
                [],
                {"200": {"description": "Ready (no body)."}, "503": _resp("V2Unavailable")},
                tags=["v2"],
            )
        },
        f"{V2_PREFIX}/repository/index": {
            "post": _operation(
                "v2RepositoryIndex",
                "The served models, every one ready",
                [],
                {"200": _json(_ref("V2RepositoryIndex"), "One entry per served model.")},
                requestBody={
                    "required": False,
                    "description": "Triton's filter; ignored, since every served model is ready.",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {"ready": {"type": "boolean"}},
                            }
                        }
                    },
                },
                tags=["v2"],
            )
        },
        f"{V2_PREFIX}/models/stats": {
            "get": _operation(
                "v2AllModelStats",
                "Every served model's request statistics in Triton's form",
                [],
                {"200": _json(_ref("V2ModelStatistics"), "One entry per served model.")},
                tags=["v2"],
            )
        },
        **_v2_model_paths(model, "", ["Model"], examples),
        **_v2_model_paths(
            f"{model}/versions/{{version}}", "Version", ["Model", "Version"], examples
        ),
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
        **_v2_paths(models),
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
                "answers 500 internal_error without details. Paths under /v2 are KServe v2 / "
                "the Open Inference Protocol with Triton's sequence, binary tensor data, model "
                "configuration and statistics extensions: a request's sequence_id names its "
                "stream, the /v1 stream of that id. Their errors are "
                '{"error": "message"}, unknown paths and methods under /v2 included '
                "(V2UnknownPath, V2MethodNotAllowed)."
            ),
        },
        "tags": [
            {"name": "readings", "description": "Apply readings, get predictions."},
            {"name": "streams", "description": "A stream's state and its end."},
            {"name": "events", "description": "Subscriptions to a stream's predictions."},
            {"name": "models", "description": "The served models."},
            {"name": "operations", "description": "Health, readiness, metrics, this document."},
            {"name": "v2", "description": "KServe v2 / Open Inference Protocol (Triton's)."},
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

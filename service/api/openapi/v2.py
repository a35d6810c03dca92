"""The OpenAPI document's KServe v2 part: Triton's schemas (open objects where Triton's own
format may carry more fields) and the server, model and inference paths under ``/v2``."""

from __future__ import annotations

from ...core.ids import STREAM_ID
from ...core.model_stats import PHASES
from ...core.settings import Settings
from ...step.model import ServedModel
from ..routes_v2 import EXTENSIONS, V2_PREFIX, VERSION
from ..wire_v2 import HEADER_LENGTH, INPUT, OUTPUT, SEQUENCE_ID_MAX
from .common import FLOAT32_MAX, Schema, agreed, json_content, obj, operation, record, ref, resp


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


def v2_schemas(settings: Settings, models: dict[str, ServedModel]) -> dict[str, Schema]:
    """The schemas of the KServe v2 routes (Triton's JSON where the service speaks Triton's
    extensions: open objects there, since Triton's own format may carry more fields)."""
    max_steps = settings.request_max_readings
    n_in, n_out = agreed(models, "input_size"), agreed(models, "output_size")
    steps: Schema = {"type": "integer", "minimum": 1, "maximum": max_steps}
    width: Schema = {"type": "integer", "minimum": 1} if n_in is None else {"const": n_in}

    def tensor_metadata(name: str, size: int | None, attr: str) -> Schema:
        return record(
            {
                "name": {"const": name},
                "datatype": {"const": "FP32"},
                "shape": _dims([-1, -1], size, attr, "any number of sequences and steps"),
            }
        )

    def config_tensor(name: str, size: int | None, attr: str) -> Schema:
        return obj(
            ["name", "data_type", "dims"],
            {
                "name": {"const": name},
                "data_type": {"const": "TYPE_FP32"},
                "dims": _dims([-1], size, attr, "per sequence, any number of steps"),
            },
            closed=False,
        )

    def infer_response(output: Schema) -> Schema:
        return obj(
            ["model_name", "model_version", "parameters", "outputs"],
            {
                "model_name": {"type": "string"},
                "model_version": {"const": VERSION},
                "id": {"type": "string", "description": "The request's id, when it had one."},
                "parameters": ref("V2InferResponseParameters"),
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
        "V2Error": record(
            {"error": {"type": "string", "description": "What went wrong and what to do."}}
        ),
        "V2ServerMetadata": record(
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
        "V2ModelMetadata": record(
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
        "V2ModelConfig": obj(
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
                "sequence_batching": obj(
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
                    "items": obj(
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
                    "additionalProperties": record({"string_value": {"type": "string"}}),
                    "description": "fingerprint (the /v1 model_version), features and outputs "
                    "(comma-separated names).",
                },
            },
            closed=False,
        ),
        "V2StatDuration": record(
            {
                "count": {"type": "integer", "minimum": 0},
                "ns": {"type": "integer", "minimum": 0, "description": "Summed time, ns."},
            }
        ),
        "V2ModelStats": obj(
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
                "inference_stats": obj(
                    list(_INFERENCE_STATS),
                    {name: ref("V2StatDuration") for name in _INFERENCE_STATS},
                    closed=False,
                ),
                "batch_stats": {
                    "type": "array",
                    "items": obj(
                        ["batch_size", *_BATCH_STATS],
                        {
                            "batch_size": {
                                "type": "integer",
                                "minimum": 1,
                                "description": "Streams in one model call.",
                            },
                            **{name: ref("V2StatDuration") for name in _BATCH_STATS},
                        },
                        closed=False,
                    ),
                },
            },
            closed=False,
        ),
        "V2ModelStatistics": record(
            {
                "model_stats": {
                    "type": "array",
                    "items": ref("V2ModelStats"),
                    "description": "One entry per model; counts and times summed over every "
                    "worker process.",
                }
            }
        ),
        "V2RepositoryIndex": {
            "type": "array",
            "items": obj(
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
                    {"type": "number", "minimum": -FLOAT32_MAX, "maximum": FLOAT32_MAX},
                    {"type": "array"},
                ]
            },
            "description": "The T*input_size values in row-major order, flat or nested as the "
            "shape; each a finite FP32 number.",
        },
        "V2InferRequest": obj(
            ["parameters", "inputs"],
            {
                "id": {"type": "string", "description": "Echoed in the answer."},
                "parameters": obj(
                    ["sequence_id"],
                    {
                        "sequence_id": ref("V2SequenceId"),
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
                            **ref("Seq"),
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
                        **obj(
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
                                "data": ref("V2TensorData"),
                                "parameters": obj(
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
                    "items": obj(
                        ["name"],
                        {
                            "name": {"const": OUTPUT},
                            "parameters": obj(
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
        "V2InferResponseParameters": record(
            {
                "sequence_id": ref("V2SequenceId"),
                "sequence_start": {"type": "boolean"},
                "sequence_end": {"type": "boolean"},
                "stream": ref("StreamId"),
                "generation": ref("Generation"),
                "seq": {**ref("Seq"), "description": "The last step's seq."},
                "duplicate": {
                    "type": "boolean",
                    "description": "true: a resent request, answered with the stored outputs; "
                    "nothing changed.",
                },
            }
        ),
        "V2InferResponse": infer_response(
            record(
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
            record(
                {
                    **output_fields,
                    "parameters": record(
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
    not_found = {"404": resp("V2NotFound")}
    binary_answer = (
        "With binary output asked for (binary_data_output, or the output's binary_data): the "
        f"JSON answer (V2InferResponseHeader, {HEADER_LENGTH} bytes) followed by the output's "
        "binary_data_size bytes, float32 little-endian."
    )
    return {
        base: {
            "get": operation(
                f"v2ModelMetadata{suffix}",
                "The model's inputs and outputs",
                params,
                {"200": json_content(ref("V2ModelMetadata"), "The model's metadata."), **not_found},
                tags=["v2"],
            )
        },
        f"{base}/ready": {
            "get": operation(
                f"v2ModelReady{suffix}",
                "Model readiness: 200 when the model is served",
                params,
                {"200": {"description": "Ready (no body)."}, **not_found},
                tags=["v2"],
            )
        },
        f"{base}/config": {
            "get": operation(
                f"v2ModelConfig{suffix}",
                "The model's configuration in Triton's form",
                params,
                {
                    "200": json_content(
                        ref("V2ModelConfig"),
                        "A sequence-batching model configuration: x is [-1, input_size] per "
                        "sequence, y [-1, output_size].",
                    ),
                    **not_found,
                },
                tags=["v2"],
            )
        },
        f"{base}/stats": {
            "get": operation(
                f"v2ModelStats{suffix}",
                "The model's request statistics in Triton's form",
                params,
                {
                    "200": json_content(ref("V2ModelStatistics"), "One entry, for this model."),
                    **not_found,
                },
                tags=["v2"],
            )
        },
        f"{base}/infer": {
            "post": operation(
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
                            "application/json": {"schema": ref("V2InferResponse")},
                            "application/octet-stream": {
                                "schema": {
                                    "type": "string",
                                    "contentMediaType": "application/octet-stream",
                                    "description": binary_answer,
                                },
                                "x-inference-header": ref("V2InferResponseHeader"),
                            },
                        },
                    },
                    "400": resp("V2BadRequest"),
                    **not_found,
                    "409": resp("V2Conflict"),
                    "413": resp("V2PayloadTooLarge"),
                    "503": resp("V2Unavailable"),
                },
                requestBody={
                    "required": True,
                    "description": "JSON whatever the Content-Type says; or, with "
                    f"{HEADER_LENGTH}, that many bytes of JSON followed by the inputs' binary "
                    "data in input order. See the 413 response for the size limits.",
                    "content": {
                        "application/json": {
                            "schema": ref("V2InferRequest"),
                            "examples": examples,
                        },
                        "application/octet-stream": {
                            "schema": {
                                "type": "string",
                                "contentMediaType": "application/octet-stream",
                                "description": f"The JSON request ({HEADER_LENGTH} bytes), "
                                "then x's binary_data_size bytes, float32 little-endian.",
                            },
                            "x-inference-header": ref("V2InferRequest"),
                        },
                    },
                },
                tags=["v2"],
            )
        },
    }


def v2_paths(models: dict[str, ServedModel]) -> dict[str, Schema]:
    """The KServe v2 / Open Inference Protocol routes: server, models, inference."""
    model = f"{V2_PREFIX}/models/{{model}}"
    examples = _v2_infer_examples(models)
    return {
        V2_PREFIX: {
            "get": operation(
                "v2ServerMetadata",
                "The server's name, version and protocol extensions",
                [],
                {"200": json_content(ref("V2ServerMetadata"), "The server's metadata.")},
                tags=["v2"],
            )
        },
        f"{V2_PREFIX}/health/live": {
            "get": operation(
                "v2ServerLive",
                "Liveness: 200 while the process runs",
                [],
                {"200": {"description": "Alive (no body)."}},
                tags=["v2"],
            )
        },
        f"{V2_PREFIX}/health/ready": {
            "get": operation(
                "v2ServerReady",
                "Readiness: 200 when Redis answers and the models are loaded",
                [],
                {"200": {"description": "Ready (no body)."}, "503": resp("V2Unavailable")},
                tags=["v2"],
            )
        },
        f"{V2_PREFIX}/repository/index": {
            "post": operation(
                "v2RepositoryIndex",
                "The served models, every one ready",
                [],
                {"200": json_content(ref("V2RepositoryIndex"), "One entry per served model.")},
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
            "get": operation(
                "v2AllModelStats",
                "Every served model's request statistics in Triton's form",
                [],
                {"200": json_content(ref("V2ModelStatistics"), "One entry per served model.")},
                tags=["v2"],
            )
        },
        **_v2_model_paths(model, "", ["Model"], examples),
        **_v2_model_paths(
            f"{model}/versions/{{version}}", "Version", ["Model", "Version"], examples
        ),
    }

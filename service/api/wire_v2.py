"""The KServe v2 (Open Inference Protocol) wire format with Triton's sequence extension: an
inference request parsed into one stream's readings, and its answer.

A request carries one tensor ``x`` of FP32 shaped ``[1, T, input_size]`` (one stream, T steps in
order), as JSON ``data`` or in the binary tensor extension (the first
``Inference-Header-Content-Length`` bytes of the body are the JSON, the tensors follow in input
order). Its ``parameters`` name the stream (``sequence_id``) and may start it afresh
(``sequence_start``), end it (``sequence_end``) and number its steps (``seq``). The answer carries
``y`` shaped ``[1, T, output_size]``, as JSON or binary. The checks here are the ``/v1`` checks in
v2's terms; a violation raises the matching ``ServiceError``.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from typing import Any, NamedTuple

from ..core import jsonio
from ..core.errors import InvalidRequest, InvalidStreamId, InvalidValues, PayloadTooLarge
from ..core.ids import STREAM_ID
from ..step.model import ServedModel
from ..step.plan import SEQ_MAX, Reading, UnitResult
from .wire import kind, parse_body

__all__ = [
    "HEADER_LENGTH",
    "INPUT",
    "OUTPUT",
    "V2Request",
    "infer_response",
    "parse_infer",
    "sequence_stream",
]

HEADER_LENGTH = "Inference-Header-Content-Length"
INPUT, OUTPUT = "x", "y"
SEQUENCE_ID_MAX = 2**64 - 1  # Triton's correlation ids are uint64
_FLOAT32_MAX = 3.4e38


class V2Request(NamedTuple):
    stream: str
    sequence_id: int | str  # as sent, echoed in the answer
    readings: list[Reading]
    start: bool
    end: bool
    binary_output: bool
    request_id: str | None


def sequence_stream(value: object) -> tuple[str, int | str]:
    """The stream a ``sequence_id`` names: integer n is stream ``str(n)``, so that 42 and "42"
    (and ``/v1``'s stream ``42``) are one stream."""
    if value is None:
        raise InvalidRequest(
            "the request has no parameters.sequence_id: every request to this sequence model "
            "names its stream with a non-zero integer or a non-empty string sequence_id"
        )
    if type(value) is int:
        if not 1 <= value <= SEQUENCE_ID_MAX:
            raise InvalidRequest(
                f"sequence_id {value} is out of range: an integer sequence_id is from 1 to "
                f"{SEQUENCE_ID_MAX} (0 means no sequence)"
            )
        return str(value), value
    if isinstance(value, str):
        if value == "":
            raise InvalidRequest(
                'sequence_id "" names no sequence: give a non-empty string or a non-zero integer'
            )
        if not STREAM_ID.fullmatch(value):
            shown = value if len(value) <= 140 else value[:140] + "..."
            raise InvalidStreamId(
                f"sequence_id {shown!r} must be 1 to 128 characters of A-Z a-z 0-9 . _ : -"
            )
        return value, value
    raise InvalidRequest(f"sequence_id must be an unsigned integer or a string, not {kind(value)}")


def _flag(parameters: dict[str, Any], name: str) -> bool:
    value = parameters.get(name, False)
    if type(value) is not bool:
        raise InvalidRequest(f"parameters.{name} must be true or false, not {kind(value)}")
    return value


def _split(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """The JSON part and the binary part of a body."""
    if header_length is None:
        return body, b""
    try:
        n = int(header_length)
    except ValueError:
        n = -1
    if not 0 < n <= len(body):
        raise InvalidRequest(
            f"{HEADER_LENGTH}: {header_length!r} must be the length of the JSON part of the "
            f"body, from 1 to the body's {len(body)} bytes"
        )
    return body[:n], body[n:]


def parse_infer(
    body: bytes, header_length: str | None, model: ServedModel, max_steps: int
) -> V2Request:
    head, binary = _split(body, header_length)
    data = parse_body(head)
    request_id = data.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidRequest(f"id must be a string, not {kind(request_id)}")
    parameters = data.get("parameters", {})
    if type(parameters) is not dict:
        raise InvalidRequest(f"parameters must be an object, not {kind(parameters)}")
    stream, sequence_id = sequence_stream(parameters.get("sequence_id"))
    start = _flag(parameters, "sequence_start")
    end = _flag(parameters, "sequence_end")
    binary_output = _flag(parameters, "binary_data_output")

    rows = _input_rows(data.get("inputs"), binary, model, max_steps)
    steps = len(rows)
    seq = parameters.get("seq")
    if seq is not None and (type(seq) is not int or not 1 <= seq <= SEQ_MAX - steps + 1):
        raise InvalidRequest(
            f"parameters.seq must be a whole number from 1 to {SEQ_MAX} (the request's first "
            f"step; its {steps} step(s) take seq .. seq+{steps - 1}), not {seq!r}"
        )
    if seq is None:
        readings = [Reading(row, None) for row in rows]
    else:
        readings = [Reading(row, seq + k) for k, row in enumerate(rows)]
    binary_output = _outputs(data.get("outputs"), binary_output)
    return V2Request(stream, sequence_id, readings, start, end, binary_output, request_id)


def _input_rows(
    inputs: object, binary: bytes, model: ServedModel, max_steps: int
) -> list[list[float]]:
    """The steps of ``x``, ``input_size`` numbers each (Python floats hold every FP32 and JSON
    number exactly as sent)."""
    if type(inputs) is not list or not inputs:
        raise InvalidRequest(
            f"inputs must be a non-empty list; model {model.name} takes one input, "
            f"'{INPUT}' (FP32 [1, T, {model.input_size}])"
        )
    for item in inputs:
        name = item.get("name") if type(item) is dict else None
        if name != INPUT:
            raise InvalidRequest(
                f"unexpected inference input {name!r} for model {model.name!r}: it takes one "
                f"input, '{INPUT}' (FP32 [1, T, {model.input_size}])"
            )
    if len(inputs) > 1:
        raise InvalidRequest(f"input '{INPUT}' is given {len(inputs)} times; give it once")
    tensor: dict[str, Any] = inputs[0]
    datatype = tensor.get("datatype")
    if datatype != "FP32":
        raise InvalidRequest(
            f"input '{INPUT}' has datatype {datatype!r}; model {model.name} takes FP32"
        )
    shape = tensor.get("shape")
    n_in = model.input_size
    if (
        type(shape) is not list
        or len(shape) != 3
        or not all(type(d) is int and d >= 0 for d in shape)
    ):
        raise InvalidRequest(
            f"input '{INPUT}' has shape {shape!r}; model {model.name} takes [1, T, {n_in}]: "
            "one sequence, T >= 1 steps"
        )
    batch, steps, width = shape
    if batch != 1:
        raise InvalidRequest(
            f"input '{INPUT}' has batch size {batch}: send one sequence per request "
            f"(shape [1, T, {n_in}]); each sequence_id is its own stream"
        )
    if width != n_in or steps < 1:
        raise InvalidRequest(
            f"input '{INPUT}' has shape {shape}; model {model.name} takes [1, T, {n_in}] "
            f"with T >= 1 ({', '.join(model.features)})"
        )
    if steps > max_steps:
        raise PayloadTooLarge(
            f"input '{INPUT}' has {steps} steps; the limit per request is {max_steps}"
        )
    count = steps * n_in
    tensor_parameters = tensor.get("parameters", {})
    if type(tensor_parameters) is not dict:
        raise InvalidRequest(f"input '{INPUT}' parameters must be an object")
    size = tensor_parameters.get("binary_data_size")
    if size is not None:
        if "data" in tensor:
            raise InvalidRequest(f"input '{INPUT}' has both data and binary_data_size")
        if type(size) is not int or size != 4 * count:
            raise InvalidRequest(
                f"input '{INPUT}' has binary_data_size {size!r}; FP32 {shape} is {4 * count} bytes"
            )
        if len(binary) != size:
            raise InvalidRequest(
                f"input '{INPUT}' announces {size} bytes of binary data, and the body has "
                f"{len(binary)} after its JSON part ({HEADER_LENGTH})"
            )
        values = struct.unpack(f"<{count}f", binary)
        if not all(map(math.isfinite, values)):
            bad = next(v for v in values if not math.isfinite(v))
            raise InvalidValues(f"input '{INPUT}' holds {bad}, not a finite number")
        return _rows(values, n_in)
    if binary:
        raise InvalidRequest(
            f"the body has {len(binary)} bytes of binary data after its JSON part, and no "
            "input announces them (binary_data_size)"
        )
    data = tensor.get("data")
    if data is None:
        raise InvalidRequest(f"input '{INPUT}' has neither data nor binary_data_size")
    flat = _flatten(data)
    if len(flat) != count:
        raise InvalidValues(
            f"input '{INPUT}' has {len(flat)} value(s); shape {shape} holds {count}"
        )
    return _rows(flat, n_in)


def _rows(values: Sequence[float], width: int) -> list[list[float]]:
    if width == 1:
        return [[v] for v in values]
    return [list(values[k : k + width]) for k in range(0, len(values), width)]


def _flatten(data: object) -> list[float]:
    """The numbers of a flat or nested list, in row-major order; each checked to be a finite
    FP32 number."""
    out: list[float] = []
    pending = [data]
    while pending:
        item = pending.pop()
        if type(item) is list:
            pending.extend(reversed(item))
            continue
        if type(item) is not float and type(item) is not int:
            raise InvalidValues(f"input '{INPUT}' holds {kind(item)}, not a number")
        # float() of an integer beyond any double raises; such an integer is out of range anyway
        value = float(item) if type(item) is float or abs(item) <= _FLOAT32_MAX else math.inf
        if not math.isfinite(value) or abs(value) > _FLOAT32_MAX:
            raise InvalidValues(f"input '{INPUT}' holds {item!r}, not a finite FP32 number")
        out.append(value)
    return out


def _outputs(outputs: object, binary_default: bool) -> bool:
    """Whether ``y`` goes back as binary data."""
    if outputs is None:
        return binary_default
    if type(outputs) is not list:
        raise InvalidRequest(f"outputs must be a list, not {kind(outputs)}")
    binary = binary_default
    for item in outputs:
        name = item.get("name") if type(item) is dict else None
        if name != OUTPUT:
            raise InvalidRequest(
                f"unexpected inference output {name!r}: the model's one output is '{OUTPUT}'"
            )
        parameters = item.get("parameters", {})
        if type(parameters) is not dict:
            raise InvalidRequest(f"output '{OUTPUT}' parameters must be an object")
        if parameters.get("classification"):
            raise InvalidRequest(
                f"output '{OUTPUT}' is a regression, not a classification: drop the "
                "classification parameter"
            )
        if "binary_data" in parameters:
            binary = _flag(parameters, "binary_data")
    return binary


def infer_response(
    model: ServedModel, request: V2Request, result: UnitResult
) -> tuple[bytes, int | None]:
    """The answer's body, and the length of its JSON part when binary data follows it."""
    predictions = [p for _, p in result.results]
    steps = len(predictions)
    output: dict[str, Any] = {
        "name": OUTPUT,
        "datatype": "FP32",
        "shape": [1, steps, model.output_size],
    }
    tail = b""
    if request.binary_output:
        flat = [v for row in predictions for v in row]
        tail = struct.pack(f"<{len(flat)}f", *flat)
        output["parameters"] = {"binary_data_size": len(tail)}
    else:
        output["data"] = [v for row in predictions for v in row]
    answer: dict[str, Any] = {"model_name": model.name, "model_version": "1"}
    if request.request_id is not None:
        answer["id"] = request.request_id
    answer["parameters"] = {
        "sequence_id": request.sequence_id,
        "sequence_start": request.start,
        "sequence_end": request.end,
        "stream": request.stream,
        "generation": result.generation,
        "seq": result.results[-1][0],
        "duplicate": result.duplicate,
    }
    answer["outputs"] = [output]
    head = jsonio.dumps(answer)
    if not tail:
        return head, None
    return head + tail, len(head)

"""The /v1 wire format: request bodies parsed into readings, results and state into JSON.

Bodies are parsed as JSON whatever their Content-Type says. Every rule a reading must obey is
checked here, before anything is queued, and a violation raises the matching ``ServiceError``:
``values`` is a list of exactly ``input_size`` finite numbers; ``seq`` a whole number from 1 to
2^63-1, given on every reading of a request or on none, strictly increasing; ``ts`` a finite number
or a short string; no unknown fields.
"""

from __future__ import annotations

import itertools
import math
from datetime import UTC, datetime
from typing import Any

from ..core import jsonio
from ..core.errors import (
    InvalidRequest,
    InvalidStreamId,
    InvalidValues,
    PayloadTooLarge,
    ServiceError,
)
from ..core.ids import check_stream_id
from ..step.model import ServedModel
from ..step.plan import SEQ_MAX, Reading, UnitResult
from ..step.record import StreamState

__all__ = [
    "kind",
    "parse_body",
    "parse_bulk_item",
    "parse_stream_readings",
    "parse_what_if_readings",
    "rfc3339",
    "state_json",
    "unit_json",
]

_READING_FIELDS = frozenset({"values", "seq", "ts"})
_FLOAT32_MAX = 3.4e38  # a value beyond this cannot be a float32


def parse_body(body: bytes) -> dict[str, Any]:
    if not body.strip():
        raise InvalidRequest("the request body is empty; send a JSON object")
    try:
        data = jsonio.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"the request body is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise InvalidRequest(f"the request body must be a JSON object, not {kind(data)}")
    return data


def kind(value: object) -> str:
    """How an error message names a JSON value's type."""
    return {
        dict: "an object",
        list: "an array",
        str: "a string",
        bool: "a boolean",
        type(None): "null",
    }.get(type(value), "a number")


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _reading(item: object, where: str, model: ServedModel) -> Reading:
    # The common case first, checked with few operations: {"values": [numbers]} with at most
    # a plain seq and ts. Anything else goes through the checks that name what is wrong.
    if type(item) is dict and _READING_FIELDS.issuperset(item):
        values = item.get("values")
        seq = item.get("seq")
        ts = item.get("ts")
        if (
            type(values) is list
            and len(values) == model.input_size
            and all(
                (type(v) is float or type(v) is int) and -_FLOAT32_MAX <= v <= _FLOAT32_MAX
                for v in values
            )
            and (seq is None or (type(seq) is int and 1 <= seq <= SEQ_MAX))
            and (ts is None or (type(ts) is str and len(ts) <= 64))
        ):
            return Reading([float(v) for v in values], seq, ts)
    return _checked_reading(item, where, model)


def _checked_reading(item: object, where: str, model: ServedModel) -> Reading:
    if not isinstance(item, dict):
        raise InvalidRequest(f"{where} must be an object with 'values', not {kind(item)}")
    unknown = set(item) - _READING_FIELDS
    if unknown:
        raise InvalidRequest(
            f"{where} has unknown field(s) {', '.join(sorted(map(repr, unknown)))}; "
            "a reading has 'values', 'seq' and 'ts'"
        )
    if "values" not in item:
        raise InvalidRequest(f"{where} has no 'values'")
    values = item["values"]
    n = model.input_size
    if not isinstance(values, list):
        raise InvalidValues(
            f"{where}.values must be a list of {n} number(s) ({', '.join(model.features)}), "
            f"not {kind(values)}"
        )
    if len(values) != n:
        raise InvalidValues(
            f"{where}.values has {len(values)} number(s); model {model.name} takes {n} "
            f"({', '.join(model.features)})"
        )
    floats: list[float] = []
    for k, v in enumerate(values):
        if not _is_number(v):
            raise InvalidValues(f"{where}.values[{k}] is {kind(v)}, not a number")
        # float() of an integer beyond any double raises; such an integer is out of range anyway
        f = float(v) if type(v) is float or abs(v) <= _FLOAT32_MAX else math.inf
        if not math.isfinite(f) or abs(f) > _FLOAT32_MAX:
            raise InvalidValues(f"{where}.values[{k}] = {v!r} is not a finite float32 number")
        floats.append(f)
    seq = item.get("seq")
    if seq is not None and (
        not isinstance(seq, int) or isinstance(seq, bool) or not 1 <= seq <= SEQ_MAX
    ):
        raise InvalidRequest(f"{where}.seq must be a whole number from 1 to {SEQ_MAX}, not {seq!r}")
    ts = item.get("ts")
    if ts is not None and not (
        (_is_number(ts) and math.isfinite(float(ts))) or (isinstance(ts, str) and len(ts) <= 64)
    ):
        raise InvalidRequest(f"{where}.ts must be a number (Unix seconds) or a short string")
    return Reading(floats, seq, ts)


def _check_seqs(readings: list[Reading], where: str) -> None:
    if len(readings) == 1:
        return
    given = [r.seq for r in readings if r.seq is not None]
    if given and len(given) != len(readings):
        raise InvalidRequest(f"{where}: give 'seq' on every reading or on none")
    for a, b in itertools.pairwise(given):
        if b <= a:
            raise InvalidRequest(f"{where}: seqs must increase (got {a} then {b})")


def _many(
    data: dict[str, Any], where: str, model: ServedModel, max_readings: int, extra: set[str]
) -> list[Reading]:
    if "readings" in data:
        unknown = set(data) - {"readings"} - extra
        if unknown:
            raise InvalidRequest(
                f"{where} has 'readings' and also {', '.join(sorted(map(repr, unknown)))}; "
                "put each reading's fields inside 'readings'"
            )
        items = data["readings"]
        if not isinstance(items, list) or not items:
            raise InvalidRequest(f"{where}.readings must be a non-empty list of readings")
        if len(items) > max_readings:
            raise PayloadTooLarge(
                f"{where} has {len(items)} readings; the limit per request is {max_readings}"
            )
        readings = [_reading(r, f"{where}.readings[{k}]", model) for k, r in enumerate(items)]
    else:
        reading_only = {k: v for k, v in data.items() if k not in extra}
        readings = [_reading(reading_only, where, model)]
    _check_seqs(readings, where)
    return readings


def parse_stream_readings(
    data: dict[str, Any], model: ServedModel, max_readings: int
) -> list[Reading]:
    """``{"values", "seq"?, "ts"?}`` or ``{"readings": [...]}`` for one stream."""
    return _many(data, "body", model, max_readings, set())


def parse_bulk_item(
    item: object, index: int, model: ServedModel, max_readings: int
) -> tuple[str, list[Reading]]:
    """One item of a bulk request: ``{"stream", "values", ...}`` or ``{"stream", "readings"}``."""
    where = f"readings[{index}]"
    if not isinstance(item, dict):
        raise InvalidRequest(f"{where} must be an object with 'stream' and 'values'")
    stream = item.get("stream")
    if not isinstance(stream, str):
        raise InvalidStreamId(f"{where}.stream must be a string stream id")
    check_stream_id(stream)
    return stream, _many(item, where, model, max_readings, {"stream"})


def parse_what_if_readings(items: object, where: str, model: ServedModel) -> list[Reading]:
    """A forecast's what-if ``readings``: a non-empty list of readings as posting takes them.
    Their seqs are not checked (nothing is stored)."""
    if not isinstance(items, list) or not items:
        raise InvalidRequest(f"{where} must be a non-empty list of readings")
    return [_reading(r, f"{where}[{k}]", model) for k, r in enumerate(items)]


def unit_json(result: UnitResult) -> dict[str, Any]:
    out: dict[str, Any] = {
        "generation": result.generation,
        "results": [{"seq": seq, "prediction": pred} for seq, pred in result.results],
    }
    if result.duplicate:
        out["duplicate"] = True
    return out


def error_json(error: ServiceError) -> dict[str, Any]:
    return {"error": error.to_json()}


def rfc3339(unix_s: float) -> str:
    return (
        datetime.fromtimestamp(unix_s, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def state_json(
    model: ServedModel, stream: str, state: StreamState, pttl_ms: int, now_s: float
) -> dict[str, Any]:
    return {
        "stream": stream,
        "model": model.name,
        "model_version": state.model_version,
        "generation": state.generation,
        "seq": state.seq,
        "updated_at": rfc3339(state.updated_at),
        "last_prediction": state.last_prediction(),
        "expires_at": rfc3339(now_s + pttl_ms / 1000) if pttl_ms >= 0 else None,
    }

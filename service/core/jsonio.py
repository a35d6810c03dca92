"""JSON in and out of the service, through orjson.

orjson parses and writes several times faster than the standard library, which shows on the bulk
path (bench/README.md). It refuses the literals ``NaN`` and ``Infinity`` and numbers that overflow
a double (``1e999``), which the standard library accepts; a body orjson refuses is parsed again by
the standard library, so that such values reach validation and are refused as ``invalid_values``
naming the value, as before, rather than as unreadable JSON. Only bad bodies pay for that.
"""

from __future__ import annotations

import json
import os
from typing import Any

import orjson

__all__ = ["dumps", "loads"]

_STDLIB = os.environ.get("LSTM_BENCH_JSON") == "stdlib"


def loads(raw: bytes | str) -> Any:
    """Parse JSON; raises ValueError (UnicodeDecodeError included) when it is not JSON, or is
    nested deeper than the parsers go (orjson refuses it; the standard library recurses)."""
    if not _STDLIB:
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
    try:
        return json.loads(raw)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def dumps(data: Any) -> bytes:
    """Compact JSON as bytes."""
    if _STDLIB:
        return json.dumps(data, separators=(",", ":")).encode()
    return orjson.dumps(data)

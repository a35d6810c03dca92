"""Log records as one JSON object per line (or plain text for a terminal), with the request id.

Every record carries ``ts`` (RFC 3339, UTC, milliseconds), ``level``, ``logger`` and ``msg``, then
the fields given with ``extra=`` and the process's own fields (a worker's index), and
``request_id`` when it was logged while serving a request. The request id lives in a context
variable set by the access-log middleware, so records logged anywhere under a request carry it
without being handed it. A traceback goes into ``exc`` as one string.

What never goes into a record: the Redis password (messages use ``Settings.redis_url_redacted``)
and the values of readings (nothing logs request bodies; keep it that way at info level).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Mapping
from contextvars import ContextVar
from typing import Any

__all__ = ["REQUEST_ID", "JsonFormatter", "TextFormatter", "configure_logging"]

REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


# The access log writes a record per request, so the per-record work is kept small: the date is
# formatted once per second, and one encoder serves every record.
_second: list[Any] = [-1, ""]
# default=str: an odd extra value degrades to its text instead of losing the line.
_ENCODER = json.JSONEncoder(ensure_ascii=False, default=str)


def _timestamp(created: float) -> str:
    seconds = int(created)
    if seconds != _second[0]:
        _second[:] = [seconds, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))]
    millis = int((created - seconds) * 1000)
    return f"{_second[1]}.{millis:03d}Z"


def _fields(record: logging.LogRecord, static: Mapping[str, Any]) -> dict[str, Any]:
    """The record's extra fields, the process's fields and the request id."""
    fields = {k: v for k, v in record.__dict__.items() if k not in _STANDARD}
    fields.update(static)
    request_id = REQUEST_ID.get()
    if request_id is not None:
        fields.setdefault("request_id", request_id)
    return fields


class JsonFormatter(logging.Formatter):
    def __init__(self, static: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.static = dict(static or {})

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(_fields(record, self.static))
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return _ENCODER.encode(entry)


class TextFormatter(logging.Formatter):
    """``ts level logger: msg key=value ...`` for reading in a terminal."""

    def __init__(self, static: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.static = dict(static or {})

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_timestamp(record.created)} {record.levelname} {record.name}: "
        line += record.getMessage()
        fields = _fields(record, self.static)
        if fields:
            line += " " + " ".join(f"{k}={v}" for k, v in fields.items())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def configure_logging(level: str, fmt: str, static: Mapping[str, Any] | None = None) -> None:
    """Send every record (ours, aiohttp's, asyncio's) to stderr in ``fmt`` (json or text)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(static) if fmt == "json" else TextFormatter(static))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # No formatter here shows thread or process names; not collecting them saves work per record.
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False

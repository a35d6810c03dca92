"""Log records as one JSON object per line (or plain text for a terminal), with the request id.

Every record carries ``ts`` (RFC 3339, UTC, milliseconds), ``level``, ``logger`` and ``msg``, then
the fields given with ``extra=`` and the process's own fields (a worker's index), and
``request_id`` when it was logged while serving a request. The request id lives in a context
variable set by the access-log middleware, so records logged anywhere under a request carry it
without being handed it. A traceback goes into ``exc`` as one string.

What never goes into a record: the Redis password (messages use ``Settings.redis_url_redacted``)
and the values of readings (nothing logs request bodies; keep it that way at info level).

A client's fault is one warning line, never an error with a traceback: otherwise any client could
flood the error log. aiohttp logs a request it cannot parse (a header or request line over the
limit, a malformed request line or header, a broken chunk) at error level with a traceback;
``ClientFaultFilter`` turns that record into one warning naming the fault, without the client's
bytes (``describe_client_fault``).
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Mapping
from contextvars import ContextVar
from typing import Any

from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

__all__ = [
    "REQUEST_ID",
    "ClientFaultFilter",
    "JsonFormatter",
    "TextFormatter",
    "configure_logging",
    "describe_client_fault",
]

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


def describe_client_fault(exc: BaseException) -> str | None:
    """``Kind: what went wrong`` when ``exc`` is a client's fault in an HTTP request (one that
    cannot be parsed, a body that cannot be read, a connection lost while reading it), else None.
    One line, without the client's bytes: aiohttp's messages quote them after a colon."""
    if isinstance(exc, RequestPayloadError) and isinstance(exc.__cause__, HttpProcessingError):
        exc = exc.__cause__  # the body's own fault (an encoding, the framing)
    if isinstance(exc, HttpProcessingError):
        if not 400 <= (exc.code or 400) < 500:
            return None
        text = exc.message
    elif isinstance(exc, RequestPayloadError):
        text = str(exc)
    elif isinstance(exc, ConnectionResetError):
        text = "the connection was lost while the request was read"
    else:
        return None
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    if lines and re.fullmatch(r"\d{3}, message:", lines[0]):
        lines = lines[1:]  # an HttpProcessingError's text, wrapped
    what = lines[0].split(":")[0].strip() if lines else ""
    return f"{type(exc).__name__}: {what or 'no detail'}"[:200]


class ClientFaultFilter(logging.Filter):
    """On aiohttp's server logger: a request a client got wrong becomes one warning line.

    aiohttp reports an unparseable request as ``Error handling request from <address>`` at error
    level with the exception; that record is rewritten to a warning naming the fault. Its
    ``Unhandled exception`` about a request body (read again after the answer, to drain it) is
    dropped: the service logged that body already when it could not read it (``read_body``), or
    never needed it. Records of anything else pass unchanged."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is None or record.levelno < logging.ERROR:
            return True
        fault = describe_client_fault(exc)
        if fault is None:
            return True
        if record.msg == "Unhandled exception":
            return False
        remote = record.args[0] if isinstance(record.args, tuple) and record.args else "unknown"
        record.msg, record.args = "bad HTTP request from %s: %s", (remote, fault)
        record.levelno, record.levelname = logging.WARNING, logging.getLevelName(logging.WARNING)
        record.exc_info, record.exc_text = None, None
        return logging.getLogger(record.name).isEnabledFor(logging.WARNING)


def configure_logging(level: str, fmt: str, static: Mapping[str, Any] | None = None) -> None:
    """Send every record (ours, aiohttp's, asyncio's) to stderr in ``fmt`` (json or text); a
    client's fault that aiohttp reports becomes one warning line (``ClientFaultFilter``)."""
    server = logging.getLogger("aiohttp.server")
    for old_filter in list(server.filters):
        if isinstance(old_filter, ClientFaultFilter):
            server.removeFilter(old_filter)
    server.addFilter(ClientFaultFilter())
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

"""The request id of every HTTP request, and one access-log record per request.

A client's ``X-Request-Id`` is kept when it is well formed (1 to 128 of ``A-Z a-z 0-9 . _ : / + =
-``), else a fresh one is made; either way it is echoed in the response's ``X-Request-Id`` and
carried by every log record written while the request is served. The access record says method,
route template (never the path, so no stream id), status and duration; never the body.
``--access-log off`` drops the access records (about 15% of throughput at full CPU, measured
with bench/bench_service.py) and keeps the request ids.
"""

from __future__ import annotations

import itertools
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from ..core.logs import REQUEST_ID
from .app_keys import SETTINGS

__all__ = ["access_log_middleware", "echo_request_id"]

log = logging.getLogger("service.access")

_WELL_FORMED = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# A request id is 16 hex digits: 8 random per process, then a counter. Unique within the process
# and, with overwhelming likelihood, across processes, without a system call per request (drawing
# 8 random bytes per request cost more than the rest of this middleware).
_ID_PREFIX = secrets.token_hex(4)
_ID_COUNTER = itertools.count()


def _new_request_id() -> str:
    return f"{_ID_PREFIX}{next(_ID_COUNTER) & 0xFFFFFFFF:08x}"


@web.middleware
async def access_log_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    given = request.headers.get("X-Request-Id")
    request_id = given if given is not None and _WELL_FORMED.fullmatch(given) else None
    REQUEST_ID.set(request_id or _new_request_id())  # each request runs in its own task
    start = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:  # a redirect or the like, passed through on purpose
        status = exc.status
        raise
    finally:
        if request.app[SETTINGS].access_log == "on" and log.isEnabledFor(logging.INFO):
            resource = request.match_info.route.resource
            route = resource.canonical if resource is not None else "unmatched"
            duration_ms = round((time.perf_counter() - start) * 1000, 3)
            log.info(
                "%s %s %d",
                request.method,
                route,
                status,
                extra={
                    "method": request.method,
                    "route": route,
                    "status": status,
                    "duration_ms": duration_ms,
                },
            )


async def echo_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: every response, streamed ones too, says its request id."""
    request_id = REQUEST_ID.get()
    if request_id is not None:
        response.headers["X-Request-Id"] = request_id

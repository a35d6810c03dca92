"""Cross-origin access (CORS), so that a dashboard served from another origin can call the API and
subscribe to events from a browser.

Off unless ``--cors-origin`` names origins. A response to a request from an allowed origin says so
(``Access-Control-Allow-Origin``); the headers are added as each response is prepared, which
covers event streams, whose headers go out before the handler returns. A browser's preflight
(``OPTIONS`` with ``Access-Control-Request-Method``) is answered here: 204 with what is allowed,
or 403 for an origin that is not.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

__all__ = ["add_cors"]

ALLOWED_METHODS = "GET, POST, DELETE"
ALLOWED_HEADERS = {"authorization", "content-type", "last-event-id", "x-request-id"}
EXPOSED_HEADERS = "Retry-After, WWW-Authenticate, X-Request-Id"
PREFLIGHT_MAX_AGE_S = 600

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def add_cors(app: web.Application, origins: tuple[str, ...]) -> None:
    if not origins:
        return
    allow_any = "*" in origins
    allowed = set(origins)

    def allowed_origin(request: web.Request) -> str | None:
        origin = request.headers.get("Origin")
        if origin is None or not (allow_any or origin in allowed):
            return None
        return "*" if allow_any else origin

    @web.middleware
    async def preflight(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method != "OPTIONS" or "Access-Control-Request-Method" not in request.headers:
            return await handler(request)
        origin = allowed_origin(request)
        if origin is None:
            return web.json_response(
                {
                    "error": {
                        "code": "origin_not_allowed",
                        "message": f"origin {request.headers.get('Origin')!r} may not call this "
                        "API; the service allows the origins given with --cors-origin",
                    }
                },
                status=403,
            )
        asked = {
            h.strip().lower()
            for h in request.headers.get("Access-Control-Request-Headers", "").split(",")
            if h.strip()
        }
        response = web.Response(status=204)
        response.headers["Access-Control-Allow-Methods"] = ALLOWED_METHODS
        response.headers["Access-Control-Allow-Headers"] = ", ".join(
            sorted(asked & ALLOWED_HEADERS)
        )
        response.headers["Access-Control-Max-Age"] = str(PREFLIGHT_MAX_AGE_S)
        return response

    async def on_prepare(request: web.Request, response: web.StreamResponse) -> None:
        origin = allowed_origin(request)
        if origin is None:
            return
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
        if not allow_any:
            response.headers["Vary"] = "Origin"

    app.middlewares.insert(0, preflight)
    app.on_response_prepare.append(on_prepare)

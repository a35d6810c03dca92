"""``create_app(settings)``: routes, the middlewares and every resource's lifetime.

Middlewares, outermost first: CORS preflights (with ``--cors-origin``), request ids and the access
log, the error middleware (every error's JSON form), then authentication (with ``--auth-tokens``
or ``--metrics-token-file``), which so answers 401 and 403 before a handler reads a body or checks
the queue.

Resources open in ``cleanup_ctx`` in dependency order (Redis, the event hub, the batcher, the
expiry watcher, which hands expired streams to the batcher, and the token files' watch) and close
in reverse: on shutdown the expiry watcher stops and event subscriptions end first (each told
why), the batcher stops admitting and answers everything it admitted, and only then is Redis
closed (and a private server stopped).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import CONTENT_TYPE_LATEST

from ..api.access_log import access_log_middleware, echo_request_id
from ..api.app_keys import BATCHER, HUB, METRICS, MODELS, SETTINGS, STORE
from ..api.authn import AUTHENTICATOR, Authenticator
from ..api.cors import add_cors
from ..api.openapi import openapi_json
from ..api.routes_events import add_event_routes
from ..api.routes_forecast import add_forecast_routes
from ..api.routes_subscriptions import add_subscription_routes
from ..api.routes_v1 import add_routes, json_response
from ..api.routes_v2 import V2_PREFIX, add_v2_routes
from ..api.wire import error_json
from ..core.errors import RedisUnavailable, ServiceError
from ..core.metrics import Metrics
from ..core.settings import Settings
from ..push.event_hub import EventHub
from ..step.batcher import Batcher
from ..step.expiry import ExpiryWatcher
from ..step.model import ServedModel, load_models
from ..step.state_store import StateStore
from .embedded_redis import EmbeddedRedis

__all__ = ["create_app", "reload_on_signal"]

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Codes for errors aiohttp raises itself (unknown path, wrong method).
_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}
HEADER_FIELD_MAX_BYTES = 64 * 1024


def _error_response(error: ServiceError, retry_after_s: int, v2: bool) -> web.Response:
    body = {"error": error.message} if v2 else error_json(error)
    response = json_response(body, status=error.status)
    if error.retryable:
        response.headers["Retry-After"] = str(retry_after_s)
    response.headers.update(error.headers())
    return response


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every error into ``{"error": {"code", "message"}}`` (under /v2, KServe v2's
    ``{"error": "message"}``) and time every request."""
    start = time.perf_counter()
    settings = request.app[SETTINGS]
    code: str | None = None  # the error answered, if any
    try:
        response = await handler(request)
    except ServiceError as exc:
        code = exc.code
        response = _error_response(exc, settings.retry_after_s, _is_v2(request))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "invalid_request")
        message = exc.reason
        if isinstance(exc, web.HTTPMethodNotAllowed):
            allowed = ", ".join(sorted(exc.allowed_methods))
            message = f"{request.method} is not allowed on {request.path}; allowed: {allowed}"
        elif exc.status == 404:
            message = f"no such path: {request.path}"
        error = message if _is_v2(request) else {"code": code, "message": message}
        response = json_response({"error": error}, exc.status)
        if "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        code = "internal_error"
        message = "internal error; see the logs"
        error = message if _is_v2(request) else {"code": code, "message": message}
        response = json_response({"error": error}, status=500)
    route = request.match_info.route.resource
    template = route.canonical if route is not None else "unmatched"
    metrics = request.app[METRICS]
    metrics.observe_request(template, request.method, response.status, time.perf_counter() - start)
    if code is not None:
        metrics.http_errors.labels(code).inc()
    return response


def _is_v2(request: web.Request) -> bool:
    path = request.path
    return path.startswith(V2_PREFIX) and (len(path) == len(V2_PREFIX) or path[3] == "/")


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "alive"})


async def readyz(request: web.Request) -> web.Response:
    await request.app[STORE].ping()  # raises RedisUnavailable -> 503
    models = request.app[MODELS]
    return json_response({"status": "ready", "models": sorted(models)})


async def metrics_endpoint(request: web.Request) -> web.Response:
    """The metrics, after a PING of Redis for ``lstm_redis_up``: so the scrape itself says
    whether Redis answers, with or without traffic (it waits up to --redis-timeout-s for it)."""
    metrics = request.app[METRICS]
    try:
        await request.app[STORE].ping()
    except RedisUnavailable:
        metrics.redis_up.set(0)
    else:
        metrics.redis_up.set(1)
    body = metrics.exposition()
    response = web.Response(body=body)
    response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
    response.charset = "utf-8"
    return response


async def redis_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    embedded: EmbeddedRedis | None = None
    url = settings.redis_url
    if url is None:
        embedded = EmbeddedRedis(settings.redis_dir, settings.redis_server)
        await asyncio.to_thread(embedded.start)
        url = embedded.url
        log.info("Redis: %s", embedded.description)
    else:
        log.info("Redis: %s", settings.redis_url_redacted)
    store = StateStore(
        url,
        settings.key_prefix,
        app[METRICS],
        settings.redis_timeout_s,
        settings.durability,
        settings.durability_timeout_ms,
    )
    app[STORE] = store
    try:
        await _check_durability(store)
        yield
    finally:
        await store.close()
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)


async def _check_durability(store: StateStore) -> None:
    """Refuse to start on a Redis that cannot give ``--durability`` (DurabilityError, one line
    why); warn when it cannot yet. A Redis that does not answer is not checked here: the service
    starts as it always does, and each batch's confirmation tells (503 until it confirms)."""
    try:
        warning = await store.check_durability()
    except RedisUnavailable:
        log.warning(
            "Redis did not answer at start-up, so whether it can give --durability %s is not "
            "checked: readings are answered 503 until it confirms them",
            store.durability,
        )
        return
    if warning is not None:
        log.warning("%s", warning)
    elif store.durability.level != "memory":
        log.info("durability: %s, checked once per batch", store.durability)


async def hub_ctx(app: web.Application) -> AsyncIterator[None]:
    hub = EventHub(app[STORE], app[METRICS], app[SETTINGS].subscriber_buffer_events)
    app[HUB] = hub
    try:
        yield
    finally:
        await hub.close()


async def end_subscriptions(app: web.Application) -> None:
    # Runs when the server stops accepting, before it waits for handlers to finish: event
    # streams would otherwise hold the shutdown until its timeout.
    app[HUB].end_subscriptions()


async def expiry_ctx(app: web.Application) -> AsyncIterator[None]:
    store, models = app[STORE], app[MODELS]
    # every tenant's state keys of every served model
    globs = [glob for name in models for glob in store.state_key_globs(name)]
    watcher = ExpiryWatcher(
        store.clients,
        globs,
        store.parse_state_key,
        app[METRICS],
        on_expired=app[BATCHER].streams_expired,
    )
    task = asyncio.create_task(watcher.run(), name="expiry-watcher")
    try:
        yield
    finally:
        await watcher.stop(task)


async def batcher_ctx(app: web.Application) -> AsyncIterator[None]:
    batcher = Batcher(app[STORE], app[SETTINGS], app[METRICS])
    registry = app[AUTHENTICATOR].registry if AUTHENTICATOR in app else None
    if registry is not None:
        # max_streams per tenant, read from the tokens file as it is now (reloads included)
        batcher.stream_limit = registry.limit
    app[BATCHER] = batcher
    task = asyncio.create_task(batcher.run(), name="batcher")
    try:
        yield
    finally:
        batcher.close()
        try:
            await asyncio.wait_for(task, timeout=30)
        except TimeoutError:
            log.error("the batcher did not drain its queue within 30 s; stopping it")


async def token_files_ctx(app: web.Application) -> AsyncIterator[None]:
    """Check the token files for changes while the app runs (``Authenticator.watch_files``)."""
    task = asyncio.create_task(app[AUTHENTICATOR].watch_files(), name="token-files")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def reload_on_signal(app: web.Application) -> None:
    """SIGHUP: read the token files again now, whatever their metadata says."""
    authenticator = app.get(AUTHENTICATOR)
    if authenticator is None:
        log.info("SIGHUP: nothing to reload (no --auth-tokens, no --metrics-token-file)")
        return
    authenticator.reload(force=True, trigger="SIGHUP")


def create_app(
    settings: Settings,
    metrics: Metrics | None = None,
    models: dict[str, ServedModel] | None = None,
    *,
    watch_expiry: bool = True,
) -> web.Application:
    """The application; loads the models and token files now, so that a bad model directory or
    tokens file fails before listening (a ValueError naming it).

    ``watch_expiry``: count expired streams (``expiry.py``); exactly one process per replica
    should, so workers other than the first pass False.
    """
    authenticator = Authenticator.from_settings(settings)
    middlewares: list[Middleware] = [access_log_middleware, error_middleware]
    if authenticator is not None:
        middlewares.append(authenticator.middleware())
    app = web.Application(
        client_max_size=settings.body_max_bytes,
        middlewares=middlewares,
        # A multi-stream subscriber's Last-Event-ID is a cursor naming each of its streams
        # (routes_subscriptions.py): more than aiohttp's default 8 KiB header field.
        handler_args={"max_field_size": HEADER_FIELD_MAX_BYTES},
    )
    app.on_response_prepare.append(echo_request_id)
    app[SETTINGS] = settings
    app[METRICS] = metrics if metrics is not None else Metrics()
    served = (
        models if models is not None else load_models(settings.models, settings.inference_threads)
    )
    app[MODELS] = served
    if settings.default_model is not None and settings.default_model not in served:
        raise ValueError(
            f"--default-model {settings.default_model!r} is not among the served models "
            f"({', '.join(sorted(served))})"
        )
    for model in served.values():
        app[METRICS].model_info.labels(model.name, model.version).set(1)
        app[METRICS].model_stats.register(model.name)
        app[METRICS].streams_expired.labels(model.name)
    app.cleanup_ctx.append(redis_ctx)
    app.cleanup_ctx.append(hub_ctx)
    app.cleanup_ctx.append(batcher_ctx)
    if watch_expiry and settings.state_ttl_s > 0:
        app.cleanup_ctx.append(expiry_ctx)
    app.on_shutdown.append(end_subscriptions)
    if authenticator is not None:
        app[AUTHENTICATOR] = authenticator
        app.cleanup_ctx.append(token_files_ctx)
    add_cors(app, settings.cors_origins)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_endpoint)
    app.router.add_get("/openapi.json", openapi_json)
    add_routes(app)
    add_forecast_routes(app)
    add_event_routes(app)
    add_subscription_routes(app)
    add_v2_routes(app)
    if authenticator is not None:
        authenticator.classify(app.router)  # every route's rule, or a LookupError naming it
    return app

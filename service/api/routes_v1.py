"""The native REST API under /v1: thin handlers that validate, enqueue and await the batcher.

No handler writes stream state; only the batcher does, so a client that goes away mid-request can
never leave half a write. Reads (GET state) and ending a stream (DELETE) go to Redis directly: both
are single atomic commands, and a batch racing with a DELETE loses its compare-and-set and starts
the stream's next generation instead.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from ..core import jsonio
from ..core.errors import (
    InvalidRequest,
    ModelNotFound,
    PayloadTooLarge,
    ServiceError,
    StreamNotFound,
)
from ..core.ids import check_stream_id
from ..core.logs import describe_client_fault
from ..step.model import ServedModel
from ..step.plan import Ticket, Unit, UnitResult
from ..step.record import StreamState
from .app_keys import BATCHER, MODELS, SETTINGS, STORE, tenant_of
from .authn import charge_readings
from .wire import (
    error_json,
    parse_body,
    parse_bulk_item,
    parse_stream_readings,
    state_json,
    unit_json,
)

__all__ = ["add_routes", "default_model_name", "json_response", "model_for", "read_body"]

log = logging.getLogger(__name__)


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=jsonio.dumps(data),
        status=status,
        content_type="application/json",
    )


def default_model_name(app: web.Application) -> str | None:
    """The model the short paths address: the only one served, or ``--default-model``."""
    models = app[MODELS]
    if app[SETTINGS].default_model is not None:
        return app[SETTINGS].default_model
    return next(iter(models)) if len(models) == 1 else None


def model_for(request: web.Request) -> ServedModel:
    models = request.app[MODELS]
    name = request.match_info.get("model")
    if name is None:
        name = default_model_name(request.app)
        if name is None:
            raise ModelNotFound(
                f"{len(models)} models are served ({', '.join(sorted(models))}) and no default "
                "is set: use /v1/models/{model}/... or start with --default-model"
            )
    model = models.get(name)
    if model is None:
        raise ModelNotFound(
            f"no model named {name!r} is served; served: {', '.join(sorted(models))}"
        )
    return model


async def read_body(request: web.Request) -> bytes:
    """The request's body; over ``--body-max-bytes``, PayloadTooLarge. A body that cannot be read
    (a content encoding that does not decode, broken chunks, the connection lost halfway) is the
    client's fault: one warning line, and InvalidRequest."""
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        limit = request.app[SETTINGS].body_max_bytes
        raise PayloadTooLarge(f"the request body is over the limit of {limit} bytes") from None
    except (RequestPayloadError, ConnectionResetError) as exc:
        fault = describe_client_fault(exc) or type(exc).__name__
        route = request.match_info.route.resource
        template = route.canonical if route is not None else "unmatched"
        log.warning(
            "unreadable request body of %s %s from %s: %s",
            request.method,
            template,
            request.remote,
            fault,
        )
        raise InvalidRequest(f"the request body could not be read ({fault})") from None


async def _body(request: web.Request) -> dict[str, Any]:
    return parse_body(await read_body(request))


async def post_readings(request: web.Request) -> web.Response:
    model = model_for(request)
    stream = check_stream_id(request.match_info["stream"])
    request.app[BATCHER].check_room()
    data = await _body(request)
    readings = parse_stream_readings(data, model, request.app[SETTINGS].request_max_readings)
    charge_readings(request, len(readings))
    future: asyncio.Future[UnitResult] = asyncio.get_running_loop().create_future()
    unit = Unit(model, stream, readings, future, tenant=tenant_of(request))
    request.app[BATCHER].submit([unit])
    # shield: if the client goes away, the queued step still happens (answered into the void), and
    # a retry with the same seq gets its stored result. Raises the unit's ServiceError, if any.
    result = await asyncio.shield(future)
    body = {"model": model.name, "model_version": model.version, "stream": stream}
    body.update(unit_json(result))
    return json_response(body)


async def post_bulk(request: web.Request) -> web.Response:
    model = model_for(request)
    request.app[BATCHER].check_room()
    data = await _body(request)
    settings = request.app[SETTINGS]
    items = data.get("readings")
    if set(data) != {"readings"} or not isinstance(items, list) or not items:
        raise InvalidRequest(
            'the body must be {"readings": [{"stream": ..., "values": [...], "seq": ...}, ...]}'
        )
    loop = asyncio.get_running_loop()
    tenant = tenant_of(request)
    slots: list[Unit | ServiceError] = []
    total = 0
    for index, item in enumerate(items):
        try:
            stream, readings = parse_bulk_item(item, index, model, settings.request_max_readings)
        except ServiceError as exc:
            slots.append(exc)
            continue
        total += len(readings)
        slots.append(Unit(model, stream, readings, None, tenant=tenant))
    if total > settings.request_max_readings:
        raise PayloadTooLarge(
            f"the request has {total} readings; the limit per request is "
            f"{settings.request_max_readings}"
        )
    units = [s for s in slots if isinstance(s, Unit)]
    charge_readings(request, total)  # the whole request, or none of it
    if units:
        ticket = Ticket(len(units), loop)
        enqueued_at = time.perf_counter()
        for unit in units:
            unit.ticket = ticket
            unit.enqueued_at = enqueued_at
        request.app[BATCHER].submit(units)
        # Shielded for the same reason as in post_readings; each unit's outcome is read below.
        await asyncio.shield(ticket.done)
    results: list[dict[str, Any]] = []
    for index, slot in enumerate(slots):
        stream = slot.stream if isinstance(slot, Unit) else _item_stream(items[index])
        entry: dict[str, Any] = {"stream": stream}
        if isinstance(slot, ServiceError):
            entry.update(error_json(slot))
        else:
            outcome = slot.outcome
            if isinstance(outcome, UnitResult):
                entry.update(unit_json(outcome))
            elif isinstance(outcome, ServiceError):
                entry.update(error_json(outcome))
            else:
                raise outcome or RuntimeError("a unit of a done request has no outcome")
        results.append(entry)
    return json_response({"model": model.name, "model_version": model.version, "results": results})


def _item_stream(item: object) -> Any:
    return item.get("stream") if isinstance(item, dict) else None


async def get_stream(request: web.Request) -> web.Response:
    model = model_for(request)
    stream = check_stream_id(request.match_info["stream"])
    store = request.app[STORE]
    raw, pttl = await store.get(store.state_key(tenant_of(request), model.name, stream))
    if raw is None:
        raise StreamNotFound(_no_stream(model, stream))
    state = StreamState.decode(raw, model.version, model.state_shape, model.output_size)
    if state.ended:  # its last request ended it (v2's sequence_end): no state is held
        raise StreamNotFound(_no_stream(model, stream))
    return json_response(state_json(model, stream, state, pttl, time.time()))


async def delete_stream(request: web.Request) -> web.Response:
    model = model_for(request)
    stream = check_stream_id(request.match_info["stream"])
    if not await request.app[BATCHER].end_stream(tenant_of(request), model.name, stream):
        raise StreamNotFound(_no_stream(model, stream))
    return web.Response(status=204)


def _no_stream(model: ServedModel, stream: str) -> str:
    return (
        f"model {model.name} has no state for stream {stream!r} (never started, ended, or "
        "expired); its next reading starts it"
    )


async def list_models(request: web.Request) -> web.Response:
    models = request.app[MODELS]
    return json_response(
        {
            "models": [m.describe() for m in models.values()],
            "default_model": default_model_name(request.app),
        }
    )


async def get_model(request: web.Request) -> web.Response:
    return json_response(model_for(request).describe())


def add_routes(app: web.Application) -> None:
    for prefix in ("/v1/models/{model}", "/v1"):
        app.router.add_post(prefix + "/streams/{stream}/readings", post_readings)
        app.router.add_post(prefix + "/readings", post_bulk)
        app.router.add_get(prefix + "/streams/{stream}", get_stream)
        app.router.add_delete(prefix + "/streams/{stream}", delete_stream)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{model}", get_model)

"""Following several streams on one connection: multi-stream SSE and WebSocket.

- ``GET /v1/models/{model}/events?streams=a,b,c`` (or ``?prefix=buoy-``), and ``/v1/events`` for
  the default model: Server-Sent Events whose ``id:`` is a cursor naming every followed stream's
  last event id (``subscriber.py``), so that a browser's EventSource, reconnecting with
  ``Last-Event-ID``, resumes every stream. ``?after=CURSOR`` does the same by hand, ``?from=start``
  replays each stream's log first. An ``event: streams`` (with the cursor as its id) says which
  streams are followed, at the start and whenever a prefix finds a new one.
- ``GET /v1/models/{model}/events/ws`` and ``/v1/events/ws``: a WebSocket carrying the same event
  JSON (with ``"type": "event"`` and its ``id``); the client subscribes and unsubscribes streams
  or prefixes with JSON control messages on the live connection (README: "WebSocket protocol").

Both are one ``Subscriber``: one queue per connection, whatever the number of streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from aiohttp import WSMsgType, web

from ..core.errors import InvalidRequest, ServiceError
from ..core.ids import check_stream_id
from ..push.subscriber import Subscriber, TooManyStreams, parse_cursor, parse_prefix
from ..step.events import Event, EventId, parse_event_id
from .app_keys import HUB, SETTINGS, STORE, tenant_of
from .authn import end_on_revocation
from .routes_events import CLOSE_GRACE_S, bound_send_buffer
from .routes_v1 import model_for

__all__ = ["CONTROL_MAX_BYTES", "add_subscription_routes"]

CONTROL_MAX_BYTES = 64 * 1024  # largest WebSocket message a client may send
_SSE_HINT = "reconnect with Last-Event-ID (the last id received, a cursor) to resume every stream"
_WS_HINT = "reconnect and subscribe again with 'after' set to the last id of each stream"
_QUIET_S = 3600.0  # a WebSocket's heartbeat is aiohttp's ping, not a message of ours


def _cut_after_grace(request: web.Request) -> None:
    """A closed subscriber's reader gets CLOSE_GRACE_S to take the reason, then the connection
    is cut (a reader that never reads would hold it forever)."""
    transport = request.transport
    if transport is not None:
        asyncio.get_running_loop().call_later(CLOSE_GRACE_S, transport.close)


# -- multi-stream SSE ------------------------------------------------------------------------


class _SseSink:
    def __init__(self, response: web.StreamResponse) -> None:
        self.response = response

    async def events(self, subscriber: Subscriber, stream: str, events: list[Event]) -> None:
        # Each event's id is the whole cursor as of that event, so a connection cut anywhere
        # resumes exactly after the last event the browser took.
        others = subscriber.cursor(skip=stream)
        head = f"id: {others}," if others else "id: "
        await self.response.write(
            "".join(
                f"{head}{stream}~{e.id[0]}-{e.id[1]}\ndata: {e.data}\n\n" for e in events
            ).encode()
        )

    async def notice(self, kind: str, body: dict[str, Any]) -> None:
        data = json.dumps(body, separators=(",", ":"))
        await self.response.write(f"event: {kind}\ndata: {data}\n\n".encode())

    async def heartbeat(self) -> None:
        await self.response.write(b": heartbeat\n\n")

    async def streams(self, subscriber: Subscriber) -> None:
        data = json.dumps({"streams": list(subscriber.follows)}, separators=(",", ":"))
        await self.response.write(
            f"event: streams\nid: {subscriber.cursor()}\ndata: {data}\n\n".encode()
        )


def _sse_start(request: web.Request) -> tuple[list[str], str | None, dict[str, EventId], bool]:
    """(streams, prefix, cursor, from start) from the query and Last-Event-ID."""
    query = request.query
    unknown = set(query) - {"streams", "prefix", "after", "from"}
    if unknown:
        raise InvalidRequest(
            f"unknown query parameter {sorted(unknown)[0]!r}; this endpoint takes 'streams' or "
            "'prefix', and 'after' or 'from=start'"
        )
    if ("streams" in query) == ("prefix" in query):
        raise InvalidRequest(
            "name the streams to follow with either 'streams=a,b,c' or 'prefix=P' (not both)"
        )
    streams: list[str] = []
    prefix: str | None = None
    if "streams" in query:
        streams = [check_stream_id(s) for s in query["streams"].split(",")]
    else:
        prefix = parse_prefix(query["prefix"], "'prefix'")
    header = request.headers.get("Last-Event-ID", "").strip()
    cursor: dict[str, EventId] = {}
    if header:
        cursor = parse_cursor(header, "the Last-Event-ID header")
    elif "after" in query:
        cursor = parse_cursor(query["after"], "'after'")
    start = query.get("from")
    if start is not None and start != "start":
        raise InvalidRequest(f"'from' takes only 'start', not {start!r}")
    return streams, prefix, cursor, start == "start"


async def get_multi_events(request: web.Request) -> web.StreamResponse:
    model = model_for(request)
    streams, prefix, cursor, from_start = _sse_start(request)
    settings = request.app[SETTINGS]
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        }
    )
    subscriber = Subscriber(
        request.app[HUB],
        request.app[STORE],
        settings,
        tenant_of(request),
        model.name,
        _SseSink(response),
        "sse",
        _SSE_HINT,
        close_on_overflow=True,
    )
    subscriber.mailbox.on_close = lambda: _cut_after_grace(request)
    end_on_revocation(request, subscriber.mailbox)
    try:
        # Subscribed before anything is sent: a bad request or Redis down is a JSON error.
        if prefix is not None:
            await subscriber.follow_prefix(prefix, cursor, from_start)
        else:
            # Resuming: a stream the cursor does not name begins at its log's start.
            await subscriber.follow(streams, cursor, from_start or bool(cursor))
        bound_send_buffer(request)
        await response.prepare(request)
        if not subscriber.follows:  # a prefix nothing matches yet: say so at once
            await subscriber.sink.streams(subscriber)
        await subscriber.run(settings.sse_heartbeat_s)
    except ConnectionResetError:
        pass  # the subscriber went away
    finally:
        await subscriber.close()
    return response


# -- WebSocket -------------------------------------------------------------------------------


class _WsSink:
    def __init__(self, ws: web.WebSocketResponse) -> None:
        self.ws = ws

    async def events(self, subscriber: Subscriber, stream: str, events: list[Event]) -> None:
        for event in events:
            await self.ws.send_str(event.ws_text)

    async def notice(self, kind: str, body: dict[str, Any]) -> None:
        await self.ws.send_str(json.dumps({"type": kind, **body}, separators=(",", ":")))

    async def heartbeat(self) -> None:
        pass

    async def streams(self, subscriber: Subscriber) -> None:
        await self.notice("streams", {"streams": list(subscriber.follows)})


class _WsControl:
    """Applies a WebSocket client's control messages; answers go through the subscriber's queue
    so that they keep their order with the events."""

    def __init__(self, subscriber: Subscriber) -> None:
        self.subscriber = subscriber

    def reply(self, body: dict[str, Any]) -> None:
        self.subscriber.mailbox.push(None, body)

    async def handle(self, text: str) -> None:
        ref: Any = None
        try:
            try:
                message = json.loads(text)
            except ValueError as exc:
                raise InvalidRequest(f"a control message must be JSON ({exc})") from None
            if not isinstance(message, dict):
                raise InvalidRequest("a control message must be a JSON object with 'op'")
            ref = message.get("ref")
            await self._apply(message)
        except ServiceError as exc:
            error = {"type": "error", "code": exc.code, "message": str(exc)}
            if isinstance(exc, TooManyStreams):
                error["code"] = "too_many_streams"
            if ref is not None:
                error["ref"] = ref
            self.reply(error)

    async def _apply(self, message: dict[str, Any]) -> None:
        op = message.get("op")
        allowed = {"op", "ref", "streams", "prefix"}
        if op == "subscribe":
            allowed |= {"after", "from"}
        elif op != "unsubscribe":
            raise InvalidRequest(f"'op' must be 'subscribe' or 'unsubscribe', not {op!r}")
        unknown = set(message) - allowed
        if unknown:
            raise InvalidRequest(
                f"unknown field(s) {', '.join(sorted(map(repr, unknown)))} in {op!r}; it takes "
                f"{', '.join(sorted(allowed))}"
            )
        if ("streams" in message) == ("prefix" in message):
            raise InvalidRequest(f"{op!r} takes either 'streams' (a list) or 'prefix' (not both)")
        streams: list[str] = []
        prefix: str | None = None
        if "streams" in message:
            given = message["streams"]
            if not isinstance(given, list) or not given:
                raise InvalidRequest("'streams' must be a non-empty list of stream ids")
            streams = [check_stream_id(s) if isinstance(s, str) else _bad_id(s) for s in given]
        else:
            prefix = parse_prefix(message["prefix"], "'prefix'")
        ack: dict[str, Any] = {"ref": message["ref"]} if "ref" in message else {}
        if prefix is not None:
            ack["prefix"] = prefix
        subscriber = self.subscriber
        if op == "unsubscribe":
            if prefix is not None:
                dropped = await subscriber.drop_prefix(prefix)
            else:
                dropped = await subscriber.drop(streams)
            self.reply({"type": "unsubscribed", **ack, "streams": dropped})
            return
        after = _after(message.get("after", {}))
        start = message.get("from")
        if start is not None and start != "start":
            raise InvalidRequest(f"'from' takes only 'start', not {start!r}")
        if prefix is not None:
            added = await subscriber.follow_prefix(prefix, after, start == "start")
        else:
            added = await subscriber.follow(streams, after, start == "start")
        # Queued behind the new streams' starts: the ack comes after their catch-up.
        self.reply({"type": "subscribed", **ack, "streams": added})


def _bad_id(value: object) -> str:
    raise InvalidRequest(f"a stream id must be a string, not {value!r}")


def _after(value: object) -> dict[str, EventId]:
    if not isinstance(value, dict):
        raise InvalidRequest("'after' must be an object {stream: '{generation}-{seq}'}")
    return {
        check_stream_id(str(stream)): parse_event_id(str(event_id), f"after[{stream!r}]")
        for stream, event_id in value.items()
    }


async def ws_events(request: web.Request) -> web.StreamResponse:
    model = model_for(request)
    if request.query:
        raise InvalidRequest(
            "this endpoint takes no query parameters; subscribe with control messages"
        )
    settings = request.app[SETTINGS]
    ws = web.WebSocketResponse(
        heartbeat=settings.sse_heartbeat_s, max_msg_size=CONTROL_MAX_BYTES, compress=False
    )
    if not ws.can_prepare(request).ok:
        raise InvalidRequest(
            "this endpoint speaks WebSocket: send an Upgrade request (or use the SSE endpoint)"
        )
    subscriber = Subscriber(
        request.app[HUB],
        request.app[STORE],
        settings,
        tenant_of(request),
        model.name,
        _WsSink(ws),
        "ws",
        _WS_HINT,
        close_on_overflow=False,
    )
    subscriber.mailbox.on_close = lambda: _cut_after_grace(request)
    end_on_revocation(request, subscriber.mailbox)
    bound_send_buffer(request)
    sender: asyncio.Task[None] | None = None
    try:
        await ws.prepare(request)
        sender = asyncio.create_task(_send_then_close(subscriber, ws))
        control = _WsControl(subscriber)
        async for message in ws:
            if message.type == WSMsgType.TEXT:
                await control.handle(message.data)
            elif message.type == WSMsgType.BINARY:
                control.reply(
                    {
                        "type": "error",
                        "code": "invalid_request",
                        "message": "control messages are JSON text, not binary",
                    }
                )
    except ConnectionResetError:
        pass
    finally:
        if sender is not None:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionResetError):
                await sender
        await subscriber.close()
        await ws.close()
    return ws


async def _send_then_close(subscriber: Subscriber, ws: web.WebSocketResponse) -> None:
    """The connection's sender: events and answers in order; once the service ends the
    subscription (after its ``closed`` message), the WebSocket is closed."""
    with contextlib.suppress(ConnectionResetError):
        await subscriber.run(_QUIET_S)
        await ws.close(code=1001 if _shutting_down(subscriber) else 1008)


def _shutting_down(subscriber: Subscriber) -> bool:
    reason = subscriber.mailbox.reason
    return reason is not None and reason[0] == "shutting_down"


def add_subscription_routes(app: web.Application) -> None:
    for prefix in ("/v1/models/{model}", "/v1"):
        app.router.add_get(prefix + "/events", get_multi_events, allow_head=False)
        app.router.add_get(prefix + "/events/ws", ws_events, allow_head=False)

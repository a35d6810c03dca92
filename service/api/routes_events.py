"""Server-Sent Events: ``GET /v1/models/{model}/streams/{stream}/events`` and the short path.

Each event is ``id: {generation}-{seq}`` and ``data:`` the event JSON. Where a subscriber starts:

- ``Last-Event-ID`` (what a browser's EventSource sends when it reconnects) or ``?after=ID``: the
  events after that id, from the stream's log, then live; the header wins over the query, since a
  reconnecting EventSource repeats the URL it was opened with;
- ``?from=start``: everything the log still holds, then live;
- neither: live events from now on.

A subscriber never receives an event twice or misses one silently: it is subscribed to the live
channel before the log is read, live events at or below the last one sent are skipped, and
whenever the live path may have lost something (an announcement that does not follow on from the
last event sent, or a lost pub/sub connection) it catches up from the log. Where the log no longer
holds events a subscriber asked for, an ``event: gap`` says which. A comment line is sent every
``--sse-heartbeat-s`` so that proxies keep a quiet connection open. When the service ends a
subscription (too slow a reader, or shutdown) it sends ``event: closed`` with a code and reason;
an EventSource then reconnects with ``Last-Event-ID`` and resumes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from typing import Any

from aiohttp import web

from ..core.errors import InvalidRequest, ServiceError
from ..core.ids import check_stream_id
from ..core.settings import Settings
from ..push.event_hub import CLOSED, RESYNC, Subscription
from ..push.subscriber import gap_body
from ..step.events import Event, EventId, LiveBatch, format_id, log_events, parse_event_id
from ..step.state_store import LogChunk
from .app_keys import HUB, SETTINGS, STORE, tenant_of
from .authn import end_on_revocation
from .routes_v1 import model_for

__all__ = ["CLOSE_GRACE_S", "add_event_routes", "bound_send_buffer"]

LOG_CHUNK = 500  # events read from the log per round trip while catching up (whole entries)
# How long a closed subscriber's connection may stay stuck on a write (its reader not reading)
# before it is cut, instead of being sent the reason it was closed.
CLOSE_GRACE_S = 10.0
SEND_BUFFER_BYTES = 128 * 1024


def bound_send_buffer(request: web.Request) -> None:
    """A fixed kernel send buffer for an event stream: the kernel would otherwise grow it to
    megabytes for a reader that does not read, hiding how far behind it is and holding memory
    per subscriber; beyond it, events wait in the subscription's bounded queue."""
    sock = request.transport.get_extra_info("socket") if request.transport else None
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)


def _start(request: web.Request) -> tuple[EventId | None, bool]:
    """(the id to resume after, replay from the start); (None, False) means live only."""
    unknown = set(request.query) - {"after", "from"}
    if unknown:
        raise InvalidRequest(
            f"unknown query parameter {sorted(unknown)[0]!r}; this endpoint takes 'after' and "
            "'from=start'"
        )
    header = request.headers.get("Last-Event-ID", "").strip()
    if header:
        return parse_event_id(header, "the Last-Event-ID header"), False
    if "after" in request.query:
        return parse_event_id(request.query["after"], "'after'"), False
    start = request.query.get("from")
    if start is not None and start != "start":
        raise InvalidRequest(f"'from' takes only 'start', not {start!r}")
    return None, start == "start"


class _Feed:
    """One SSE connection: what it has sent, and how to write more."""

    def __init__(self, request: web.Request, sub: Subscription) -> None:
        self.request = request
        self.sub = sub
        self.model = sub.model
        self.stream = sub.stream
        self.log_key = request.app[STORE].stream_keys(sub.tenant, sub.model, sub.stream).log
        self.response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",  # tell buffering proxies to pass events on at once
            }
        )
        self.last: EventId | None = None
        self._cut: asyncio.TimerHandle | None = None

    def arm_cut(self) -> None:
        """The service ended this subscription: give the reader CLOSE_GRACE_S to take the
        reason, then cut the connection (a reader that never reads would hold it forever)."""
        transport = self.request.transport
        if transport is not None and self._cut is None:
            self._cut = asyncio.get_running_loop().call_later(CLOSE_GRACE_S, transport.close)

    def disarm_cut(self) -> None:
        if self._cut is not None:
            self._cut.cancel()

    async def write(self, data: bytes) -> None:
        await self.response.write(data)

    async def send(self, events: list[Event]) -> None:
        fresh = [e for e in events if self.last is None or e.id > self.last]
        if fresh:
            await self.write(b"".join(e.frame for e in fresh))
            self.last = fresh[-1].id

    async def notice(self, kind: str, body: dict[str, Any]) -> None:
        data = json.dumps(body, separators=(",", ":"))
        await self.write(f"event: {kind}\ndata: {data}\n\n".encode())

    async def catch_up(self, after: EventId | None) -> None:
        """Send the log's events after ``after`` (None: all of them), saying what it lost."""
        store = self.request.app[STORE]
        settings = self.request.app[SETTINGS]
        self.last = after
        position = "" if after is None else format_id(after)
        while True:
            chunk = await store.read_log(
                self.log_key, position, LOG_CHUNK, settings.events_max_age_ms
            )
            events = log_events(self.model, self.stream, chunk, self.last)
            if self.last is not None:
                deleted = parse_event_id(chunk.deleted_id, "the log") if chunk.exists else None
                if not chunk.exists or (deleted is not None and deleted > self.last):
                    await self._gap(chunk, settings, events)
            await self.send(events)
            if not (chunk.more and chunk.entries):
                return
            position = chunk.entries[-1][0]

    async def _gap(self, chunk: LogChunk, settings: Settings, held: list[Event]) -> None:
        assert self.last is not None  # a gap is only ever after an event
        body = gap_body(self.stream, self.last, chunk, settings, held)
        del body["stream"]  # the single-stream gap event keeps its documented fields
        await self.notice("gap", body)


async def get_events(request: web.Request) -> web.StreamResponse:
    model = model_for(request)
    stream = check_stream_id(request.match_info["stream"])
    after, from_start = _start(request)
    settings = request.app[SETTINGS]
    hub = request.app[HUB]
    # subscribed before the log is read: nothing falls between
    sub = await hub.subscribe(tenant_of(request), model.name, stream)
    end_on_revocation(request, sub.mailbox)
    feed = _Feed(request, sub)
    sub.mailbox.on_close = feed.arm_cut
    try:
        live_from: EventId | None = None
        if after is None and not from_start:
            chunk = await request.app[STORE].read_log(feed.log_key, "", 0)
            live_from = parse_event_id(chunk.last_id, "the log") if chunk.exists else None
        bound_send_buffer(request)
        await feed.response.prepare(request)
        try:
            if after is not None or from_start:
                await feed.catch_up(after)
            else:
                feed.last = live_from
            await _follow(feed, settings.sse_heartbeat_s)
        except ServiceError as exc:  # Redis failed while catching up: the client resumes later
            await feed.notice("closed", {"code": exc.code, "message": str(exc)})
    except ConnectionResetError:
        pass  # the subscriber went away
    finally:
        feed.disarm_cut()
        await hub.unsubscribe(sub)
    return feed.response


async def _follow(feed: _Feed, heartbeat_s: float) -> None:
    sub = feed.sub
    while True:
        item = await sub.next(heartbeat_s)
        if item is None:
            await feed.write(b": heartbeat\n\n")
        elif item is CLOSED:
            assert sub.reason is not None
            code, message = sub.reason
            await feed.notice("closed", {"code": code, "message": message})
            return
        elif item is RESYNC:
            await feed.catch_up(feed.last)
        elif isinstance(item, LiveBatch):
            if feed.last is not None and item.prev is not None and item.prev > feed.last:
                await feed.catch_up(feed.last)  # something between was not announced to us
            else:
                await feed.send(item.events)


def add_event_routes(app: web.Application) -> None:
    for prefix in ("/v1/models/{model}", "/v1"):
        # No HEAD: its answer has no body, so an event stream would never notice that its
        # client left and would hold a subscription until shutdown.
        app.router.add_get(prefix + "/streams/{stream}/events", get_events, allow_head=False)

"""One subscriber connection following several streams of one tenant and model: multi-stream SSE
and WebSocket share this; only how a message is written differs (a ``Sink``).

The connection has one ``Mailbox`` (``event_hub.py``) that every stream it follows queues into,
and one loop (``Subscriber.run``) drains it, so a connection costs one queue and one task however
many streams it follows. Per stream it keeps the last event id sent, and the same rules as the
single-stream route hold per stream: subscribed before its log is read, nothing sent twice,
catching up from the log whenever an announcement does not follow on from the last event sent,
and a gap said out loud when the log no longer holds what was asked.

A stream's start is queued behind whatever its subscription has already queued (``START``), so
events are sent in order however streams are added to a live connection. Prefix subscriptions find
the streams that exist with SCAN and hear of the ones that begin later from the new-streams
channel (``EventHub.watch``); a stream that begins later is sent from its first event.

The cursor: ``STREAM~GENERATION-SEQ`` per followed stream, joined by commas, e.g.
``buoy-7~1795813832977-5,buoy-8~1795813832977-3`` (``~`` and ``,`` never occur in stream ids).
It names every followed stream, with ``0-0`` for a stream that had no event when it was followed;
resuming with it continues each stream after its own id, and a stream it does not name is sent
from the start of its log, so nothing is skipped. Stream ids in a cursor, a list or a prefix are
always the connection's tenant's: discovery (SCAN and the new-streams channel) never reaches
another tenant's streams.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from ..core.errors import InvalidRequest, ServiceError
from ..core.ids import STREAM_ID
from ..core.settings import Settings
from ..step.events import Event, EventId, LiveBatch, format_id, log_events, parse_event_id
from ..step.state_store import LogChunk, StateStore
from .event_hub import CLOSED, REDISCOVER, RESYNC, EventHub, NewStream, Subscription

__all__ = [
    "START",
    "Sink",
    "Subscriber",
    "TooManyStreams",
    "format_cursor",
    "parse_cursor",
    "parse_prefix",
]

LOG_CHUNK = 500  # events read from the log per round trip while catching up (whole entries)
NO_EVENT: EventId = (0, 0)  # a followed stream's position before its first event
_PREFIX = re.compile(r"[A-Za-z0-9._:-]{0,128}")


class _Start:
    def __repr__(self) -> str:
        return "START"


START = _Start()  # queued behind a new subscription: begin this stream now


class TooManyStreams(InvalidRequest):
    """More streams than ``--subscription-max-streams`` on one connection (400 on HTTP)."""


def format_cursor(positions: Iterable[tuple[str, EventId | None]]) -> str:
    return ",".join(f"{s}~{format_id(p or NO_EVENT)}" for s, p in positions)


def parse_cursor(text: str, where: str) -> dict[str, EventId]:
    """A cursor as {stream: last id}; raises InvalidRequest naming ``where``."""
    positions: dict[str, EventId] = {}
    for entry in text.strip().split(","):
        stream, sep, event_id = entry.partition("~")
        if not sep or not STREAM_ID.fullmatch(stream):
            raise InvalidRequest(
                f"{where} must be a cursor 'STREAM~GENERATION-SEQ,...' as sent in 'id:' lines, "
                f"not {text[:200]!r}"
            )
        positions[stream] = parse_event_id(event_id, where)
    return positions


def parse_prefix(value: object, where: str) -> str:
    if not isinstance(value, str) or not _PREFIX.fullmatch(value):
        raise InvalidRequest(
            f"{where} must be 0 to 128 characters of A-Z a-z 0-9 . _ : -, not {value!r}"
        )
    return value


class Sink(Protocol):
    """How a subscriber's messages are written on its transport."""

    async def events(self, subscriber: Subscriber, stream: str, events: list[Event]) -> None: ...

    async def notice(self, kind: str, body: dict[str, Any]) -> None: ...

    async def heartbeat(self) -> None: ...

    async def streams(self, subscriber: Subscriber) -> None:
        """The set of followed streams changed (all of them started)."""


class Follow:
    """One stream a subscriber follows."""

    __slots__ = ("after", "last", "live", "origins", "started", "stream", "sub")

    def __init__(self, stream: str, after: EventId | None, live: bool, origin: str) -> None:
        self.stream = stream
        self.sub: Subscription | None = None
        self.after = after  # where to start (None: the log's first event), unless live
        self.live = live  # start after the log's last event, whatever it is then
        self.last: EventId | None = None
        self.started = False
        self.origins = {origin}  # "" for a stream named by the client, else the prefix


class Subscriber:
    """A connection's streams, their positions, and the loop that sends their events."""

    def __init__(
        self,
        hub: EventHub,
        store: StateStore,
        settings: Settings,
        tenant: str,
        model: str,
        sink: Sink,
        transport: str,
        resume_hint: str,
        close_on_overflow: bool,
    ) -> None:
        self.hub = hub
        self.store = store
        self.settings = settings
        self.tenant = tenant
        self.model = model
        self.sink = sink
        self.max_streams = settings.subscription_max_streams
        self.close_on_overflow = close_on_overflow
        self.mailbox = hub.open_mailbox(transport, resume_hint)
        self.follows: dict[str, Follow] = {}
        self.prefixes: dict[str, bool] = {}  # prefix -> its streams begin from the log's start
        self._announced: str | None = None

    # -- what is followed --------------------------------------------------------------------

    def cursor(self, skip: str | None = None) -> str:
        return format_cursor(
            (f.stream, f.last if f.started else f.after)
            for f in self.follows.values()
            if f.stream != skip
        )

    def _check_room(self, adding: int) -> None:
        if len(self.follows) + adding > self.max_streams:
            raise TooManyStreams(
                f"this would follow {len(self.follows) + adding} streams on one connection; "
                f"at most {self.max_streams} may be followed (--subscription-max-streams): "
                "name fewer streams or a narrower prefix, or open another connection"
            )

    async def follow(
        self,
        streams: Sequence[str],
        after: Mapping[str, EventId],
        from_start: bool,
        origin: str = "",
    ) -> list[str]:
        """Follow ``streams`` (those not followed yet): after their id in ``after``, else from
        the start of their log when ``from_start``, else live. The streams' channels are
        subscribed when this returns; their events follow whatever is queued already."""
        new = [s for s in dict.fromkeys(streams) if s not in self.follows]
        for s in streams:
            if s in self.follows:
                self.follows[s].origins.add(origin)
        self._check_room(len(new))
        for stream in new:
            position = after.get(stream)
            if position == NO_EVENT:
                position = None
            live = stream not in after and not from_start
            await self._add(Follow(stream, position, live, origin))
        return new

    async def _add(self, follow: Follow) -> None:
        self.follows[follow.stream] = follow  # before waiting: discovery must not add it again
        try:
            follow.sub = await self.hub.subscribe(
                self.tenant, self.model, follow.stream, self.mailbox
            )
        except BaseException:
            self.follows.pop(follow.stream, None)
            raise
        self.mailbox.push(follow.sub, START)

    async def follow_prefix(
        self, prefix: str, after: Mapping[str, EventId], from_start: bool
    ) -> list[str]:
        """Follow every stream whose id starts with ``prefix``, now and as they begin. With a
        cursor (``after``), streams it does not name begin from the start of their log."""
        if prefix in self.prefixes:
            return []
        self.prefixes[prefix] = True
        try:
            # before the scan: no new stream falls between
            await self.hub.watch(self.mailbox, self.tenant, self.model)
            found = await self.store.scan_streams(self.tenant, self.model, prefix, self.max_streams)
            return await self.follow(found, after, from_start or bool(after), origin=prefix)
        except BaseException:
            del self.prefixes[prefix]
            if not self.prefixes:
                await self.hub.unwatch(self.mailbox)
            raise

    async def drop(self, streams: Sequence[str]) -> list[str]:
        dropped = [s for s in dict.fromkeys(streams) if s in self.follows]
        for stream in dropped:
            follow = self.follows.pop(stream)
            if follow.sub is not None:
                await self.hub.unsubscribe(follow.sub)
        return dropped

    async def drop_prefix(self, prefix: str) -> list[str]:
        if self.prefixes.pop(prefix, None) is None:
            return []
        if not self.prefixes:
            await self.hub.unwatch(self.mailbox)
        gone = []
        for follow in self.follows.values():
            follow.origins.discard(prefix)
            if not follow.origins:
                gone.append(follow.stream)
        return await self.drop(gone)

    async def close(self) -> None:
        subs = [f.sub for f in self.follows.values() if f.sub is not None]
        self.follows.clear()
        await self.hub.release(self.mailbox, subs)

    # -- sending -------------------------------------------------------------------------------

    async def run(self, heartbeat_s: float) -> None:
        """Send until the connection is ended (``Mailbox.close``): every item in order."""
        while True:
            item = await self.mailbox.next(heartbeat_s)
            if item is None:
                await self.sink.heartbeat()
                continue
            if item is CLOSED:
                assert self.mailbox.reason is not None
                code, message = self.mailbox.reason
                await self.sink.notice("closed", {"code": code, "message": message})
                return
            assert isinstance(item, tuple)
            sub, payload = item
            try:
                if sub is None:
                    await self._own(payload)
                else:
                    await self._stream_item(sub, payload)
            except ServiceError as exc:  # Redis failed while catching up: the client resumes
                self.mailbox.close(exc.code, f"{exc}; {self.mailbox.resume_hint}")

    async def _own(self, payload: Any) -> None:
        if isinstance(payload, dict):  # a message queued by the connection (an ack, an error)
            kind = payload.pop("type")
            await self.sink.notice(kind, payload)
        elif isinstance(payload, NewStream):
            await self._discovered(payload)
        elif payload is REDISCOVER:
            for prefix in list(self.prefixes):
                found = await self.store.scan_streams(
                    self.tenant, self.model, prefix, self.max_streams
                )
                for stream in found:
                    await self._discovered(NewStream(self.tenant, self.model, stream, ""), prefix)

    async def _discovered(self, new: NewStream, prefix: str | None = None) -> None:
        """A stream began (or was found by a new scan): follow it from its first event if a
        prefix of ours matches and it is not followed already."""
        if new.tenant != self.tenant or new.model != self.model or new.stream in self.follows:
            return
        matching = [p for p in self.prefixes if new.stream.startswith(p)]
        if not matching:
            return
        if len(self.follows) >= self.max_streams:
            message = (
                f"stream {new.stream!r} began and matches prefix {matching[0]!r}, but this "
                f"connection already follows {len(self.follows)} streams, the most "
                "--subscription-max-streams allows; it is not followed"
            )
            if self.close_on_overflow:
                self.mailbox.close("too_many_streams", message)
            else:
                await self.sink.notice(
                    "error", {"code": "too_many_streams", "message": message, "stream": new.stream}
                )
            return
        floor = parse_event_id(new.floor, "the announcement") if new.floor else None
        await self._add(Follow(new.stream, floor, False, prefix or matching[0]))

    async def _stream_item(self, sub: Subscription, payload: Any) -> None:
        follow = self.follows.get(sub.stream)
        if follow is None or follow.sub is not sub:
            return  # dropped since this was queued
        if payload is START:
            await self._start(follow)
        elif not follow.started:
            return  # queued before its start, which reads the log: nothing is lost
        elif payload is RESYNC:
            await self._catch_up(follow, follow.last)
        elif isinstance(payload, LiveBatch):
            if follow.last is not None and payload.prev is not None and payload.prev > follow.last:
                await self._catch_up(follow, follow.last)  # something between was not announced
            else:
                await self._send(follow, payload.events)

    async def _start(self, follow: Follow) -> None:
        if follow.live:
            log_key = self.store.stream_keys(self.tenant, self.model, follow.stream).log
            async with self.hub.log_reads:
                chunk = await self.store.read_log(log_key, "", 0)
            follow.last = parse_event_id(chunk.last_id, "the log") if chunk.exists else None
        else:
            await self._catch_up(follow, follow.after)
        follow.started = True
        if all(f.started for f in self.follows.values()):
            cursor = self.cursor()
            if cursor != self._announced:
                self._announced = cursor
                await self.sink.streams(self)

    async def _send(self, follow: Follow, events: list[Event]) -> None:
        fresh = [e for e in events if follow.last is None or e.id > follow.last]
        if fresh:
            await self.sink.events(self, follow.stream, fresh)
            follow.last = fresh[-1].id

    async def _catch_up(self, follow: Follow, after: EventId | None) -> None:
        """Send the log's events after ``after`` (None: all of them), saying what it lost."""
        log_key = self.store.stream_keys(self.tenant, self.model, follow.stream).log
        follow.last = after
        position = "" if after is None else format_id(after)
        while True:
            async with self.hub.log_reads:
                chunk = await self.store.read_log(
                    log_key, position, LOG_CHUNK, self.settings.events_max_age_ms
                )
            events = log_events(self.model, follow.stream, chunk, follow.last)
            if follow.last is not None:
                deleted = parse_event_id(chunk.deleted_id, "the log") if chunk.exists else None
                if not chunk.exists or (deleted is not None and deleted > follow.last):
                    await self.sink.notice(
                        "gap",
                        gap_body(follow.stream, follow.last, chunk, self.settings, events),
                    )
            await self._send(follow, events)
            if not (chunk.more and chunk.entries):
                return
            position = chunk.entries[-1][0]


def gap_body(
    stream: str, after: EventId, chunk: LogChunk, settings: Settings, held: list[Event]
) -> dict[str, Any]:
    """What an ``event: gap`` says: the events after ``after`` that the log no longer holds
    (``held``: the events the same read found, which follow the gap)."""
    first = format_id(held[0].id) if held else None
    if chunk.exists:
        message = (
            f"the log of stream {stream!r} does not hold the events after {format_id(after)} up "
            f"to and including {chunk.deleted_id}: its bounds ({settings.events_max_len} events, "
            f"{settings.events_max_age_s:g} s) dropped them, or they came before the log was "
            "created; the next event sent is the oldest it holds"
        )
    else:
        message = (
            f"stream {stream!r} has no event log (it never had events, or its log expired after "
            f"{settings.events_max_age_s:g} s without any): events after {format_id(after)}, if "
            "there were any, are no longer held"
        )
    return {
        "stream": stream,
        "after": format_id(after),
        "lost_through": chunk.deleted_id if chunk.exists else None,
        "first_held": first,
        "message": message,
    }

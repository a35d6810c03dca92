"""Prediction events: their encodings, and live delivery to this process's subscribers.

Every applied step is one event, id ``{generation}-{seq}``. The batcher's commit appends the events
to the stream's log and announces them on the stream's shard channel in the same script call
(``state_store.COMMIT_SCRIPT``); this module encodes what that call carries (``log_append``) and
fans announcements out to subscribers.

``EventHub`` holds one pub/sub connection per Redis node (one in all on a standalone Redis) and
subscribes a stream's channel while this process has a subscriber for it, however many there are.
Each announcement is decoded and turned into SSE frames once, then queued to every subscriber of
the stream without waiting: a subscriber whose queue passes its bound is closed (it resumes from the
log by id), so a slow reader never holds up the connection, the other subscribers or the write
path. When a pub/sub connection fails, its subscribers are told to catch up from the log, since
announcements sent meanwhile are lost; the log is the record, pub/sub only the fast path.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import struct
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from redis.asyncio import Redis
from redis.exceptions import RedisError

from .errors import InvalidRequest, Overloaded, RedisUnavailable
from .metrics import Metrics
from .state_store import LogAppend, StateStore

__all__ = [
    "CLOSED",
    "RESYNC",
    "Event",
    "EventHub",
    "EventId",
    "LiveBatch",
    "Subscription",
    "events_from_log",
    "format_id",
    "log_append",
    "parse_event_id",
]

log = logging.getLogger(__name__)

EventId = tuple[int, int]  # (generation, seq)

_ID = re.compile(r"([0-9]{1,20})-([0-9]{1,20})")
_U64 = 2**64 - 1
# inputs, outputs, events, commit time (Unix ms), model version length
_MESSAGE_HEAD = struct.Struct("<HHIQB")


def parse_event_id(text: str, where: str) -> EventId:
    """``"{generation}-{seq}"`` as a pair; raises InvalidRequest naming ``where``."""
    match = _ID.fullmatch(text.strip())
    if match is None or int(match[1]) > _U64 or int(match[2]) > _U64:
        raise InvalidRequest(
            f"{where} must be an event id '{{generation}}-{{seq}}' as sent in 'id:' lines, "
            f"not {text!r}"
        )
    return int(match[1]), int(match[2])


def format_id(event_id: EventId) -> str:
    return f"{event_id[0]}-{event_id[1]}"


def _id_of(text: str) -> EventId | None:
    """An id written by Redis or by the commit script; None for "" (unknown)."""
    if not text:
        return None
    generation, _, seq = text.partition("-")
    return int(generation), int(seq)


# -- what a commit carries ------------------------------------------------------------------


def log_append(
    version: str,
    generation: int,
    seqs: Sequence[int],
    values: np.ndarray,
    predictions: np.ndarray,
    reading_ts: Sequence[float | str | None],
    prev: EventId | None,
    now_ms: int,
) -> LogAppend:
    """The events of one stream's write: ``values`` float64 ``[n, inputs]``, ``predictions``
    float32 ``[n, outputs]``, one per seq, in order."""
    x = np.ascontiguousarray(values, np.float64)
    y = np.ascontiguousarray(predictions, np.float32)
    ids = [f"{generation}-{seq}" for seq in seqs]
    ts = [b"" if t is None else json.dumps(t).encode() for t in reading_ts]
    entries = [(ids[i], x[i].tobytes(), y[i].tobytes(), ts[i]) for i in range(len(ids))]
    vbytes = version.encode("ascii")
    pairs = np.empty((len(ids), 2), "<u8")
    pairs[:, 0] = generation
    pairs[:, 1] = seqs
    stamped = b"[" + b",".join(t or b"null" for t in ts) + b"]" if any(ts) else b""
    message = b"".join(
        [
            _MESSAGE_HEAD.pack(x.shape[1], y.shape[1], len(ids), now_ms, len(vbytes)),
            vbytes,
            pairs.tobytes(),
            x.tobytes(),
            y.tobytes(),
            stamped,
        ]
    )
    return LogAppend(
        prev=format_id(prev) if prev is not None else "",
        floor=f"{generation}-{seqs[0] - 1}",
        version=version,
        entries=entries,
        message=message,
    )


# -- what subscribers get -------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    id: EventId
    frame: bytes  # the whole SSE event: "id: ...\ndata: {...}\n\n"


@dataclass(frozen=True)
class LiveBatch:
    prev: EventId | None  # the event just before these (None: unknown, a new generation)
    events: list[Event]


def _frame(
    model: str,
    version: str,
    stream: str,
    event_id: EventId,
    values: list[float],
    prediction: list[float],
    t_ms: int,
    reading_ts: Any,
) -> Event:
    body: dict[str, Any] = {
        "model": model,
        "model_version": version,
        "stream": stream,
        "generation": event_id[0],
        "seq": event_id[1],
        "values": values,
        "prediction": prediction,
        "ts": t_ms / 1000,
    }
    if reading_ts is not None:
        body["reading_ts"] = reading_ts
    data = json.dumps(body, separators=(",", ":"))
    return Event(event_id, f"id: {event_id[0]}-{event_id[1]}\ndata: {data}\n\n".encode())


def decode_message(model: str, stream: str, message: bytes) -> LiveBatch:
    """A channel message (the script's ``prev + "\\n"`` and ``log_append``'s body)."""
    prev, _, body = message.partition(b"\n")
    inputs, outputs, n, t_ms, vlen = _MESSAGE_HEAD.unpack_from(body)
    at = _MESSAGE_HEAD.size
    version = body[at : at + vlen].decode("ascii")
    at += vlen
    pairs = np.frombuffer(body, "<u8", 2 * n, at).reshape(n, 2).tolist()
    at += 16 * n
    x = np.frombuffer(body, "<f8", n * inputs, at).reshape(n, inputs).tolist()
    at += 8 * n * inputs
    y = np.frombuffer(body, "<f4", n * outputs, at).reshape(n, outputs).tolist()
    at += 4 * n * outputs
    stamps = json.loads(body[at:]) if len(body) > at else [None] * n
    events = [
        _frame(model, version, stream, (g, s), x[i], y[i], t_ms, stamps[i])
        for i, (g, s) in enumerate(pairs)
    ]
    return LiveBatch(_id_of(prev.decode("ascii")), events)


def events_from_log(
    model: str, stream: str, entries: list[tuple[str, dict[bytes, bytes]]]
) -> list[Event]:
    """Log entries (``StateStore.read_log``) as events."""
    events = []
    for entry_id, fields in entries:
        event_id = _id_of(entry_id)
        assert event_id is not None
        stamp = fields[b"r"]
        events.append(
            _frame(
                model,
                fields[b"v"].decode("ascii"),
                stream,
                event_id,
                np.frombuffer(fields[b"x"], "<f8").tolist(),
                np.frombuffer(fields[b"y"], "<f4").tolist(),
                int(fields[b"t"]),
                json.loads(stamp) if stamp else None,
            )
        )
    return events


# -- fan-out ---------------------------------------------------------------------------------


class _Marker:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


RESYNC = _Marker("RESYNC")  # announcements may have been lost: catch up from the log
CLOSED = _Marker("CLOSED")  # the subscription ended; ``Subscription.reason`` says why


class Subscription:
    """One subscriber's queue of live batches: at most ``limit`` events, or one write's."""

    def __init__(self, model: str, stream: str, channel: str, limit: int) -> None:
        self.model = model
        self.stream = stream
        self.channel = channel
        self.limit = limit
        self.reason: tuple[str, str] | None = None  # (code, message) once closed
        self.on_close: Callable[[], None] | None = None
        self._items: deque[LiveBatch | _Marker] = deque()
        self._pending = 0
        self._wakeup = asyncio.Event()

    def push(self, item: LiveBatch | _Marker) -> bool:
        """Queue without waiting; False when this would pass the bound (nothing is queued)."""
        if self.reason is not None:
            return True
        if isinstance(item, LiveBatch):
            # An empty queue takes any one write, however many readings it applied.
            if self._pending and self._pending + len(item.events) > self.limit:
                return False
            self._pending += len(item.events)
        self._items.append(item)
        self._wakeup.set()
        return True

    def close(self, code: str, message: str) -> None:
        if self.reason is None:
            self.reason = (code, message)
            self._items.clear()
            self._pending = 0
            self._wakeup.set()
            if self.on_close is not None:
                self.on_close()

    async def next(self, timeout: float) -> LiveBatch | _Marker | None:
        """The next item, CLOSED once closed, or None after ``timeout`` seconds of quiet."""
        if self.reason is None and not self._items:
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout)
        if self.reason is not None:
            return CLOSED
        if not self._items:
            return None
        item = self._items.popleft()
        if isinstance(item, LiveBatch):
            self._pending -= len(item.events)
        return item


class _Node:
    """One pub/sub connection (to one Redis node) and the task that reads it."""

    def __init__(self, hub: EventHub, name: str, client: Redis) -> None:
        self.hub = hub
        self.name = name
        self.client = client
        self.pubsub = client.pubsub()
        self.channels: set[str] = set()
        self.confirmed: dict[str, asyncio.Future[None]] = {}
        self.task: asyncio.Task[None] | None = None  # started by the first subscription

    async def subscribe(self, channel: str) -> None:
        future = self.confirmed.get(channel)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            self.confirmed[channel] = future
            self.channels.add(channel)
            await self.pubsub.ssubscribe(channel)
            if self.task is None:
                self.task = asyncio.create_task(self._read(), name=f"events-{self.name or 'redis'}")
        await asyncio.shield(future)

    async def unsubscribe(self, channel: str) -> None:
        self.channels.discard(channel)
        future = self.confirmed.pop(channel, None)
        if future is not None and not future.done():
            future.cancel()
        with contextlib.suppress(RedisError, OSError):
            await self.pubsub.sunsubscribe(channel)

    async def _read(self) -> None:
        """Hand out messages until cancelled, reconnecting as needed; returns when there is
        nothing left to listen to (the next subscription starts a new reader)."""
        delay = 0.1
        while True:
            if not self.channels and self.pubsub.connection is None:
                self.task = None
                return
            try:
                message = await self.pubsub.get_message(timeout=5.0)
            except (RedisError, OSError, RuntimeError) as exc:
                # RuntimeError: redis-py's "pubsub connection not set", after a failed reconnect
                log.warning("event subscription to Redis lost (%s); reconnecting", exc)
                await self._reconnect(delay)
                delay = min(delay * 2, 2.0)
                continue
            delay = 0.1
            if message is not None:
                try:
                    self._handle(message)
                except Exception:  # a bug; the other messages and subscribers carry on
                    log.exception("could not hand out an event message")

    def _handle(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        channel = message["channel"]
        channel = channel.decode() if isinstance(channel, bytes) else channel
        if kind == "smessage":
            self.hub.dispatch(channel, message["data"])
        elif kind == "ssubscribe":
            future = self.confirmed.get(channel)
            if future is not None and future.done():
                # A confirmation for a channel confirmed before: the client reconnected on its
                # own, and announcements in between are lost.
                self.hub.resync(channel)
            elif future is not None:
                future.set_result(None)

    async def _reconnect(self, delay: float) -> None:
        """A new connection, every channel subscribed again, then every subscriber resynced."""
        with contextlib.suppress(Exception):
            await self.pubsub.aclose()  # type: ignore[no-untyped-call]
        await asyncio.sleep(delay)
        self.pubsub = self.client.pubsub()
        for channel in list(self.channels):
            future = asyncio.get_running_loop().create_future()
            old = self.confirmed.get(channel)
            if old is not None and not old.done():
                future = old  # a subscriber is waiting on this one
            self.confirmed[channel] = future
        try:
            if self.channels:
                await self.pubsub.ssubscribe(*self.channels)
        except (RedisError, OSError):
            return  # the next read fails too and we come back here
        for channel in list(self.channels):
            self.hub.resync(channel)

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        with contextlib.suppress(Exception):
            await self.pubsub.aclose()  # type: ignore[no-untyped-call]
        with contextlib.suppress(Exception):
            await self.client.aclose()


class EventHub:
    """This process's subscribers, and the pub/sub connections that feed them."""

    def __init__(self, store: StateStore, metrics: Metrics, buffer_events: int) -> None:
        self.store = store
        self.metrics = metrics
        self.buffer_events = buffer_events
        self._subs: dict[str, set[Subscription]] = {}
        self._names: dict[str, tuple[str, str]] = {}  # channel -> (model, stream)
        self._channel_node: dict[str, _Node] = {}
        self._nodes: dict[str, _Node] = {}
        self._lock = asyncio.Lock()
        self._closed = False

    async def subscribe(self, model: str, stream: str) -> Subscription:
        """A subscription whose channel is subscribed in Redis (confirmed) when this returns;
        raises RedisUnavailable when Redis cannot be reached."""
        if self._closed:
            raise Overloaded("the service is shutting down; subscribe to another replica")
        channel = self.store.stream_keys(model, stream).channel
        sub = Subscription(model, stream, channel, self.buffer_events)
        subs = self._subs.setdefault(channel, set())
        subs.add(sub)
        self._names[channel] = (model, stream)
        self.metrics.subscribers.inc()
        try:
            node = await self._node_for(channel)
            await asyncio.wait_for(node.subscribe(channel), self.store.timeout_s)
        except (RedisError, OSError, TimeoutError) as exc:
            await self.unsubscribe(sub)
            self.metrics.redis_errors.labels("subscribe").inc()
            raise RedisUnavailable(
                f"Redis did not confirm the subscription ({type(exc).__name__}); retry later"
            ) from exc
        except BaseException:
            await self.unsubscribe(sub)
            raise
        return sub

    async def _node_for(self, channel: str) -> _Node:
        node = self._channel_node.get(channel)
        if node is not None:
            return node
        async with self._lock:
            name, client = await self.store.subscriber_client(channel)
            node = self._nodes.get(name)
            if node is None:
                node = self._nodes[name] = _Node(self, name, client)
            else:
                await client.aclose()
            self._channel_node[channel] = node
            return node

    async def unsubscribe(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.channel)
        if subs is None or sub not in subs:
            return
        subs.discard(sub)
        self.metrics.subscribers.dec()
        if not subs:
            del self._subs[sub.channel]
            self._names.pop(sub.channel, None)
            node = self._channel_node.pop(sub.channel, None)
            if node is not None:
                await node.unsubscribe(sub.channel)

    def dispatch(self, channel: str, message: bytes) -> None:
        subs = self._subs.get(channel)
        if not subs:
            return
        model, stream = self._names[channel]
        batch = decode_message(model, stream, message)
        for sub in list(subs):
            if not sub.push(batch):
                self.metrics.subscribers_closed.labels("too_slow").inc()
                sub.close(
                    "subscriber_too_slow",
                    f"more than {sub.limit} events were waiting for this subscriber; "
                    "reconnect with Last-Event-ID to resume where it stopped",
                )

    def resync(self, channel: str) -> None:
        for sub in list(self._subs.get(channel, ())):
            sub.push(RESYNC)

    def end_subscriptions(self) -> None:
        """The service is stopping: end every subscription (each is told why) and take no more."""
        self._closed = True
        for subs in self._subs.values():
            for sub in subs:
                if sub.reason is None:
                    self.metrics.subscribers_closed.labels("shutdown").inc()
                sub.close(
                    "shutting_down",
                    "the service is stopping; reconnect with Last-Event-ID to resume",
                )

    async def close(self) -> None:
        """End every subscription and close the pub/sub connections."""
        self.end_subscriptions()
        for node in list(self._nodes.values()):
            await node.close()
        self._nodes.clear()
        self._channel_node.clear()

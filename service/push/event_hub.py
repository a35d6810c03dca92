"""Live delivery of prediction events to this process's subscribers.

``EventHub`` holds one pub/sub connection per Redis node (one in all on a standalone Redis) and
subscribes a stream's channel while this process has a subscriber for it, however many there are.
Each announcement is decoded once, then queued to every subscriber of the stream without waiting:
a subscriber whose queue passes its bound is closed (it resumes from the log by id), so a slow
reader never holds up the connection, the other subscribers or the write path. When a pub/sub
connection fails, its subscribers are told to catch up from the log, since announcements sent
meanwhile are lost; the log is the record, pub/sub only the fast path.

A connection that follows several streams (multi-stream SSE, WebSocket) has one ``Mailbox``: each
of its streams is a ``Subscription`` that queues into it, so the bound on waiting events is per
connection, and one task drains it however many streams it follows. Prefix subscriptions also
``watch`` the deployment's new-streams channel (a plain channel, announced once per stream
generation by the commit script), through the same per-node connection; a watcher hears only of
the streams of its own tenant and model.

Streams are named by (tenant, model, stream): the tenant is in every channel name, so two
tenants' streams of the same id never share a channel or a subscriber.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from ..core.errors import Overloaded, RedisUnavailable
from ..core.metrics import Metrics
from ..step.events import LiveBatch, decode_message
from ..step.state_store import StateStore

__all__ = ["CLOSED", "RESYNC", "EventHub", "Mailbox", "NewStream", "Subscription"]

log = logging.getLogger(__name__)

LOG_READS_MAX = 32


class _Marker:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


RESYNC = _Marker("RESYNC")  # announcements may have been lost: catch up from the log
CLOSED = _Marker("CLOSED")  # the subscription ended; ``Subscription.reason`` says why
REDISCOVER = _Marker("REDISCOVER")  # new-stream announcements may have been lost: scan again


class NewStream:
    """A new-streams announcement: ``stream`` of ``tenant`` and ``model`` began a generation
    after ``floor``."""

    __slots__ = ("floor", "model", "stream", "tenant")

    def __init__(self, tenant: str, model: str, stream: str, floor: str) -> None:
        self.tenant = tenant
        self.model = model
        self.stream = stream
        self.floor = floor


# How a single-stream SSE subscriber resumes, said when its connection is ended.
_SSE_HINT = "reconnect with Last-Event-ID to resume where it stopped"

MailItem = Any  # LiveBatch, a marker, NewStream, or whatever its owner queues itself


class Mailbox:
    """One connection's queue, fed by the subscriptions of all the streams it follows: at most
    ``limit`` events waiting (or one write's, when it is empty). Items are (subscription or None,
    item) pairs, in arrival order."""

    def __init__(self, transport: str, limit: int, resume_hint: str) -> None:
        self.transport = transport
        self.limit = limit
        self.resume_hint = resume_hint  # how this transport's client resumes, for close reasons
        self.reason: tuple[str, str] | None = None
        self.on_close: Callable[[], None] | None = None
        self._items: deque[tuple[Subscription | None, MailItem]] = deque()
        self._pending = 0
        self._wakeup = asyncio.Event()

    def push(self, sub: Subscription | None, item: MailItem) -> bool:
        """Queue without waiting; False when this would pass the bound (nothing is queued)."""
        if self.reason is not None:
            return True
        if isinstance(item, LiveBatch):
            if self._pending and self._pending + len(item.events) > self.limit:
                return False
            self._pending += len(item.events)
        self._items.append((sub, item))
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

    async def next(self, timeout: float) -> tuple[Subscription | None, MailItem] | _Marker | None:
        """The next (subscription, item), CLOSED once closed, or None after ``timeout``."""
        if self.reason is None and not self._items:
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout)
        if self.reason is not None:
            return CLOSED
        if not self._items:
            return None
        sub, item = self._items.popleft()
        if isinstance(item, LiveBatch):
            self._pending -= len(item.events)
        return sub, item


class Subscription:
    """One stream followed by one connection. Its items go to the connection's ``Mailbox``; a
    single-stream subscriber gets a mailbox of its own (``owns_mailbox``), so there is one queue
    implementation, with one bound, whatever the route."""

    def __init__(
        self,
        tenant: str,
        model: str,
        stream: str,
        channel: str,
        mailbox: Mailbox,
        owns_mailbox: bool,
    ) -> None:
        self.tenant = tenant
        self.model = model
        self.stream = stream
        self.channel = channel
        self.mailbox = mailbox
        self.owns_mailbox = owns_mailbox

    @property
    def reason(self) -> tuple[str, str] | None:
        """(code, message) once the connection's queue is closed."""
        return self.mailbox.reason

    def push(self, item: LiveBatch | _Marker) -> bool:
        """Queue without waiting; False when this would pass the bound (nothing is queued)."""
        return self.mailbox.push(self, item)

    def too_slow(self) -> str:
        return (
            f"more than {self.mailbox.limit} events were waiting for this subscriber; "
            f"{self.mailbox.resume_hint}"
        )

    def close(self, code: str, message: str) -> None:
        self.mailbox.close(code, message)

    async def next(self, timeout: float) -> MailItem | _Marker | None:
        """For a subscription with its own mailbox: the next item, CLOSED once closed, or None
        after ``timeout`` seconds of quiet."""
        got = await self.mailbox.next(timeout)
        return got[1] if isinstance(got, tuple) else got


class _Node:
    """One pub/sub connection (to one Redis node) and the task that reads it."""

    def __init__(self, hub: EventHub, name: str, client: Redis) -> None:
        self.hub = hub
        self.name = name
        self.client = client
        self.pubsub = client.pubsub()
        self.channels: set[str] = set()  # shard channels (SSUBSCRIBE)
        self.plain: set[str] = set()  # plain channels (SUBSCRIBE): the new-streams channel
        self.confirmed: dict[str, asyncio.Future[None]] = {}
        # Channels subscribed again after a lost connection: their subscribers catch up from the
        # log once Redis confirms, so that nothing announced before then is missed.
        self.resubscribed: set[str] = set()
        self.task: asyncio.Task[None] | None = None  # started by the first subscription
        self.sending = asyncio.Lock()
        self.orphaned = False  # its channels all moved to other nodes: close when idle

    async def subscribe(self, channel: str, sharded: bool = True) -> None:
        future = self.confirmed.get(channel)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            self.confirmed[channel] = future
            # One command at a time: the first ones on a fresh PubSub each open a connection,
            # and concurrent ones would leave their confirmations on a connection nobody reads.
            async with self.sending:
                if sharded:
                    self.channels.add(channel)
                    await self.pubsub.ssubscribe(channel)
                else:
                    self.plain.add(channel)
                    await self.pubsub.subscribe(channel)
            if self.task is None:
                self.task = asyncio.create_task(self._read(), name=f"events-{self.name or 'redis'}")
        await asyncio.shield(future)

    async def unsubscribe(self, channel: str) -> None:
        sharded = channel in self.channels
        self.channels.discard(channel)
        self.plain.discard(channel)
        future = self.confirmed.pop(channel, None)
        if future is not None and not future.done():
            future.cancel()
        with contextlib.suppress(RedisError, OSError):
            async with self.sending:
                if sharded:
                    await self.pubsub.sunsubscribe(channel)
                else:
                    await self.pubsub.unsubscribe(channel)

    async def _read(self) -> None:
        """Hand out messages until cancelled, reconnecting as needed; returns when there is
        nothing left to listen to (the next subscription starts a new reader)."""
        delay = 0.1
        while True:
            if not self.channels and not self.plain and self.pubsub.connection is None:
                self.task = None
                if self.orphaned:
                    with contextlib.suppress(Exception):
                        await self.client.aclose()
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
        elif kind == "message":
            self.hub.announce(message["data"])
        elif kind in ("ssubscribe", "subscribe"):
            future = self.confirmed.get(channel)
            if future is not None and future.done() and channel not in self.resubscribed:
                # A confirmation for a channel confirmed before: the client reconnected on its
                # own, and announcements in between are lost.
                self.hub.resync(channel)
            elif future is not None and not future.done():
                future.set_result(None)
            if channel in self.resubscribed:
                self.resubscribed.discard(channel)
                self.hub.resync(channel)

    async def _reconnect(self, delay: float) -> None:
        """A new connection with every channel subscribed again; each channel's subscribers
        catch up from the log when Redis confirms it. On a cluster, the channels whose slots
        another node serves now (a replica took over) move to that node's connection first."""
        with contextlib.suppress(Exception):
            await self.pubsub.aclose()  # type: ignore[no-untyped-call]
        await asyncio.sleep(delay)
        self.pubsub = self.client.pubsub()
        if self.name:
            await self.hub.rehome(self)
        for channel in [*self.channels, *self.plain]:
            future = asyncio.get_running_loop().create_future()
            old = self.confirmed.get(channel)
            if old is not None and not old.done():
                future = old  # a subscriber is waiting on this one
            self.confirmed[channel] = future
        self.resubscribed = self.channels | self.plain
        try:
            if self.channels:
                await self.pubsub.ssubscribe(*self.channels)
            if self.plain:
                await self.pubsub.subscribe(*self.plain)
        except (RedisError, OSError):
            return  # the next read fails too and we come back here

    def release(self, channel: str) -> asyncio.Future[None] | None:
        """Forget ``channel`` without unsubscribing (its connection is gone); the confirmation
        a subscriber still waits for, if any."""
        self.channels.discard(channel)
        self.plain.discard(channel)
        self.resubscribed.discard(channel)
        future = self.confirmed.pop(channel, None)
        return future if future is not None and not future.done() else None

    async def adopt(
        self, channel: str, sharded: bool, waiting: asyncio.Future[None] | None
    ) -> None:
        """Subscribe a channel that moved here from a failed node; its subscribers catch up
        from the log once Redis confirms it (``waiting``: a confirmation someone awaits)."""
        self.confirmed[channel] = waiting or asyncio.get_running_loop().create_future()
        self.resubscribed.add(channel)
        async with self.sending:
            (self.channels if sharded else self.plain).add(channel)
            with contextlib.suppress(RedisError, OSError):  # else this node's reader resubscribes
                if sharded:
                    await self.pubsub.ssubscribe(channel)
                else:
                    await self.pubsub.subscribe(channel)
        if self.task is None:
            self.task = asyncio.create_task(self._read(), name=f"events-{self.name}")

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
        self._mailboxes: set[Mailbox] = set()
        # mailboxes told of new streams, and the (tenant, model) whose streams they hear of
        self._watchers: dict[Mailbox, tuple[str, str]] = {}
        self._lock = asyncio.Lock()
        self._closed = False
        # Log reads by subscribers starting or catching up, at most this many at once: a burst
        # of thousands of subscribers queues here instead of exhausting the Redis client's pool.
        self.log_reads = asyncio.Semaphore(LOG_READS_MAX)

    def _check_open(self) -> None:
        if self._closed:
            raise Overloaded("the service is shutting down; subscribe to another replica")

    def open_mailbox(self, transport: str, resume_hint: str) -> Mailbox:
        """A connection-level queue for a subscriber of several streams (counted as one
        subscriber of ``transport``); give it back with ``release``."""
        self._check_open()
        mailbox = Mailbox(transport, self.buffer_events, resume_hint)
        self._mailboxes.add(mailbox)
        self.metrics.subscribers.labels(transport).inc()
        return mailbox

    async def release(self, mailbox: Mailbox, subs: list[Subscription]) -> None:
        """The connection ended: drop its subscriptions, its watch and its count."""
        if mailbox in self._mailboxes:
            self._mailboxes.discard(mailbox)
            self.metrics.subscribers.labels(mailbox.transport).dec()
        for sub in subs:
            await self.unsubscribe(sub)
        await self.unwatch(mailbox)

    async def subscribe(
        self, tenant: str, model: str, stream: str, mailbox: Mailbox | None = None
    ) -> Subscription:
        """A subscription to a stream of ``tenant``, whose channel is subscribed in Redis
        (confirmed) when this returns; raises RedisUnavailable when Redis cannot be reached.
        With ``mailbox``, its items go to that connection's queue (and the connection is what
        counts as a subscriber)."""
        self._check_open()
        channel = self.store.stream_keys(tenant, model, stream).channel
        if mailbox is None:  # a single-stream subscriber: the connection is this subscription
            own = self.open_mailbox("sse", _SSE_HINT)
            sub = Subscription(tenant, model, stream, channel, own, True)
        else:
            sub = Subscription(tenant, model, stream, channel, mailbox, False)
        subs = self._subs.get(channel)
        if subs is None:
            subs = self._subs[channel] = set()
            self.metrics.subscribed_streams.inc()
        subs.add(sub)
        self._names[channel] = (model, stream)
        try:
            node = await self._node_for(channel)
            await asyncio.wait_for(node.subscribe(channel), self.store.timeout_s)
        except (RedisError, OSError, TimeoutError) as exc:
            await self.unsubscribe(sub)
            self.store.clients.refresh_soon()  # a cluster node failed: is another serving it?
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

    async def rehome(self, node: _Node) -> None:
        """``node``'s connection to a cluster node failed: move each of its channels that
        another node serves now (its replica took over) to that node's connection. The channels
        that stay are left to ``node``, which keeps trying."""
        channels = [*node.channels, *node.plain]
        if not channels:
            return
        try:
            owners = await self.store.channel_nodes(channels)
        except RedisUnavailable:
            return  # the slot map could not be read: the next attempt asks again
        moved: dict[str, int] = {}
        async with self._lock:
            for channel in channels:
                name = owners.get(channel)
                if name in (None, node.name) or self._channel_node.get(channel) is not node:
                    continue
                target = self._nodes.get(name)
                if target is None:
                    try:
                        name, client = await self.store.subscriber_client(channel)
                    except RedisUnavailable:
                        continue
                    target = self._nodes.get(name)
                    if target is None:
                        target = self._nodes[name] = _Node(self, name, client)
                    else:
                        await client.aclose()
                sharded = channel in node.channels
                waiting = node.release(channel)
                self._channel_node[channel] = target
                await target.adopt(channel, sharded, waiting)
                moved[target.name] = moved.get(target.name, 0) + 1
            if not node.channels and not node.plain and self._nodes.get(node.name) is node:
                del self._nodes[node.name]
                node.orphaned = True
        for name, count in moved.items():
            log.info("%d event channels moved from Redis node %s to %s", count, node.name, name)

    async def unsubscribe(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.channel)
        if subs is None or sub not in subs:
            return
        subs.discard(sub)
        if sub.owns_mailbox and sub.mailbox in self._mailboxes:
            self._mailboxes.discard(sub.mailbox)
            self.metrics.subscribers.labels(sub.mailbox.transport).dec()
        if not subs:
            del self._subs[sub.channel]
            self._names.pop(sub.channel, None)
            self.metrics.subscribed_streams.dec()
            node = self._channel_node.pop(sub.channel, None)
            if node is not None:
                await node.unsubscribe(sub.channel)

    async def watch(self, mailbox: Mailbox, tenant: str, model: str) -> None:
        """Queue a ``NewStream`` to ``mailbox`` for every generation of a stream of ``tenant``
        and ``model`` that begins from now on (and REDISCOVER when announcements may have been
        lost); the new-streams channel is subscribed (confirmed) when this returns."""
        self._check_open()
        if mailbox in self._watchers:
            return
        self._watchers[mailbox] = (tenant, model)
        channel = self.store.new_streams_channel
        try:
            node = await self._node_for(channel)
            await asyncio.wait_for(node.subscribe(channel, sharded=False), self.store.timeout_s)
        except (RedisError, OSError, TimeoutError) as exc:
            await self.unwatch(mailbox)
            self.store.clients.refresh_soon()
            self.metrics.redis_errors.labels("subscribe").inc()
            raise RedisUnavailable(
                f"Redis did not confirm the subscription ({type(exc).__name__}); retry later"
            ) from exc
        except BaseException:
            await self.unwatch(mailbox)
            raise

    async def unwatch(self, mailbox: Mailbox) -> None:
        if mailbox not in self._watchers:
            return
        del self._watchers[mailbox]
        if not self._watchers:
            channel = self.store.new_streams_channel
            node = self._channel_node.pop(channel, None)
            if node is not None:
                await node.unsubscribe(channel)

    def announce(self, message: bytes) -> None:
        """A new-streams message: tell every watcher of that stream's tenant and model."""
        parsed = self.store.parse_new_stream(message)
        if parsed is None:
            return
        (tenant, model, stream), floor = parsed
        item = NewStream(tenant, model, stream, floor)
        for mailbox, scope in list(self._watchers.items()):
            if scope == (tenant, model):
                mailbox.push(None, item)

    def dispatch(self, channel: str, message: bytes) -> None:
        subs = self._subs.get(channel)
        if not subs:
            return
        model, stream = self._names[channel]
        batch = decode_message(model, stream, message)
        for sub in list(subs):
            if not sub.push(batch):
                self.metrics.subscribers_closed.labels("too_slow").inc()
                sub.close("subscriber_too_slow", sub.too_slow())

    def resync(self, channel: str) -> None:
        if channel == self.store.new_streams_channel:
            for mailbox in list(self._watchers):
                mailbox.push(None, REDISCOVER)
            return
        for sub in list(self._subs.get(channel, ())):
            sub.push(RESYNC)

    def end_subscriptions(self) -> None:
        """The service is stopping: end every subscription (each is told why) and take no more."""
        self._closed = True
        for mailbox in self._mailboxes:
            if mailbox.reason is None:
                self.metrics.subscribers_closed.labels("shutdown").inc()
            mailbox.close("shutting_down", f"the service is stopping; {mailbox.resume_hint}")

    async def close(self) -> None:
        """End every subscription and close the pub/sub connections."""
        self.end_subscriptions()
        for node in list(self._nodes.values()):
            await node.close()
        self._nodes.clear()
        self._channel_node.clear()

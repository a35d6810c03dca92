"""Streams that expired: Redis keyspace notifications for expired state keys.

Idle streams end by Redis TTL, which no request sees, so what follows from an expiry is learnt
from Redis itself: with ``notify-keyspace-events`` holding ``K`` (keyspace channels) and ``x``
(expired events), Redis publishes ``expired`` on ``__keyspace@<db>__:<key>`` when it removes a
key. Pattern subscriptions per served model (the patterns come from the state store, which owns
the key layout: one for the default tenant's keys, one for every other tenant's) filter on the
server, so another deployment's keys in a shared Redis cost nothing. Each expired key is mapped to
its stream (tenant, model, stream): it counts into ``lstm_streams_expired_total{model}`` (every
tenant's streams alike), and the streams are handed to ``on_expired`` (the batcher, which takes
them out of their tenants' counts of live streams), the messages waiting at once together.

Limits, said in the metric's help and the README too:

- Only one process of a replica watches (worker 0, or the single process), else each expiry would
  count once per worker. Replicas on several hosts each count every expiry: aggregate with max.
- Every primary publishes only its own keys' events, so each primary is watched: the one server,
  the primary the sentinels name (found again after a failover), or each primary of a cluster
  (listed again whenever a watch's connection fails, as a replica may have taken over its slots,
  and every 15 s from the client's slot map, which finds primaries added later).
- Pub/sub does not queue: expiries while the watcher is disconnected are not counted (nor taken
  out of a tenant's count of live streams: the count repairs itself at its limit, see
  ``state_store.QUOTA_SCRIPT``).
- When ``notify-keyspace-events`` lacks the flags, the watcher sets them with ``CONFIG SET`` (on a
  shared server that is a change for everyone; a restarted server forgets it, and a promoted
  replica never had it, so it is redone on every connection). Where ``CONFIG`` is refused
  (managed services often rename it), it warns once and listens anyway: the count stays 0 unless
  the operator enabled ``Kx``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisClusterException, RedisError, ResponseError

from ..core.errors import ServiceError
from ..core.metrics import Metrics
from .redis_clients import ClientFactory, RedisClients
from .state_store import StreamId

__all__ = ["ExpiryWatcher", "with_expired_flags"]

log = logging.getLogger(__name__)

_SETTING = "notify-keyspace-events"
# A watch whose connection fails starts again after a back-off that doubles from the first to the
# last of these, and starts from the first again once a connection held.
_BACKOFF_MIN_S = 0.25
_BACKOFF_MAX_S = 4.0
_RELIST_S = 15.0  # how often the primaries are listed again while every watch holds
# Expiries handled together at most: those waiting when one arrives (a burst of streams that
# went idle together costs one call of on_expired per this many, not one each).
_EXPIRIES_PER_CALL = 512


def with_expired_flags(flags: str) -> str:
    """``flags`` plus what expired-key events on keyspace channels need (``A`` includes ``x``)."""
    if "K" not in flags:
        flags += "K"
    if "x" not in flags and "A" not in flags:
        flags += "x"
    return flags


class ExpiryWatcher:
    """Counts expiries of state keys into ``lstm_streams_expired_total{model}`` and hands the
    expired streams to ``on_expired``.

    ``key_globs`` match the state keys to watch (the served models'); ``parse_key`` maps a state
    key to its stream. A failure of ``on_expired`` (Redis did not answer) is logged and the
    watching goes on.
    """

    def __init__(
        self,
        clients: RedisClients,
        key_globs: Sequence[str],
        parse_key: Callable[[str], StreamId | None],
        metrics: Metrics,
        on_expired: Callable[[Sequence[StreamId]], Awaitable[None]] | None = None,
    ) -> None:
        self._clients = clients
        self._globs = list(key_globs)
        self._parse_key = parse_key
        self._on_expired = on_expired
        self._metrics = metrics
        self._warned_config = False
        self._stopping = False

    async def run(self) -> None:
        """Watch every primary until ``stop``, following failovers: a watch whose connection
        fails ends, and the primaries are listed again (from a slot map read anew on a
        cluster), so that the replica that took over is watched instead."""
        watches: dict[str, asyncio.Task[bool]] = {}
        backoff: dict[str, float] = {}  # name -> the wait before its next watch starts
        unlisted = 0.0  # the wait after the primaries could not be listed
        refresh = True
        try:
            while not self._stopping:
                primaries: dict[str, ClientFactory] | None = None
                try:
                    primaries = await self._clients.primaries(refresh, health_check_interval=30)
                except (RedisError, OSError, RedisClusterException) as exc:
                    log.debug("expiry watcher: Redis did not answer (%s)", type(exc).__name__)
                    unlisted = min(max(_BACKOFF_MIN_S, unlisted * 2), _BACKOFF_MAX_S)
                    if not watches:
                        await asyncio.sleep(unlisted)
                        continue
                if primaries is not None:  # else the watches that run carry on
                    unlisted = 0.0
                    for name in set(watches) - set(primaries):  # no longer a primary
                        watches.pop(name).cancel()
                    for name, make in primaries.items():
                        if name not in watches:
                            wait = backoff.get(name, 0.0)
                            watches[name] = asyncio.create_task(self._watch(make, wait))
                done, _ = await asyncio.wait(
                    watches.values(),
                    timeout=_RELIST_S if primaries is not None else unlisted,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                refresh = bool(done) or primaries is None
                for name, task in list(watches.items()):
                    if task in done:
                        del watches[name]
                        held = not task.cancelled() and task.exception() is None and task.result()
                        wait = min(max(_BACKOFF_MIN_S, backoff.get(name, 0.0) * 2), _BACKOFF_MAX_S)
                        backoff[name] = _BACKOFF_MIN_S if held else wait
        finally:
            for task in watches.values():
                task.cancel()
            for task in watches.values():
                with contextlib.suppress(BaseException):
                    await task

    async def stop(self, task: asyncio.Task[None]) -> None:
        """Stop ``task`` (running ``run``). A cancellation that lands early in a connection's
        life was seen to get lost inside redis-py, leaving the watcher to reconnect forever and
        the shutdown waiting on it; so the loops also check a flag, and the task is cancelled
        again until it ends."""
        self._stopping = True
        while not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=0.5)

    async def _watch(self, make: ClientFactory, wait_s: float) -> bool:
        """One connection to one primary, after ``wait_s``: listen until it fails. Whether it
        held (was subscribed) before failing."""
        await asyncio.sleep(wait_s)
        if self._stopping:
            return False
        # No retries inside redis-py: a fault must end this watch, so that the next one checks
        # the server's notify-keyspace-events again (a restarted server forgot a CONFIG SET, a
        # promoted replica never had it) and, after a failover, finds the new primary.
        client = make()
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        held = False
        try:
            await self._enable_notifications(client)
            db = int(client.connection_pool.connection_kwargs.get("db", 0))
            channel_head = f"__keyspace@{db}__:"
            await pubsub.psubscribe(*(channel_head + glob for glob in self._globs))
            held = True
            while not self._stopping:
                message = await pubsub.get_message(timeout=10.0)
                expired: list[StreamId] = []
                while message is not None:
                    stream = self._expired_stream(message, channel_head)
                    if stream is not None:
                        expired.append(stream)
                    if len(expired) >= _EXPIRIES_PER_CALL:
                        break
                    message = await pubsub.get_message(timeout=0.0)  # those waiting
                if expired:
                    await self._expired(expired)
        except (RedisError, OSError) as exc:
            log.debug("expiry watcher: Redis did not answer (%s)", type(exc).__name__)
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]
            await client.aclose()
        return held

    def _expired_stream(self, message: dict[str, Any], channel_head: str) -> StreamId | None:
        """The stream whose state key a keyspace message says expired, if it says that."""
        if message.get("type") != "pmessage" or message["data"] not in (b"expired", "expired"):
            return None
        channel = message["channel"]
        channel = channel.decode() if isinstance(channel, bytes) else channel
        if not channel.startswith(channel_head):
            return None
        return self._parse_key(channel[len(channel_head) :])

    async def _expired(self, streams: list[StreamId]) -> None:
        for stream in streams:
            self._metrics.streams_expired.labels(stream.model).inc()
        if self._on_expired is None:
            return
        try:
            await self._on_expired(streams)
        except ServiceError as exc:
            log.warning(
                "%d expired streams stay counted against their tenants' limits: %s",
                len(streams),
                exc,
            )
        except Exception:  # a bug: the watching goes on
            log.exception("could not hand on %d expired streams", len(streams))

    async def _enable_notifications(self, client: Redis) -> None:
        try:
            current = str((await client.config_get(_SETTING)).get(_SETTING) or "")
            wanted = with_expired_flags(current)
            if wanted != current:
                await client.config_set(_SETTING, wanted)
                log.info("Redis: set notify-keyspace-events to %r to count expired streams", wanted)
        except ResponseError as exc:  # CONFIG renamed away, or not permitted for this user
            if not self._warned_config:
                self._warned_config = True
                log.warning(
                    "Redis refused CONFIG (%s): lstm_streams_expired_total counts only if the "
                    "server's notify-keyspace-events already holds K and x",
                    exc,
                )

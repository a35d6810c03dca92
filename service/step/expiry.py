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
- On a Redis Cluster every primary publishes only its own keys' events, so each primary known at
  start-up is watched (a primary added later is not).
- Pub/sub does not queue: expiries while the watcher is disconnected are not counted (nor taken
  out of a tenant's count of live streams: the count repairs itself at its limit, see
  ``state_store.QUOTA_SCRIPT``).
- When ``notify-keyspace-events`` lacks the flags, the watcher sets them with ``CONFIG SET`` (on a
  shared server that is a change for everyone, and a restarted server forgets it, so it is redone
  on every reconnection). Where ``CONFIG`` is refused (managed services often rename it), it
  warns once and listens anyway: the count stays 0 unless the operator enabled ``Kx``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError

from ..core.errors import ServiceError
from ..core.metrics import Metrics
from .state_store import StreamId

__all__ = ["ExpiryWatcher", "with_expired_flags"]

log = logging.getLogger(__name__)

_SETTING = "notify-keyspace-events"
_BACKOFF_MAX_S = 30.0
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


def _node_url(url: str, host: str, port: int) -> str:
    """``url`` (credentials, TLS options and all) pointed at another node."""
    parts = urlsplit(url)
    auth = parts.netloc.rpartition("@")[0]
    netloc = f"{auth}@{host}:{port}" if auth else f"{host}:{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


class ExpiryWatcher:
    """Counts expiries of state keys into ``lstm_streams_expired_total{model}`` and hands the
    expired streams to ``on_expired``.

    ``key_globs`` match the state keys to watch (the served models'); ``parse_key`` maps a state
    key to its stream. A failure of ``on_expired`` (Redis did not answer) is logged and the
    watching goes on.
    """

    def __init__(
        self,
        url: str,
        key_globs: Sequence[str],
        parse_key: Callable[[str], StreamId | None],
        metrics: Metrics,
        timeout_s: float,
        on_expired: Callable[[Sequence[StreamId]], Awaitable[None]] | None = None,
    ) -> None:
        self._url = url
        self._globs = list(key_globs)
        self._parse_key = parse_key
        self._on_expired = on_expired
        self._metrics = metrics
        self._timeout_s = timeout_s
        self._warned_config = False
        self._stopping = False

    async def run(self) -> None:
        """Watch until ``stop``; reconnects by itself after Redis faults."""
        delay = 1.0
        while not self._stopping:
            try:
                nodes = await self._primaries()
            except (RedisError, OSError) as exc:
                log.debug("expiry watcher: Redis did not answer (%s)", type(exc).__name__)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _BACKOFF_MAX_S)
                continue
            await asyncio.gather(*(self._watch(node) for node in nodes))

    def _client(self, url: str) -> Redis:
        # No retries inside redis-py: a fault must reach _watch, which re-checks the server's
        # notify-keyspace-events (a restarted server forgot a CONFIG SET) before resubscribing.
        return Redis.from_url(
            url,
            socket_connect_timeout=self._timeout_s,
            health_check_interval=30,
            retry=Retry(NoBackoff(), 0),
        )

    async def _primaries(self) -> list[str]:
        """URLs of the nodes that publish expiries: the server, or each cluster primary."""
        probe = self._client(self._url)
        try:
            info = await probe.info("cluster")
        finally:
            await probe.aclose()
        if str(info.get("cluster_enabled", 0)) != "1":
            return [self._url]
        cluster = RedisCluster.from_url(self._url, socket_connect_timeout=5.0)
        try:
            await cluster.initialize()
            return [_node_url(self._url, n.host, int(n.port)) for n in cluster.get_primaries()]
        finally:
            await cluster.aclose()

    async def stop(self, task: asyncio.Task[None]) -> None:
        """Stop ``task`` (running ``run``). A cancellation that lands early in a connection's
        life was seen to get lost inside redis-py, leaving the watcher to reconnect forever and
        the shutdown waiting on it; so the loops also check a flag, and the task is cancelled
        again until it ends."""
        self._stopping = True
        while not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=0.5)

    async def _watch(self, url: str) -> None:
        delay = 1.0
        while not self._stopping:
            client = self._client(url)
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                await self._enable_notifications(client)
                db = int(client.connection_pool.connection_kwargs.get("db", 0))
                channel_head = f"__keyspace@{db}__:"
                await pubsub.psubscribe(*(channel_head + glob for glob in self._globs))
                delay = 1.0
                while True:
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
            await asyncio.sleep(delay)
            delay = min(delay * 2, _BACKOFF_MAX_S)

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

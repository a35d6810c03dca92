"""Counting streams that expired: Redis keyspace notifications for expired state keys.

Idle streams end by Redis TTL, which no request sees, so the count comes from Redis itself: with
``notify-keyspace-events`` holding ``K`` (keyspace channels) and ``x`` (expired events), Redis
publishes ``expired`` on ``__keyspace@<db>__:<key>`` when it removes a key. One pattern
subscription per served model (the pattern comes from the state store, which owns the key layout)
filters on the server, so another deployment's keys in a shared Redis cost nothing.

Limits, said in the metric's help and the README too:

- Only one process of a replica watches (worker 0, or the single process), else each expiry would
  count once per worker. Replicas on several hosts each count every expiry: aggregate with max.
- Every primary publishes only its own keys' events, so each primary is watched: the one server,
  the primary the sentinels name (found again after a failover), or each primary of a cluster
  (listed again whenever a watch's connection fails, as a replica may have taken over its slots,
  and every 15 s from the client's slot map, which finds primaries added later).
- Pub/sub does not queue: expiries while the watcher is disconnected are not counted.
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
from collections.abc import Mapping

from redis.asyncio import Redis
from redis.exceptions import RedisClusterException, RedisError, ResponseError

from ..core.metrics import Metrics
from .redis_clients import ClientFactory, RedisClients

__all__ = ["ExpiryWatcher", "with_expired_flags"]

log = logging.getLogger(__name__)

_SETTING = "notify-keyspace-events"
# A watch whose connection fails starts again after a back-off that doubles from the first to the
# last of these, and starts from the first again once a connection held.
_BACKOFF_MIN_S = 0.25
_BACKOFF_MAX_S = 4.0
_RELIST_S = 15.0  # how often the primaries are listed again while every watch holds


def with_expired_flags(flags: str) -> str:
    """``flags`` plus what expired-key events on keyspace channels need (``A`` includes ``x``)."""
    if "K" not in flags:
        flags += "K"
    if "x" not in flags and "A" not in flags:
        flags += "x"
    return flags


class ExpiryWatcher:
    """Counts expiries of state keys into ``lstm_streams_expired_total{model}``.

    ``key_globs`` maps a glob that matches a model's state keys to that model's name.
    """

    def __init__(
        self,
        clients: RedisClients,
        key_globs: Mapping[str, str],
        metrics: Metrics,
    ) -> None:
        self._clients = clients
        self._globs = dict(key_globs)
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
            patterns = {f"__keyspace@{db}__:{glob}": m for glob, m in self._globs.items()}
            await pubsub.psubscribe(*patterns)
            held = True
            while not self._stopping:
                message = await pubsub.get_message(timeout=10.0)
                if message is not None and message["data"] in (b"expired", "expired"):
                    pattern = message["pattern"]
                    pattern = pattern.decode() if isinstance(pattern, bytes) else pattern
                    model = patterns.get(pattern)
                    if model is not None:
                        self._metrics.streams_expired.labels(model).inc()
        except (RedisError, OSError) as exc:
            log.debug("expiry watcher: Redis did not answer (%s)", type(exc).__name__)
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]
            await client.aclose()
        return held

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

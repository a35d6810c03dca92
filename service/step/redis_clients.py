"""Every Redis client a process opens, made from ``REDIS_URL`` (its forms: ``core/redis_url.py``),
and how each follows a failover.

Three deployments, told apart on first contact and served alike:

- standalone: every client connects to the one server.
- Sentinel: every client connects to the primary that the sentinels name, and asks them again for
  each new connection (redis-py's ``SentinelConnectionPool``). A connection that broke in a
  failover reconnects to the promoted replica; while the sentinels name no healthy primary,
  connecting fails at once, so callers answer 503 rather than wait. A sentinel that demotes a
  primary also closes its clients' connections, so none stays on a replica. One ``Sentinel`` (the
  connections to the sentinels) serves every client of the process.
- cluster (``INFO cluster`` says so): one ``RedisCluster`` for single commands; batches go through
  ``node_pipelines``, one pipeline per node, so that a node that fails fails only its own
  commands. A node failure has the slot map read again, at most every 100 ms, until the replica
  that took over is found; a batch whose node failed is sent to it at once if it is there.
  Pub/sub and keyspace notifications need a connection to a given node: they are placed by the
  same map (``dedicated``, ``owners``, ``primaries``).

Dedicated clients (pub/sub, keyspace notifications) never retry inside redis-py: their owner must
hear of every lost connection, since pub/sub keeps nothing for a disconnected subscriber.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from redis.asyncio import ConnectionPool, Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode, PipelineCommand
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MovedError,
    RedisClusterException,
    RedisError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..core.redis_url import SENTINEL_SCHEMES, parse_sentinel_url

__all__ = ["ClientFactory", "RedisClients"]

log = logging.getLogger(__name__)

ClientFactory = Callable[[], Redis]  # makes a new dedicated client to one node

# A failed cluster node makes the slot map be read again, at most this often: during a failover
# every batch touching the node fails until a replica has taken over.
_REFRESH_INTERVAL_S = 0.1
# Node errors after which the slot map may be out of date: the node failed, or said so.
_TOPOLOGY_ERRORS = (
    RedisConnectionError,
    RedisTimeoutError,
    OSError,
    ClusterDownError,
    SlotNotCoveredError,
)
_REDIRECTIONS = (MovedError, AskError, TryAgainError)
# Errors of a node's connection: its replies did not come, whatever its commands did.
_CONNECTION_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError)


class RedisClients:
    """The clients of one process: one shared client for commands (``command_client``), and
    dedicated ones on demand. ``options`` are the shared client's connection arguments."""

    def __init__(self, url: str, timeout_s: float, options: Mapping[str, Any]) -> None:
        self.timeout_s = timeout_s
        self._url = url
        self._options = dict(options)
        self._client: Redis | RedisCluster | None = None
        self._connecting = asyncio.Lock()
        self._sentinel: Sentinel | None = None
        self._service_name = ""
        self._primary_kwargs: dict[str, Any] = {}
        if urlsplit(url).scheme in SENTINEL_SCHEMES:
            parsed = parse_sentinel_url(url)
            self._service_name = parsed.service_name
            self._primary_kwargs = parsed.primary_kwargs()
            self._sentinel = Sentinel(  # type: ignore[no-untyped-call]
                list(parsed.sentinels),
                sentinel_kwargs={
                    "socket_timeout": timeout_s,
                    "socket_connect_timeout": timeout_s,
                    # One immediate retry (a pooled connection to a sentinel that restarted),
                    # then the next sentinel: redis-py's default backs off for seconds first.
                    "retry": Retry(NoBackoff(), 1),
                    **parsed.sentinel_kwargs(),
                },
            )
        self._refreshing: asyncio.Task[None] | None = None
        self._refreshed_at = 0.0

    async def command_client(self) -> Redis | RedisCluster:
        """The shared client, created on first contact once we know what Redis is."""
        if self._client is not None:
            return self._client
        async with self._connecting:  # one probe, however many callers arrive at once
            if self._client is None:
                self._client = await self._probe()
            return self._client

    async def _probe(self) -> Redis | RedisCluster:
        if self._sentinel is not None:  # a primary that sentinels watch is never a cluster
            return _from_sentinel(
                self._sentinel, self._service_name, self._primary_kwargs, self._options
            )
        probe = Redis.from_url(self._url, **self._options)
        try:
            info = await probe.info("cluster")
        except BaseException:
            await probe.aclose()
            raise
        if str(info.get("cluster_enabled", 0)) != "1":
            return probe
        await probe.aclose()
        cluster = RedisCluster.from_url(self._url, **self._options)
        try:
            await cluster.initialize()
        except BaseException:
            await cluster.aclose()
            raise
        return cluster

    def _dedicated_options(self, overrides: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "socket_connect_timeout": self.timeout_s,
            "socket_keepalive": True,
            # Commands and the connection's handshake wait this long (a frozen server must not
            # hang a subscriber's request); reads of messages pass a timeout of their own.
            "socket_timeout": self.timeout_s,
            "retry": Retry(NoBackoff(), 0),
            **overrides,
        }

    async def dedicated(self, key: str, **overrides: Any) -> tuple[str, Redis]:
        """A new client of its own to the node serving ``key`` (a channel name), and that node's
        name ("" unless on a cluster). ``overrides``: connection arguments."""
        client = await self.command_client()
        options = self._dedicated_options(overrides)
        if not isinstance(client, RedisCluster):
            return "", self._single(options)
        node = client.get_node_from_key(key)
        if node is None:
            raise SlotNotCoveredError(f"no cluster node serves {key}")
        return node.name, _node_client(node, options)

    def _single(self, options: Mapping[str, Any]) -> Redis:
        if self._sentinel is not None:
            return _from_sentinel(self._sentinel, self._service_name, self._primary_kwargs, options)
        return Redis.from_url(self._url, **options)

    async def owners(self, keys: Iterable[str]) -> dict[str, str]:
        """The name of the node serving each key, from a slot map read now ("" for every key
        unless on a cluster); raises RedisError when no node answers."""
        client = await self.command_client()
        if not isinstance(client, RedisCluster):
            return dict.fromkeys(keys, "")
        await self.refresh()
        found = {}
        for key in keys:
            node = client.get_node_from_key(key)
            if node is not None:
                found[key] = node.name
        return found

    async def primaries(self, refresh: bool, **overrides: Any) -> dict[str, ClientFactory]:
        """Each primary's name ("" unless on a cluster) and a maker of dedicated clients to it;
        ``refresh``: from a cluster's slot map read now, else from the one the client holds."""
        client = await self.command_client()
        options = self._dedicated_options(overrides)
        if not isinstance(client, RedisCluster):
            return {"": lambda: self._single(options)}
        if refresh:
            await self.refresh()
        return {
            node.name: (lambda node=node: _node_client(node, options))  # type: ignore[misc]
            for node in client.get_primaries()
        }

    async def refresh(self) -> None:
        """Read a cluster's slot map again now (nothing on a standalone Redis or Sentinel)."""
        client = await self.command_client()
        if isinstance(client, RedisCluster):
            self._refreshed_at = time.monotonic()
            await client.nodes_manager.initialize()

    def refresh_soon(self) -> None:
        """Read a cluster's slot map again in the background, at most every 100 ms: a node
        failed, and a replica may be taking over."""
        if not isinstance(self._client, RedisCluster):
            return
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.create_task(self._refresh_later(), name="redis-slots")

    async def _refresh_later(self) -> None:
        await asyncio.sleep(max(0.0, self._refreshed_at + _REFRESH_INTERVAL_S - time.monotonic()))
        try:
            await self.refresh()
        except (RedisError, OSError, RedisClusterException) as exc:
            log.debug("Redis Cluster: slot map not read (%s)", type(exc).__name__)

    async def node_pipelines(
        self, client: RedisCluster, commands: Sequence[tuple[str, tuple[Any, ...]]]
    ) -> list[Any]:
        """Each ``(key, command)``'s reply, or the exception its node answered: one pipeline per
        node, the nodes in parallel. A node that fails fails only its own commands (its
        connection error is each one's reply). Its failure has the slot map read again at once
        (at most every 100 ms), and its commands whose slots another node serves now (a replica
        took over) are sent there, once: a refused connection ran nothing, and a commit cut off
        mid-reply is one the commit script recognises when it comes again. Redirections (a slot
        that moved) are followed one command at a time, as redis-py's own cluster pipeline
        does."""
        await client.initialize()  # again, if a failed command marked the map for it
        slots = [client.keyslot(key) for key, _ in commands]
        replies: list[Any] = [None] * len(commands)
        failed = await self._send(client, commands, slots, range(len(commands)), replies)
        stale = bool(failed)
        if failed and time.monotonic() - self._refreshed_at >= _REFRESH_INTERVAL_S:
            try:
                await self.refresh()
            except (RedisError, OSError, RedisClusterException):
                pass
            else:
                moved = [i for i, name in failed.items() if _owner(client, slots[i]) != name]
                if moved:
                    failed = await self._send(client, commands, slots, moved, replies)
                stale = bool(failed)
        for position, reply in enumerate(replies):
            if isinstance(reply, _REDIRECTIONS):
                try:
                    replies[position] = await client.execute_command(*commands[position][1])
                except Exception as exc:  # its own reply, as any other error
                    replies[position] = exc
            elif isinstance(reply, _TOPOLOGY_ERRORS):
                stale = True
        if stale:
            self.refresh_soon()
        return replies

    @staticmethod
    async def _send(
        client: RedisCluster,
        commands: Sequence[tuple[str, tuple[Any, ...]]],
        slots: Sequence[int],
        which: Iterable[int],
        replies: list[Any],
    ) -> dict[int, str]:
        """Send the commands at positions ``which``, one pipeline per node, their replies into
        ``replies``; the positions whose node's connection failed, with that node's name."""
        manager = client.nodes_manager
        groups: dict[str, tuple[ClusterNode, list[PipelineCommand]]] = {}
        for position in which:
            try:
                node = manager.get_node_from_slot(slots[position])
            except SlotNotCoveredError as exc:
                replies[position] = exc
                continue
            if node.name not in groups:
                groups[node.name] = (node, [])
            groups[node.name][1].append(PipelineCommand(position, *commands[position][1]))
        sent = await asyncio.gather(
            *(node.execute_pipeline(batch) for node, batch in groups.values()),
            return_exceptions=True,
        )
        failed: dict[int, str] = {}
        for (name, (_, batch)), outcome in zip(groups.items(), sent, strict=True):
            if isinstance(outcome, BaseException) and not isinstance(outcome, Exception):
                raise outcome  # cancelled
            for command in batch:
                # nothing was read from a node whose pipeline raised
                reply = outcome if isinstance(outcome, Exception) else command.result
                replies[command.position] = reply
                if isinstance(reply, _CONNECTION_ERRORS):
                    failed[command.position] = name
        return failed

    async def aclose(self) -> None:
        if self._refreshing is not None:
            self._refreshing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refreshing
            self._refreshing = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        if self._sentinel is not None:
            await self._sentinel.aclose()


def _from_sentinel(
    sentinel: Sentinel, service_name: str, primary: Mapping[str, Any], options: Mapping[str, Any]
) -> Redis:
    """A client of the primary the sentinels name for ``service_name``, asked again for every
    new connection."""
    client: Redis = sentinel.master_for(service_name, **{**primary, **options})
    return client


def _owner(client: RedisCluster, slot: int) -> str | None:
    """The name of the primary serving ``slot`` in the client's slot map (None: no node)."""
    try:
        return str(client.nodes_manager.get_node_from_slot(slot).name)
    except SlotNotCoveredError:
        return None


def _node_client(node: ClusterNode, options: Mapping[str, Any]) -> Redis:
    """A client of its own to one cluster node (the cluster's credentials and TLS settings)."""
    kwargs = {**node.connection_kwargs, **options}
    return Redis(connection_pool=ConnectionPool(connection_class=node.connection_class, **kwargs))

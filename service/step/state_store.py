"""Per-stream state in Redis: every key name and every Lua script live here.

One record per (model, stream), a single Redis string (its layout: ``record.py``). Beside the
record, each stream has an event log: a Redis Stream whose entry ids are the event ids
(``{generation}-{seq}``), one entry per applied step with the fields ``v`` (model version), ``t``
(commit time, Unix ms), ``x`` (values, float64), ``y`` (prediction, float32) and ``r`` (the
reading's own ts as JSON, or empty). Keys carry a Redis Cluster hash tag per stream
(``{model:stream}``), so a stream's record, log and channel share a slot.

A batch reads every state with one MGET and writes every stream with one call of
``COMMIT_SCRIPT``, which compares each stream's guard (generation and seq) before it sets the new
record, appends the events and announces them: a replica that lost a race gets 0 for that stream
and recomputes it.
"""

from __future__ import annotations

import asyncio
import os
import struct
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar, cast

from redis._parsers import _AsyncRESP2Parser
from redis.asyncio import ConnectionPool, Redis, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError

from ..core.errors import RedisUnavailable
from ..core.metrics import Metrics

__all__ = [
    "COMMIT_SCRIPT",
    "LOG_SCRIPT",
    "LogAppend",
    "LogChunk",
    "LogPolicy",
    "StateStore",
    "StreamKeys",
    "Write",
]


# Every write of a stream also appends one event per applied step to the stream's event log (a Redis
# Stream whose entry ids are the event ids, "{generation}-{seq}") and announces them on the stream's
# shard channel, in the same script call: no step without its event, no event without its step.
#
# KEYS: per stream i, KEYS[2i-1] its state key and KEYS[2i] its event log (one hash slot).
# ARGV[1] state TTL ms (0: none); ARGV[2] log TTL ms (0: none); ARGV[3] log length bound;
# ARGV[4] log age cutoff in Unix ms (0: none); ARGV[5] commit time in Unix ms; ARGV[6] every
# stream's part, packed (``_pack_writes``): per stream, in KEYS order, the expected guard (""
# means the key must not exist), new record, channel, previous event id ("" for a new
# generation: the log tells), floor id (see below), model version, live message, then the
# number of events n and n times (event id, values, prediction, reading ts). Each string is a
# u32 LE length and its bytes; n is a u32 LE. One packed argument rather than a dozen per stream:
# redis-py encodes every argument in Python, which cost more than the rest of the batch.
#
# GETRANGE returns "" for a missing key, so one comparison covers "new stream" and "unchanged".
# A record whose generation, seq and updated_at (its first 24 bytes) equal the new one's is this
# very write, landed by an earlier attempt of the same call (the client resends a call that timed
# out): that counts as written, so a resent call can never look like a lost race and be applied
# twice.
# A new generation must sort after everything its log ever held (ids must increase); if it does not
# (two replicas' clocks), nothing is written and the log's last generation is returned, so the
# caller retries with a later one.
# Trimming records the largest id it removed as the log's max-deleted-entry-id (XSETID; XTRIM
# alone does not), which is how a resuming reader learns exactly what it lost. A log created anew
# (never written, or expired) starts with a floor there, an id just below its first event's, so a
# reader holding an id from an earlier life of the log learns that whatever followed it is gone.
# A write that starts a new generation (guard "") also publishes "{state key}\n{floor id}" on the
# plain channel "{prefix}:new-streams" (StateStore.new_streams_channel), so that a prefix
# subscriber learns of a stream it has not seen: once per generation, never per step.
# Returns per stream 1 (written), 0 (guard differed: someone else advanced or ended the stream) or
# the log's last generation as a string (generation too old).
COMMIT_SCRIPT = """
local function id_parts(id)
  local dash = string.find(id, '-', 1, true)
  return string.sub(id, 1, dash - 1), string.sub(id, dash + 1)
end
local function num_less(a, b)
  if #a ~= #b then return #a < #b end
  return a < b
end
local function id_less(a, b)
  local ag, as = id_parts(a)
  local bg, bs = id_parts(b)
  if ag ~= bg then return num_less(ag, bg) end
  return num_less(as, bs)
end
local function trim(log, len, max_len, cutoff, last_id)
  -- A full log is trimmed once it is a tenth over its bound, back down to the bound, so that a
  -- busy stream pays for trimming every few writes rather than on each. A log that is not full
  -- (a slow or young stream) is checked for age on every write.
  if len >= max_len and len < max_len + math.max(1, math.floor(max_len / 10)) then return end
  local drop = math.max(len - max_len, 0)
  local head = redis.call('XRANGE', log, '-', '+', 'COUNT', drop + 1)
  while cutoff > 0 and tonumber(head[drop + 1][2][4]) < cutoff do
    drop = drop + 1  -- the newest entries are this write's, never too old: this ends
    if head[drop + 1] == nil then
      head = redis.call('XRANGE', log, '-', '+', 'COUNT', drop + 100)
    end
  end
  if drop == 0 then return end
  redis.call('XTRIM', log, 'MINID', head[drop + 1][1])
  redis.call('XSETID', log, last_id, 'MAXDELETEDID', head[drop][1])
end

local state_ttl = tonumber(ARGV[1])
local log_ttl = tonumber(ARGV[2])
local max_len = tonumber(ARGV[3])
local cutoff = tonumber(ARGV[4])
local now = ARGV[5]
local written = {}
local blob = ARGV[6]
local at = 1
for i = 1, #KEYS / 2 do
  local key, log = KEYS[2 * i - 1], KEYS[2 * i]
  local guard, record, channel, prev, floor, version, message, n
  guard, record, channel, prev, floor, version, message, n, at = struct.unpack(
    '<I4c0I4c0I4c0I4c0I4c0I4c0I4c0I4', blob, at)
  local ids, xs, ys, rs = {}, {}, {}, {}
  for e = 1, n do
    ids[e], xs[e], ys[e], rs[e], at = struct.unpack('<I4c0I4c0I4c0I4c0', blob, at)
  end
  local head = redis.call('GETRANGE', key, 0, 23)
  if string.sub(head, 1, 16) == guard then
    local len = redis.call('XLEN', log)
    local fresh = len == 0 and redis.call('EXISTS', log) == 0
    local ok = true
    if guard == '' and not fresh then
      local info = redis.call('XINFO', 'STREAM', log)
      for j = 1, #info, 2 do
        if info[j] == 'last-generated-id' then prev = info[j + 1] end
      end
      if not id_less(prev, ids[1]) then
        written[i] = id_parts(prev)
        ok = false
      end
    end
    if ok then
      if state_ttl > 0 then
        redis.call('SET', key, record, 'PX', state_ttl)
      else
        redis.call('SET', key, record)
      end
      for e = 1, n do
        redis.call('XADD', log, ids[e], 'v', version, 't', now, 'x', xs[e], 'y', ys[e], 'r', rs[e])
      end
      if fresh then
        redis.call('XSETID', log, ids[n], 'MAXDELETEDID', floor)
      end
      trim(log, len + n, max_len, cutoff, ids[n])
      if log_ttl > 0 then redis.call('PEXPIRE', log, log_ttl) end
      redis.call('SPUBLISH', channel, prev .. '\\n' .. message)
      if guard == '' then
        -- A new generation, once per stream life: announced on the deployment's new-streams
        -- channel (plain PUBLISH reaches every node of a cluster) for prefix subscribers.
        local tag = string.find(key, '{', 1, true)
        redis.call('PUBLISH', string.sub(key, 1, tag - 1) .. 'new-streams', key .. '\\n' .. floor)
      end
      written[i] = 1
    end
  elseif head == string.sub(record, 1, 24) then
    written[i] = 1
  else
    written[i] = 0
  end
end
return written
"""

# Reads a stream's event log: whether it exists, the last id it ever held, the largest id it ever
# deleted, and up to ARGV[2] entries after ARGV[1] ("" : from the start), all from one instant.
# KEYS[1]: the log.
LOG_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {0} end
local info = redis.call('XINFO', 'STREAM', KEYS[1])
local last, deleted
for j = 1, #info, 2 do
  if info[j] == 'last-generated-id' then last = info[j + 1] end
  if info[j] == 'max-deleted-entry-id' then deleted = info[j + 1] end
end
local entries = {}
if tonumber(ARGV[2]) > 0 then
  local start = '-'
  if ARGV[1] ~= '' then start = '(' .. ARGV[1] end
  entries = redis.call('XRANGE', KEYS[1], start, '+', 'COUNT', ARGV[2])
end
return {1, last, deleted, entries}
"""

T = TypeVar("T")


class StreamKeys(NamedTuple):
    """A stream's Redis names, all in one cluster hash slot."""

    state: str  # the record
    log: str  # the event log (a Redis Stream)
    channel: str  # the shard channel live events are announced on


class LogAppend(NamedTuple):
    """The events of one write: appended to the stream's log and announced on its channel."""

    prev: str  # the event id just before the first ("" for a new generation: the log knows)
    floor: str  # an id just below the first event's, marking where a log created anew begins
    version: str  # the model version, stored with every event
    entries: Sequence[tuple[str, bytes, bytes, bytes]]  # (id, values, prediction, reading ts)
    message: bytes  # the live message's body (events.encode_message)


@dataclass(frozen=True)
class LogPolicy:
    max_len: int  # events kept per stream
    max_age_ms: int  # events older than this are dropped, and an idle log expires; 0: no bound


class Write(NamedTuple):
    keys: StreamKeys
    expected_guard: bytes  # b"" for a stream that must not exist yet
    record: bytes
    log: LogAppend


@dataclass(frozen=True)
class LogChunk:
    """A read of a stream's event log, all from one instant."""

    exists: bool
    last_id: str  # the last id the log ever held ("" when it does not exist)
    deleted_id: str  # the largest id it ever deleted ("0-0": none)
    entries: list[tuple[str, dict[bytes, bytes]]]  # (id, fields), oldest first


class StateStore:
    """Reads and writes stream records; every Redis failure becomes ``RedisUnavailable``.

    Works with a standalone Redis and with a Redis Cluster, found out on first contact (``INFO
    cluster``), so the same ``REDIS_URL`` setting serves both. Standalone: one ``MGET`` per batch
    and one call of ``COMMIT_SCRIPT`` over every stream. Cluster: a stream's keys share a hash slot
    but streams do not, so reads are one ``GET`` and writes one single-key script call per stream,
    sent as one pipeline per node (redis-py groups them), the nodes in parallel.
    """

    def __init__(self, url: str, prefix: str, metrics: Metrics, timeout_s: float) -> None:
        self.prefix = prefix
        self.metrics = metrics
        self.timeout_s = timeout_s
        self._url = url
        self._options: dict[str, Any] = {
            "socket_timeout": timeout_s,
            "socket_connect_timeout": timeout_s,
            # One immediate retry covers a pooled connection that died with a restarted Redis;
            # more would only delay the 503 a client needs to hear.
            "retry": Retry(NoBackoff(), 1),
        }
        if os.environ.get("LSTM_BENCH_HIREDIS") == "off":  # a benchmark's comparison only
            self._options["parser_class"] = _AsyncRESP2Parser
        self._client: Redis | RedisCluster | None = None
        self._connecting = asyncio.Lock()
        self._commit_sha: str | None = None

    def _tag(self, model: str, stream: str) -> str:
        """What every key of a stream starts with: the prefix and the cluster hash tag."""
        return f"{self.prefix}:{{{model}:{stream}}}"

    def state_key(self, model: str, stream: str) -> str:
        return f"{self._tag(model, stream)}:state"

    def stream_keys(self, model: str, stream: str) -> StreamKeys:
        tag = self._tag(model, stream)
        return StreamKeys(f"{tag}:state", f"{tag}:events", f"{tag}:live")

    def state_key_glob(self, model: str) -> str:
        """A Redis glob matching the state keys of every stream of ``model`` and nothing else
        (model names and stream ids hold no glob characters; the prefix may)."""
        prefix = "".join("\\" + ch if ch in "*?[]\\" else ch for ch in self.prefix)
        return f"{prefix}:{{{model}:*}}:state"

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _connected(self) -> Redis | RedisCluster:
        """The client, created on first contact once we know whether Redis is a cluster."""
        if self._client is not None:
            return self._client
        async with self._connecting:  # one probe, however many callers arrive at once
            if self._client is None:
                self._client = await self._probe()
            return self._client

    async def _probe(self) -> Redis | RedisCluster:
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

    async def _call(self, operation: str, fn: Callable[[Redis | RedisCluster], Awaitable[T]]) -> T:
        start = time.perf_counter()
        try:
            return await fn(await self._connected())
        except (RedisError, OSError) as exc:  # OSError: a socket error redis-py did not wrap
            self.metrics.redis_errors.labels(operation).inc()
            raise RedisUnavailable(
                f"Redis did not answer ({type(exc).__name__}); retry later"
            ) from exc
        finally:
            self.metrics.redis_seconds.labels(operation).observe(time.perf_counter() - start)

    async def ping(self) -> None:
        async def ping(client: Redis | RedisCluster) -> None:
            await client.ping()

        await self._call("ping", ping)

    async def load_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """Every record in one round trip per node; None where a stream has no state."""
        if not keys:
            return []

        async def load(client: Redis | RedisCluster) -> list[bytes | None]:
            if isinstance(client, Redis):
                return cast(list[bytes | None], await client.mget(keys))
            async with client.pipeline() as pipe:
                for key in keys:
                    pipe.get(key)
                return cast(list[bytes | None], await pipe.execute())

        return await self._call("load", load)

    async def commit_many(
        self, writes: Sequence[Write], ttl_ms: int, policy: LogPolicy, now_ms: int
    ) -> list[bool | int | RedisUnavailable]:
        """Compare-and-set every record and append its events. Per write: True (written), False
        (the guard differed: someone else advanced or ended the stream), an int (a new
        generation that does not sort after the stream's log; the int is the log's last
        generation) or RedisUnavailable (on a cluster, that stream's node failed while others
        answered)."""
        if not writes:
            return []
        head = [
            ttl_ms,
            policy.max_age_ms,
            policy.max_len,
            now_ms - policy.max_age_ms if policy.max_age_ms else 0,
            now_ms,
        ]

        async def commit(client: Redis | RedisCluster) -> list[bool | int | RedisUnavailable]:
            if isinstance(client, Redis):
                try:
                    return [*await self._commit_standalone(client, writes, head)]
                except NoScriptError:
                    # Redis restarted and lost its script cache. The batch is one script call,
                    # and a refused call did not run: sending it again is safe.
                    self._commit_sha = await self._load_script(client)
                    return [*await self._commit_standalone(client, writes, head)]
            results = await self._commit_cluster(client, writes, head)
            refused = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
            if refused:
                # A node lost its script cache (restarted, or a replica took over). Only its
                # writes were refused, and they did not run; the others ran and must not be
                # sent again.
                self._commit_sha = await self._load_script(client)
                again = await self._commit_cluster(client, [writes[i] for i in refused], head)
                for i, result in zip(refused, again, strict=True):
                    results[i] = result
            return [self._outcome(r) for r in results]

        return await self._call("commit", commit)

    def _outcome(self, result: object) -> bool | int | RedisUnavailable:
        if isinstance(result, Exception):
            self.metrics.redis_errors.labels("commit").inc()
            return RedisUnavailable(
                f"Redis did not answer for this stream ({type(result).__name__}); retry later"
            )
        return _written(cast(list[Any], result)[0])

    async def _script_sha(self, client: Redis | RedisCluster) -> str:
        if self._commit_sha is None:
            self._commit_sha = await self._load_script(client)
        return self._commit_sha

    @staticmethod
    async def _load_script(client: Redis | RedisCluster) -> str:
        if isinstance(client, RedisCluster):
            shas = await client.execute_command(
                "SCRIPT LOAD", COMMIT_SCRIPT, target_nodes=RedisCluster.PRIMARIES
            )
            sha = next(iter(shas.values())) if isinstance(shas, dict) else shas
        else:
            sha = await client.script_load(COMMIT_SCRIPT)
        return sha.decode() if isinstance(sha, bytes) else str(sha)

    async def _commit_standalone(
        self, client: Redis, writes: Sequence[Write], head: list[Any]
    ) -> list[bool | int]:
        sha = await self._script_sha(client)
        keys: list[str] = []
        for w in writes:
            keys += [w.keys.state, w.keys.log]
        out = await client.evalsha(sha, len(keys), *keys, *head, _pack_writes(writes))
        return [_written(flag) for flag in out]

    async def _commit_cluster(
        self, client: RedisCluster, writes: Sequence[Write], head: list[Any]
    ) -> list[Any]:
        """One script call per stream (its keys share a slot), one pipeline per node; per write
        its reply (``[1]``, ``[0]`` or ``[generation]``) or the exception its node answered."""
        sha = await self._script_sha(client)
        async with client.pipeline() as pipe:
            for w in writes:
                # redis-py blocks its evalsha() helper in cluster pipelines; the command itself
                # is routed by its key like any other.
                pipe.execute_command(
                    "EVALSHA", sha, 2, w.keys.state, w.keys.log, *head, _pack_writes([w])
                )
            return list(await pipe.execute(raise_on_error=False))

    async def read_log(self, log_key: str, after: str, count: int) -> LogChunk:
        """Up to ``count`` events after id ``after`` ("": from the start), with the log's bounds."""

        async def read(client: Redis | RedisCluster) -> LogChunk:
            reply = await client.eval(LOG_SCRIPT, 1, log_key, after, count)
            if not reply[0]:
                return LogChunk(False, "", "0-0", [])
            entries = [
                (_text(entry_id), dict(zip(fields[::2], fields[1::2], strict=True)))
                for entry_id, fields in reply[3]
            ]
            return LogChunk(True, _text(reply[1]), _text(reply[2]), entries)

        return await self._call("read_log", read)

    async def get(self, key: str) -> tuple[bytes | None, int]:
        """A record and its remaining TTL in ms (-1: none) in one round trip."""

        async def get_with_ttl(client: Redis | RedisCluster) -> tuple[bytes | None, int]:
            pipeline = (
                client.pipeline(transaction=False)
                if isinstance(client, Redis)
                else client.pipeline()
            )
            async with pipeline as pipe:
                pipe.get(key)
                pipe.pttl(key)
                raw, pttl = await pipe.execute()
            return raw, int(pttl)

        return await self._call("get", get_with_ttl)

    async def subscriber_client(self, channel: str) -> tuple[str, Redis]:
        """A new client of its own for subscribing to ``channel``, and the name of the node it
        talks to ("" on a standalone Redis). Reads on it block as long as they need; a failure
        is raised, not retried, so that the caller knows announcements may have been lost."""

        async def connect(client: Redis | RedisCluster) -> tuple[str, Redis]:
            options: dict[str, Any] = {
                "socket_connect_timeout": self.timeout_s,
                "socket_keepalive": True,
                "retry": Retry(NoBackoff(), 0),
            }
            if isinstance(client, Redis):
                return "", Redis.from_url(self._url, **options)
            node = client.get_node_from_key(channel)
            if node is None:
                raise RedisError(f"no cluster node serves channel {channel}")
            kwargs = {**node.connection_kwargs, **options, "socket_timeout": None}
            pool = ConnectionPool(connection_class=node.connection_class, **kwargs)
            return node.name, Redis(connection_pool=pool)

        return await self._call("connect", connect)

    # -- stream discovery, for prefix subscriptions ------------------------------------------

    @property
    def new_streams_channel(self) -> str:
        """The plain channel COMMIT_SCRIPT announces every new stream generation on."""
        return f"{self.prefix}:new-streams"

    def parse_new_stream(self, message: bytes) -> tuple[str, str, str] | None:
        """(model, stream, floor id) from a new-streams message; None if it is not one."""
        key, _, floor = message.decode("utf-8", "replace").partition("\n")
        head, tail = f"{self.prefix}:{{", "}:state"
        if not (key.startswith(head) and key.endswith(tail)):
            return None
        model, sep, stream = key[len(head) : -len(tail)].partition(":")  # models have no ":"
        return (model, stream, floor) if sep else None

    async def scan_streams(self, model: str, stream_prefix: str, limit: int) -> list[str]:
        """Streams of ``model`` whose id starts with ``stream_prefix`` that have state or an
        event log, found with SCAN on every primary; at most ``limit + 1`` of them, so a caller
        can tell that there are more than ``limit``."""
        escape = "".join("\\" + ch if ch in "*?[]\\" else ch for ch in self.prefix)
        pattern = f"{escape}:{{{model}:{stream_prefix}*}}:*"
        head = f"{self.prefix}:{{{model}:"

        async def scan(client: Redis | RedisCluster) -> list[str]:
            found: set[str] = set()
            nodes: list[Any] = [None]
            if isinstance(client, RedisCluster):
                nodes = list(client.get_primaries())
            for node in nodes:
                cursor = 0
                while len(found) <= limit:
                    if isinstance(client, RedisCluster):
                        reply = await client.execute_command(
                            "SCAN", cursor, "MATCH", pattern, "COUNT", 1000, target_nodes=node
                        )
                        # redis-py gives the cursor per node: ({node: cursor}, keys)
                        cursors, keys = reply
                        cursor = int(next(iter(cursors.values())))
                    else:
                        cursor, keys = await client.scan(cursor, match=pattern, count=1000)
                    for raw in keys:
                        stream, _, suffix = _text(raw)[len(head) :].rpartition("}:")
                        if suffix in ("state", "events"):
                            found.add(stream)
                    if not cursor:
                        break
            return sorted(found)[: limit + 1]

        return await self._call("scan", scan)

    async def delete(self, key: str) -> bool:
        async def delete(client: Redis | RedisCluster) -> bool:
            return bool(await client.delete(key))

        return await self._call("delete", delete)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _written(flag: int | bytes) -> bool | int:
    """A script reply per stream: 1 written, 0 lost the race, or the log's last generation."""
    if isinstance(flag, bytes):
        return int(flag)
    return bool(flag)


_U32 = struct.Struct("<I")


def _pack_writes(writes: Sequence[Write]) -> bytes:
    """Every write's script arguments as one string (the layout: ``COMMIT_SCRIPT``)."""
    parts: list[bytes] = []
    add = parts.append
    u32 = _U32.pack
    for w in writes:
        log = w.log
        for text in (
            w.expected_guard,
            w.record,
            w.keys.channel.encode(),
            log.prev.encode(),
            log.floor.encode(),
            log.version.encode(),
            log.message,
        ):
            add(u32(len(text)))
            add(text)
        add(u32(len(log.entries)))
        for event_id, values, prediction, stamp in log.entries:
            encoded = event_id.encode()
            add(u32(len(encoded)))
            add(encoded)
            add(u32(len(values)))
            add(values)
            add(u32(len(prediction)))
            add(prediction)
            add(u32(len(stamp)))
            add(stamp)
    return b"".join(parts)

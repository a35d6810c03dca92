"""Per-stream state in Redis: every key name, every Lua script and the record format live here.

One record per (model, stream), a single Redis string so that a 2-layer, 64-unit stream costs one
allocation of about 1.1 KiB::

    offset  size  field
    0       8     generation      u64 LE   \\ the first 16 bytes are the compare-and-set guard
    8       8     seq             u64 LE   /
    16      8     updated_at      f64 LE   Unix seconds
    24      4     state_nbytes    u32 LE   bytes of h (and of c)
    28      2     n_results       u16 LE   results of the last applied request
    30      1     version_len     u8
    31      v     model version   ASCII
    ..      S     h               float32 [layers, hidden]
    ..      S     c               float32 [layers, hidden]
    ..      n*(8+4*O)  results    (seq u64, prediction float32[O]) per reading

Keys carry a Redis Cluster hash tag per stream (``{model:stream}``), so a stream's state and its
future event log share a slot. A batch reads every state with one MGET and writes every state with
one call of ``COMMIT_SCRIPT``, which compares each stream's guard (generation and seq) before it
sets the new record: a replica that lost a race gets 0 for that stream and recomputes it.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import numpy as np
from redis.asyncio import Redis, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError

from .errors import RedisUnavailable
from .metrics import Metrics

__all__ = [
    "COMMIT_SCRIPT",
    "GUARD_BYTES",
    "StateStore",
    "StreamState",
    "Write",
    "encode_record",
    "guard_of",
]

_HEAD = struct.Struct("<QQdIHB")
GUARD_BYTES = 16

# KEYS[i]: state key of stream i. ARGV[1]: TTL in ms (0: none). For stream i, ARGV[2i] is the
# expected guard ("" means the key must not exist) and ARGV[2i+1] the new record.
# GETRANGE returns "" for a missing key, so one comparison covers "new stream" and "unchanged".
# A record whose generation, seq and updated_at (its first 24 bytes) equal the new one's is this
# very write, landed by an earlier attempt of the same call (the client resends a call that timed
# out): that counts as written, so a resent call can never look like a lost race and be applied
# twice.
# Returns one 1 (written) or 0 (guard differed: someone else advanced or ended the stream) per key.
COMMIT_SCRIPT = """
local ttl = tonumber(ARGV[1])
local written = {}
for i, key in ipairs(KEYS) do
  local head = redis.call('GETRANGE', key, 0, 23)
  local record = ARGV[2 * i + 1]
  if string.sub(head, 1, 16) == ARGV[2 * i] then
    if ttl > 0 then
      redis.call('SET', key, record, 'PX', ttl)
    else
      redis.call('SET', key, record)
    end
    written[i] = 1
  elseif head == string.sub(record, 1, 24) then
    written[i] = 1
  else
    written[i] = 0
  end
end
return written
"""

T = TypeVar("T")


@dataclass(frozen=True)
class StreamState:
    """A decoded record. ``h``/``c`` are None when another model version wrote the record."""

    guard: bytes
    generation: int
    seq: int
    updated_at: float
    model_version: str
    h: np.ndarray | None
    c: np.ndarray | None
    results: dict[int, np.ndarray]  # seq -> prediction [O], of the last applied request

    @classmethod
    def decode(
        cls, raw: bytes, version: str, state_shape: tuple[int, int], outputs: int
    ) -> StreamState:
        generation, seq, updated_at, nbytes, n_results, vlen = _HEAD.unpack_from(raw)
        at = _HEAD.size
        stored_version = raw[at : at + vlen].decode("ascii")
        at += vlen
        if stored_version != version or nbytes != state_shape[0] * state_shape[1] * 4:
            return cls(
                raw[:GUARD_BYTES], generation, seq, updated_at, stored_version, None, None, {}
            )
        h = np.frombuffer(raw, np.float32, state_shape[0] * state_shape[1], at).reshape(state_shape)
        c = np.frombuffer(raw, np.float32, h.size, at + nbytes).reshape(state_shape)
        at += 2 * nbytes
        held = np.frombuffer(raw, _results_dtype(outputs), n_results, at)
        results = dict(zip(held["seq"].tolist(), held["prediction"], strict=True))
        return cls(raw[:GUARD_BYTES], generation, seq, updated_at, stored_version, h, c, results)

    def last_prediction(self) -> list[float] | None:
        pred = self.results.get(self.seq)
        return None if pred is None else pred.tolist()


def encode_record(
    generation: int,
    seq: int,
    updated_at: float,
    version: str,
    h: bytes,
    c: bytes,
    result_seqs: Sequence[int],
    result_preds: np.ndarray,
) -> bytes:
    """Pack a record; ``result_preds`` is float32 ``[len(result_seqs), O]``."""
    vbytes = version.encode("ascii")
    parts = [_HEAD.pack(generation, seq, updated_at, len(h), len(result_seqs), len(vbytes))]
    parts += [vbytes, h, c]
    held = np.empty(len(result_seqs), _results_dtype(result_preds.shape[1]))
    held["seq"] = result_seqs
    held["prediction"] = result_preds
    parts.append(held.tobytes())
    return b"".join(parts)


def _results_dtype(outputs: int) -> np.dtype:
    """One held result: its seq and its prediction, packed (8 + 4 * outputs bytes)."""
    return np.dtype([("seq", "<u8"), ("prediction", "<f4", (outputs,))])


def guard_of(generation: int, seq: int) -> bytes:
    return struct.pack("<QQ", generation, seq)


@dataclass(frozen=True)
class Write:
    key: str
    expected_guard: bytes  # b"" for a stream that must not exist yet
    record: bytes


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
        self._url = url
        self._options: dict[str, Any] = {
            "socket_timeout": timeout_s,
            "socket_connect_timeout": timeout_s,
            # One immediate retry covers a pooled connection that died with a restarted Redis;
            # more would only delay the 503 a client needs to hear.
            "retry": Retry(NoBackoff(), 1),
        }
        self._client: Redis | RedisCluster | None = None
        self._connecting = asyncio.Lock()
        self._commit_sha: str | None = None

    def state_key(self, model: str, stream: str) -> str:
        return f"{self.prefix}:{{{model}:{stream}}}:state"

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
        self, writes: Sequence[Write], ttl_ms: int
    ) -> list[bool | RedisUnavailable]:
        """Compare-and-set every record. Per write: True (written), False (the guard differed:
        someone else advanced or ended the stream) or RedisUnavailable (on a cluster, that
        stream's node failed while others answered)."""
        if not writes:
            return []

        async def commit(client: Redis | RedisCluster) -> list[bool | RedisUnavailable]:
            if isinstance(client, Redis):
                try:
                    return list(await self._commit_standalone(client, writes, ttl_ms))
                except NoScriptError:
                    # Redis restarted and lost its script cache. The batch is one script call,
                    # and a refused call did not run: sending it again is safe.
                    self._commit_sha = await self._load_script(client)
                    return list(await self._commit_standalone(client, writes, ttl_ms))
            results = await self._commit_cluster(client, writes, ttl_ms)
            refused = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
            if refused:
                # A node lost its script cache (restarted, or a replica took over). Only its
                # writes were refused, and they did not run; the others ran and must not be
                # sent again.
                self._commit_sha = await self._load_script(client)
                again = await self._commit_cluster(client, [writes[i] for i in refused], ttl_ms)
                for i, result in zip(refused, again, strict=True):
                    results[i] = result
            return [self._outcome(r) for r in results]

        return await self._call("commit", commit)

    def _outcome(self, result: object) -> bool | RedisUnavailable:
        if isinstance(result, Exception):
            self.metrics.redis_errors.labels("commit").inc()
            return RedisUnavailable(
                f"Redis did not answer for this stream ({type(result).__name__}); retry later"
            )
        return bool(cast(list[int], result)[0])

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
        self, client: Redis, writes: Sequence[Write], ttl_ms: int
    ) -> list[bool]:
        sha = await self._script_sha(client)
        args: list[Any] = [ttl_ms]
        for w in writes:
            args += [w.expected_guard, w.record]
        out = await client.evalsha(sha, len(writes), *(w.key for w in writes), *args)
        return [bool(flag) for flag in out]

    async def _commit_cluster(
        self, client: RedisCluster, writes: Sequence[Write], ttl_ms: int
    ) -> list[Any]:
        """One single-key script call per stream, one pipeline per node; per write its reply
        (``[1]`` or ``[0]``) or the exception its node answered."""
        sha = await self._script_sha(client)
        async with client.pipeline() as pipe:
            for w in writes:
                # redis-py blocks its evalsha() helper in cluster pipelines; the command itself
                # is routed by its key like any other.
                pipe.execute_command("EVALSHA", sha, 1, w.key, ttl_ms, w.expected_guard, w.record)
            return list(await pipe.execute(raise_on_error=False))

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

    async def delete(self, key: str) -> bool:
        async def delete(client: Redis | RedisCluster) -> bool:
            return bool(await client.delete(key))

        return await self._call("delete", delete)

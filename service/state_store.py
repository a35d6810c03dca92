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

import struct
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import numpy as np
from redis.asyncio import Redis
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
# Returns one 1 (written) or 0 (guard differed: someone else advanced or ended the stream) per key.
COMMIT_SCRIPT = """
local ttl = tonumber(ARGV[1])
local written = {}
for i, key in ipairs(KEYS) do
  if redis.call('GETRANGE', key, 0, 15) == ARGV[2 * i] then
    if ttl > 0 then
      redis.call('SET', key, ARGV[2 * i + 1], 'PX', ttl)
    else
      redis.call('SET', key, ARGV[2 * i + 1])
    end
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
        results: dict[int, np.ndarray] = {}
        width = 8 + 4 * outputs
        for k in range(n_results):
            (rseq,) = struct.unpack_from("<Q", raw, at + k * width)
            results[rseq] = np.frombuffer(raw, np.float32, outputs, at + k * width + 8)
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
    preds = np.ascontiguousarray(result_preds, np.float32)
    for k, rseq in enumerate(result_seqs):
        parts.append(struct.pack("<Q", rseq))
        parts.append(preds[k].tobytes())
    return b"".join(parts)


def guard_of(generation: int, seq: int) -> bytes:
    return struct.pack("<QQ", generation, seq)


@dataclass(frozen=True)
class Write:
    key: str
    expected_guard: bytes  # b"" for a stream that must not exist yet
    record: bytes


class StateStore:
    """Reads and writes stream records; every Redis failure becomes ``RedisUnavailable``."""

    def __init__(self, redis: Redis, prefix: str, metrics: Metrics) -> None:
        self.redis = redis
        self.prefix = prefix
        self.metrics = metrics
        self._commit_sha: str | None = None

    def state_key(self, model: str, stream: str) -> str:
        return f"{self.prefix}:{{{model}:{stream}}}:state"

    async def _call(self, operation: str, fn: Callable[[], Awaitable[T]]) -> T:
        start = time.perf_counter()
        try:
            return await fn()
        except RedisError as exc:
            self.metrics.redis_errors.labels(operation).inc()
            raise RedisUnavailable(
                f"Redis did not answer ({type(exc).__name__}); retry later"
            ) from exc
        except OSError as exc:  # a socket error redis-py did not wrap
            self.metrics.redis_errors.labels(operation).inc()
            raise RedisUnavailable("Redis did not answer; retry later") from exc
        finally:
            self.metrics.redis_seconds.labels(operation).observe(time.perf_counter() - start)

    async def ping(self) -> None:
        await self._call("ping", self.redis.ping)

    async def load_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """Every record in one round trip; None where a stream has no state."""
        if not keys:
            return []

        async def mget() -> list[bytes | None]:
            return cast(list[bytes | None], await self.redis.mget(keys))

        return await self._call("load", mget)

    async def commit_many(self, writes: Sequence[Write], ttl_ms: int) -> list[bool]:
        """Compare-and-set every record in one script call; True where the write happened."""
        if not writes:
            return []
        keys = [w.key for w in writes]
        args: list[Any] = [ttl_ms]
        for w in writes:
            args += [w.expected_guard, w.record]

        async def commit() -> list[bool]:
            if self._commit_sha is None:
                self._commit_sha = await self.redis.script_load(COMMIT_SCRIPT)
            try:
                out = await self.redis.evalsha(self._commit_sha, len(keys), *keys, *args)
            except NoScriptError:
                # Redis restarted and lost its script cache; nothing ran, so running again is safe.
                self._commit_sha = await self.redis.script_load(COMMIT_SCRIPT)
                out = await self.redis.evalsha(self._commit_sha, len(keys), *keys, *args)
            return [bool(flag) for flag in out]

        return await self._call("commit", commit)

    async def get(self, key: str) -> tuple[bytes | None, int]:
        """A record and its remaining TTL in ms (-1: none) in one round trip."""

        async def get_with_ttl() -> tuple[bytes | None, int]:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.get(key)
                pipe.pttl(key)
                raw, pttl = await pipe.execute()
            return raw, int(pttl)

        return await self._call("get", get_with_ttl)

    async def delete(self, key: str) -> bool:
        async def delete() -> bool:
            return bool(await self.redis.delete(key))

        return await self._call("delete", delete)

"""The state store against a real redis-server: compare-and-set, retried calls, TTL."""

from __future__ import annotations

import asyncio

import numpy as np
from service_harness import RedisServer

from service.metrics import Metrics
from service.state_store import StateStore, Write, encode_record, guard_of


def _record(generation: int, seq: int, updated_at: float) -> bytes:
    zeros = bytes(2 * 64 * 4)
    return encode_record(generation, seq, updated_at, "v1", zeros, zeros, [seq], np.zeros((1, 1)))


def _commit(server: RedisServer, writes: list[Write], ttl_ms: int = 0) -> list[object]:
    async def run() -> list[object]:
        store = StateStore(server.url, "t", Metrics(), timeout_s=2)
        try:
            return list(await store.commit_many(writes, ttl_ms))
        finally:
            await store.close()

    return asyncio.run(run())


def test_compare_and_set(redis_server: RedisServer) -> None:
    key = "t:{m:cas}:state"
    first = Write(key, b"", _record(7, 1, 100.0))
    assert _commit(redis_server, [first]) == [True]
    # A second creator loses: the key exists now.
    assert _commit(redis_server, [Write(key, b"", _record(8, 1, 100.5))]) == [False]
    # Advancing from the stored guard wins; from a stale guard loses.
    assert _commit(redis_server, [Write(key, guard_of(7, 1), _record(7, 2, 101.0))]) == [True]
    assert _commit(redis_server, [Write(key, guard_of(7, 1), _record(7, 2, 101.5))]) == [False]
    assert redis_server.client().get(key) == _record(7, 2, 101.0)


def test_a_resent_call_counts_as_written_not_as_a_lost_race(redis_server: RedisServer) -> None:
    key = "t:{m:resent}:state"
    write = Write(key, b"", _record(9, 1, 200.0))
    assert _commit(redis_server, [write]) == [True]
    # The same call again (as when a client resends a call that timed out after it ran).
    assert _commit(redis_server, [write]) == [True]
    assert redis_server.client().get(key) == write.record


def test_ttl_is_set_and_refreshed(redis_server: RedisServer) -> None:
    key = "t:{m:ttl}:state"
    assert _commit(redis_server, [Write(key, b"", _record(1, 1, 1.0))], ttl_ms=60_000) == [True]
    assert 0 < redis_server.client().pttl(key) <= 60_000
    next_write = Write(key, guard_of(1, 1), _record(1, 2, 2.0))
    assert _commit(redis_server, [next_write], ttl_ms=0) == [True]
    assert redis_server.client().pttl(key) == -1

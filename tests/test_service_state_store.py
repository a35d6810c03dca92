"""The state store against a real redis-server: compare-and-set, retried calls, TTL, and the event
log written in the same call."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import numpy as np
from service_harness import RedisServer

from service.core.metrics import Metrics
from service.step.events import log_append
from service.step.record import encode_record, guard_of
from service.step.state_store import LogChunk, LogPolicy, StateStore, Write

KEEP_ALL = LogPolicy(max_len=1000, max_age_ms=0)


def _write(
    stream: str,
    generation: int,
    seqs: Sequence[int],
    updated_at: float,
    prev: tuple[int, int] | None = None,
    now_ms: int = 1_000,
) -> Write:
    """Seqs ``seqs`` of ``stream`` applied on top of ``prev`` (None: a new stream)."""
    zeros = bytes(2 * 64 * 4)
    record = encode_record(
        generation, seqs[-1], updated_at, "v1", zeros, zeros, [seqs[-1]], np.zeros((1, 1))
    )
    n = len(seqs)
    events = log_append(
        "v1",
        generation,
        seqs,
        np.arange(n, dtype=np.float64).reshape(n, 1),
        np.full((n, 1), 0.5, np.float32),
        [None] * n,
        prev,
        now_ms,
    )
    keys = StateStore("", "t", Metrics(), 1).stream_keys("m", stream)
    return Write(keys, guard_of(*prev) if prev else b"", record, events)


def _commit(
    server: RedisServer,
    writes: list[Write],
    ttl_ms: int = 0,
    policy: LogPolicy = KEEP_ALL,
    now_ms: int = 1_000,
) -> list[object]:
    async def run() -> list[object]:
        store = StateStore(server.url, "t", Metrics(), timeout_s=2)
        try:
            return list(await store.commit_many(writes, ttl_ms, policy, now_ms))
        finally:
            await store.close()

    return asyncio.run(run())


def _log(server: RedisServer, stream: str, after: str = "") -> LogChunk:
    async def run() -> LogChunk:
        store = StateStore(server.url, "t", Metrics(), timeout_s=2)
        try:
            return await store.read_log(store.stream_keys("m", stream).log, after, 100)
        finally:
            await store.close()

    return asyncio.run(run())


def _ids(chunk: LogChunk) -> list[str]:
    return [entry_id for entry_id, _ in chunk.entries]


def test_compare_and_set_writes_the_events_with_the_state(redis_server: RedisServer) -> None:
    first = _write("cas", 7, [1], 100.0)
    assert _commit(redis_server, [first]) == [True]
    # A second creator loses: the key exists now. Its event is not written either.
    assert _commit(redis_server, [_write("cas", 8, [1], 100.5)]) == [False]
    # Advancing from the stored guard wins; from a stale guard loses.
    second = _write("cas", 7, [2, 3], 101.0, prev=(7, 1))
    assert _commit(redis_server, [second]) == [True]
    assert _commit(redis_server, [_write("cas", 7, [2], 101.5, prev=(7, 1))]) == [False]
    assert redis_server.client().get(first.keys.state) == second.record
    chunk = _log(redis_server, "cas")
    assert _ids(chunk) == ["7-1", "7-2", "7-3"]
    fields = chunk.entries[1][1]
    assert fields[b"v"] == b"v1" and fields[b"t"] == b"1000" and fields[b"r"] == b""
    assert np.frombuffer(fields[b"x"], "<f8").tolist() == [0.0]
    assert np.frombuffer(fields[b"y"], "<f4").tolist() == [0.5]
    # A log created by this first write has a floor just below its first event.
    assert chunk.deleted_id == "7-0" and chunk.last_id == "7-3"


def test_a_resent_call_counts_as_written_and_appends_nothing_twice(
    redis_server: RedisServer,
) -> None:
    write = _write("resent", 9, [1, 2], 200.0)
    assert _commit(redis_server, [write]) == [True]
    # The same call again (as when a client resends a call that timed out after it ran).
    assert _commit(redis_server, [write]) == [True]
    assert redis_server.client().get(write.keys.state) == write.record
    assert _ids(_log(redis_server, "resent")) == ["9-1", "9-2"]


def test_ttl_is_set_and_refreshed(redis_server: RedisServer) -> None:
    first = _write("ttl", 1, [1], 1.0)
    assert _commit(redis_server, [first], ttl_ms=60_000) == [True]
    assert 0 < redis_server.client().pttl(first.keys.state) <= 60_000
    assert _commit(redis_server, [_write("ttl", 1, [2], 2.0, prev=(1, 1))], ttl_ms=0) == [True]
    assert redis_server.client().pttl(first.keys.state) == -1


def test_the_log_keeps_its_length_bound_and_records_what_it_dropped(
    redis_server: RedisServer,
) -> None:
    policy = LogPolicy(max_len=3, max_age_ms=0)
    assert _commit(redis_server, [_write("len", 5, [1, 2], 1.0)], policy=policy) == [True]
    write = _write("len", 5, [3, 4, 5, 6], 2.0, prev=(5, 2))
    assert _commit(redis_server, [write], policy=policy) == [True]
    chunk = _log(redis_server, "len")
    assert _ids(chunk) == ["5-4", "5-5", "5-6"]
    assert chunk.deleted_id == "5-3"  # a reader after 5-2 learns that 5-3 is gone


def test_the_log_drops_events_past_its_age_and_expires_when_idle(
    redis_server: RedisServer,
) -> None:
    policy = LogPolicy(max_len=100, max_age_ms=60_000)
    old = _write("age", 5, [1, 2], 1.0, now_ms=1_000_000)
    assert _commit(redis_server, [old], policy=policy, now_ms=1_000_000) == [True]
    new = _write("age", 5, [3], 2.0, prev=(5, 2), now_ms=1_070_000)
    assert _commit(redis_server, [new], policy=policy, now_ms=1_070_000) == [True]
    chunk = _log(redis_server, "age")
    assert _ids(chunk) == ["5-3"] and chunk.deleted_id == "5-2"
    assert 0 < redis_server.client().pttl(new.keys.log) <= 60_000


def test_a_new_generation_must_sort_after_the_log(redis_server: RedisServer) -> None:
    """Two replicas' clocks disagree: a stream ended (state deleted, log kept) is started again
    with a generation below its log's. Nothing is written; the log's generation comes back."""
    assert _commit(redis_server, [_write("gen", 5000, [1, 2], 1.0)]) == [True]
    redis_server.client().delete(_write("gen", 1, [1], 0).keys.state)
    assert _commit(redis_server, [_write("gen", 4000, [1], 2.0)]) == [5000]
    assert redis_server.client().get(_write("gen", 1, [1], 0).keys.state) is None
    assert _ids(_log(redis_server, "gen")) == ["5000-1", "5000-2"]
    assert _commit(redis_server, [_write("gen", 5001, [1], 3.0)]) == [True]
    assert _ids(_log(redis_server, "gen")) == ["5000-1", "5000-2", "5001-1"]


def test_reading_after_an_id(redis_server: RedisServer) -> None:
    assert _commit(redis_server, [_write("read", 3, [1, 2, 3], 1.0)]) == [True]
    assert _ids(_log(redis_server, "read", after="3-1")) == ["3-2", "3-3"]
    missing = _log(redis_server, "no-such-stream", after="3-1")
    assert not missing.exists and missing.entries == []

"""The state store against a real redis-server: compare-and-set, retried calls, TTL, and the event
log written in the same call: one entry per write, read back as one event per step, its bound
counted in events (a trim may cut through an entry), and logs of the earlier one-entry-per-step
form read and trimmed alike."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Sequence

import numpy as np
from service_harness import RedisServer

from service.core.ids import DEFAULT_TENANT
from service.core.metrics import Metrics
from service.step.events import format_id, log_append, log_events, parse_event_id
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
    stamps: Sequence[float | str | None] | None = None,
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
        [None] * n if stamps is None else stamps,
        prev,
        now_ms,
    )
    keys = StateStore("", "t", Metrics(), 1).stream_keys(DEFAULT_TENANT, "m", stream)
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


def _log(
    server: RedisServer,
    stream: str,
    after: str = "",
    count: int = 1000,
    max_age_ms: int = 0,
    now_ms: int | None = None,
) -> LogChunk:
    async def run() -> LogChunk:
        store = StateStore(server.url, "t", Metrics(), timeout_s=2)
        try:
            log = store.stream_keys(DEFAULT_TENANT, "m", stream).log
            return await store.read_log(log, after, count, max_age_ms, now_ms)
        finally:
            await store.close()

    return asyncio.run(run())


def _ids(chunk: LogChunk, after: str = "") -> list[str]:
    """The event ids a reader after ``after`` gets from ``chunk``."""
    position = parse_event_id(after, "after") if after else None
    return [format_id(e.id) for e in log_events("m", "s", chunk, position)]


def _entry_ids(chunk: LogChunk) -> list[str]:
    return [entry_id for entry_id, _ in chunk.entries]


def _log_info(server: RedisServer, stream: str) -> dict[str, object]:
    """The log's XINFO STREAM: its count of held events is its entries-added."""
    log = StateStore("", "t", Metrics(), 1).stream_keys(DEFAULT_TENANT, "m", stream).log
    info = server.client().xinfo_stream(log)
    return dict(info)


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
    # One entry per write, whose id is the write's last event's, holding the announced body.
    assert _entry_ids(chunk) == ["7-1", "7-3"]
    # A one-step write's entry holds its event in fields of its own, cut from the same body.
    zero, half = np.zeros(1, "<f8").tobytes(), np.full(1, 0.5, "<f4").tobytes()
    one = {b"m": b"v1", b"t": b"1000", b"x": zero, b"y": half, b"r": b""}
    assert chunk.entries[0][1] == one and list(chunk.entries[0][1]) == list(one)
    fields = chunk.entries[1][1]
    assert list(fields) == [b"e", b"t"] and fields[b"t"] == b"1000"
    assert fields[b"e"] == second.log.message
    event = json.loads(log_events("m", "s", chunk, None)[1].data)
    assert event["model_version"] == "v1" and event["ts"] == 1.0 and "reading_ts" not in event
    assert (event["generation"], event["seq"]) == (7, 2)
    assert event["values"] == [0.0] and event["prediction"] == [0.5]
    # A log created by this first write has a floor just below its first event.
    assert chunk.deleted_id == "7-0" and chunk.last_id == "7-3"
    assert _log_info(redis_server, "cas")["entries-added"] == 3  # its count of events held


def test_a_resent_call_counts_as_written_and_appends_nothing_twice(
    redis_server: RedisServer,
) -> None:
    write = _write("resent", 9, [1, 2], 200.0)
    assert _commit(redis_server, [write]) == [True]
    # The same call again (as when a client resends a call that timed out after it ran).
    assert _commit(redis_server, [write]) == [True]
    assert redis_server.client().get(write.keys.state) == write.record
    chunk = _log(redis_server, "resent")
    assert _ids(chunk) == ["9-1", "9-2"] and _entry_ids(chunk) == ["9-2"]


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
    # The bound fell inside the second write's entry: the first is gone, the second stays whole
    # in memory, its first event hidden by the max-deleted id, and not counted.
    assert _entry_ids(chunk) == ["5-6"]
    assert _log_info(redis_server, "len")["entries-added"] == 3
    assert _ids(_log(redis_server, "len", after="5-4"), "5-4") == ["5-5", "5-6"]


def test_the_log_drops_events_past_its_age_and_expires_when_idle(
    redis_server: RedisServer,
) -> None:
    """The age bound is applied at a write's checkpoint (here a write of several steps) and, in
    between, by every read: a reader never gets an event older than the bound."""
    policy = LogPolicy(max_len=100, max_age_ms=60_000)
    old = _write("age", 5, [1, 2], 1.0, now_ms=1_000_000)
    assert _commit(redis_server, [old], policy=policy, now_ms=1_000_000) == [True]
    new = _write("age", 5, [3], 2.0, prev=(5, 2), now_ms=1_070_000)
    assert _commit(redis_server, [new], policy=policy, now_ms=1_070_000) == [True]
    # A write of one step that passes no multiple of k (10 here) does not look at the log's
    # head: the old entry is still stored, but a read with the age bound does not give it.
    chunk = _log(redis_server, "age", max_age_ms=60_000, now_ms=1_070_000)
    assert _ids(chunk) == ["5-3"] and chunk.deleted_id == "5-2"
    assert _entry_ids(_log(redis_server, "age")) == ["5-2", "5-3"]
    assert 0 < redis_server.client().pttl(new.keys.log) <= 60_000
    # A checkpoint (a write of several steps) removes it for good.
    more = _write("age", 5, [4, 5], 3.0, prev=(5, 3), now_ms=1_080_000)
    assert _commit(redis_server, [more], policy=policy, now_ms=1_080_000) == [True]
    chunk = _log(redis_server, "age")
    assert _ids(chunk) == ["5-3", "5-4", "5-5"] and chunk.deleted_id == "5-2"
    assert _entry_ids(chunk) == ["5-3", "5-5"]
    assert _log_info(redis_server, "age")["entries-added"] == 3
    assert 0 < redis_server.client().pttl(new.keys.log) <= 60_000


def test_one_step_writes_apply_the_age_bound_every_k_seqs(redis_server: RedisServer) -> None:
    policy = LogPolicy(max_len=100, max_age_ms=60_000)  # k = 10
    assert _commit(redis_server, [_write("agek", 5, [1], 1.0)], policy=policy) == [True]
    for seq in range(2, 10):
        write = _write("agek", 5, [seq], 1.0, prev=(5, seq - 1), now_ms=100_000)
        assert _commit(redis_server, [write], policy=policy, now_ms=100_000) == [True]
    assert _log(redis_server, "agek").deleted_id == "5-0"  # seqs 2 to 9: no checkpoint
    write = _write("agek", 5, [10], 1.0, prev=(5, 9), now_ms=100_000)
    assert _commit(redis_server, [write], policy=policy, now_ms=100_000) == [True]
    chunk = _log(redis_server, "agek")  # seq 10 passed a multiple of 10: 5-1 (t=1000) is gone
    assert chunk.deleted_id == "5-1" and _ids(chunk)[0] == "5-2"
    assert _log_info(redis_server, "agek")["entries-added"] == 9


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
    assert _log_info(redis_server, "gen")["entries-added"] == 3


def test_reading_after_an_id(redis_server: RedisServer) -> None:
    assert _commit(redis_server, [_write("read", 3, [1, 2, 3], 1.0)]) == [True]
    # The entry 3-3 holds 3-1 too: the reader drops what it already has.
    chunk = _log(redis_server, "read", after="3-1")
    assert _entry_ids(chunk) == ["3-3"] and _ids(chunk, "3-1") == ["3-2", "3-3"]
    assert _ids(_log(redis_server, "read", after="3-3"), "3-3") == []
    missing = _log(redis_server, "no-such-stream", after="3-1")
    assert not missing.exists and missing.entries == []


def test_reading_timestamps_come_back_from_both_entry_forms(redis_server: RedisServer) -> None:
    assert _commit(redis_server, [_write("ts", 2, [1], 1.0, stamps=["2026-11"])]) == [True]
    several = _write("ts", 2, [2, 3, 4], 2.0, prev=(2, 1), stamps=[None, 1.5e9, "x"])
    assert _commit(redis_server, [several]) == [True]
    chunk = _log(redis_server, "ts")
    assert chunk.entries[0][1][b"r"] == b'"2026-11"'
    got = [json.loads(e.data).get("reading_ts") for e in log_events("m", "ts", chunk, None)]
    assert got == ["2026-11", None, 1.5e9, "x"]


def test_a_read_counts_events_and_returns_whole_entries(redis_server: RedisServer) -> None:
    for k in range(5):
        prev = (4, 10 * k) if k else None
        write = _write("chunks", 4, list(range(10 * k + 1, 10 * k + 11)), 1.0 + k, prev=prev)
        assert _commit(redis_server, [write]) == [True]
    chunk = _log(redis_server, "chunks", count=15)  # 15 events: two entries of ten
    assert _entry_ids(chunk) == ["4-10", "4-20"] and chunk.more
    chunk = _log(redis_server, "chunks", after="4-20", count=10)
    assert _entry_ids(chunk) == ["4-30"] and chunk.more
    chunk = _log(redis_server, "chunks", after="4-30", count=100)
    assert _entry_ids(chunk) == ["4-40", "4-50"] and not chunk.more
    assert not _log(redis_server, "chunks", count=50).more  # exactly all of it


def _bound_model(
    writes: list[list[int]], max_len: int, before: Sequence[int] = ()
) -> list[tuple[list[int], int]]:
    """What the log must hold after each write of ``writes`` (seqs of one generation, after the
    events ``before``): the events held and the last one removed (the rule of
    COMMIT_SCRIPT: at a checkpoint, back to the bound if over it and the write passed a multiple
    of k, or if k or more over it)."""
    k = max(1, max_len // 10)
    held = list(before)
    deleted = (held or writes[0])[0] - 1
    out = []
    for i, seqs in enumerate(writes):
        prev = writes[i - 1][-1] if i else (held[-1] if held else None)
        held += seqs
        passed = prev is None or prev // k != seqs[-1] // k
        if len(held) > max_len and (passed or len(held) >= max_len + k):
            deleted = held[-max_len - 1]
            held = held[-max_len:]
        out.append((list(held), deleted))
    return out


def test_the_bound_counts_events_exactly_whatever_the_writes(redis_server: RedisServer) -> None:
    rng = random.Random(5)
    for max_len in (1, 7, 30):
        stream = f"model-{max_len}"
        policy = LogPolicy(max_len=max_len, max_age_ms=0)
        writes: list[list[int]] = []
        seq = 0
        for _ in range(60):
            n = rng.choice([1, 1, 1, 2, 3, 12])
            seqs = []
            for _ in range(n):
                seq += rng.choice([1, 1, 1, 2, 5])  # a client's seqs may skip
                seqs.append(seq)
            writes.append(seqs)
        expected = _bound_model(writes, max_len)
        k = max(1, max_len // 10)
        for i, seqs in enumerate(writes):
            prev = (9, writes[i - 1][-1]) if i else None
            write = _write(stream, 9, seqs, float(i), prev=prev)
            assert _commit(redis_server, [write], policy=policy) == [True]
            chunk = _log(redis_server, stream)
            held, deleted = expected[i]
            assert _ids(chunk) == [f"9-{s}" for s in held], (max_len, i)
            assert chunk.deleted_id == f"9-{deleted}", (max_len, i)
            assert len(held) <= max_len + k - 1
            assert _log_info(redis_server, stream)["entries-added"] == len(held)


def test_a_trim_inside_an_entry_names_seqs_above_2_to_the_53_exactly(
    redis_server: RedisServer,
) -> None:
    top = 2**63 - 1
    seqs = list(range(top - 11, top + 1))
    policy = LogPolicy(max_len=5, max_age_ms=0)
    assert _commit(redis_server, [_write("huge", 1795805218226, seqs, 1.0)], policy=policy) == [
        True
    ]
    chunk = _log(redis_server, "huge")
    assert chunk.deleted_id == f"1795805218226-{top - 5}"
    assert _ids(chunk) == [f"1795805218226-{s}" for s in seqs[-5:]]
    assert _entry_ids(chunk) == [f"1795805218226-{top}"]


def _old_entry(client: object, log: str, event_id: str, value: float, t_ms: int) -> None:
    """An entry as logs were written before one entry per write: one step, fields v t x y r."""
    import redis

    assert isinstance(client, redis.Redis)
    fields = {
        "v": "v1",
        "t": str(t_ms),
        "x": np.array([value], "<f8").tobytes(),
        "y": np.array([value / 2], "<f4").tobytes(),
        "r": b"",
    }
    client.xadd(log, fields, id=event_id)  # type: ignore[arg-type]


def test_logs_of_one_entry_per_step_are_read_and_trimmed_by_events(
    redis_server: RedisServer,
) -> None:
    """A log written before the current form (one entry per step, its entries-added counting
    entries ever added, trims included) meets writes of the current form: both are read as
    events, and the bound still counts events exactly."""
    client = redis_server.client()
    keys = StateStore("", "t", Metrics(), 1).stream_keys(DEFAULT_TENANT, "m", "old")
    for seq in range(1, 5):
        _old_entry(client, keys.log, f"5-{seq}", 20.0 + seq, 900)
    # as the earlier script left it: max-deleted at its floor, entries-added past the length
    client.execute_command("XSETID", keys.log, "5-4", "ENTRIESADDED", 50, "MAXDELETEDID", "5-0")
    state = _write("old", 5, [4], 1.0, prev=(5, 3))  # the record at seq 4, as it stood
    client.set(keys.state, state.record)
    policy = LogPolicy(max_len=4, max_age_ms=0)
    assert _commit(redis_server, [_write("old", 5, [5, 6], 2.0, prev=(5, 4))], policy=policy) == [
        True
    ]
    chunk = _log(redis_server, "old")
    assert _ids(chunk) == ["5-3", "5-4", "5-5", "5-6"] and chunk.deleted_id == "5-2"
    assert _entry_ids(chunk) == ["5-3", "5-4", "5-6"]
    first = json.loads(log_events("m", "old", chunk, None)[0].data)
    assert first["values"] == [23.0] and first["prediction"] == [11.5] and first["ts"] == 0.9
    assert _log_info(redis_server, "old")["entries-added"] == 4
    assert _commit(redis_server, [_write("old", 5, [7], 3.0, prev=(5, 6))], policy=policy) == [True]
    chunk = _log(redis_server, "old", after="5-3")
    assert _ids(chunk, "5-3") == ["5-4", "5-5", "5-6", "5-7"] and chunk.deleted_id == "5-3"
    assert _log_info(redis_server, "old")["entries-added"] == 4


def test_a_log_of_one_entry_per_step_is_counted_afresh_at_checkpoints(
    redis_server: RedisServer,
) -> None:
    """One-step writes that are no checkpoint only add to the log; the first checkpoint finds an
    old entry at the head and counts the log by reading it, so the bound holds exactly."""
    client = redis_server.client()
    keys = StateStore("", "t", Metrics(), 1).stream_keys(DEFAULT_TENANT, "m", "old-k")
    for seq in range(1, 21):
        _old_entry(client, keys.log, f"5-{seq}", 20.0, 900)
    client.execute_command("XSETID", keys.log, "5-20", "ENTRIESADDED", 500, "MAXDELETEDID", "5-0")
    client.set(keys.state, _write("old-k", 5, [20], 1.0, prev=(5, 19)).record)
    policy = LogPolicy(max_len=20, max_age_ms=0)  # k = 2
    writes = [[seq] for seq in range(21, 31)] + [[31, 32, 33], [40]]
    expected = _bound_model(writes, 20, range(1, 21))
    prev = 20
    for seqs, (held, deleted) in zip(writes, expected, strict=True):
        write = _write("old-k", 5, seqs, 2.0, prev=(5, prev))
        assert _commit(redis_server, [write], policy=policy) == [True]
        prev = seqs[-1]
        chunk = _log(redis_server, "old-k")
        assert _ids(chunk) == [f"5-{s}" for s in held] and chunk.deleted_id == f"5-{deleted}"
    assert _log_info(redis_server, "old-k")["entries-added"] == 20


def test_an_earlier_entry_behind_current_ones_makes_the_log_counted_afresh(
    redis_server: RedisServer,
) -> None:
    """During an upgrade both versions may write a log; the earlier one trims by entries and
    leaves the counter alone, so it may count too many, and a trim then drops that many too
    many. A trim that meets an entry of the earlier form counts what is left, so the counter is
    exact again afterwards."""
    client = redis_server.client()
    keys = StateStore("", "t", Metrics(), 1).stream_keys(DEFAULT_TENANT, "m", "mixed")
    assert _commit(redis_server, [_write("mixed", 5, [1, 2], 1.0)]) == [True]
    _old_entry(client, keys.log, "5-3", 20.0, 900)  # the earlier version's write of seq 3
    client.set(keys.state, _write("mixed", 5, [3], 1.0, prev=(5, 2)).record)
    # its trims (not shown) left the counter 6 over the 3 events held
    client.execute_command("XSETID", keys.log, "5-3", "ENTRIESADDED", 9)
    policy = LogPolicy(max_len=3, max_age_ms=0)
    write = _write("mixed", 5, [4, 5], 2.0, prev=(5, 3))
    assert _commit(redis_server, [write], policy=policy) == [True]
    chunk = _log(redis_server, "mixed")  # 11 counted, 8 dropped: 5-4 hidden in its entry
    assert _ids(chunk) == ["5-5"] and chunk.deleted_id == "5-4"
    assert _log_info(redis_server, "mixed")["entries-added"] == 1
    write = _write("mixed", 5, [6, 7, 8], 3.0, prev=(5, 5))
    assert _commit(redis_server, [write], policy=policy) == [True]
    chunk = _log(redis_server, "mixed")
    assert _ids(chunk) == ["5-6", "5-7", "5-8"] and chunk.deleted_id == "5-5"
    assert _log_info(redis_server, "mixed")["entries-added"] == 3

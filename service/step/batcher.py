"""The queue and the natural-batching loop: the only code that writes stream state.

Handlers validate a request, turn it into units (one per stream) and ``submit`` them. One loop
takes everything queued (up to ``batch_max_readings``), reads every stream's record in one round
trip (per node, on a cluster; a stream whose record this process wrote last is planned from that
record instead, ``state_cache.py``), plans the simple streams as columns (``columns.py``: one model
call per shape of units) and the others one by one (``plan.py``: one model call per length
bucket, ragged lengths through ``seq_lens``), and writes every advanced stream with
compare-and-set in one round trip, together with one event-log entry per write. While that batch
is in flight, new readings queue, and once as many are queued as it took, a second batch over
other streams may start; no timer is involved, so a lone reading waits for nothing but its own
work. A stream whose write lost a race goes back to the front of the queue and is recomputed from
the state that won; the other streams of the batch are answered.

A stream is (tenant, model, stream): units are grouped by their state key, which names all three.
A tenant may have a limit on its live streams (``stream_limit``): a stream that starts a
generation is counted against it before the batch's model call, with one round trip for all such
streams of the batch, and refused with ``quota_exceeded`` beyond it; no other step pays anything
for it (the count and its repair: ``state_store.QUOTA_SCRIPT``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import struct
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from typing import NamedTuple, cast

import numpy as np

from ..core.errors import Overloaded, QuotaExceeded, ServiceError
from ..core.metrics import Metrics
from ..core.model_stats import Tally
from ..core.settings import Settings
from .columns import Columns, columns_of, shape_of, simple
from .events import log_append_packed
from .model import ServedModel
from .plan import Applied, Duplicate, StreamPlan, Unit, UnitResult, plan_stream
from .record import StreamState, encode_record_packed
from .state_cache import StateCache
from .state_store import Announcement, Confirm, LogPolicy, StateStore, StreamId, Write

__all__ = ["Batcher", "Output", "no_stream_limit"]

log = logging.getLogger(__name__)

_GUARD = struct.Struct("<QQ")


class Output(NamedTuple):
    """One stream's share of a model call."""

    y: np.ndarray  # predictions [T, outputs], float32
    x: bytes  # the steps' values, float64, row after row (for its events)
    y_bytes: bytes  # y as bytes
    h: bytes  # the new state
    c: bytes


# Inference runs inline, on the event loop: for the demo model a 1,000-stream step takes about
# 2 ms, less than handing it to a thread and back costs the other work (bench/README.md,
# "bench_service.py libs"). The environment variable is read for that comparison only.
_INFER_IN_EXECUTOR = os.environ.get("LSTM_BENCH_INFER") == "executor"

# Batches that may run at once (over disjoint streams): two keep the process busy while one waits
# for Redis; more only queue behind the same Redis connection pool and CPU.
MAX_BATCHES_IN_FLIGHT = 2

# Beside a batch in flight, a second starts once this many readings are queued (or as many as
# the first took, if fewer): enough to share a model call and a Redis round trip. Waiting for a
# second batch as large as a bulk batch of thousands cost the bulk path a tenth of its rate
# (bench_service.py compare).
SECOND_BATCH_READINGS = 32

# Streams whose units take the columnar path together: one model, the same reading counts.
Bucket = tuple[str, tuple[int, ...]]

# A stream that keeps losing compare-and-set races this many times is answered 503 rather than
# retried forever (it would take a writer advancing the stream between every read and write).
MAX_ATTEMPTS = 64

# A tenant at its max_streams has its set of live streams checked for streams that are gone (a
# missed expiry) at most this often per process: the check reads the whole set, and a tenant that
# keeps asking for new streams at its limit must not make every refusal cost that.
QUOTA_REPAIR_INTERVAL_S = 10.0


def no_stream_limit(tenant: str) -> int | None:
    """``Batcher.stream_limit`` without quotas: no tenant has a limit."""
    return None


class Batcher:
    # A tenant's limit on live streams (None: no limit), asked only for streams that start a
    # generation; whoever knows the tenants' limits sets it.
    stream_limit: Callable[[str], int | None]

    def __init__(self, store: StateStore, settings: Settings, metrics: Metrics) -> None:
        self.store = store
        self.settings = settings
        self.metrics = metrics
        self.stream_limit = no_stream_limit
        self._repaired_at: dict[str, float] = {}  # tenant -> when its set was last repaired
        self._queue: deque[Unit] = deque()
        self._queued_readings = 0
        self._wakeup = asyncio.Event()
        self._accepting = True
        self._last_generation = 0
        self._last_batch_readings = 0  # the size of the batch started last (see _may_start)
        self._log_policy = LogPolicy(settings.events_max_len, settings.events_max_age_ms)
        self._refuse_gaps = settings.seq_gaps == "refuse"
        # --durability aof or replicas:N: answers wait for Redis's confirmation (state_store.py),
        # duplicates' too, and events are announced once it came.
        self._acked = settings.durability.level != "memory"
        cached = settings.state_cache_streams
        self._cache = StateCache(cached) if cached else None
        # lstm_state_cache_total's series, looked up once rather than per batch
        self._cache_results = {r: metrics.state_cache.labels(r) for r in ("hit", "stale", "miss")}

    # -- admission ---------------------------------------------------------------------------

    def check_room(self, readings: int = 1) -> None:
        """Raise Overloaded unless ``readings`` more fit in the queue. Handlers call it before
        they read a body (is there room for one?), so that an overloaded service spends nothing
        on requests it must refuse anyway; ``submit`` calls it with the real count."""
        if not self._accepting:
            raise Overloaded("the service is shutting down; retry on another replica")
        if self._queued_readings + readings > self.settings.queue_max_readings:
            raise Overloaded(
                f"{self._queued_readings} readings are queued (limit "
                f"{self.settings.queue_max_readings}); retry shortly"
            )

    def forget(self, key: str) -> None:
        """Drop a stream's cached record (it was deleted): its next batch reads it."""
        if self._cache is not None:
            self._cache.drop(key)

    async def end_stream(self, tenant: str, model: str, stream: str) -> bool:
        """End a stream (DELETE): remove its record, and its place in its tenant's count of
        live streams if the tenant has a limit, in one round trip; whether it had a record."""
        key = self.store.state_key(tenant, model, stream)
        self.forget(key)  # a write from the cache would fail its guard anyway
        counted = self.stream_limit(tenant) is not None
        return await self.store.delete(key, tenant if counted else None)

    async def streams_expired(self, streams: Sequence[StreamId]) -> None:
        """Redis expired these streams' records (the expiry watcher saw it): they leave their
        tenants' counts of live streams. Raises RedisUnavailable."""
        gone: dict[str, list[str]] = {}
        for tenant, model, stream in streams:
            key = self.store.state_key(tenant, model, stream)
            self.forget(key)
            if self.stream_limit(tenant) is not None:
                gone.setdefault(tenant, []).append(key)
        await self.store.release_streams(gone)

    def submit(self, units: Sequence[Unit]) -> None:
        """Queue units (all or none); raises Overloaded when the queue would exceed its bound."""
        count = sum(len(u.readings) for u in units)
        self.check_room(count)
        self._queue.extend(units)
        self._queued_readings += count
        self.metrics.queue_readings.set(self._queued_readings)
        self._wakeup.set()

    # -- the loop ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve batches until cancelled; after ``close()``, until the queue is empty.

        Up to ``MAX_BATCHES_IN_FLIGHT`` batches run at once, over disjoint streams: while one
        waits for Redis, the next is planned and inferred. A stream with a batch in flight keeps
        its queued readings (and their order) until that batch is done, so each stream still
        advances one batch at a time.
        """
        in_flight: set[asyncio.Task[None]] = set()
        busy: set[tuple[str, str, str]] = set()  # (tenant, model, stream) of batches in flight
        try:
            while True:
                batch = self._take(busy) if self._may_start(in_flight) else []
                if not batch:
                    if not self._queue and not in_flight and not self._accepting:
                        return
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                streams = {(u.tenant, u.model.name, u.stream) for u in batch}
                busy.update(streams)
                self._last_batch_readings = sum(len(u.readings) for u in batch)
                task = asyncio.create_task(self._guarded(batch))
                in_flight.add(task)
                task.add_done_callback(functools.partial(self._done, streams, in_flight, busy))
        finally:
            for task in in_flight:
                task.cancel()

    def _may_start(self, in_flight: set[asyncio.Task[None]]) -> bool:
        """Whether a batch may start now. With none in flight, always: a lone reading waits for
        nothing. Beside one in flight, only once as many readings are queued as that batch
        took, or ``SECOND_BATCH_READINGS``: every batch costs a model call and a Redis round
        trip whatever its size, so under moderate load readings gather into the next batch
        while the current one waits for Redis, instead of going out as many small batches;
        under heavy load (large batches) the second batch starts as soon as it is worth one."""
        if not in_flight:
            return True
        if len(in_flight) >= MAX_BATCHES_IN_FLIGHT:
            return False
        wanted = min(self._last_batch_readings, SECOND_BATCH_READINGS)
        return self._queued_readings >= wanted

    def _done(
        self,
        streams: set[tuple[str, str, str]],
        in_flight: set[asyncio.Task[None]],
        busy: set[tuple[str, str, str]],
        task: asyncio.Task[None],
    ) -> None:
        in_flight.discard(task)
        busy.difference_update(streams)
        self._wakeup.set()

    async def _guarded(self, batch: list[Unit]) -> None:
        try:
            await self._process(batch)
        except Exception as exc:  # a bug: answer the batch, keep serving
            log.exception("batch of %d units failed", len(batch))
            for unit in batch:
                _resolve(unit, error=exc)

    def close(self) -> None:
        """Stop admitting; ``run`` returns once everything admitted has been answered."""
        self._accepting = False
        self._wakeup.set()

    def _take(self, busy: set[tuple[str, str, str]]) -> list[Unit]:
        """The next batch, in queue order, up to the batch limit, leaving in the queue (in
        order) every unit of a stream that has a batch in flight."""
        batch: list[Unit] = []
        taken = 0
        limit = self.settings.batch_max_readings
        queue = self._queue
        held: list[Unit] = []
        while queue:
            unit = queue[0]
            n = len(unit.readings)
            if batch and taken + n > limit:
                break
            queue.popleft()
            if busy:
                stream = (unit.tenant, unit.model.name, unit.stream)
                if stream in busy:
                    held.append(unit)
                    continue
            batch.append(unit)
            taken += n
        if held:
            # Nothing of a held stream was taken after it (the stream stays busy throughout).
            queue.extendleft(reversed(held))
        if not batch:
            return batch
        self._queued_readings -= taken
        self.metrics.queue_readings.set(self._queued_readings)
        self.metrics.batch_readings.observe(taken)
        now = time.perf_counter()
        for unit in batch:
            if unit.attempts == 0:
                ticket = unit.ticket
                if ticket is None:
                    self.metrics.queue_wait_seconds.observe(now - unit.enqueued_at)
                elif not ticket.waited:  # once per request, by its first unit
                    ticket.waited = True
                    self.metrics.queue_wait_seconds.observe(now - unit.enqueued_at)
        return batch

    def _new_generation(self) -> int:
        # Creation time in ms, strictly increasing within the process, so that event ids
        # ({generation}-{seq}) of a restarted stream never repeat those of its previous life.
        self._last_generation = max(int(time.time() * 1000), self._last_generation + 1)
        return self._last_generation

    async def _process(self, batch: list[Unit]) -> None:
        started = time.perf_counter()
        tallies: dict[str, Tally] = {}  # per model, for its statistics (model_stats.py)
        # Group by stream, keeping arrival order inside each stream.
        groups: dict[str, list[Unit]] = {}
        name, tally = "", Tally()  # the model of the unit before (a batch has mostly one)
        for unit in batch:
            unit.attempts += 1
            if unit.model.name != name:
                name = unit.model.name
                tally = tallies.setdefault(name, Tally())
            tally.units += 1
            if unit.attempts == 1:
                tally.queued += 1
                tally.queue_s += started - unit.enqueued_at
            key = self.store.state_key(unit.tenant, name, unit.stream)
            groups.setdefault(key, []).append(unit)
        # Streams whose last record this process wrote are planned from it (state_cache.py);
        # the others, and any whose plan would answer without writing, are read first. Simple
        # streams (columns.py) are planned as columns, the rest one by one (plan.py).
        plans: list[StreamPlan] = []
        unread: list[str] = []
        from_cache: set[str] = set()
        cache = self._cache
        simple_cached: dict[Bucket, list[tuple[str, bytes | None]]] = {}
        for key, units in groups.items():
            cached = cache.get(key) if cache is not None else None
            if cached is not None:
                if simple(units):
                    simple_cached.setdefault(_bucket(units), []).append((key, cached))
                    continue
                plan = self._plan(key, units, cached)
                if all(type(o) is Applied for o in plan.outcomes):
                    plans.append(plan)
                    from_cache.add(key)
                    continue
            unread.append(key)
        parts: dict[Bucket, list[Columns]] = {}
        for bucket, entries in simple_cached.items():
            cols, left = self._columns(bucket[1], entries, groups)
            if cols is not None:
                parts.setdefault(bucket, []).append(cols)
                from_cache.update(cols.keys)
            unread += [entries[i][0] for i in left]
        if unread:
            self._cache_results["miss"].inc(len(unread))
            try:
                raws = await self.store.load_many(unread)
            except ServiceError as exc:
                self._fail(batch, exc, tallies)
                self._record_stats(tallies, started, None)
                return
            simple_read: dict[Bucket, list[tuple[str, bytes | None]]] = {}
            for key, raw in zip(unread, raws, strict=True):
                units = groups[key]
                if isinstance(raw, ServiceError):  # that stream's cluster node failed
                    self._fail(units, raw, tallies)
                    continue
                if simple(units):
                    simple_read.setdefault(_bucket(units), []).append((key, raw))
                else:
                    plans.append(self._plan(key, units, raw))
            for bucket, entries in simple_read.items():
                cols, left = self._columns(bucket[1], entries, groups)
                if cols is not None:
                    parts.setdefault(bucket, []).append(cols)
                for i in left:
                    key, raw = entries[i]
                    plans.append(self._plan(key, groups[key], raw))
        columns = [Columns.merged(p) for p in parts.values()]

        # A stream with nothing to write (only retries, stale seqs or refusals) is answered from
        # the state just read; its answer does not wait for the other streams' write, unless it
        # holds a retry that must be acknowledged at the --durability level first (confirming).
        writing = []
        confirming: list[StreamPlan] = []
        # Back to the queue's front: streams that lost a race, and units a plan left for the
        # next batch (plan.py), these behind the others of their stream.
        conflicts: list[Unit] = []
        deferred: list[Unit] = []
        counts: Counter[str] = Counter()
        starting: list[StreamPlan] = []  # plans that start a generation (max_streams)
        for plan in plans:
            if plan.needs_write:
                writing.append(plan)
                if plan.starts:
                    starting.append(plan)
            else:
                self._answer_unwritten(plan, counts, tallies, confirming)
                deferred.extend(plan.deferred)
        if starting or any(len(cols.fresh) for cols in columns):
            writing, columns = await self._admit(
                starting, writing, columns, counts, deferred, tallies, confirming
            )
        self._count(counts)
        counts.clear()
        inferring = time.perf_counter()
        outputs = await self._infer(writing, tallies)
        column_outputs = [
            await self._infer_columns(cols, tallies[cols.model.name]) for cols in columns
        ]
        inferred = time.perf_counter()
        now = time.time()
        now_ms = int(now * 1000)
        writes = [self._record(plan, outputs[id(plan)], now, now_ms) for plan in writing]
        for cols, out in zip(columns, column_outputs, strict=True):
            writes += self._column_writes(cols, out, now, now_ms)
        confirms = [Confirm(plan.key, plan.expected_guard) for plan in confirming]
        announcements: list[Announcement] = []  # filled when answers wait for a confirmation
        try:
            written = await self.store.commit_many(
                writes,
                self.settings.state_ttl_ms,
                self._log_policy,
                now_ms,
                confirms,
                announcements,
            )
        except ServiceError as exc:
            if cache is not None:
                for write in writes:  # whether the write landed is unknown
                    cache.drop(write.keys.state)
            self._fail([u for p in writing for u in p.units], exc, tallies)
            for cols in columns:
                self._fail([u for stream in cols.units for u in stream], exc, tallies)
            for plan in confirming:
                self._answer(plan, None, counts, tallies, unconfirmed=exc)
            self._count(counts)
            self._requeue(deferred + [u for p in writing for u in p.deferred], contended=False)
            self._record_stats(tallies, started, (inferring, inferred))
            return

        cached_outcomes: Counter[str] = Counter()  # lstm_state_cache_total's hit and stale
        # Streams that ended, of tenants with a limit: answered once their tenant's count has
        # let them go, so that a client told its stream ended may start another at once.
        ending: list[StreamPlan] = []
        n = len(writing)
        for plan, write, outcome in zip(writing, writes[:n], written[:n], strict=True):
            if self._landed(
                plan.key,
                outcome,
                write.record,
                plan.units,
                from_cache,
                cached_outcomes,
                conflicts,
                tallies,
            ):
                if plan.ends and self.stream_limit(plan.units[0].tenant) is not None:
                    ending.append(plan)
                else:
                    self._answer(plan, outputs[id(plan)].y, counts, tallies)
            deferred.extend(plan.deferred)
        at = n
        for cols, out in zip(columns, column_outputs, strict=True):
            answered = [
                i
                for i, key in enumerate(cols.keys)
                if self._landed(
                    key,
                    written[at + i],
                    writes[at + i].record,
                    cols.units[i],
                    from_cache,
                    cached_outcomes,
                    conflicts,
                    tallies,
                )
            ]
            at += len(cols)
            self._answer_columns(cols, out[0], answered, counts, tallies)
        for plan, confirmed in zip(confirming, written[at:], strict=True):
            if confirmed is True:
                self._answer(plan, None, counts, tallies)
            elif isinstance(confirmed, ServiceError):
                self._answer(plan, None, counts, tallies, unconfirmed=confirmed)
            else:  # the record changed since it was read: plan the stream again
                conflicts.extend(plan.units)
        if ending:
            await self._release_ended(ending)
            for plan in ending:
                self._answer(plan, outputs[id(plan)].y, counts, tallies)
        for result, times in cached_outcomes.items():
            self._cache_results[result].inc(times)
        self._count(counts)
        self._requeue(deferred, contended=False)
        self._requeue(conflicts)
        self._record_stats(tallies, started, (inferring, inferred))
        if announcements:
            # Confirmed: now subscribers may hear of these steps. A lost announcement is not a
            # lost event: subscribers catch up from the log at the next one (its previous id
            # says what they missed), or when their pub/sub connection comes back.
            with contextlib.suppress(ServiceError):
                await self.store.announce(announcements)

    async def _release_ended(self, plans: list[StreamPlan]) -> None:
        """Take streams that ended (v2's sequence_end) out of their tenants' counts of live
        streams: one round trip. Their end stands if Redis does not answer: the counts keep
        them until a repair (``state_store.QUOTA_SCRIPT``)."""
        ended: dict[str, list[str]] = {}
        for plan in plans:
            ended.setdefault(plan.units[0].tenant, []).append(plan.key)
        try:
            await self.store.release_streams(ended)
        except ServiceError as exc:
            log.warning("%d ended streams stay counted against their limit: %s", len(plans), exc)

    async def _admit(
        self,
        starting: list[StreamPlan],
        writing: list[StreamPlan],
        columns: list[Columns],
        counts: Counter[str],
        deferred: list[Unit],
        tallies: dict[str, Tally],
        confirming: list[StreamPlan],
    ) -> tuple[list[StreamPlan], list[Columns]]:
        """Count the streams that start a generation against their tenant's ``stream_limit``
        (one round trip, only when one of them has a limit) and answer those refused, or those
        whose count Redis did not take (a retry among them once confirmed, ``confirming``);
        returns the plans and columns left to run."""
        limits: dict[str, int | None] = {}
        asks: dict[str, tuple[int, list[str]]] = {}
        names: dict[str, str] = {}  # state key -> stream id, for the refusals' messages

        def ask(tenant: str, key: str, stream: str) -> None:
            if tenant not in limits:
                limits[tenant] = self.stream_limit(tenant)
            limit = limits[tenant]
            if limit is not None:
                asks.setdefault(tenant, (limit, []))[1].append(key)
                names[key] = stream

        for plan in starting:
            ask(plan.units[0].tenant, plan.key, plan.stream)
        for cols in columns:
            for i in cols.fresh.tolist():
                ask(cols.units[i][0].tenant, cols.keys[i], cols.units[i][0].stream)
        if not asks:
            return writing, columns
        error: ServiceError | None = None
        try:
            refused = await self.store.admit_streams(asks)
        except ServiceError as exc:  # Redis did not answer: none of them may start now
            error, refused = exc, set(names)
        else:
            if refused:
                try:
                    refused = await self._repair(asks, refused)
                except ServiceError as exc:  # the refusals stand
                    log.warning("the count of live streams was not repaired: %s", exc)
        if not refused:
            return writing, columns

        def refusal(units: list[Unit], key: str) -> ServiceError:
            if error is not None:
                return error
            tenant = units[0].tenant
            limit = limits[tenant]
            assert limit is not None
            return QuotaExceeded(
                f"tenant {tenant!r} has {limit} live streams, as many as its max_streams "
                f"allows: stream {names[key]!r} cannot start; end a stream (DELETE, or v2's "
                "sequence_end) or let one expire, then retry",
                max_streams=limit,
            )

        kept = []
        for plan in writing:
            if plan.key not in refused:
                kept.append(plan)
                continue
            failure = refusal(plan.units, plan.key)
            if error is not None:
                self._fail(plan.units, failure, tallies)
            else:
                _refuse(plan, failure)
                self._answer_unwritten(plan, counts, tallies, confirming)
            deferred.extend(plan.deferred)
        left = []
        for cols in columns:
            rows = []
            for i, key in enumerate(cols.keys):
                if key not in refused:
                    rows.append(i)
                    continue
                units = cols.units[i]
                failure = refusal(units, key)
                if error is not None:
                    self._fail(units, failure, tallies)
                    continue
                counts["rejected"] += sum(len(u.readings) for u in units)
                tally = tallies[cols.model.name]
                now = time.perf_counter()
                for unit in units:
                    tally.fail += 1
                    tally.fail_s += now - unit.enqueued_at
                    _resolve(unit, error=failure)
            if len(rows) == len(cols):
                left.append(cols)
            else:
                remaining = cols.select(rows)
                if remaining is not None:
                    left.append(remaining)
        return kept, left

    async def _repair(self, asks: dict[str, tuple[int, list[str]]], refused: set[str]) -> set[str]:
        """Some streams were refused at their tenant's limit: where the tenant's set was not
        repaired in the last ``QUOTA_REPAIR_INTERVAL_S``, drop its streams that are gone (a
        missed expiry) and ask again for its refused ones. Returns the keys still refused."""
        now = time.monotonic()
        again: dict[str, tuple[int, list[str]]] = {}
        for tenant, (limit, keys) in asks.items():
            theirs = [key for key in keys if key in refused]
            last = self._repaired_at.get(tenant)
            if not theirs or (last is not None and now - last < QUOTA_REPAIR_INTERVAL_S):
                continue
            self._repaired_at[tenant] = now
            dropped = await self.store.prune_streams(tenant)
            if dropped:
                log.info("tenant %r: %d streams that are gone left its count", tenant, dropped)
                again[tenant] = (limit, theirs)
        if not again:
            return refused
        asked = {key for _, keys in again.values() for key in keys}
        return (refused - asked) | await self.store.admit_streams(again)

    def _landed(
        self,
        key: str,
        outcome: bool | int | ServiceError,
        record: bytes,
        units: list[Unit],
        from_cache: set[str],
        cached_outcomes: Counter[str],
        conflicts: list[Unit],
        tallies: dict[str, Tally],
    ) -> bool:
        """Whether a stream's write landed; the cache follows the outcome, and the units of a
        write that did not land are failed (its Redis node failed) or go back for another try."""
        cache = self._cache
        if outcome is True:
            if cache is not None:
                cache.put(key, record)
            if key in from_cache:
                cached_outcomes["hit"] += 1
            return True
        if cache is not None:
            cache.drop(key)
        if isinstance(outcome, ServiceError):  # that stream's Redis node failed
            self._fail(units, outcome, tallies)
            return False
        if outcome is not False:
            # A new generation that does not sort after the stream's event log (another
            # replica's clock is ahead): the next attempt starts after the log's.
            self._last_generation = max(self._last_generation, outcome)
        if key in from_cache:
            cached_outcomes["stale"] += 1  # planned from a record that was no longer current
        else:
            self.metrics.cas_conflicts.inc()
        conflicts.extend(units)
        return False

    def _columns(
        self,
        shape: tuple[int, ...],
        entries: list[tuple[str, bytes | None]],
        groups: dict[str, list[Unit]],
    ) -> tuple[Columns | None, list[int]]:
        units = [groups[key] for key, _ in entries]
        return columns_of(
            units[0][0].model,
            shape,
            [key for key, _ in entries],
            units,
            [raw for _, raw in entries],
            self._new_generation,
            self._refuse_gaps,
        )

    def _plan(self, key: str, units: list[Unit], raw: bytes | None) -> StreamPlan:
        model = units[0].model
        state = (
            None
            if raw is None
            else StreamState.decode(raw, model.version, model.state_shape, model.output_size)
        )
        return plan_stream(
            model,
            units[0].stream,
            key,
            units,
            state,
            self.settings.on_version_mismatch,
            self._new_generation,
            self._refuse_gaps,
        )

    def _record_stats(
        self, tallies: dict[str, Tally], started: float, inference: tuple[float, float] | None
    ) -> None:
        """Each model's share of the batch into its statistics; ``inference``: when the
        batch's model calls began and ended (None: the batch failed before them)."""
        done = time.perf_counter()
        if inference is None:
            input_s, output_s = done - started, 0.0
        else:
            input_s, output_s = inference[0] - started, done - inference[1]
        for name, tally in tallies.items():
            self.metrics.model_stats.record(name, tally, input_s, output_s)

    async def _infer(self, plans: list[StreamPlan], tallies: dict[str, Tally]) -> dict[int, Output]:
        """Run the batch's streams through their models; per plan its ``Output``.

        Streams are grouped by model and by length bucket (1, 2, 3-4, 5-8, ...). onnxruntime's
        LSTM computes padded steps too: one 500-step backlog in a call with 255 single readings
        took 284 ms instead of 2 ms in two calls. Within a bucket the padding is under 2x, and a
        batch of single readings (the common case) is still one call.
        """
        groups: dict[tuple[str, int], list[StreamPlan]] = {}
        for plan in plans:
            bucket = 1 << (len(plan.steps) - 1).bit_length()
            groups.setdefault((plan.model.name, bucket), []).append(plan)
        out: dict[int, Output] = {}
        for group in groups.values():
            out.update(await self._infer_group(group, tallies[group[0].model.name]))
        return out

    async def _infer_group(self, group: list[StreamPlan], tally: Tally) -> dict[int, Output]:
        """One model call for the group; each stream's rows are cut out of whole-group arrays
        (one ``tobytes`` per array, then byte slices), which is what keeps a 1,000-stream batch
        cheap."""
        model: ServedModel = group[0].model
        n_in, n_out = model.input_size, model.output_size
        lengths = np.array([len(p.steps) for p in group], np.int32)
        steps = int(lengths.max())
        # values as sent (float64, for the events) laid out [B, steps, inputs]
        if steps == 1:
            x64 = np.array([p.steps[0].values for p in group], np.float64).reshape(-1, 1, n_in)
        else:
            x64 = np.zeros((len(group), steps, n_in), np.float64)
            for b, plan in enumerate(group):
                x64[b, : len(plan.steps)] = [r.values for r in plan.steps]
        x = np.ascontiguousarray(x64.transpose(1, 0, 2), np.float32)
        h0 = np.stack([p.h0 for p in group], axis=1)
        c0 = np.stack([p.c0 for p in group], axis=1)
        requests = sum(len(p.units) for p in group)
        y, hn, cn = await self._run_model(model, x, h0, c0, lengths, requests, tally)
        y_rows = np.ascontiguousarray(y.transpose(1, 0, 2))  # [B, steps, outputs]
        h_all = np.ascontiguousarray(hn.transpose(1, 0, 2)).tobytes()
        c_all = np.ascontiguousarray(cn.transpose(1, 0, 2)).tobytes()
        x_all = x64.tobytes()
        y_all = y_rows.tobytes()
        state_size = len(h_all) // len(group)
        x_stride, y_stride = 8 * steps * n_in, 4 * steps * n_out
        out: dict[int, Output] = {}
        for b, plan in enumerate(group):
            n = len(plan.steps)
            at_x, at_y, at_s = b * x_stride, b * y_stride, b * state_size
            out[id(plan)] = Output(
                y_rows[b, :n],
                x_all[at_x : at_x + 8 * n * n_in],
                y_all[at_y : at_y + 4 * n * n_out],
                h_all[at_s : at_s + state_size],
                c_all[at_s : at_s + state_size],
            )
        return out

    async def _run_model(
        self,
        model: ServedModel,
        x: np.ndarray,
        h0: np.ndarray,
        c0: np.ndarray,
        lengths: np.ndarray,
        requests: int,
        tally: Tally,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One model call, timed into the metrics and the model's statistics."""
        start = time.perf_counter()
        if _INFER_IN_EXECUTOR:
            y, hn, cn = await asyncio.get_running_loop().run_in_executor(
                None, model.step, x, h0, c0, lengths
            )
        else:
            y, hn, cn = model.step(x, h0, c0, lengths)
        took = time.perf_counter() - start
        self.metrics.inference_seconds.labels(model.name).observe(took)
        tally.inferred += requests
        tally.infer_s += requests * took
        tally.executions.append((len(lengths), took))
        return y, hn, cn

    async def _infer_columns(
        self, cols: Columns, tally: Tally
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The columns' one model call (every row has the same length): ``y [steps, B,
        outputs]``, ``hn``/``cn [layers, B, hidden]``."""
        x = np.ascontiguousarray(cols.x64.transpose(1, 0, 2), np.float32)
        lengths = np.full(len(cols), cols.steps, np.int32)
        return await self._run_model(cols.model, x, cols.h0, cols.c0, lengths, len(cols), tally)

    def _column_writes(
        self,
        cols: Columns,
        out: tuple[np.ndarray, np.ndarray, np.ndarray],
        now: float,
        now_ms: int,
    ) -> list[Write]:
        """Every stream's write of the columns: records cut out of one buffer, events out of
        the whole columns' arrays."""
        y, hn, cn = out
        buffer, size = cols.records(now, y, hn, cn)
        model = cols.model
        steps, n_in, n_out = cols.steps, model.input_size, model.output_size
        x_all = cols.x64.tobytes()
        y_all = np.ascontiguousarray(y.transpose(1, 0, 2)).tobytes()
        x_stride, y_stride = 8 * steps * n_in, 4 * steps * n_out
        seqs = cols.seqs.tolist()
        generations = cols.generation.tolist()
        lasts = cols.last.tolist()
        stream_keys = self.store.stream_keys
        writes = []
        for i, units in enumerate(cols.units):
            guard = cols.guards[i]
            generation = generations[i]
            events = log_append_packed(
                model.version,
                generation,
                seqs[i],
                x_all[i * x_stride : (i + 1) * x_stride],
                y_all[i * y_stride : (i + 1) * y_stride],
                [r.ts for u in units for r in u.readings],
                (generation, lasts[i]) if guard else None,
                now_ms,
            )
            writes.append(
                Write(
                    stream_keys(units[0].tenant, model.name, units[0].stream),
                    guard,
                    buffer[i * size : (i + 1) * size],
                    events,
                )
            )
        return writes

    def _answer_columns(
        self,
        cols: Columns,
        y: np.ndarray,
        answered: list[int],
        counts: Counter[str],
        tallies: dict[str, Tally],
    ) -> None:
        """Resolve the columns' units whose write happened (``answered``: their indices)."""
        if not answered:
            return
        streams_answered = len(answered)
        rows = y.transpose(1, 0, 2).tolist()  # [B][steps][outputs], as Python floats
        seqs = cols.seqs.tolist()
        generations = cols.generation.tolist()
        streams = cols.units
        since = 0.0
        if cols.shape == (1,):  # one reading of each stream, the commonest case
            for i in answered:
                unit = streams[i][0]
                since += unit.enqueued_at
                _resolve(unit, UnitResult(generations[i], [(seqs[i][0], rows[i][0])], False))
        else:
            for i in answered:
                generation, stream_seqs, stream_rows = generations[i], seqs[i], rows[i]
                at = 0
                for unit in streams[i]:
                    n = len(unit.readings)
                    since += unit.enqueued_at
                    results = list(
                        zip(stream_seqs[at : at + n], stream_rows[at : at + n], strict=True)
                    )
                    _resolve(unit, UnitResult(generation, results, False))
                    at += n
        answered_units = streams_answered * len(cols.shape)
        counts["applied"] += streams_answered * cols.steps
        tally = tallies[cols.model.name]
        tally.success += answered_units
        tally.success_s += answered_units * time.perf_counter() - since

    def _record(self, plan: StreamPlan, output: Output, now: float, now_ms: int) -> Write:
        last = plan.last_applied
        assert last is not None  # a plan with steps has applied a unit
        steps = plan.steps
        seqs = [cast(int, r.seq) for r in steps]  # every step has its seq assigned
        guard = plan.expected_guard
        events = log_append_packed(
            plan.model.version,
            plan.generation,
            seqs,
            output.x,
            output.y_bytes,
            [r.ts for r in steps],
            _GUARD.unpack(guard) if guard else None,
            now_ms,
        )
        # the last applied unit's steps are the plan's last steps
        row = len(output.y_bytes) // len(seqs)
        # A stream that ends keeps only its last request's results (record.py)
        record = encode_record_packed(
            plan.generation,
            seqs[-1],
            now,
            plan.model.version,
            b"" if plan.ends else output.h,
            b"" if plan.ends else output.c,
            seqs[last.first : last.first + last.count],
            output.y_bytes[last.first * row : (last.first + last.count) * row],
        )
        return Write(
            self.store.stream_keys(plan.units[0].tenant, plan.model.name, plan.stream),
            guard,
            record,
            events,
        )

    def _answer_unwritten(
        self,
        plan: StreamPlan,
        counts: Counter[str],
        tallies: dict[str, Tally],
        confirming: list[StreamPlan],
    ) -> None:
        """A plan that writes nothing is answered now, unless it holds a retry answered from
        its stored record that must first be acknowledged at the --durability level: that one
        joins ``confirming``, for the batch's commit."""
        if self._acked and any(isinstance(o, Duplicate) for o in plan.outcomes):
            confirming.append(plan)
        else:
            self._answer(plan, None, counts, tallies)

    def _answer(
        self,
        plan: StreamPlan,
        y: np.ndarray | None,
        counts: Counter[str],
        tallies: dict[str, Tally],
        unconfirmed: ServiceError | None = None,
    ) -> None:
        """Resolve every unit of a plan whose write (if any) happened; ``counts`` gathers the
        batch's readings by outcome, for one metric update per batch, and ``tallies`` its
        requests, for the model's statistics. ``unconfirmed``: the error its retries get, as
        their records were not acknowledged at the --durability level."""
        failed = 0
        failed_since = answered_since = 0.0  # summed enqueue times, for the statistics
        for unit, outcome in zip(plan.units, plan.outcomes, strict=True):
            n = len(unit.readings)
            if type(outcome) is Applied:
                assert y is not None
                rows = y[outcome.first : outcome.first + outcome.count].tolist()
                counts["applied"] += n
                results = list(zip(plan.seqs(outcome), rows, strict=True))
                _resolve(unit, UnitResult(plan.generation, results, False))
            elif isinstance(outcome, Duplicate) and unconfirmed is not None:
                counts["failed"] += n
                _resolve(unit, error=unconfirmed)
                failed += 1
                failed_since += unit.enqueued_at
                continue
            elif isinstance(outcome, Duplicate):
                results = [(seq, _held_prediction(held, y)) for seq, held in outcome.held]
                counts["duplicate"] += n
                generation = outcome.generation or plan.generation
                _resolve(unit, UnitResult(generation, results, True))
            else:
                assert isinstance(outcome, ServiceError)
                counts[_REFUSALS.get(outcome.code, "rejected")] += n
                _resolve(unit, error=outcome)
                failed += 1
                failed_since += unit.enqueued_at
                continue
            answered_since += unit.enqueued_at
        # One update per plan: success and fail counts, and their time from queueing to now.
        tally = tallies[plan.model.name]
        now = time.perf_counter()
        answered = len(plan.units) - failed
        tally.success += answered
        tally.success_s += answered * now - answered_since
        if failed:
            tally.fail += failed
            tally.fail_s += failed * now - failed_since

    def _count(self, counts: Counter[str]) -> None:
        for outcome, n in counts.items():
            self.metrics.readings.labels(outcome).inc(n)

    def _fail(
        self, units: list[Unit], error: ServiceError, tallies: dict[str, Tally] | None = None
    ) -> None:
        self.metrics.readings.labels("failed").inc(sum(len(u.readings) for u in units))
        now = time.perf_counter()
        for unit in units:
            if tallies is not None:
                tally = tallies[unit.model.name]
                tally.fail += 1
                tally.fail_s += now - unit.enqueued_at
            _resolve(unit, error=error)

    def _requeue(self, units: list[Unit], contended: bool = True) -> None:
        """Put units back at the front, in their order, ahead of newer readings; ``contended``:
        they lost a race, and a unit that lost too many is answered 503."""
        if not units:
            return
        keep = []
        for unit in units:
            if not contended:
                keep.append(unit)
            elif unit.attempts >= MAX_ATTEMPTS:
                self._fail([unit], Overloaded("the stream is contended too heavily; retry"))
            else:
                keep.append(unit)
        self._queue.extendleft(reversed(keep))
        self._queued_readings += sum(len(u.readings) for u in keep)
        self.metrics.queue_readings.set(self._queued_readings)
        if keep:
            self._wakeup.set()


# lstm_readings_total's outcome of a refused unit, by its error's code (else "rejected").
_REFUSALS = {"stale_seq": "stale", "seq_gap": "gap"}


def _refuse(plan: StreamPlan, error: ServiceError) -> None:
    """A plan whose stream may not start: its units that would run fail with ``error``, as does
    a retry of one of them within the batch; it writes nothing."""
    plan.outcomes = [
        error
        if type(o) is Applied
        or (isinstance(o, Duplicate) and any(isinstance(h, int) for _, h in o.held))
        else o
        for o in plan.outcomes
    ]
    plan.steps = []
    plan.last_applied = None
    plan.ends = False


def _bucket(units: list[Unit]) -> Bucket:
    return units[0].model.name, shape_of(units)


def _held_prediction(held: np.ndarray | int, y: np.ndarray | None) -> list[float]:
    """A duplicate's prediction: stored in the record, or computed earlier in this batch."""
    if isinstance(held, int):
        assert y is not None  # an index into this batch's steps implies it ran
        return cast(list[float], y[held].tolist())
    return cast(list[float], held.tolist())


def _resolve(unit: Unit, result: UnitResult | None = None, error: Exception | None = None) -> None:
    future = unit.future
    if future is None:  # a bulk request's unit: its outcome is kept, its ticket settled once
        if unit.outcome is None and unit.ticket is not None:
            unit.outcome = error if error is not None else result
            unit.ticket.settle()
        return
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    elif result is not None:
        future.set_result(result)

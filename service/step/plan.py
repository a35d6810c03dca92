"""What a batch does to one stream, decided from its stored state before any inference runs.

The rules (DESIGN.md, "State"): a client ``seq`` must exceed the last applied one (gaps allowed);
without one the server assigns last+1. A unit (the readings of one stream from one request) is all
or nothing. A unit whose seqs were all applied already and are still held in the record's last
results is a retry: it gets those results, marked duplicate, and changes nothing. Anything else at
or below the last seq is ``stale_seq``. A record written by another model version is refused or
reset, by configuration.

This module does no I/O; the batcher feeds it decoded state and carries out the plan.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from ..core.errors import ModelVersionMismatch, ServiceError, StaleSeq
from ..core.ids import DEFAULT_TENANT
from .model import ServedModel
from .record import StreamState

__all__ = ["SEQ_MAX", "Reading", "StreamPlan", "Ticket", "Unit", "UnitResult", "plan_stream"]

# The largest seq: clients may send up to it, and the server never assigns one above it (a stream
# that reaches it takes no seqless readings; ending it starts a new generation at 1).
SEQ_MAX = 2**63 - 1


class Reading(NamedTuple):
    """A tuple rather than a dataclass: the bulk path makes one per reading, twice."""

    values: list[float]  # raw units, len == model.input_size, all finite
    seq: int | None
    ts: float | str | None = None


class UnitResult(NamedTuple):
    generation: int
    results: list[tuple[int, list[float]]]  # (seq, prediction) per reading, in order
    duplicate: bool


class Ticket:
    """The units of one bulk request: ``done`` resolves once every one is answered.

    One future for the request, rather than gathering a future per unit: a 1,000-stream request
    would otherwise schedule 1,000 callbacks on the event loop to learn that it is complete.
    """

    __slots__ = ("done", "remaining", "waited")

    def __init__(self, units: int, loop: asyncio.AbstractEventLoop) -> None:
        self.remaining = units
        self.done: asyncio.Future[None] = loop.create_future()
        self.waited = False  # the request's queue wait is observed once, by its first unit

    def settle(self) -> None:
        self.remaining -= 1
        if self.remaining == 0 and not self.done.done():
            self.done.set_result(None)


@dataclass(eq=False)
class Unit:
    """The readings of one stream from one request: applied together or not at all.

    ``tenant``, ``model`` and ``stream`` name the stream. ``start``: the stream begins a new
    generation from zero state with these readings (v2's ``sequence_start``); ``end``: the stream
    ends after them (``sequence_end``).

    A unit's answer goes to its ``future``, which its request awaits. The units of a bulk request
    have none: their answers are kept in ``outcome`` (a result or an error) and the request
    awaits its ``ticket``, which is done once every unit has its outcome.
    """

    model: ServedModel
    stream: str
    readings: list[Reading]
    future: asyncio.Future[UnitResult] | None
    tenant: str = DEFAULT_TENANT
    enqueued_at: float = field(default_factory=time.perf_counter)
    attempts: int = 0
    ticket: Ticket | None = None
    start: bool = False
    end: bool = False
    outcome: UnitResult | Exception | None = None


# How a unit ends once the batch's inference has run: its readings' indices into the plan's steps,
# or (seq, stored prediction or step index) pairs for a duplicate, or an error.
@dataclass(frozen=True)
class Applied:
    first: int
    count: int


@dataclass(frozen=True)
class Duplicate:
    held: list[tuple[int, np.ndarray | int]]
    generation: int | None = None  # when not the plan's: a retry of an ended stream's last request


Outcome = Applied | Duplicate | ServiceError


@dataclass
class StreamPlan:
    model: ServedModel
    stream: str
    key: str
    units: list[Unit]  # the units this batch decides, one outcome each
    expected_guard: bytes
    generation: int
    h0: np.ndarray  # float32 [layers, hidden]
    c0: np.ndarray
    steps: list[Reading] = field(default_factory=list)  # readings to run, seq assigned
    outcomes: list[Outcome] = field(default_factory=list)
    last_applied: Applied | None = None  # the unit whose results the record will hold
    starts: bool = False  # the stream starts a new generation (its tenant's max_streams counts it)
    ends: bool = False  # the last applied unit ends the stream: the record keeps no state
    # Units of this stream left for the next batch: everything after a unit that ends the stream,
    # and a unit that starts a new generation after steps of the current one (one record write
    # carries one generation).
    deferred: list[Unit] = field(default_factory=list)

    @property
    def needs_write(self) -> bool:
        return bool(self.steps)

    def seqs(self, applied: Applied) -> list[int]:
        """The seqs of an applied unit's readings (every step has one assigned)."""
        steps = self.steps[applied.first : applied.first + applied.count]
        return [r.seq for r in steps if r.seq is not None]


def plan_stream(
    model: ServedModel,
    stream: str,
    key: str,
    units: list[Unit],
    state: StreamState | None,
    on_version_mismatch: str,
    new_generation: Callable[[], int],
) -> StreamPlan:
    """Decide the units of one stream in a batch, in order, against ``state`` (None: no record).

    ``new_generation`` is called only when the stream starts a new generation.
    """
    zeros = model.zero_state
    held: dict[int, np.ndarray | int] | None
    # An ended stream's record: the request that ended it, which the first units may retry.
    ended: StreamState | None = None
    head = units[0]
    live = state is not None and state.h is not None and not state.ended
    if state is None:
        plan = StreamPlan(model, stream, key, units, b"", new_generation(), zeros, zeros)
        plan.starts = True
        last, held = 0, {}
    elif not live or (head.start and not _repeats([r.seq for r in head.readings], state)):
        mismatch = not live and not state.ended  # a record of another model version
        if mismatch and not head.start and on_version_mismatch == "refuse":
            plan = StreamPlan(
                model, stream, key, units, state.guard, state.generation, zeros, zeros
            )
            plan.outcomes = [_version_mismatch(model, stream, state) for _ in units]
            return plan
        ended = state if state.ended else None
        generation = max(new_generation(), state.generation + 1)
        plan = StreamPlan(model, stream, key, units, state.guard, generation, zeros, zeros)
        plan.starts = True
        last, held = 0, {}
    else:
        # A live stream; a first unit with ``start`` that repeats its last request is a retry.
        assert state.h is not None and state.c is not None
        plan = StreamPlan(
            model, stream, key, units, state.guard, state.generation, state.h, state.c
        )
        last = state.seq
        held = None  # the record's held results, decoded only if a unit asks for old seqs

    for index, unit in enumerate(units):
        seqs = [r.seq for r in unit.readings]
        if ended is not None:
            if _repeats(seqs, ended):
                held_results: list[tuple[int, np.ndarray | int]] = [
                    (s, ended.results[s]) for s in _ints(seqs)
                ]
                plan.outcomes.append(Duplicate(held_results, ended.generation))
                continue
            ended = None  # anything else starts the new generation
        elif unit.start and index > 0:
            if held is not None and _repeats_held(seqs, last, held):
                plan.outcomes.append(Duplicate([(s, held[s]) for s in _ints(seqs)]))
                continue
            plan.units, plan.deferred = units[:index], units[index:]
            break
        if seqs[0] is None:
            if last + len(seqs) > SEQ_MAX:
                plan.outcomes.append(_exhausted(stream, last))
                continue
            assigned = list(range(last + 1, last + 1 + len(seqs)))
        else:
            assigned = [int(s) for s in seqs if s is not None]
            if assigned[0] <= last:
                if held is None:
                    assert state is not None and state.h is not None  # else held was set
                    held = dict[int, np.ndarray | int](state.results)
                if assigned[-1] <= last and all(s in held for s in assigned):
                    plan.outcomes.append(Duplicate([(s, held[s]) for s in assigned]))
                else:
                    plan.outcomes.append(_stale(stream, assigned, last))
                continue
        first = len(plan.steps)
        plan.steps += [
            Reading(r.values, seq, r.ts) for r, seq in zip(unit.readings, assigned, strict=True)
        ]
        applied = Applied(first, len(assigned))
        plan.outcomes.append(applied)
        plan.last_applied = applied
        last = assigned[-1]
        held = {seq: first + k for k, seq in enumerate(assigned)}
        if unit.end:
            plan.ends = True
            plan.units, plan.deferred = units[: index + 1], units[index + 1 :]
            break
    return plan


def _repeats(seqs: list[int | None], state: StreamState) -> bool:
    """Whether ``seqs`` are exactly the seqs of the record's last request (a retry of it)."""
    if seqs[0] is None:
        return False
    stored = state.held["seq"].tolist()
    return bool(stored) and seqs == stored and stored[-1] == state.seq


def _repeats_held(seqs: list[int | None], last: int, held: dict[int, np.ndarray | int]) -> bool:
    """Whether ``seqs`` are exactly those of the last unit applied earlier in this batch."""
    return seqs[0] is not None and seqs[-1] == last and list(held) == seqs


def _ints(seqs: list[int | None]) -> list[int]:
    return [s for s in seqs if s is not None]


def _version_mismatch(model: ServedModel, stream: str, state: StreamState) -> ServiceError:
    return ModelVersionMismatch(
        f"stream {stream!r} holds state of model version {state.model_version}, "
        f"but {model.name} is now version {model.version}; end the stream "
        "(DELETE) to start it afresh, or run the service with "
        "--on-version-mismatch reset",
        stream_version=state.model_version,
        model_version=model.version,
    )


def _exhausted(stream: str, last: int) -> StaleSeq:
    return StaleSeq(
        f"stream {stream!r}: its last applied seq is {last} and seqs stop at {SEQ_MAX}; end the "
        "stream (DELETE) to start it afresh at seq 1",
        current_seq=last,
    )


def _stale(stream: str, seqs: list[int], last: int) -> StaleSeq:
    if seqs[-1] > last:
        why = f"seqs {seqs[0]}..{seqs[-1]} mix readings already applied and new ones"
    elif len(seqs) == 1:
        why = f"seq {seqs[0]} was applied already and its result is no longer held"
    else:
        why = (
            f"seqs {seqs[0]}..{seqs[-1]} were applied already and their results are no longer held"
        )
    return StaleSeq(
        f"stream {stream!r}: {why}; its last applied seq is {last}: send seqs above it",
        current_seq=last,
    )

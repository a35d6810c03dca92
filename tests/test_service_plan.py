"""The step rules, decided without I/O: exactly-once seqs, retries, stale seqs, generations and
version mismatch (plan.py), and the state record's byte format (state_store.py)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from service.core.errors import ModelVersionMismatch, StaleSeq
from service.step.model import ServedModel, load_models
from service.step.plan import Applied, Duplicate, Reading, Unit, plan_stream
from service.step.record import GUARD_BYTES, StreamState, encode_record, guard_of


@pytest.fixture(scope="module")
def model() -> ServedModel:
    return load_models((), threads=1)["elnino"]


def unit(model: ServedModel, *seqs: int | None) -> Unit:
    loop = asyncio.new_event_loop()
    try:
        return Unit(model, "s", [Reading([24.0], s) for s in seqs], loop.create_future())
    finally:
        loop.close()


def record(
    model: ServedModel, generation: int, seq: int, held: list[int], version: str = ""
) -> StreamState:
    rng = np.random.default_rng(seq)
    h = rng.standard_normal(model.state_shape).astype(np.float32)
    c = rng.standard_normal(model.state_shape).astype(np.float32)
    preds = np.arange(len(held), dtype=np.float32).reshape(-1, 1) + 0.5
    raw = encode_record(
        generation,
        seq,
        1764000000.25,
        version or model.version,
        h.tobytes(),
        c.tobytes(),
        held,
        preds,
    )
    return StreamState.decode(raw, model.version, model.state_shape, model.output_size)


def test_the_record_round_trips(model: ServedModel) -> None:
    state = record(model, 1795805218226, 42, [41, 42])
    assert (state.generation, state.seq, state.updated_at) == (1795805218226, 42, 1764000000.25)
    assert state.model_version == model.version and state.guard == guard_of(1795805218226, 42)
    assert len(state.guard) == GUARD_BYTES
    assert state.h is not None and state.h.shape == (2, 64)
    assert set(state.results) == {41, 42} and state.last_prediction() == [1.5]


def test_a_record_of_another_version_keeps_only_its_header(model: ServedModel) -> None:
    state = record(model, 7, 3, [3], version="0123456789abcdef")
    assert state.h is None and state.c is None and state.results == {}
    assert (state.generation, state.seq, state.model_version) == (7, 3, "0123456789abcdef")


def test_a_new_stream_starts_at_zero_state_with_seq_one(model: ServedModel) -> None:
    plan = plan_stream(
        model, "s", "k", [unit(model, None), unit(model, None, None)], None, "refuse", lambda: 99
    )
    assert plan.expected_guard == b"" and plan.generation == 99
    assert not plan.h0.any() and not plan.c0.any()
    assert [r.seq for r in plan.steps] == [1, 2, 3]
    assert plan.outcomes == [Applied(0, 1), Applied(1, 2)] and plan.last_applied == Applied(1, 2)


def test_seqs_continue_from_the_record_and_gaps_are_allowed(model: ServedModel) -> None:
    state = record(model, 5, 10, [10])
    plan = plan_stream(
        model, "s", "k", [unit(model, 15), unit(model, None)], state, "refuse", lambda: 99
    )
    assert plan.expected_guard == state.guard and plan.generation == 5
    assert [r.seq for r in plan.steps] == [15, 16]
    assert state.h is not None and np.array_equal(plan.h0, state.h)


def test_retries_are_duplicates_and_other_old_seqs_are_stale(model: ServedModel) -> None:
    state = record(model, 5, 10, [9, 10])
    units = [
        unit(model, 9, 10),
        unit(model, 10),
        unit(model, 8),
        unit(model, 10, 11),
        unit(model, 11),
    ]
    plan = plan_stream(model, "s", "k", units, state, "refuse", lambda: 99)
    dup, part, old, mixed, new = plan.outcomes
    assert isinstance(dup, Duplicate) and [s for s, _ in dup.held] == [9, 10]
    assert isinstance(part, Duplicate) and [s for s, _ in part.held] == [10]
    assert isinstance(old, StaleSeq) and old.details == {"current_seq": 10}
    assert isinstance(mixed, StaleSeq)
    assert new == Applied(0, 1) and [r.seq for r in plan.steps] == [11]


def test_a_retry_of_a_reading_applied_earlier_in_the_same_batch(model: ServedModel) -> None:
    plan = plan_stream(
        model, "s", "k", [unit(model, 1), unit(model, 1)], None, "refuse", lambda: 99
    )
    first, retry = plan.outcomes
    assert first == Applied(0, 1)
    assert isinstance(retry, Duplicate) and retry.held == [(1, 0)]  # index of the step it reuses


def test_another_versions_state_is_refused_or_reset(model: ServedModel) -> None:
    state = record(model, 5, 10, [10], version="0123456789abcdef")
    refused = plan_stream(model, "s", "k", [unit(model, None)], state, "refuse", lambda: 99)
    assert isinstance(refused.outcomes[0], ModelVersionMismatch) and not refused.needs_write
    reset = plan_stream(model, "s", "k", [unit(model, None)], state, "reset", lambda: 3)
    assert reset.generation == 6  # after the old generation even when the clock says otherwise
    assert reset.expected_guard == state.guard and [r.seq for r in reset.steps] == [1]
    assert not reset.h0.any()


# -- the v2 sequence flags: start a new generation, end the stream --------------------------------


def flagged(model: ServedModel, *seqs: int | None, start: bool = False, end: bool = False) -> Unit:
    made = unit(model, *seqs)
    made.start, made.end = start, end
    return made


def ended_record(model: ServedModel, generation: int, held: list[int]) -> StreamState:
    """The record a stream keeps once its last request ended it: results, no state."""
    preds = np.arange(len(held), dtype=np.float32).reshape(-1, 1) + 0.5
    raw = encode_record(generation, held[-1], 1.0, model.version, b"", b"", held, preds)
    return StreamState.decode(raw, model.version, model.state_shape, model.output_size)


def test_start_begins_a_new_generation_from_zero_over_a_live_stream(model: ServedModel) -> None:
    state = record(model, 5, 10, [10])
    plan = plan_stream(
        model, "s", "k", [flagged(model, None, start=True)], state, "refuse", lambda: 3
    )
    assert plan.generation == 6 and plan.expected_guard == state.guard
    assert not plan.h0.any() and [r.seq for r in plan.steps] == [1]


def test_a_resent_start_is_a_retry_not_a_second_start(model: ServedModel) -> None:
    state = record(model, 5, 2, [1, 2])  # the generation its start request began
    plan = plan_stream(
        model, "s", "k", [flagged(model, 1, 2, start=True)], state, "refuse", lambda: 99
    )
    assert isinstance(plan.outcomes[0], Duplicate) and not plan.needs_write
    assert plan.generation == 5


def test_a_start_after_steps_in_the_same_batch_waits_for_the_next_one(model: ServedModel) -> None:
    state = record(model, 5, 10, [10])
    units = [unit(model, None), flagged(model, None, start=True), unit(model, None)]
    plan = plan_stream(model, "s", "k", units, state, "refuse", lambda: 99)
    assert plan.units == units[:1] and plan.deferred == units[1:]
    assert plan.generation == 5 and [r.seq for r in plan.steps] == [11]


def test_end_drops_the_state_and_leaves_later_units_for_the_next_batch(
    model: ServedModel,
) -> None:
    state = record(model, 5, 10, [10])
    units = [flagged(model, None, end=True), unit(model, None)]
    plan = plan_stream(model, "s", "k", units, state, "refuse", lambda: 99)
    assert plan.ends and plan.units == units[:1] and plan.deferred == units[1:]
    assert plan.outcomes == [Applied(0, 1)]


def test_after_an_end_only_its_last_request_is_a_retry(model: ServedModel) -> None:
    state = ended_record(model, 5, [11, 12])
    assert state.ended and state.h is None
    retry = plan_stream(model, "s", "k", [unit(model, 11, 12)], state, "refuse", lambda: 3)
    assert isinstance(retry.outcomes[0], Duplicate) and not retry.needs_write
    assert [s for s, _ in retry.outcomes[0].held] == [11, 12]
    assert retry.outcomes[0].generation == 5  # the generation that applied it, not a new one
    fresh = plan_stream(model, "s", "k", [unit(model, None)], state, "refuse", lambda: 3)
    assert fresh.generation == 6 and fresh.expected_guard == state.guard
    assert not fresh.h0.any() and [r.seq for r in fresh.steps] == [1]
    # an ended record is never refused as another version's state
    assert not isinstance(fresh.outcomes[0], ModelVersionMismatch)


def test_start_is_allowed_over_another_versions_state(model: ServedModel) -> None:
    state = record(model, 5, 10, [10], version="0123456789abcdef")
    plan = plan_stream(
        model, "s", "k", [flagged(model, None, start=True)], state, "refuse", lambda: 3
    )
    assert plan.outcomes == [Applied(0, 1)] and plan.generation == 6

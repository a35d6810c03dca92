"""A batch's simple streams planned as columns (columns.py) decide exactly what plan.py decides
for them, and encode the same records byte for byte; everything else is left to plan.py."""

from __future__ import annotations

import asyncio
import itertools

import numpy as np
import pytest

from service.step.columns import Columns, columns_of, shape_of, simple
from service.step.model import ServedModel, load_models
from service.step.plan import SEQ_MAX, Applied, Reading, StreamPlan, Unit, plan_stream
from service.step.record import StreamState, encode_record

NOW = 1764000000.25


@pytest.fixture(scope="module")
def model() -> ServedModel:
    return load_models((), threads=1)["elnino"]


def unit(model: ServedModel, stream: str, *seqs: int | None, start: bool = False) -> Unit:
    loop = asyncio.new_event_loop()
    try:
        readings = [Reading([20.0 + k + len(stream)], s) for k, s in enumerate(seqs)]
        return Unit(model, stream, readings, loop.create_future(), start=start)
    finally:
        loop.close()


def raw_record(
    model: ServedModel,
    generation: int,
    seq: int,
    held: list[int],
    version: str = "",
    ended: bool = False,
) -> bytes:
    rng = np.random.default_rng(seq + generation)
    h = rng.standard_normal(model.state_shape).astype(np.float32)
    c = rng.standard_normal(model.state_shape).astype(np.float32)
    preds = np.arange(len(held), dtype=np.float32).reshape(-1, 1) + 0.5
    return encode_record(
        generation,
        seq,
        NOW - 60,
        version or model.version,
        b"" if ended else h.tobytes(),
        b"" if ended else c.tobytes(),
        held,
        preds,
    )


def generations() -> itertools.count[int]:
    return itertools.count(1795805218226)


def plan_of(model: ServedModel, units: list[Unit], raw: bytes | None, gen: int) -> StreamPlan:
    state = (
        None
        if raw is None
        else StreamState.decode(raw, model.version, model.state_shape, model.output_size)
    )
    return plan_stream(model, units[0].stream, "k", units, state, "refuse", lambda: gen)


def test_simple_streams_get_plan_pys_seqs_generations_and_state(model: ServedModel) -> None:
    cases: list[tuple[list[Unit], bytes | None]] = [
        ([unit(model, "a", None)], raw_record(model, 10, 5, [5])),  # the server's next seq
        ([unit(model, "b", 9)], raw_record(model, 11, 5, [5])),  # a gap: allowed
        ([unit(model, "c", None)], None),  # a new stream
        ([unit(model, "d", 3)], None),  # a new stream starting at a client seq
        ([unit(model, "e", 6)], raw_record(model, 12, 5, [4, 5])),
    ]
    new = generations()
    cols, left = columns_of(
        model,
        (1,),
        [f"k{i}" for i in range(len(cases))],
        [units for units, _ in cases],
        [raw for _, raw in cases],
        lambda: next(new),
    )
    assert left == [] and cols is not None and len(cols) == len(cases)
    expected_new = generations()
    for i, (units, raw) in enumerate(cases):
        gen = next(expected_new) if raw is None else 0
        plan = plan_of(model, units, raw, gen)
        assert [type(o) for o in plan.outcomes] == [Applied]
        assert cols.seqs[i].tolist() == [r.seq for r in plan.steps]
        assert cols.generation[i] == plan.generation
        assert cols.guards[i] == plan.expected_guard
        np.testing.assert_array_equal(cols.h0[:, i], plan.h0)
        np.testing.assert_array_equal(cols.c0[:, i], plan.c0)
        assert cols.x64[i, :, 0].tolist() == [r.values[0] for r in units[0].readings]


def test_several_units_of_a_stream_chain_their_seqs(model: ServedModel) -> None:
    units = [unit(model, "a", None, None), unit(model, "a", 20), unit(model, "a", None)]
    raw = raw_record(model, 10, 5, [5])
    cols, left = columns_of(model, shape_of(units), ["k"], [units], [raw], lambda: 0)
    assert left == [] and cols is not None
    assert cols.seqs.tolist() == [[6, 7, 20, 21]] and cols.steps == 4
    plan = plan_stream(
        model,
        "a",
        "k",
        units,
        StreamState.decode(raw, model.version, model.state_shape, model.output_size),
        "refuse",
        lambda: 0,
    )
    assert [r.seq for r in plan.steps] == [6, 7, 20, 21]


def test_what_plan_py_must_decide_is_left_to_it(model: ServedModel) -> None:
    cases: list[tuple[list[Unit], bytes | None]] = [
        ([unit(model, "a", 5)], raw_record(model, 10, 5, [5])),  # a retry
        ([unit(model, "b", 3)], raw_record(model, 10, 5, [5])),  # stale
        ([unit(model, "c", None)], raw_record(model, 10, 5, [5], version="0123456789abcdef")),
        ([unit(model, "d", None)], raw_record(model, 10, 5, [5], ended=True)),
        ([unit(model, "e", None)], raw_record(model, 10, SEQ_MAX, [SEQ_MAX])),
        ([unit(model, "f", None), unit(model, "f", 6)], raw_record(model, 10, 5, [5])),
        ([unit(model, "g", None)], raw_record(model, 10, 5, [5])),  # the one simple stream
    ]
    cols, left = columns_of(
        model,
        (1,),
        [f"k{i}" for i in range(len(cases))],
        [units[-1:] for units, _ in cases],  # each case's last unit alone has shape (1,)
        [raw for _, raw in cases],
        lambda: 1,
    )
    # f's last unit (seq 6) alone is simple; with the unit before it, it is stale (checked below)
    assert left == [0, 1, 2, 3, 4] and cols is not None and cols.keys == ["k5", "k6"]
    f_units = cases[5][0]
    cols_f, left_f = columns_of(model, shape_of(f_units), ["k"], [f_units], [cases[5][1]], int)
    assert cols_f is None and left_f == [0]
    assert not simple([unit(model, "h", None, start=True)])


def test_records_are_encoded_as_plan_pys_would_be(model: ServedModel) -> None:
    streams = [
        [unit(model, "a", None, None)],
        [unit(model, "b", 8), unit(model, "b", None)],
        [unit(model, "c", None), unit(model, "c", None)],
    ]
    shapes = {shape_of(units) for units in streams}
    assert shapes == {(2,), (1, 1)}
    for shape in shapes:
        chosen = [units for units in streams if shape_of(units) == shape]
        raws: list[bytes | None] = [raw_record(model, 10 + i, 5, [5]) for i in range(len(chosen))]
        cols, left = columns_of(
            model, shape, [f"k{i}" for i in range(len(chosen))], chosen, raws, int
        )
        assert cols is not None and not left
        rng = np.random.default_rng(3)
        b = len(cols)
        y = rng.standard_normal((cols.steps, b, 1)).astype(np.float32)
        hn = rng.standard_normal((2, b, 64)).astype(np.float32)
        cn = rng.standard_normal((2, b, 64)).astype(np.float32)
        buffer, size = cols.records(NOW, y, hn, cn)
        held = shape[-1]
        for i in range(b):
            expected = encode_record(
                int(cols.generation[i]),
                int(cols.seqs[i, -1]),
                NOW,
                model.version,
                hn[:, i].tobytes(),
                cn[:, i].tobytes(),
                cols.seqs[i, -held:].tolist(),
                y[-held:, i],
            )
            assert buffer[i * size : (i + 1) * size] == expected


def test_columns_from_cache_and_from_redis_merge(model: ServedModel) -> None:
    raws: list[bytes | None] = [raw_record(model, 10, 5, [5]), None]
    parts = []
    for i, raw in enumerate(raws):
        cols, _ = columns_of(model, (1,), [f"k{i}"], [[unit(model, f"s{i}", None)]], [raw], int)
        assert cols is not None
        parts.append(cols)
    merged = Columns.merged(parts)
    assert merged.keys == ["k0", "k1"] and merged.seqs.tolist() == [[6], [1]]
    assert merged.h0.shape == (2, 2, 64) and merged.x64.shape == (2, 1, 1)
    assert merged.fresh.tolist() == [1]  # the new stream, which its tenant's limit counts


def test_columns_without_some_streams_are_those_streams_planned_alone(model: ServedModel) -> None:
    """What is left when a tenant's limit refuses some new streams: the same columns as if the
    refused streams had never been in the batch."""
    raws: list[bytes | None] = [raw_record(model, 10, 5, [5]), None, raw_record(model, 11, 7, [7])]
    units = [[unit(model, f"s{i}", None)] for i in range(len(raws))]
    keys = [f"k{i}" for i in range(len(raws))]
    cols, _ = columns_of(model, (1,), keys, units, raws, generations().__next__)
    assert cols is not None and cols.fresh.tolist() == [1]
    kept = cols.select([0, 2])
    alone, _ = columns_of(
        model, (1,), [keys[0], keys[2]], [units[0], units[2]], [raws[0], raws[2]], int
    )
    assert kept is not None and alone is not None
    assert kept.keys == alone.keys and kept.units == alone.units and kept.guards == alone.guards
    for field in ("generation", "last", "seqs", "x64", "h0", "c0", "fresh"):
        np.testing.assert_array_equal(getattr(kept, field), getattr(alone, field))
    assert cols.select([1, 2]).fresh.tolist() == [0]  # type: ignore[union-attr]
    assert cols.select([]) is None

"""The forecast core (service/step/forecast.py): what-if readings, then a forecast fed its own
predictions, for many streams at once.

Held against the exported graph stepped one stream and one step at a time (forecast_reference):
ragged what-if lengths and horizons across rows, one model call for every row's what-if readings
and one per horizon step, the caller's state untouched; and the request checks the forecast
route will call: covariates missing, extra, not numbers or not finite, and forecasts on a model
without a feedback mapping."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import DEMO_MODEL_DIR, elnino_sst, month_features
from forecast_reference import graph_forecast, stream_graph
from model_runner import ExportedModel

from service.step.forecast import (
    ForecastBatch,
    ForecastUnsupportedError,
    InvalidCovariatesError,
    check_forecast_supported,
    covariate_matrix,
    forecast,
)
from service.step.model import ServedModel, load_models

MONTHS_MODEL_DIR = Path(__file__).resolve().parent / "data" / "elnino-months" / "model"
# Batching and grouping may not change a prediction by more than float32 rounding (DESIGN.md).
RELATIVE = 1e-5


def served(directory: Path) -> ServedModel:
    (model,) = load_models((directory,), threads=1).values()
    return model


@pytest.fixture(scope="module")
def months() -> ServedModel:
    return served(MONTHS_MODEL_DIR)


@pytest.fixture(scope="module")
def demo() -> ServedModel:
    return served(DEMO_MODEL_DIR)


@pytest.fixture
def unmapped(tmp_path: Path) -> ServedModel:
    """The demo model with its feedback mapping taken out."""
    shutil.copytree(DEMO_MODEL_DIR, tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    del meta["feedback"]
    (tmp_path / "m" / "model.json").write_text(json.dumps(meta))
    return served(tmp_path / "m")


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """(T, B) of every ServedModel.step call made while the test runs."""
    made: list[tuple[int, int]] = []
    step = ServedModel.step

    def counted(self: ServedModel, x: np.ndarray, *rest: np.ndarray) -> Any:
        made.append((x.shape[0], x.shape[1]))
        return step(self, x, *rest)

    monkeypatch.setattr(ServedModel, "step", counted)
    return made


def months_readings(first: int, count: int) -> np.ndarray:
    """``[count, 3]``: real El Niño readings from series entry ``first`` with their months."""
    temps = elnino_sst()[first : first + count]
    return np.column_stack([temps, month_features(count, first)])


def month_covariates(first: int, count: int) -> list[dict[str, float]]:
    """A request's covariates for ``count`` steps standing in for entries ``first ..``."""
    return [{"month_sin": s, "month_cos": c} for s, c in month_features(count, first).tolist()]


def stored_streams(
    model: ExportedModel, histories: list[np.ndarray]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Streams fed their histories one reading per call, as the service applies them: stacked
    ``h``, ``c [L, B, H]`` and last predictions ``[B, O]`` as Redis would hold them."""
    states = [stream_graph(model, history) for history in histories]
    h = np.concatenate([s[1] for s in states], axis=1)
    c = np.concatenate([s[2] for s in states], axis=1)
    return h, c, np.array([s[0][-1] for s in states])


def assert_batching_close(got: np.ndarray, want: np.ndarray) -> None:
    np.testing.assert_allclose(got, want, rtol=RELATIVE, atol=RELATIVE)


def test_a_stream_fed_600_readings_forecasts_as_the_graph_fed_its_own_outputs(
    months: ServedModel, calls: list[tuple[int, int]]
) -> None:
    graph = ExportedModel(MONTHS_MODEL_DIR)
    h, c, last = stored_streams(graph, [months_readings(0, 600)])
    covariates = covariate_matrix(months, month_covariates(600, 12), 12)
    result = forecast(months, h, c, last, [None], [covariates])
    want = graph_forecast(graph, h, c, last[0], covariates)
    assert result.forecast.shape == (12, 1, 1) and result.horizons.tolist() == [12]
    assert_batching_close(result.row(0)[1], want)
    assert calls == [(1, 1)] * 12 and result.calls == 12
    assert result.row(0)[0].shape == (0, 1)  # no what-if readings


def test_ragged_what_ifs_and_horizons_share_one_call_per_step(
    months: ServedModel, calls: list[tuple[int, int]]
) -> None:
    """Five streams at different points of the series: what-if readings of 37, 0, 600, 1 and 250
    months, horizons of 12, 5, 0, 12 and 3. One call replays the four streams' readings (ragged),
    then one call per horizon step covers the streams still forecasting."""
    graph = ExportedModel(MONTHS_MODEL_DIR)
    starts = [100, 200, 0, 300, 400]
    stored = [40, 90, 1, 12, 60]  # readings applied for real before the what-ifs
    what_ifs = [37, 0, 600, 1, 250]
    horizons = [12, 5, 0, 12, 3]
    h, c, last = stored_streams(
        graph, [months_readings(s, n) for s, n in zip(starts, stored, strict=True)]
    )
    readings = [
        months_readings(s + n, t) if t else None
        for s, n, t in zip(starts, stored, what_ifs, strict=True)
    ]
    ahead = [s + n + t for s, n, t in zip(starts, stored, what_ifs, strict=True)]
    covariates = [
        covariate_matrix(months, month_covariates(a, hz), hz)
        for a, hz in zip(ahead, horizons, strict=True)
    ]
    h_before, c_before, last_before = h.copy(), c.copy(), last.copy()

    result = forecast(months, h, c, last, readings, covariates)

    assert calls[0] == (600, 4)  # every what-if reading in one ragged call
    assert calls[1:] == [(1, 4)] * 3 + [(1, 3)] * 2 + [(1, 2)] * 7
    assert result.calls == len(calls) == 13
    for b in range(5):
        row_h, row_c = h_before[:, b : b + 1], c_before[:, b : b + 1]
        row_last = last_before[b]
        want_what_if = np.zeros((0, 1), np.float32)
        if readings[b] is not None:  # the what-ifs, one call each from the stored state
            ys = []
            for reading in readings[b].astype(np.float32):
                y, row_h, row_c = graph.run(reading[None, None, :], row_h, row_c)
                ys.append(y[0, 0])
            want_what_if, row_last = np.array(ys), ys[-1]
        got_what_if, got_forecast = result.row(b)
        assert_batching_close(got_what_if, want_what_if)
        assert_batching_close(
            got_forecast, graph_forecast(graph, row_h, row_c, row_last, covariates[b])
        )
    # padding is NaN, never a number that could be mistaken for a prediction
    assert np.isnan(result.forecast[12:, :]).all() and np.isnan(result.forecast[5:, 1]).all()
    assert np.isnan(result.forecast[:, 2]).all() and np.isnan(result.what_if[:, 1]).all()
    assert np.isnan(result.what_if[37:, 0]).all()
    # the caller's stored state is not touched: a forecast writes nothing
    assert np.array_equal(h, h_before) and np.array_equal(c, c_before)
    assert np.array_equal(last, last_before)


def test_many_streams_one_call_per_horizon_step(
    demo: ServedModel, calls: list[tuple[int, int]]
) -> None:
    graph = ExportedModel(DEMO_MODEL_DIR)
    temps = elnino_sst()
    histories = [temps[b * 7 : b * 7 + 24, None] for b in range(64)]
    h, c, last = stored_streams(graph, histories)
    covariates = [covariate_matrix(demo, None, 12)] * 64  # the demo has no covariates
    calls.clear()
    result = forecast(demo, h, c, last, [None] * 64, covariates)
    assert calls == [(1, 64)] * 12
    for b in (0, 17, 63):
        want = graph_forecast(graph, h[:, b : b + 1], c[:, b : b + 1], last[b], covariates[b])
        assert_batching_close(result.row(b)[1], want)


def test_what_ifs_alone_work_on_a_model_without_a_mapping(
    unmapped: ServedModel, calls: list[tuple[int, int]]
) -> None:
    graph = ExportedModel(DEMO_MODEL_DIR)
    temps = elnino_sst()
    h, c, last = stored_streams(graph, [temps[:30, None], temps[50:60, None]])
    readings = [temps[30:42, None], temps[60:61, None]]
    covariates = [covariate_matrix(unmapped, None, 0)] * 2
    result = forecast(unmapped, h, c, last, readings, covariates)
    assert calls == [(12, 2)] and result.forecast.shape == (0, 2, 1)
    for b, history in enumerate(([temps[:42, None]], [temps[50:61, None]])):
        streamed = stream_graph(graph, history[0])[0]
        assert_batching_close(result.row(b)[0], streamed[-len(readings[b]) :])


def test_what_ifs_from_a_new_stream_need_no_stored_prediction(demo: ServedModel) -> None:
    """A stream without state forecasts from zero state after its what-if readings: its last
    prediction is the last what-if's."""
    graph = ExportedModel(DEMO_MODEL_DIR)
    temps = elnino_sst()[:48, None]
    zeros = np.zeros((2, 1, 64), np.float32)
    result = forecast(
        demo, zeros, zeros, np.full((1, 1), np.nan), [temps], [covariate_matrix(demo, None, 6)]
    )
    seen, h, c = stream_graph(graph, temps)
    assert_batching_close(result.row(0)[0], seen)
    assert_batching_close(result.row(0)[1], graph_forecast(graph, h, c, seen[-1], np.zeros((6, 0))))


def test_a_forecast_without_a_prediction_to_start_from_is_refused(
    demo: ServedModel, calls: list[tuple[int, int]]
) -> None:
    """Row 1 has neither a stored prediction nor what-if readings: refused before any model
    call. Row 2 has no stored prediction either, but its readings give it one."""
    zeros = np.zeros((2, 3, 64), np.float32)
    last = np.array([[24.0], [np.nan], [np.nan]])
    readings = [None, None, np.array([[23.5]])]
    covariates = [covariate_matrix(demo, None, 3)] * 3
    with pytest.raises(ValueError, match=r"rows \[1\] have no last prediction"):
        ForecastBatch(demo, zeros, zeros, last, readings, covariates)
    assert calls == []
    # a horizon of 0 needs none
    covariates[1] = covariate_matrix(demo, None, 0)
    result = forecast(demo, zeros, zeros, last, readings, covariates)
    assert calls == [(1, 1), (1, 2), (1, 2), (1, 2)] and result.horizons.tolist() == [3, 0, 3]


def test_an_empty_batch_makes_no_call(demo: ServedModel, calls: list[tuple[int, int]]) -> None:
    zeros = np.zeros((2, 0, 64), np.float32)
    result = forecast(demo, zeros, zeros, np.zeros((0, 1)), [], [])
    assert calls == [] and result.forecast.shape == (0, 0, 1)


def test_the_batch_hands_out_calls_one_at_a_time(demo: ServedModel) -> None:
    zeros = np.zeros((2, 1, 64), np.float32)
    batch = ForecastBatch(
        demo, zeros, zeros, np.array([[23.0]]), [None], [covariate_matrix(demo, None, 2)]
    )
    call = batch.next_call()
    assert call is not None and batch.next_call() is call  # asking again does not advance
    assert call.x.shape == (1, 1, 1) and call.x[0, 0, 0] == 23.0
    assert call.seq_lens.tolist() == [1] and call.seq_lens.dtype == np.int32
    with pytest.raises(RuntimeError, match="model calls remain"):
        batch.result()
    batch.take(*demo.step(call.x, call.h0, call.c0, call.seq_lens))
    second = batch.next_call()
    assert second is not None
    y, hn, cn = demo.step(second.x, second.h0, second.c0, second.seq_lens)
    batch.take(y, hn, cn)
    assert batch.next_call() is None
    with pytest.raises(RuntimeError, match="no model call is outstanding"):
        batch.take(y, hn, cn)
    assert batch.result().forecast[1, 0, 0] == y[0, 0, 0]


def test_horizons_need_a_feedback_mapping(unmapped: ServedModel, demo: ServedModel) -> None:
    with pytest.raises(ForecastUnsupportedError, match="declares no feedback mapping") as exc:
        check_forecast_supported(unmapped, 1)
    assert exc.value.code == "forecast_unsupported" and isinstance(exc.value, ValueError)
    assert "--feedback" in str(exc.value)
    assert check_forecast_supported(unmapped, 0) is None
    assert check_forecast_supported(demo, 5) is demo.feedback
    with pytest.raises(ForecastUnsupportedError):
        covariate_matrix(unmapped, None, 3)  # checked before the covariates
    with pytest.raises(ForecastUnsupportedError):
        zeros = np.zeros((2, 1, 64), np.float32)
        ForecastBatch(unmapped, zeros, zeros, np.zeros((1, 1)), [None], [np.zeros((2, 0))])


def test_covariates_become_one_row_per_step_in_feature_order(months: ServedModel) -> None:
    given = [{"month_cos": 0.87, "month_sin": 0.5}, {"month_sin": -1, "month_cos": 0}]
    matrix = covariate_matrix(months, given, 2)
    assert matrix.tolist() == [[0.5, 0.87], [-1.0, 0.0]] and matrix.dtype == np.float64
    assert covariate_matrix(months, None, 0).shape == (0, 2)
    assert covariate_matrix(months, [], 0).shape == (0, 2)


def test_a_model_without_covariates_takes_none_or_empty_objects(demo: ServedModel) -> None:
    assert covariate_matrix(demo, None, 4).shape == (4, 0)
    assert covariate_matrix(demo, [{}, {}], 2).shape == (2, 0)


@pytest.mark.parametrize(
    ("covariates", "problems"),
    [
        (
            [{"month_sin": 0.5}, {"month_cos": 0.5}],
            ["covariates[0] lacks month_cos", "covariates[1] lacks month_sin"],
        ),
        (
            [
                {"month_sin": 0.5, "month_cos": 0.5, "month_tan": 1.0, "day": 3},
                month_covariates(0, 1)[0],
            ],
            [
                "covariates[0] has 'month_tan', 'day', which are not covariates of this model "
                "(its covariates: month_sin, month_cos)"
            ],
        ),
        (
            [
                {"month_sin": math.nan, "month_cos": math.inf},
                {"month_sin": "0.5", "month_cos": True},
            ],
            [
                "covariates[0].month_sin is nan, not a finite number",
                "covariates[0].month_cos is inf, not a finite number",
                "covariates[1].month_sin is '0.5', not a number",
                "covariates[1].month_cos is True, not a number",
            ],
        ),
        (
            [{"sst_c": 24.0, "month_sin": 0.5}, None],
            [
                "covariates[0] lacks month_cos",
                "covariates[0] has 'sst_c', which is not a covariate of this model "
                "(its covariates: month_sin, month_cos)",
                "covariates[1] is not an object of month_sin, month_cos",
            ],
        ),
        (
            month_covariates(0, 3),
            ["covariates must be a list of 2 objects, one per step; got 3 entries"],
        ),
        (
            {"month_sin": 0.5},
            ["covariates must be a list of 2 objects, one per step; got not a list"],
        ),
        (None, ["covariates are missing: give 2 objects, each with month_sin, month_cos"]),
    ],
    ids=[
        "missing",
        "extra",
        "not-finite-or-number",
        "fed-feature-and-not-object",
        "count",
        "shape",
        "absent",
    ],
)
def test_bad_covariates_are_refused_naming_each_problem(
    months: ServedModel, covariates: object, problems: list[str]
) -> None:
    with pytest.raises(InvalidCovariatesError) as exc:
        covariate_matrix(months, covariates, 2)
    assert list(exc.value.problems) == problems
    assert str(exc.value) == "; ".join(problems)
    assert exc.value.code == "invalid_values" and isinstance(exc.value, ValueError)


def test_covariates_on_a_horizon_of_zero_are_refused(
    months: ServedModel, demo: ServedModel
) -> None:
    with pytest.raises(InvalidCovariatesError, match="list of 0 objects"):
        covariate_matrix(months, month_covariates(0, 1), 0)
    with pytest.raises(InvalidCovariatesError, match=r"has 'month_sin'.*\(its covariates: none\)"):
        covariate_matrix(demo, [{"month_sin": 0.5}], 1)


def test_a_long_list_of_problems_is_cut_short(months: ServedModel) -> None:
    with pytest.raises(InvalidCovariatesError) as exc:
        covariate_matrix(months, [{}] * 12, 12)
    assert len(exc.value.problems) == 12
    assert str(exc.value).endswith("covariates[7] lacks month_sin, month_cos; and 4 more")

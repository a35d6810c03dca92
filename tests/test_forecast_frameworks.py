"""Forecasts agree with the frameworks the models were trained in, fed their own outputs.

A stream fed 600 real readings (NOAA's monthly Niño 1+2 sea surface temperature) forecasts 12
steps with the service's forecast core, from the state the service would have stored; the same
forecast is made by an autoregressive loop over the exported graph (one stream, one step per call)
and by the real framework in float64 from the raw readings: torch's ``nn.LSTM`` + ``nn.Linear``,
Keras's ``LSTM`` + ``Dense``. For torch and Keras exports of the demo's weights, for the El Niño
months model (whose month covariates the caller gives), and for random models whose outputs feed
features crosswise. The core must match the graph loop within float32 rounding and the frameworks
within DESIGN.md's ``1e-4 × max(1, output_std)``."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
import torch
from conftest import DEMO_WEIGHTS_DIR, elnino_sst, month_features, random_scaling
from forecast_reference import (
    Mapping,
    graph_forecast,
    stream_graph,
    torch_forecast,
    torch_module,
)
from model_runner import ExportedModel
from test_export_keras import build

from model_export import Scaling, export
from service.step.forecast import covariate_matrix, forecast
from service.step.model import ServedModel, load_models

MONTHS_DATA = Path(__file__).resolve().parent / "data" / "elnino-months"
HISTORY = 600  # readings a stream has had before it forecasts
HORIZON = 12


def served(directory: Path) -> ServedModel:
    (model,) = load_models((directory,), threads=1).values()
    return model


def tolerance(scaling: Scaling) -> np.ndarray:
    """DESIGN.md's: a float32 path against the float64 reference, per output, raw units."""
    return 1e-4 * np.maximum(1.0, scaling.output_std)


def keras_forecast(
    model: keras.Sequential,
    scaling: Scaling,
    meta: dict[str, Any],
    readings: np.ndarray,
    covariates: np.ndarray,
) -> np.ndarray:
    """Keras's forecast ``[H, O]``: the readings in one call, then one call per step from the
    states Keras's own LSTM layers return (twins of the model's layers with ``return_state``,
    holding its weights), each step's prediction fed back as the next reading."""
    mapping = Mapping.of(meta)
    stack: list[Any] = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.LSTM):
            twin = keras.layers.LSTM(
                layer.units, return_sequences=True, return_state=True, dtype=layer.dtype
            )
            twin(np.zeros((1, 1, layer.get_weights()[0].shape[0]), layer.dtype))  # builds it
            twin.set_weights(layer.get_weights())
            stack.append(twin)
        elif isinstance(layer, keras.layers.Dense):
            stack.append(layer)
    states: list[Any] = [None] * len(stack)

    def run(raw: np.ndarray) -> np.ndarray:
        out = ((raw - scaling.input_mean) / scaling.input_std)[None]
        for n, layer in enumerate(stack):
            if isinstance(layer, keras.layers.LSTM):
                out, *states[n] = layer(out, initial_state=states[n])
            else:
                out = layer(out)
        last = np.asarray(keras.ops.convert_to_numpy(out)[0, -1], np.float64)
        return last * scaling.output_std + scaling.output_mean

    prediction, out = run(np.asarray(readings, np.float64)), []
    for k in range(len(covariates)):
        prediction = run(mapping.input(prediction, covariates[k])[None])
        out.append(prediction)
    return np.array(out)


def core_forecast(
    directory: Path, readings: np.ndarray, covariates: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The core's forecast from the state the service stores after ``readings`` (applied one
    reading per call), and the graph loop's from the same state."""
    graph = ExportedModel(directory)
    seen, h, c = stream_graph(graph, readings)
    result = forecast(served(directory), h, c, seen[-1:], [None], [covariates])
    return result.row(0)[1], graph_forecast(graph, h, c, seen[-1], covariates)


def assert_forecasts_agree(
    got: np.ndarray, graph_loop: np.ndarray, framework: np.ndarray, scaling: Scaling
) -> None:
    assert got.shape == graph_loop.shape == framework.shape
    np.testing.assert_allclose(got, graph_loop, rtol=1e-5, atol=1e-5)
    error = np.max(np.abs(got - framework), axis=0)
    assert np.all(error <= tolerance(scaling)), (error, tolerance(scaling))


def demo_weights() -> tuple[dict[str, np.ndarray], Scaling, dict[str, Any]]:
    arrays = dict(np.load(DEMO_WEIGHTS_DIR / "elnino.npz"))
    scaling = Scaling.from_dict(
        json.loads((DEMO_WEIGHTS_DIR / "elnino.scaling.json").read_text()), 1, 1
    )
    info = json.loads((DEMO_WEIGHTS_DIR / "elnino.info.json").read_text())
    return arrays, scaling, info


def export_named(source: Path, out: Path, scaling: Scaling, info: dict[str, Any]) -> Path:
    export(
        source,
        out,
        scaling=scaling,
        features=info["features"],
        outputs=info["outputs"],
        feedback=info["feedback"],
    )
    return out


def test_torch_export_of_the_demo_forecasts_as_torch_does(tmp_path: Path) -> None:
    arrays, scaling, info = demo_weights()
    module = torch_module(arrays)
    torch.save(module.float().state_dict(), tmp_path / "elnino.pt")
    model_dir = export_named(tmp_path / "elnino.pt", tmp_path / "m", scaling, info)
    readings = elnino_sst()[:HISTORY, None]
    covariates = np.zeros((HORIZON, 0))  # the demo feeds its only feature
    got, graph_loop = core_forecast(model_dir, readings, covariates)
    _, want = torch_forecast(torch_module(arrays), scaling, info, readings, covariates)
    assert_forecasts_agree(got, graph_loop, want, scaling)
    # a forecast of the real series, not of a constant: it follows the seasons
    assert np.ptp(want) > 1.0


def keras_demo(arrays: dict[str, np.ndarray]) -> keras.Sequential:
    """The demo's weights in a float64 Keras model. Keras's gates are i, f, c, o, PyTorch's i, f,
    g, o: the same order; Keras keeps kernels transposed and one bias (PyTorch's two, added)."""
    model = keras.Sequential(
        [
            keras.Input((None, 1), dtype="float64"),
            keras.layers.LSTM(64, return_sequences=True, dtype="float64"),
            keras.layers.LSTM(64, return_sequences=True, dtype="float64"),
            keras.layers.Dense(1, dtype="float64"),
        ]
    )
    for k in range(2):
        model.layers[k].set_weights(
            [
                arrays[f"lstm.weight_ih_l{k}"].T,
                arrays[f"lstm.weight_hh_l{k}"].T,
                arrays[f"lstm.bias_ih_l{k}"] + arrays[f"lstm.bias_hh_l{k}"],
            ]
        )
    model.layers[2].set_weights([arrays["head.weight"].T, arrays["head.bias"]])
    return model


def test_keras_export_of_the_demo_forecasts_as_keras_does(tmp_path: Path) -> None:
    arrays, scaling, info = demo_weights()
    model = keras_demo(arrays)
    model.save(tmp_path / "elnino.keras")
    model_dir = export_named(tmp_path / "elnino.keras", tmp_path / "m", scaling, info)
    readings = elnino_sst()[:HISTORY, None]
    covariates = np.zeros((HORIZON, 0))
    got, graph_loop = core_forecast(model_dir, readings, covariates)
    want = keras_forecast(model, scaling, info, readings, covariates)
    assert_forecasts_agree(got, graph_loop, want, scaling)


@pytest.fixture(scope="module")
def months_model() -> tuple[dict[str, np.ndarray], Scaling, dict[str, Any]]:
    arrays = dict(np.load(MONTHS_DATA / "elnino-months.npz"))
    scaling = Scaling.from_dict(
        json.loads((MONTHS_DATA / "elnino-months.scaling.json").read_text()), 3, 1
    )
    meta = json.loads((MONTHS_DATA / "model" / "model.json").read_text())
    return arrays, scaling, meta


@pytest.mark.parametrize(
    "first", [0, 37, 120], ids=["from-1950-01", "from-1953-02", "from-1960-01"]
)
def test_the_months_model_forecasts_the_real_series_as_torch_does(
    months_model: tuple[dict[str, np.ndarray], Scaling, dict[str, Any]], first: int
) -> None:
    """600 real months, then 12 months ahead with each month's covariates given: the caller
    knows the calendar. The series resumes at ``first`` so that forecasts start in different
    months (and seasons)."""
    arrays, scaling, meta = months_model
    temps = elnino_sst()[first : first + HISTORY]
    readings = np.column_stack([temps, month_features(HISTORY, first)])
    # step k stands in for the reading after the last: its month's covariates
    covariates = month_features(HORIZON, first + HISTORY)
    model = served(MONTHS_DATA / "model")
    given = [{"month_sin": s, "month_cos": c} for s, c in covariates.tolist()]
    assert np.array_equal(covariate_matrix(model, given, HORIZON), covariates)
    got, graph_loop = core_forecast(MONTHS_DATA / "model", readings, covariates)
    seen, want = torch_forecast(torch_module(arrays), scaling, meta, readings, covariates)
    assert_forecasts_agree(got, graph_loop, want, scaling)

    # the same readings as what-ifs from a new stream: one call, then the same forecast
    zeros = np.zeros((2, 1, 32), np.float32)
    result = forecast(model, zeros, zeros, np.full((1, 1), np.nan), [readings], [covariates])
    what_if, ahead = result.row(0)
    assert np.max(np.abs(what_if - seen)) <= tolerance(scaling)[0]
    np.testing.assert_allclose(ahead, got, rtol=1e-5, atol=1e-5)


def random_crossed(
    rng: np.random.Generator,
) -> tuple[Scaling, dict[str, Any]]:
    """Three features, two outputs: y1 feeds x0, y0 feeds x2, x1 is a covariate; each fed
    feature in its output's units."""
    scaling = random_scaling(rng, 3, 2)
    given = scaling.to_dict()
    for feature, output in ((0, 1), (2, 0)):
        given["input_mean"][feature] = given["output_mean"][output]
        given["input_std"][feature] = given["output_std"][output]
    info = {
        "features": ["x0", "x1", "x2"],
        "outputs": ["y0", "y1"],
        "feedback": {"y1": "x0", "y0": "x2"},
    }
    return Scaling.from_dict(given, 3, 2), info


def random_readings(rng: np.random.Generator, scaling: Scaling, steps: int) -> np.ndarray:
    return scaling.input_mean + rng.normal(0.0, 1.0, (steps, 3)) * scaling.input_std


def test_a_torch_model_feeding_outputs_crosswise_forecasts_as_torch_does(
    tmp_path: Path, torch_model: Callable[..., torch.nn.Module]
) -> None:
    rng = np.random.default_rng(7)
    scaling, info = random_crossed(rng)
    module = torch_model(inputs=3, hidden=16, layers=2, outputs=2, seed=3)
    torch.save(module.state_dict(), tmp_path / "crossed.pt")
    model_dir = export_named(tmp_path / "crossed.pt", tmp_path / "m", scaling, info)
    readings = random_readings(rng, scaling, HISTORY)
    covariates = random_readings(rng, scaling, HORIZON)[:, 1:2]
    got, graph_loop = core_forecast(model_dir, readings, covariates)
    arrays = {k: v.detach().numpy() for k, v in module.state_dict().items()}
    meta = json.loads((model_dir / "model.json").read_text())
    _, want = torch_forecast(torch_module(arrays), scaling, meta, readings, covariates)
    assert_forecasts_agree(got, graph_loop, want, scaling)


def test_a_keras_model_feeding_outputs_crosswise_forecasts_as_keras_does(tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    scaling, info = random_crossed(rng)
    model = build(16, 2, 3, 2, dtype="float64", seed=5)
    model.save(tmp_path / "crossed.keras")
    model_dir = export_named(tmp_path / "crossed.keras", tmp_path / "m", scaling, info)
    readings = random_readings(rng, scaling, HISTORY)
    covariates = random_readings(rng, scaling, HORIZON)[:, 1:2]
    got, graph_loop = core_forecast(model_dir, readings, covariates)
    meta = json.loads((model_dir / "model.json").read_text())
    want = keras_forecast(model, scaling, meta, readings, covariates)
    assert_forecasts_agree(got, graph_loop, want, scaling)

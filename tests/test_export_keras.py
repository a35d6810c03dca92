"""Exports of real Keras 3 Sequential models (LSTM layers + Dense) reproduce Keras, step by step;
everything else is refused with a message that names the problem."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
from conftest import random_scaling
from model_runner import ExportedModel

from model_export import Scaling, UnsupportedModelError, export

STEPS = 1000


def build(
    units: int,
    layers: int,
    inputs: int,
    outputs: int,
    *,
    bias: bool = True,
    dropout: bool = False,
    dtype: str = "float32",
    last_sequences: bool = True,
    seed: int = 0,
) -> keras.Sequential:
    keras.utils.set_random_seed(seed)
    stack: list[Any] = [keras.Input((None, inputs), dtype=dtype)]
    for n in range(layers):
        sequences = last_sequences or n < layers - 1
        stack.append(
            keras.layers.LSTM(
                units,
                return_sequences=sequences,
                use_bias=bias,
                dtype=dtype,
                bias_initializer="random_normal",
            )
        )
        if dropout:
            stack.append(keras.layers.Dropout(0.3))
    stack.append(
        keras.layers.Dense(outputs, use_bias=bias, dtype=dtype, bias_initializer="random_normal")
    )
    return keras.Sequential(stack)


def keras_predict(model: keras.Sequential, x_raw: np.ndarray, scaling: Scaling) -> np.ndarray:
    """Keras's own output for ``x [T, B, I]`` raw units, as ``[T, B, O]`` (or ``[B, O]``)."""
    scaled = (x_raw - scaling.input_mean) / scaling.input_std
    batch_first = np.transpose(scaled, (1, 0, 2)).astype(model.inputs[0].dtype)
    out = keras.ops.convert_to_numpy(model(batch_first, training=False)).astype(np.float64)
    out = out * scaling.output_std + scaling.output_mean
    return np.transpose(out, (1, 0, 2)) if out.ndim == 3 else out


@pytest.mark.parametrize(
    ("units", "layers", "inputs", "outputs", "bias", "dropout", "dtype"),
    [
        (8, 1, 1, 1, True, False, "float64"),
        (16, 2, 3, 2, False, True, "float32"),
        (12, 3, 2, 1, True, True, "float64"),
        (64, 2, 1, 1, True, False, "float32"),
    ],
)
def test_streamed_steps_match_keras(
    tmp_path: Path,
    units: int,
    layers: int,
    inputs: int,
    outputs: int,
    bias: bool,
    dropout: bool,
    dtype: str,
) -> None:
    model = build(
        units, layers, inputs, outputs, bias=bias, dropout=dropout, dtype=dtype, seed=units
    )
    model.save(tmp_path / "m.keras")
    rng = np.random.default_rng(units)
    scaling = random_scaling(rng, inputs, outputs)
    result = export(tmp_path / "m.keras", tmp_path / "out", scaling=scaling)
    assert result.metadata["source"]["format"] == "keras"
    assert result.report.framework is not None and result.report.framework.startswith("keras")

    x = scaling.input_mean + rng.normal(0, 1.5, (STEPS, 1, inputs)) * scaling.input_std
    want = keras_predict(model, x, scaling)
    got = ExportedModel(tmp_path / "out").stream(x)
    tol = 1e-4 * np.maximum(1.0, scaling.output_std)
    err = np.abs(got - want).max(axis=(0, 1))
    assert np.all(err <= tol), (err, tol)


def test_model_returning_only_the_last_step(tmp_path: Path) -> None:
    model = build(10, 2, 2, 1, last_sequences=False, seed=5)
    model.save(tmp_path / "m.keras")
    export(tmp_path / "m.keras", tmp_path / "out")
    x = np.random.default_rng(5).normal(0, 1, (400, 3, 2))
    identity = Scaling.identity(2, 1)
    want = keras_predict(model, x, identity)  # [B, O] at the last step
    y, _, _ = ExportedModel(tmp_path / "out").run(x)
    assert np.abs(y[-1] - want).max() <= 1e-4


def test_exports_without_keras_importable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    build(6, 1, 1, 1).save(tmp_path / "m.keras")
    monkeypatch.setitem(sys.modules, "keras", None)  # "import keras" now raises ImportError
    result = export(tmp_path / "m.keras", tmp_path / "out")
    assert result.report.framework is None
    assert (
        result.report.framework_skipped is not None and "keras" in result.report.framework_skipped
    )
    assert result.report.passed


def _refused(tmp_path: Path, model: keras.Model, match: str) -> None:
    model.save(tmp_path / "m.keras")
    with pytest.raises(UnsupportedModelError, match=match):
        export(tmp_path / "m.keras", tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("layers", "match"),
    [
        (
            [
                keras.layers.LSTM(8, return_sequences=True),
                keras.layers.LSTM(4),
                keras.layers.Dense(1),
            ],
            r"different units \[4, 8\]",
        ),
        ([keras.layers.LSTM(8, activation="relu"), keras.layers.Dense(1)], "activation='relu'"),
        (
            [keras.layers.LSTM(8, recurrent_activation="hard_sigmoid"), keras.layers.Dense(1)],
            "recurrent_activation='hard_sigmoid'",
        ),
        ([keras.layers.LSTM(8, go_backwards=True), keras.layers.Dense(1)], "go_backwards=True"),
        ([keras.layers.GRU(8), keras.layers.Dense(1)], "is a GRU"),
        (
            [keras.layers.LSTM(8), keras.layers.Dense(1, activation="relu")],
            "the head must be linear",
        ),
        (
            [keras.layers.Bidirectional(keras.layers.LSTM(8)), keras.layers.Dense(1)],
            "is a Bidirectional",
        ),
        ([keras.layers.LSTM(8)], r"expected one or more LSTM layers followed by one Dense"),
        (
            [keras.layers.LSTM(8), keras.layers.Dense(4), keras.layers.Dense(1)],
            "followed by one Dense",
        ),
    ],
    ids=[
        "units",
        "activation",
        "recurrent-activation",
        "backwards",
        "gru",
        "dense-relu",
        "bidirectional",
        "no-head",
        "two-dense",
    ],
)
def test_refuses_unsupported_layers(tmp_path: Path, layers: list[Any], match: str) -> None:
    _refused(tmp_path, keras.Sequential([keras.Input((None, 2)), *layers]), match)


def test_refuses_functional_models(tmp_path: Path) -> None:
    inp = keras.Input((None, 2))
    out = keras.layers.Dense(1)(keras.layers.LSTM(4)(inp))
    _refused(tmp_path, keras.Model(inp, out), "only keras.Sequential")

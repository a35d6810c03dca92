"""Exports of real torch.nn.LSTM + nn.Linear models reproduce torch, step by step."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TorchForecaster, random_scaling
from model_runner import ExportedModel

from model_export import Scaling, export

STEPS = 1000


def torch_float64(model: TorchForecaster, x_raw: np.ndarray, scaling: Scaling) -> np.ndarray:
    """The numeric reference: torch in float64 over the whole sequence from zero state."""
    m = TorchForecaster(
        model.lstm.input_size,
        model.lstm.hidden_size,
        model.lstm.num_layers,
        model.head.out_features,
        model.lstm.bias,
    )
    m.load_state_dict(model.state_dict())
    m = m.double().eval()
    scaled = (x_raw - scaling.input_mean) / scaling.input_std
    with torch.no_grad():
        out, _ = m.lstm(torch.from_numpy(scaled))
        y = m.head(out).numpy()
    return np.asarray(y * scaling.output_std + scaling.output_mean)


def tolerance(scaling: Scaling) -> np.ndarray:
    return 1e-4 * np.maximum(1.0, scaling.output_std)


@pytest.mark.parametrize(
    ("inputs", "hidden", "layers", "outputs", "bias"),
    [
        (1, 8, 1, 1, True),
        (3, 16, 2, 2, True),
        (5, 32, 3, 1, False),
        (2, 64, 2, 3, True),
        (4, 5, 1, 2, False),
    ],
)
def test_streamed_steps_match_torch(
    tmp_path: Path,
    torch_model: Callable[..., TorchForecaster],
    inputs: int,
    hidden: int,
    layers: int,
    outputs: int,
    bias: bool,
) -> None:
    rng = np.random.default_rng(inputs * 100 + hidden)
    model = torch_model(inputs, hidden, layers, outputs, bias, seed=hidden)
    torch.save(model.state_dict(), tmp_path / "m.pt")
    scaling = random_scaling(rng, inputs, outputs)
    export(tmp_path / "m.pt", tmp_path / "out", scaling=scaling)

    exported = ExportedModel(tmp_path / "out")
    x = scaling.input_mean + rng.normal(0, 1.5, (STEPS, 1, inputs)) * scaling.input_std
    want = torch_float64(model, x, scaling)
    streamed = exported.stream(x)
    assert streamed.shape == (STEPS, 1, outputs)
    err = np.abs(streamed - want).max(axis=(0, 1))
    assert np.all(err <= tolerance(scaling)), (err, tolerance(scaling))
    # and the whole backlog in one call (T = STEPS) gives the same numbers
    y, _, _ = exported.run(x)
    assert np.all(np.abs(y - want).max(axis=(0, 1)) <= tolerance(scaling))


def test_ragged_batch_matches_each_row_run_alone(
    tmp_path: Path, saved_torch: Callable[..., Path]
) -> None:
    path = saved_torch(inputs=2, hidden=16, layers=2, outputs=1)
    export(path, tmp_path / "out")
    exported = ExportedModel(tmp_path / "out")
    rng = np.random.default_rng(3)
    lens = np.array([9, 1, 5, 3])
    x = rng.normal(0, 1, (9, 4, 2)).astype(np.float32)
    h0 = rng.normal(0, 0.5, (2, 4, 16)).astype(np.float32)
    c0 = rng.normal(0, 0.5, (2, 4, 16)).astype(np.float32)
    y, hn, cn = exported.run(x, h0, c0, lens)
    for row, n in enumerate(lens):
        y1, h1, c1 = exported.run(x[:n, row : row + 1], h0[:, row : row + 1], c0[:, row : row + 1])
        np.testing.assert_allclose(y[:n, row], y1[:, 0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(hn[:, row], h1[:, 0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(cn[:, row], c1[:, 0], rtol=1e-5, atol=1e-6)


def test_custom_prefixes_and_wrapped_checkpoint(
    tmp_path: Path, torch_model: Callable[..., TorchForecaster]
) -> None:
    from model_export.sources import LoadOptions

    model = torch_model(2, 8, 2, 1)
    renamed = {
        k.replace("lstm.", "encoder.rnn.").replace("head.", "decoder."): v
        for k, v in model.state_dict().items()
    }
    torch.save({"state_dict": renamed, "epoch": 7}, tmp_path / "ckpt.pth")
    result = export(
        tmp_path / "ckpt.pth",
        tmp_path / "out",
        options=LoadOptions(lstm_prefix="encoder.rnn.", head_prefix="decoder."),
    )
    assert result.metadata["num_layers"] == 2
    x = np.random.default_rng(0).normal(0, 1, (300, 1, 2))
    identity = Scaling.identity(2, 1)
    got = ExportedModel(tmp_path / "out").stream(x)
    assert np.abs(got - torch_float64(model, x, identity)).max() <= 1e-4


def test_metadata_records_what_was_exported(
    tmp_path: Path, saved_torch: Callable[..., Path]
) -> None:
    path = saved_torch(inputs=2, hidden=8, layers=2, outputs=1)
    export(
        path,
        tmp_path / "out",
        name="pump-7",
        features=["rpm", "temp"],
        outputs=["vibration"],
        scaling=Scaling.from_dict({"output_std": [3.0]}, 2, 1),
    )
    meta = json.loads((tmp_path / "out" / "model.json").read_text())
    assert meta["name"] == "pump-7"
    assert len(meta["version"]) == 16 and int(meta["version"], 16) >= 0
    assert (
        meta["cell"],
        meta["input_size"],
        meta["hidden_size"],
        meta["output_size"],
        meta["num_layers"],
    ) == ("lstm", 2, 8, 1, 2)
    assert meta["features"] == ["rpm", "temp"] and meta["outputs"] == ["vibration"]
    assert meta["scaling"]["output_std"] == [3.0] and meta["scaling"]["input_mean"] == [0.0, 0.0]
    assert meta["source"] == {"format": "torch", "file": "model.pt"}
    assert meta["graph"]["opset"] == 17 and meta["graph"]["file"] == "model.onnx"
    v = meta["verification"]
    assert v["passed"] is True
    assert v["tolerance"] == [pytest.approx(3e-4)]
    assert 0 < v["max_abs_error"][0] < v["tolerance"][0]
    assert v["stream_steps"] >= 1000
    assert v["framework"].startswith("torch ") and v["framework_max_abs_error"][0] < 1e-9
    assert v["onnxruntime_version"]
    assert meta["created_at"].endswith("Z")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["model.json", "model.onnx"]

"""The float64 oracle itself agrees with torch, and the canonical form rejects bad shapes."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from conftest import TorchForecaster

from model_export import LayerWeights, RecurrentWeights, Scaling, WeightsError
from model_export.reference import run
from model_export.sources.torch_layout import TORCH_LSTM_GATES, to_canonical
from model_export.weights import ONNX_LSTM_GATES, reorder_gates


def canonical(model: TorchForecaster) -> RecurrentWeights:
    arrays = {k: v.double().numpy() for k, v in model.state_dict().items()}
    return to_canonical(arrays, "lstm.", "head.", "test")


def test_reference_matches_torch_from_a_given_state(
    torch_model: Callable[..., TorchForecaster],
) -> None:
    model = torch_model(3, 10, 3, 2).double()
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (40, 4, 3))
    h0, c0 = rng.normal(0, 1, (3, 4, 10)), rng.normal(0, 1, (3, 4, 10))
    with torch.no_grad():
        out, (hn, cn) = model.lstm(
            torch.from_numpy(x), (torch.from_numpy(h0), torch.from_numpy(c0))
        )
        want_y = model.head(out).numpy()
    y, h, c = run(canonical(model), Scaling.identity(3, 2), x, h0, c0)
    np.testing.assert_allclose(y, want_y, rtol=0, atol=1e-12)
    np.testing.assert_allclose(h, hn.numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(c, cn.numpy(), rtol=0, atol=1e-12)


def test_reference_ragged_rows_stop_at_their_length(
    torch_model: Callable[..., TorchForecaster],
) -> None:
    model = torch_model(2, 6, 2, 1).double()
    rng = np.random.default_rng(1)
    x = rng.normal(0, 1, (8, 3, 2))
    lens = np.array([8, 2, 5])
    y, h, c = run(canonical(model), Scaling.identity(2, 1), x, seq_lens=lens)
    for row, n in enumerate(lens):
        with torch.no_grad():
            out, (hn, cn) = model.lstm(torch.from_numpy(x[:n, row : row + 1]))
        np.testing.assert_allclose(y[:n, row], model.head(out).detach().numpy()[:, 0], atol=1e-12)
        assert np.all(np.isnan(y[n:, row]))
        np.testing.assert_allclose(h[:, row], hn.numpy()[:, 0], atol=1e-12)
        np.testing.assert_allclose(c[:, row], cn.numpy()[:, 0], atol=1e-12)


def test_reorder_gates_moves_whole_blocks() -> None:
    blocks = np.repeat(
        np.arange(4.0), 3
    )  # torch order i,f,c,o with H=3 -> [0,0,0,1,1,1,2,2,2,3,3,3]
    onnx = reorder_gates(blocks, TORCH_LSTM_GATES, ONNX_LSTM_GATES)
    assert onnx.tolist() == [0.0] * 3 + [3.0] * 3 + [1.0] * 3 + [2.0] * 3  # i, o, f, c
    np.testing.assert_array_equal(reorder_gates(onnx, ONNX_LSTM_GATES, TORCH_LSTM_GATES), blocks)
    with pytest.raises(WeightsError, match="not a multiple of 4"):
        reorder_gates(np.zeros(10), TORCH_LSTM_GATES, ONNX_LSTM_GATES)


def _layer(rows: int, inputs: int, hidden: int) -> LayerWeights:
    return LayerWeights.create("l", np.zeros((rows, inputs)), np.zeros((rows, hidden)), None, None)


def test_canonical_form_rejects_inconsistent_shapes() -> None:
    head_w, head_b = np.zeros((1, 4)), np.zeros(1)
    RecurrentWeights("lstm", (_layer(16, 2, 4), _layer(16, 4, 4)), head_w, head_b)  # consistent
    with pytest.raises(WeightsError, match="every layer must have the same hidden size"):
        RecurrentWeights("lstm", (_layer(16, 2, 4), _layer(20, 5, 5)), head_w, head_b)
    with pytest.raises(WeightsError, match=r"layer 1 input weights have shape \(16, 3\)"):
        RecurrentWeights("lstm", (_layer(16, 2, 4), _layer(16, 3, 4)), head_w, head_b)
    with pytest.raises(WeightsError, match="needs \\[4\\*hidden, hidden\\]"):
        RecurrentWeights("lstm", (_layer(12, 2, 4),), head_w, head_b)
    with pytest.raises(WeightsError, match="head bias"):
        RecurrentWeights("lstm", (_layer(16, 2, 4),), head_w, np.zeros(2))
    with pytest.raises(WeightsError, match="no recurrent layers"):
        RecurrentWeights("lstm", (), head_w, head_b)
    with pytest.raises(WeightsError, match="unknown cell type"):
        RecurrentWeights("gru", (_layer(16, 2, 4),), head_w, head_b)  # type: ignore[arg-type]
    with pytest.raises(WeightsError, match="infinite"):
        LayerWeights.create("l", np.full((16, 2), np.inf), np.zeros((16, 4)), None, None)


def test_canonical_arrays_are_read_only_copies() -> None:
    w = np.zeros((16, 2))
    layer = LayerWeights.create("l", w, np.zeros((16, 4)), None, None)
    w[0, 0] = 5.0
    assert layer.W[0, 0] == 0.0
    with pytest.raises(ValueError, match="read-only"):
        layer.W[0, 0] = 1.0

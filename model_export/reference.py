"""A float64 NumPy LSTM: the oracle that every export is verified against.

Written for clarity, not speed: one loop over time, gates picked out of the canonical blocks by
name, scaling applied exactly as the graph documents it. Shapes follow the model contract:
``x [T, B, I]`` raw units, ``h0``/``c0 [L, B, H]``, optional ``seq_lens [B]`` (each ≥ 1); returns
``y [T, B, O]`` in raw units (NaN past a row's length), ``hn``/``cn [L, B, H]`` at each row's last
valid step.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from .scaling import Scaling
from .weights import FloatArray, LayerWeights, RecurrentWeights

__all__ = ["lstm_cell", "run"]


def _sigmoid(z: FloatArray) -> FloatArray:
    # 0.5 * (1 + tanh(z / 2)) equals 1 / (1 + exp(-z)) and never overflows for large |z|.
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def lstm_cell(
    layer: LayerWeights, gates: tuple[str, ...], x: FloatArray, h: FloatArray, c: FloatArray
) -> tuple[FloatArray, FloatArray]:
    """One LSTM step for a batch: ``x [B, in]``, ``h``/``c [B, H]`` → new ``(h, c)``."""
    z = x @ layer.W.T + h @ layer.R.T + layer.Wb + layer.Rb
    g = dict(zip(gates, np.split(z, len(gates), axis=-1), strict=True))
    forget, inp, out = _sigmoid(g["f"]), _sigmoid(g["i"]), _sigmoid(g["o"])
    new_memory = np.tanh(g["c"])
    c_new = forget * c + inp * new_memory
    h_new = out * np.tanh(c_new)
    return h_new, c_new


def run(
    weights: RecurrentWeights,
    scaling: Scaling,
    x: npt.ArrayLike,
    h0: npt.ArrayLike | None = None,
    c0: npt.ArrayLike | None = None,
    seq_lens: npt.ArrayLike | None = None,
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Run the whole stack and the head over ``x``; see the module docstring for shapes."""
    if weights.cell != "lstm":
        raise NotImplementedError(f"no reference for cell type {weights.cell!r}")
    xs = np.asarray(x, dtype=np.float64)
    steps, batch, _ = xs.shape
    state_shape = (weights.num_layers, batch, weights.hidden_size)
    h = np.zeros(state_shape) if h0 is None else np.array(h0, dtype=np.float64)
    c = np.zeros(state_shape) if c0 is None else np.array(c0, dtype=np.float64)
    lens = np.full(batch, steps) if seq_lens is None else np.asarray(seq_lens, dtype=np.int64)

    y = np.full((steps, batch, weights.output_size), np.nan)
    scaled = (xs - scaling.input_mean) / scaling.input_std
    for t in range(steps):
        live = lens > t  # rows past their length keep their state and get no output
        layer_input = scaled[t]
        for n, layer in enumerate(weights.layers):
            h_new, c_new = lstm_cell(layer, weights.gates, layer_input, h[n], c[n])
            h[n] = np.where(live[:, None], h_new, h[n])
            c[n] = np.where(live[:, None], c_new, c[n])
            layer_input = h_new
        head = layer_input @ weights.head_weight.T + weights.head_bias
        y[t, live] = (head * scaling.output_std + scaling.output_mean)[live]
    return y, h, c

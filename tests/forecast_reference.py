"""Forecasts computed without the service's code, to hold its forecast core against.

* :func:`graph_forecast`: the exported graph stepped one stream and one step per call with
  onnxruntime, its float32 state carried along and its own outputs fed back;
* :func:`torch_forecast`: ``nn.LSTM`` + ``nn.Linear`` in float64, the same loop on the real
  framework, from the raw readings.

Both read the feedback mapping straight from ``model.json``'s names, and build each input one
feature at a time: plain loops, slow and obvious.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from conftest import TorchForecaster
from model_runner import ExportedModel

from model_export import Scaling


@dataclass(frozen=True)
class Mapping:
    """feature index <- output index for each fed feature; the other features, in order."""

    feeds: dict[int, int]
    covariates: list[int]
    input_size: int

    @classmethod
    def of(cls, meta: dict[str, Any]) -> Mapping:
        features, outputs = meta["features"], meta["outputs"]
        feeds = {features.index(f): outputs.index(o) for o, f in meta["feedback"].items()}
        covariates = [k for k in range(len(features)) if k not in feeds]
        return cls(feeds, covariates, len(features))

    def input(self, prediction: np.ndarray, covariates: np.ndarray) -> np.ndarray:
        """The next step's raw input ``[I]`` from the last prediction and this step's covariates."""
        x = np.zeros(self.input_size, prediction.dtype)
        for feature, output in self.feeds.items():
            x[feature] = prediction[output]
        for j, feature in enumerate(self.covariates):
            x[feature] = covariates[j]
        return x


def stream_graph(
    model: ExportedModel, readings: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Readings ``[T, I]`` fed one call each from zero state, as the service applies them:
    predictions ``[T, O]`` (float32) and the stored state ``h``, ``c [L, 1, H]`` after them."""
    h = c = model.zero_state(1)
    out = []
    for reading in readings:
        y, h, c = model.run(np.asarray(reading, np.float32)[None, None, :], h, c)
        out.append(y[0, 0])
    return np.array(out), h, c


def graph_forecast(
    model: ExportedModel,
    h: np.ndarray,
    c: np.ndarray,
    last_prediction: np.ndarray,
    covariates: np.ndarray,
) -> np.ndarray:
    """One stream's forecast ``[H, O]`` from its stored ``h``, ``c [L, 1, hidden]`` and last
    prediction ``[O]``; ``covariates [H, C]``."""
    mapping = Mapping.of(model.meta)
    prediction = np.asarray(last_prediction, np.float32)
    out = []
    for k in range(len(covariates)):
        x = mapping.input(prediction, covariates[k]).astype(np.float32)
        y, h, c = model.run(x[None, None, :], h, c)
        prediction = y[0, 0]
        out.append(prediction)
    return np.array(out, np.float32).reshape(len(covariates), model.meta["output_size"])


def torch_module(weights: dict[str, np.ndarray]) -> TorchForecaster:
    """A float64 TorchForecaster holding a state_dict given as arrays (PyTorch's names)."""
    inputs = weights["lstm.weight_ih_l0"].shape[1]
    hidden = weights["lstm.weight_hh_l0"].shape[1]
    layers = sum(1 for name in weights if name.startswith("lstm.weight_ih_l"))
    outputs = weights["head.weight"].shape[0]
    module = TorchForecaster(inputs, hidden, layers, outputs).double().eval()
    module.load_state_dict({k: torch.tensor(v, dtype=torch.float64) for k, v in weights.items()})
    return module


def torch_forecast(
    module: TorchForecaster,
    scaling: Scaling,
    meta: dict[str, Any],
    readings: np.ndarray,
    covariates: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Predictions for ``readings [T, I]`` from zero state, then the forecast ``[H, O]`` from
    there, everything in float64 on torch's own LSTM."""
    mapping = Mapping.of(meta)
    module = module.double().eval()

    def step(raw: np.ndarray, state: Any) -> tuple[np.ndarray, Any]:
        scaled = (raw - scaling.input_mean) / scaling.input_std
        x = torch.tensor(scaled[:, None, :], dtype=torch.float64)
        with torch.no_grad():
            out, state = module.lstm(x, state)
            y = module.head(out)[:, 0, :].numpy()
        return y * scaling.output_std + scaling.output_mean, state

    seen, state = step(np.asarray(readings, np.float64), None)
    prediction, out = seen[-1], []
    for k in range(len(covariates)):
        y, state = step(mapping.input(prediction, covariates[k])[None, :], state)
        prediction = y[0]
        out.append(prediction)
    return seen, np.array(out).reshape(len(covariates), seen.shape[1])

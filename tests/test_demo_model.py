"""The bundled demo model: present as package data, consistent with its weights, and useful."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
from conftest import elnino_sst
from model_runner import ExportedModel
from test_export_cli import assert_refused, run_cli

from model_export import Scaling, fingerprint
from model_export.__main__ import main
from model_export.sources import load

DEMO_MODEL = Path(str(resources.files("service") / "demo_model"))
DEMO_WEIGHTS = Path(str(resources.files("model_export") / "demo_weights"))
ROOT = Path(__file__).resolve().parent.parent
# The bundled model's version, which every stream in Redis carries: declaring or changing the
# forecast feedback mapping must leave it alone (the fingerprint covers weights and scaling only).
DEMO_VERSION = "19f94faff40a45e0"


def test_bundled_model_matches_the_bundled_weights() -> None:
    meta = json.loads((DEMO_MODEL / "model.json").read_text())
    weights = load(DEMO_WEIGHTS / "elnino.npz").weights
    scaling = Scaling.from_dict(
        json.loads((DEMO_WEIGHTS / "elnino.scaling.json").read_text()), 1, 1
    )
    assert meta["version"] == fingerprint(weights, scaling)
    assert (meta["name"], meta["num_layers"], meta["hidden_size"]) == ("elnino", 2, 64)
    assert meta["features"] == ["sst_c"] and meta["outputs"] == ["next_month_sst_c"]
    assert meta["feedback"] == {"next_month_sst_c": "sst_c"}
    assert meta["version"] == DEMO_VERSION
    assert meta["verification"]["passed"] is True


def test_export_without_a_source_exports_the_demo(tmp_path: Path, capsys: object) -> None:
    assert main(["--out", str(tmp_path / "demo")]) == 0
    bundled = json.loads((DEMO_MODEL / "model.json").read_text())
    exported = json.loads((tmp_path / "demo" / "model.json").read_text())
    assert exported["version"] == bundled["version"]
    assert exported["name"] == "elnino" and exported["scaling"] == bundled["scaling"]


def test_the_demo_export_declares_its_mapping_and_keeps_its_version(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out, _ = run_cli(capsys, "--out", tmp_path / "demo")
    assert code == 0
    meta = json.loads((tmp_path / "demo" / "model.json").read_text())
    assert meta["feedback"] == {"next_month_sst_c": "sst_c"}
    assert meta["version"] == DEMO_VERSION
    assert "forecast feedback: next_month_sst_c -> sst_c" in out
    assert f"version {DEMO_VERSION}" in out.splitlines()[-1]


def test_the_demo_export_takes_a_mapping_of_its_own(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A --feedback given with the demo replaces its declared mapping (here: the same pair
    spelled out); the version stays."""
    flags = ["--feedback", "next_month_sst_c=sst_c"]
    assert run_cli(capsys, "--out", tmp_path / "demo", *flags)[0] == 0
    meta = json.loads((tmp_path / "demo" / "model.json").read_text())
    assert meta["feedback"] == {"next_month_sst_c": "sst_c"} and meta["version"] == DEMO_VERSION
    line = assert_refused(capsys, tmp_path / "x", "--feedback", "next_month_sst_c=sst", match="")
    assert "no feature 'sst'; its features are sst_c" in line


def test_demo_beats_persistence_on_held_out_years() -> None:
    temps = elnino_sst()
    model = ExportedModel(DEMO_MODEL)
    pred = model.stream(temps[:-1, None, None])[
        :, 0, 0
    ]  # one reading per call, as the service will
    held = slice(600 - 1, None)  # forecasts of 2000-01 onwards (1950..1999 is 600 months)
    actual = temps[1:][held]
    lstm = np.sqrt(np.mean((pred[held] - actual) ** 2))
    persistence = np.sqrt(np.mean((temps[:-1][held] - actual) ** 2))
    recorded = json.loads((DEMO_WEIGHTS / "elnino.info.json").read_text())["held_out"]
    assert lstm < 0.6 * persistence
    assert abs(lstm - recorded["lstm_rmse_c"]) < 1e-3  # the README's figure is the shipped model's


def test_training_script_runs_end_to_end(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "demo" / "train_demo.py"),
            "--epochs",
            "3",
            "--weights-dir",
            str(tmp_path / "w"),
            "--model-dir",
            str(tmp_path / "m"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "3/3" in done.stderr  # the progress bar
    assert "one-step-ahead RMSE" in done.stdout
    assert sorted(p.name for p in (tmp_path / "w").iterdir()) == [
        "elnino.info.json",
        "elnino.npz",
        "elnino.scaling.json",
    ]
    exported = json.loads((tmp_path / "m" / "model.json").read_text())
    assert exported["verification"]["passed"]
    assert exported["feedback"] == {"next_month_sst_c": "sst_c"}

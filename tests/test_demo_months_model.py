"""The El Niño months model (test data): sea surface temperature plus the calendar month as
covariates. Its committed weights, scaling and exported model agree, it declares its feedback
mapping, its recorded skill is the committed model's, and its training script still runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from conftest import elnino_sst, month_features
from model_runner import ExportedModel

from model_export import Scaling, fingerprint
from model_export.sources import load

DATA = Path(__file__).resolve().parent / "data" / "elnino-months"
ROOT = Path(__file__).resolve().parent.parent


def test_the_exported_model_matches_the_committed_weights() -> None:
    meta = json.loads((DATA / "model" / "model.json").read_text())
    info = json.loads((DATA / "elnino-months.info.json").read_text())
    weights = load(DATA / "elnino-months.npz").weights
    scaling = Scaling.from_dict(json.loads((DATA / "elnino-months.scaling.json").read_text()), 3, 1)
    assert meta["version"] == fingerprint(weights, scaling)
    assert meta["features"] == info["features"] == ["sst_c", "month_sin", "month_cos"]
    assert meta["outputs"] == info["outputs"] == ["next_month_sst_c"]
    assert meta["feedback"] == info["feedback"] == {"next_month_sst_c": "sst_c"}
    assert meta["verification"]["passed"] is True
    assert (weights.input_size, weights.hidden_size, weights.num_layers) == (3, 32, 2)
    assert sum(p.stat().st_size for p in DATA.rglob("*") if p.is_file()) < 400_000


def test_its_recorded_one_step_skill_is_the_committed_models() -> None:
    """Streamed one reading per call from zero state, as the service runs it: the held-out
    one-step RMSE is the figure the info file (and the README) give, and far below
    persistence's."""
    temps = elnino_sst()
    x = np.column_stack([temps, month_features(len(temps))])[:, None, :]
    pred = ExportedModel(DATA / "model").stream(x)[:, 0, 0]
    info = json.loads((DATA / "elnino-months.info.json").read_text())
    # forecasts made after each month from 1999-12 (entry 599) to 2009-12, as recorded
    origins = np.arange(599, 599 + info["held_out"]["forecast_origins"])
    lstm = float(np.sqrt(np.mean((pred[origins] - temps[origins + 1]) ** 2)))
    recorded = info["held_out"]["lead_1"]
    assert abs(lstm - recorded["lstm_rmse_c"]) < 1e-3
    assert lstm < 0.5 * recorded["persistence_rmse_c"]


def test_training_script_runs_end_to_end(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "demo" / "train_elnino_months.py"),
            "--epochs",
            "3",
            "--data-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "3/3" in done.stderr  # the progress bar
    assert "one-step-ahead RMSE" in done.stdout and "12 months ahead" in done.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "elnino-months.info.json",
        "elnino-months.npz",
        "elnino-months.scaling.json",
        "model",
    ]
    meta = json.loads((tmp_path / "model" / "model.json").read_text())
    assert meta["verification"]["passed"]
    assert meta["feedback"] == {"next_month_sst_c": "sst_c"}

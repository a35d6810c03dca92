"""Train the bundled demo model: a 2-layer, 64-unit LSTM on monthly sea surface temperature.

Data: NOAA's Niño 1+2 monthly sea surface temperature, 1950-2010 (public domain), as shipped
inside the statsmodels package (``statsmodels/datasets/elnino/elnino.csv``): a real sensor series
with a strong yearly cycle. The model reads one temperature (°C) per month and predicts next
month's. It trains on 1950-1999 and is scored on 2000-2010, streamed from zero state exactly as
the service would run it, against two naive forecasts: persistence (next month = this month) and
seasonal persistence (next month = the same month last year).

Writes the weights as ``model_export/demo_weights/elnino.npz`` (PyTorch names, so the exporter
needs no torch to read them), their scaling and description, then exports them into
``service/demo_model``. Needs the ``train`` extra:

    pip install -e '.[train]' && python demo/train_demo.py [--epochs 400] [--seed 0]
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from model_export import Scaling, export

ROOT = Path(__file__).resolve().parent.parent
WEIGHTS_DIR = ROOT / "model_export" / "demo_weights"
MODEL_DIR = ROOT / "service" / "demo_model"
TRAIN_END_YEAR = 1999  # train on 1950..1999, hold out 2000..2010


class Forecaster(torch.nn.Module):
    def __init__(self, hidden: int = 64, layers: int = 2) -> None:
        super().__init__()
        self.lstm = torch.nn.LSTM(1, hidden, num_layers=layers)
        self.head = torch.nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [T, B, 1] -> [T, B, 1]
        out, _ = self.lstm(x)
        return self.head(out)


def load_series() -> tuple[np.ndarray, np.ndarray]:
    """(years per month, temperature per month), 1950-01 .. 2010-12."""
    text = (resources.files("statsmodels.datasets.elnino") / "elnino.csv").read_text()
    years, temps = [], []
    for row in csv.DictReader(io.StringIO(text)):
        year = int(float(row.pop("YEAR")))
        for month in (
            "JAN",
            "FEB",
            "MAR",
            "APR",
            "MAY",
            "JUN",
            "JUL",
            "AUG",
            "SEP",
            "OCT",
            "NOV",
            "DEC",
        ):
            years.append(year)
            temps.append(float(row[month]))
    return np.array(years), np.array(temps)


def rmse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((a - b) ** 2)))


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--epochs", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--window", type=int, default=72, help="months per training window")
    ap.add_argument("--warmup", type=int, default=12, help="months of each window not scored")
    ap.add_argument("--weights-dir", type=Path, default=WEIGHTS_DIR, help="where the .npz goes")
    ap.add_argument("--model-dir", type=Path, default=MODEL_DIR, help="exported model directory")
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)  # deterministic and fair on a shared machine
    rng = np.random.default_rng(args.seed)

    years, temps = load_series()
    train = temps[years <= TRAIN_END_YEAR]
    mean, std = float(train.mean()), float(train.std())
    z = (temps - mean) / std

    # Windows start anywhere in the training years and run from zero state, as a new stream
    # would; the first months of each window are context only.
    starts = np.arange(0, len(train) - args.window)
    model = Forecaster()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.epochs)
    bar = tqdm(range(args.epochs), desc="training", unit="epoch")
    for _ in bar:
        batch = rng.choice(starts, size=64)
        windows = np.stack([z[s : s + args.window + 1] for s in batch], axis=1)  # [W+1, B]
        x = torch.tensor(windows[:-1, :, None], dtype=torch.float32)
        y = torch.tensor(windows[1:, :, None], dtype=torch.float32)
        loss = torch.nn.functional.mse_loss(model(x)[args.warmup :], y[args.warmup :])
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")

    # Stream the whole series from zero state; score one-step-ahead forecasts in 2000..2010.
    with torch.no_grad():
        pred = (
            model(torch.tensor(z[:-1, None, None], dtype=torch.float32))[:, 0, 0].numpy() * std
            + mean
        )
    target_idx = np.arange(1, len(temps))
    held = years[target_idx] > TRAIN_END_YEAR
    actual = temps[target_idx][held]
    scores = {
        "lstm_rmse_c": rmse(pred[held], actual),
        "persistence_rmse_c": rmse(temps[target_idx - 1][held], actual),
        "seasonal_persistence_rmse_c": rmse(temps[target_idx - 12][held], actual),
        "held_out_months": int(held.sum()),
    }
    print(
        f"held-out 2000-2010 ({scores['held_out_months']} months), one-step-ahead RMSE: "
        f"LSTM {scores['lstm_rmse_c']:.3f} °C, persistence {scores['persistence_rmse_c']:.3f} °C, "
        f"seasonal persistence {scores['seasonal_persistence_rmse_c']:.3f} °C "
        f"(LSTM error is {scores['lstm_rmse_c'] / scores['persistence_rmse_c']:.0%} "
        "of persistence's)"
    )
    if not all(math.isfinite(v) for v in scores.values()):
        raise SystemExit("training diverged: a held-out score is not finite; try another --seed")

    weights_dir = args.weights_dir
    weights_dir.mkdir(parents=True, exist_ok=True)
    np.savez(
        weights_dir / "elnino.npz", **{k: v.double().numpy() for k, v in model.state_dict().items()}
    )
    scaling = {"input_mean": [mean], "input_std": [std], "output_mean": [mean], "output_std": [std]}
    (weights_dir / "elnino.scaling.json").write_text(json.dumps(scaling, indent=2) + "\n")
    info = {
        "name": "elnino",
        "features": ["sst_c"],
        "outputs": ["next_month_sst_c"],
        # a forecast feeds each month's prediction back as the next month's reading
        "feedback": {"next_month_sst_c": "sst_c"},
        "description": "2x64 LSTM, monthly Nino 1+2 sea surface temperature (degC) -> next month's",
        "data": "NOAA ERSST.V3B Nino 1+2, 1950-2010, public domain (statsmodels.datasets.elnino)",
        "train_years": f"1950-{TRAIN_END_YEAR}",
        "held_out": scores,
        "epochs": args.epochs,
        "seed": args.seed,
    }
    (weights_dir / "elnino.info.json").write_text(json.dumps(info, indent=2) + "\n")
    result = export(
        weights_dir / "elnino.npz",
        args.model_dir,
        name=info["name"],
        scaling=Scaling.from_dict(scaling, 1, 1),
        features=info["features"],
        outputs=info["outputs"],
        feedback=info["feedback"],
        force=True,
    )
    print(
        f"wrote {weights_dir}/elnino.* and exported {result.out_dir} "
        f"(version {result.metadata['version']}, "
        f"max |error| {result.report.max_abs_error[0]:.1e} °C)"
    )


if __name__ == "__main__":
    main()

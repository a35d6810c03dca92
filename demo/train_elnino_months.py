"""Train the covariates example: an LSTM that reads a month's sea surface temperature and the month.

The same series as the bundled demo (NOAA's Niño 1+2 monthly sea surface temperature, 1950-2010,
public domain, as shipped inside the statsmodels package; see ``train_demo.py``), with three
features per month: the temperature (°C), and the calendar month as a point on the unit circle,
``month_sin = sin(2π (month - 1) / 12)`` and ``month_cos = cos(2π (month - 1) / 12)``. The model
predicts next month's temperature. In a forecast that prediction is fed back as the next
month's ``sst_c`` (``--feedback next_month_sst_c=sst_c``), while the month features are
covariates: the caller knows next month's month.

It trains on 1950-1999 and is scored on 2000-2010 streamed from zero state, as the service runs
it: one step ahead against persistence, and at longer leads against persistence and the
training years' mean of each calendar month, forecasting autoregressively as the service will.

Writes ``tests/data/elnino-months/elnino-months.{npz,scaling.json,info.json}`` and exports them,
with their feedback mapping, into ``tests/data/elnino-months/model``. Needs the ``train`` extra:

    pip install -e '.[train]' && python demo/train_elnino_months.py [--epochs 600] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm
from train_demo import TRAIN_END_YEAR, load_series, rmse

from model_export import Scaling, export

ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = ROOT / "tests" / "data" / "elnino-months"
NAME = "elnino-months"
FEATURES = ["sst_c", "month_sin", "month_cos"]
OUTPUTS = ["next_month_sst_c"]
FEEDBACK = {"next_month_sst_c": "sst_c"}
LEADS = (1, 3, 6, 12)  # months ahead scored on the held-out years


class Forecaster(torch.nn.Module):
    def __init__(self, hidden: int, layers: int) -> None:
        super().__init__()
        self.lstm = torch.nn.LSTM(len(FEATURES), hidden, num_layers=layers)
        self.head = torch.nn.Linear(hidden, len(OUTPUTS))

    def forward(
        self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:  # x [T, B, 3] -> [T, B, 1]
        out, state = self.lstm(x, state)
        return self.head(out), state


def month_features(months: np.ndarray) -> np.ndarray:
    """Calendar months 1..12 → ``[N, 2]`` (sin, cos) on the unit circle."""
    angle = 2 * np.pi * (months - 1) / 12
    return np.stack([np.sin(angle), np.cos(angle)], axis=1)


def lead_scores(
    model: Forecaster, z: np.ndarray, temps: np.ndarray, months: np.ndarray, first: int
) -> dict[str, dict[str, float]]:
    """RMSE (°C) at each lead of forecasts made after every month from ``first - 1`` on, as the
    service forecasts: the state after the stream's readings, its last prediction fed back."""
    mean, std = float(temps[:first].mean()), float(temps[:first].std())
    longest = max(LEADS)
    origins = np.arange(first - 1, len(temps) - longest)  # the last reading's index
    covariates = month_features(months)
    with torch.no_grad():
        x = torch.tensor(np.column_stack([z, covariates])[:, None, :], dtype=torch.float64)
        states, state = [], None
        for t in range(len(z)):  # the state after each month, as a stream holds it
            y, state = model(x[t : t + 1], state)
            states.append((y[0, 0], state))
        prev = torch.stack([states[t][0] for t in origins])  # [B, 1]: lead 1
        h = torch.cat([states[t][1][0] for t in origins], dim=1)
        c = torch.cat([states[t][1][1] for t in origins], dim=1)
        preds = [prev]
        for k in range(1, longest):  # step k's input stands in for month origin + k
            cov = torch.tensor(covariates[origins + k], dtype=torch.float64)
            y, (h, c) = model(torch.cat([prev, cov], dim=1)[None], (h, c))
            prev = y[0]
            preds.append(prev)
    forecast = torch.stack(preds).numpy()[:, :, 0] * std + mean  # [lead, origins]
    train_months = months[:first]
    climatology = np.array([temps[:first][train_months == m].mean() for m in range(1, 13)])
    scores: dict[str, dict[str, float]] = {}
    for lead in LEADS:
        target = origins + lead
        actual = temps[target]
        scores[f"lead_{lead}"] = {
            "lstm_rmse_c": rmse(forecast[lead - 1], actual),
            "persistence_rmse_c": rmse(temps[origins], actual),
            "climatology_rmse_c": rmse(climatology[months[target] - 1], actual),
        }
    return scores


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--epochs", type=int, default=600)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--window", type=int, default=72, help="months per training window")
    ap.add_argument("--warmup", type=int, default=12, help="months of each window not scored")
    ap.add_argument("--data-dir", type=Path, default=DATA_DIR, help="weights and model go here")
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)  # deterministic and fair on a shared machine
    rng = np.random.default_rng(args.seed)

    years, temps = load_series()
    months = np.tile(np.arange(1, 13), len(temps) // 12)  # the series is whole years from January
    first_held = int(np.count_nonzero(years <= TRAIN_END_YEAR))
    train = temps[:first_held]
    mean, std = float(train.mean()), float(train.std())
    z = (temps - mean) / std
    # sin and cos are already of unit scale: the scaling leaves them as they are
    inputs = np.column_stack([z, month_features(months)])

    starts = np.arange(0, first_held - args.window)
    model = Forecaster(args.hidden, args.layers)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.epochs)
    bar = tqdm(range(args.epochs), desc="training", unit="epoch")
    for _ in bar:
        batch = rng.choice(starts, size=64)
        x = torch.tensor(
            np.stack([inputs[s : s + args.window] for s in batch], axis=1), dtype=torch.float32
        )
        y = torch.tensor(
            np.stack([z[s + 1 : s + args.window + 1] for s in batch], axis=1)[:, :, None],
            dtype=torch.float32,
        )
        pred, _ = model(x)
        loss = torch.nn.functional.mse_loss(pred[args.warmup :], y[args.warmup :])
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")

    model = model.double().eval()
    leads = lead_scores(model, z, temps, months, first_held)
    one = leads["lead_1"]
    print(
        "held-out 2000-2010 (forecasts made after each month from 1999-12 to 2009-12), "
        f"one-step-ahead RMSE: LSTM {one['lstm_rmse_c']:.3f} °C, "
        f"persistence {one['persistence_rmse_c']:.3f} °C "
        f"(LSTM error is {one['lstm_rmse_c'] / one['persistence_rmse_c']:.0%} of persistence's)"
    )
    for lead in LEADS[1:]:
        s = leads[f"lead_{lead}"]
        print(
            f"  {lead:2d} months ahead, fed back: LSTM {s['lstm_rmse_c']:.3f} °C, "
            f"persistence {s['persistence_rmse_c']:.3f} °C, "
            f"climatology {s['climatology_rmse_c']:.3f} °C"
        )
    if not all(math.isfinite(v) for s in leads.values() for v in s.values()):
        raise SystemExit("training diverged: a held-out score is not finite; try another --seed")

    out = args.data_dir
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / f"{NAME}.npz", **{k: v.numpy() for k, v in model.state_dict().items()})
    scaling = {
        "input_mean": [mean, 0.0, 0.0],
        "input_std": [std, 1.0, 1.0],
        "output_mean": [mean],
        "output_std": [std],
    }
    (out / f"{NAME}.scaling.json").write_text(json.dumps(scaling, indent=2) + "\n")
    info = {
        "name": NAME,
        "features": FEATURES,
        "outputs": OUTPUTS,
        "feedback": FEEDBACK,
        "description": f"{args.layers}x{args.hidden} LSTM, monthly Nino 1+2 sea surface "
        "temperature (degC) and calendar month (sin, cos) -> next month's temperature",
        "covariates": "month_sin = sin(2 pi (m - 1) / 12), month_cos = cos(2 pi (m - 1) / 12), "
        "m the calendar month (1..12) of the reading",
        "data": "NOAA ERSST.V3B Nino 1+2, 1950-2010, public domain (statsmodels.datasets.elnino)",
        "train_years": f"1950-{TRAIN_END_YEAR}",
        # forecasts made after each month from 1999-12 to 2009-12, so that every lead lands
        # in 2000-2010
        "held_out": {"forecast_origins": len(temps) - max(LEADS) - first_held + 1, **leads},
        "epochs": args.epochs,
        "seed": args.seed,
    }
    (out / f"{NAME}.info.json").write_text(json.dumps(info, indent=2) + "\n")
    result = export(
        out / f"{NAME}.npz",
        out / "model",
        name=NAME,
        scaling=Scaling.from_dict(scaling, len(FEATURES), len(OUTPUTS)),
        features=FEATURES,
        outputs=OUTPUTS,
        feedback=FEEDBACK,
        force=True,
    )
    print(
        f"wrote {out}/{NAME}.* and exported {result.out_dir} "
        f"(version {result.metadata['version']}, "
        f"max |error| {result.report.max_abs_error[0]:.1e} °C)"
    )


if __name__ == "__main__":
    main()

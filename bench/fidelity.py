"""Fidelity of exports against the real frameworks, streamed one step per onnxruntime call.

For each shape, a random model is built in PyTorch and in Keras (torch backend), saved, exported
with input/output scaling, and its ONNX predictions over --steps readings (fed one call at a time,
float32 state carried between calls) are compared with the framework's own float64 output
(Keras: float32, its default). Prints the max abs error in raw output units and the tolerance.

    KERAS_BACKEND=torch python bench/fidelity.py [--steps 5000]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras
import numpy as np
import onnxruntime as ort
import torch

from model_export import Scaling, export

SHAPES = [
    (1, 64, 2, 1),
    (3, 16, 1, 2),
    (5, 32, 3, 1),
    (8, 128, 2, 4),
]  # inputs, hidden, layers, out


def stream(model_dir: Path, x: np.ndarray, layers: int, hidden: int) -> np.ndarray:
    sess = ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    h = c = np.zeros((layers, 1, hidden), np.float32)
    ys = []
    for t in range(len(x)):
        feed = {
            "x": x[t : t + 1].astype(np.float32),
            "h0": h,
            "c0": c,
            "seq_lens": np.ones(1, np.int32),
        }
        y, h, c = sess.run(["y", "hn", "cn"], feed)
        ys.append(y[0])
    return np.stack(ys)


def torch_case(
    tmp: Path, x_scaled: np.ndarray, i: int, h: int, n: int, o: int
) -> tuple[Path, np.ndarray]:
    torch.manual_seed(h)
    mod = torch.nn.Module()
    mod.lstm, mod.head = torch.nn.LSTM(i, h, num_layers=n), torch.nn.Linear(h, o)
    torch.save(mod.state_dict(), tmp / "m.pt")
    mod = mod.double()
    with torch.no_grad():
        out, _ = mod.lstm(torch.from_numpy(x_scaled))
        return tmp / "m.pt", mod.head(out).numpy()


def keras_case(
    tmp: Path, x_scaled: np.ndarray, i: int, h: int, n: int, o: int
) -> tuple[Path, np.ndarray]:
    keras.utils.set_random_seed(h)
    layers = [keras.layers.LSTM(h, return_sequences=True) for _ in range(n)]
    model = keras.Sequential([keras.Input((None, i)), *layers, keras.layers.Dense(o)])
    model.save(tmp / "m.keras")
    out = keras.ops.convert_to_numpy(model(np.transpose(x_scaled, (1, 0, 2)).astype(np.float32)))
    return tmp / "m.keras", np.transpose(out, (1, 0, 2)).astype(np.float64)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--steps", type=int, default=5000)
    args = ap.parse_args()
    print(
        f"{'framework':<10}{'shape (I,H,L,O)':<18}{'steps':>7}{'max |error|':>14}{'tolerance':>12}"
    )
    for framework, case in (("torch", torch_case), ("keras", keras_case)):
        for i, h, n, o in SHAPES:
            rng = np.random.default_rng(h)
            scaling = Scaling.from_dict(
                {
                    "input_mean": rng.uniform(0, 30, i).tolist(),
                    "input_std": rng.uniform(1, 5, i).tolist(),
                    "output_mean": rng.uniform(0, 30, o).tolist(),
                    "output_std": rng.uniform(1, 5, o).tolist(),
                },
                i,
                o,
            )
            x = scaling.input_mean + rng.normal(0, 1.5, (args.steps, 1, i)) * scaling.input_std
            scaled = (x - scaling.input_mean) / scaling.input_std
            with tempfile.TemporaryDirectory() as d:
                source, want = case(Path(d), scaled, i, h, n, o)
                export(source, Path(d) / "out", scaling=scaling)
                got = stream(Path(d) / "out", x, n, h)
            err = np.abs(got - (want * scaling.output_std + scaling.output_mean)).max()
            tol = 1e-4 * max(1.0, float(scaling.output_std.max()))
            print(f"{framework:<10}{(i, h, n, o)!s:<18}{args.steps:>7}{err:>14.2e}{tol:>12.1e}")


if __name__ == "__main__":
    main()

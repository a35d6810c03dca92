"""Runs an exported model directory with onnxruntime the way the service will: one session,
float32 state carried from call to call."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort


class ExportedModel:
    def __init__(self, model_dir: Path) -> None:
        self.meta: dict[str, Any] = json.loads((model_dir / "model.json").read_text())
        self.session = ort.InferenceSession(
            str(model_dir / self.meta["graph"]["file"]), providers=["CPUExecutionProvider"]
        )

    def zero_state(self, batch: int) -> np.ndarray:
        return np.zeros((self.meta["num_layers"], batch, self.meta["hidden_size"]), np.float32)

    def run(
        self,
        x: np.ndarray,
        h0: np.ndarray | None = None,
        c0: np.ndarray | None = None,
        seq_lens: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``x [T, B, I]`` raw units → ``y [T, B, O]``, ``hn``, ``cn``."""
        steps, batch = x.shape[:2]
        feed = {
            "x": np.asarray(x, np.float32),
            "h0": self.zero_state(batch) if h0 is None else h0,
            "c0": self.zero_state(batch) if c0 is None else c0,
            "seq_lens": np.full(batch, steps, np.int32)
            if seq_lens is None
            else seq_lens.astype(np.int32),
        }
        y, hn, cn = self.session.run(["y", "hn", "cn"], feed)
        return y, hn, cn

    def stream(self, x: np.ndarray) -> np.ndarray:
        """Feed ``x [T, B, I]`` one step per call from zero state; return ``y [T, B, O]``."""
        h = c = self.zero_state(x.shape[1])
        out = []
        for t in range(x.shape[0]):
            y, h, c = self.run(x[t : t + 1], h, c)
            out.append(y[0])
        return np.stack(out)

"""Input standardisation and output de-standardisation, baked into the exported graph.

The network sees ``(x - input_mean) / input_std`` and the service returns
``y * output_std + output_mean``, so clients speak raw sensor units. Every key of
``scaling.json`` is optional; a missing one means identity (mean 0, std 1).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ScalingError
from .weights import FloatArray

__all__ = ["SCALING_KEYS", "Scaling"]

SCALING_KEYS = ("input_mean", "input_std", "output_mean", "output_std")


def _vector(key: str, value: Any, length: int, *, positive: bool) -> FloatArray:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value] * length  # a scalar applies to every feature
    if not isinstance(value, list) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
    ):
        raise ScalingError(f"scaling {key} must be a list of numbers, got {value!r:.80}")
    if len(value) != length:
        raise ScalingError(f"scaling {key} has {len(value)} values; the model needs {length}")
    if not all(math.isfinite(v) for v in value):
        raise ScalingError(f"scaling {key} contains NaN or infinite values")
    if positive and not all(v > 0 for v in value):
        raise ScalingError(f"scaling {key} must be > 0 everywhere, got {value}")
    a = np.asarray(value, dtype=np.float64)
    a.flags.writeable = False
    return a


@dataclass(frozen=True)
class Scaling:
    """Per-feature mean/std for inputs (length I) and outputs (length O), float64."""

    input_mean: FloatArray
    input_std: FloatArray
    output_mean: FloatArray
    output_std: FloatArray

    @classmethod
    def from_dict(cls, data: Any, input_size: int, output_size: int) -> Scaling:
        """Validate a decoded ``scaling.json`` against the model's sizes."""
        if not isinstance(data, dict):
            raise ScalingError("scaling must be a JSON object with keys " + ", ".join(SCALING_KEYS))
        unknown = sorted(set(data) - set(SCALING_KEYS))
        if unknown:
            raise ScalingError(
                f"unknown scaling key(s) {', '.join(unknown)}; allowed: {', '.join(SCALING_KEYS)}"
            )
        sizes = {"input": input_size, "output": output_size}
        values = {}
        for key in SCALING_KEYS:
            side, stat = key.split("_")
            default = 1.0 if stat == "std" else 0.0
            values[key] = _vector(
                key, data.get(key, default), sizes[side], positive=(stat == "std")
            )
        return cls(**values)

    @classmethod
    def load(cls, path: Path, input_size: int, output_size: int) -> Scaling:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ScalingError(f"scaling file {path} does not exist") from exc
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ScalingError(f"scaling file {path} is not readable JSON: {exc}") from exc
        return cls.from_dict(data, input_size, output_size)

    @classmethod
    def identity(cls, input_size: int, output_size: int) -> Scaling:
        return cls.from_dict({}, input_size, output_size)

    @property
    def scales_input(self) -> bool:
        return bool(np.any(self.input_mean != 0) or np.any(self.input_std != 1))

    def to_dict(self) -> dict[str, list[float]]:
        return {key: [float(v) for v in getattr(self, key)] for key in SCALING_KEYS}

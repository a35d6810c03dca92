"""PyTorch loader: a ``state_dict`` saved with ``torch.save`` (``nn.LSTM`` + ``nn.Linear``).

torch is imported here and nowhere else in the exporter. Files are read with
``weights_only=True``: a checkpoint is data, and unpickling arbitrary objects would run code.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import MissingDependencyError, SourceError
from ..weights import FloatArray
from . import FrameworkCheck, LoadedSource, LoadOptions, describe
from .torch_layout import to_canonical

__all__ = ["load", "torch_check"]

# Checkpoints often wrap the state_dict; these are the wrappers we unwrap.
_WRAPPER_KEYS = ("state_dict", "model_state_dict")


def _import_torch() -> Any:
    try:
        import torch
    except ImportError as exc:
        raise MissingDependencyError(
            "reading PyTorch files needs torch: pip install 'lstm-serve[torch]' "
            "(or convert the weights to .npz, which needs nothing)"
        ) from exc
    return torch


def load(path: Path, options: LoadOptions) -> LoadedSource:
    torch = _import_torch()
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SourceError(
            f"{path.name} is not a readable torch state_dict ({reason:.200}); save it with "
            "torch.save(model.state_dict(), path), not the whole module"
        ) from exc
    if isinstance(obj, Mapping):
        for key in _WRAPPER_KEYS:
            if set(obj) == {key} or (key in obj and isinstance(obj[key], Mapping)):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise SourceError(
            f"{path.name} does not hold a state_dict of tensors; save it with "
            "torch.save(model.state_dict(), path)"
        )
    arrays = {str(k): v.detach().to(torch.float64).numpy() for k, v in obj.items()}
    weights = to_canonical(arrays, options.lstm_prefix, options.head_prefix, path.name)
    framework, check = torch_check(arrays, options)
    return LoadedSource(
        weights=weights,
        format="torch",
        description=describe(f"torch state_dict {path.name}", weights),
        framework=framework,
        framework_check=check,
    )


def torch_check(
    arrays: Mapping[str, FloatArray], options: LoadOptions
) -> tuple[str, FrameworkCheck]:
    """("torch <version>", a real ``nn.LSTM`` + ``nn.Linear`` in float64 holding these
    PyTorch-named arrays, run from zero state)."""
    torch = _import_torch()
    lp, hp = options.lstm_prefix, options.head_prefix
    w_ih0 = arrays[f"{lp}weight_ih_l0"]
    hidden = arrays[f"{lp}weight_hh_l0"].shape[1]
    num_layers = sum(1 for k in arrays if k.startswith(f"{lp}weight_ih_l"))
    has_bias = f"{lp}bias_ih_l0" in arrays
    head_w = arrays[f"{hp}weight"]
    lstm = torch.nn.LSTM(w_ih0.shape[1], hidden, num_layers=num_layers, bias=has_bias)
    head = torch.nn.Linear(hidden, head_w.shape[0], bias=f"{hp}bias" in arrays)
    lstm.load_state_dict(
        {k[len(lp) :]: torch.from_numpy(v) for k, v in arrays.items() if k.startswith(lp)}
    )
    head.load_state_dict(
        {k[len(hp) :]: torch.from_numpy(v) for k, v in arrays.items() if k.startswith(hp)}
    )
    lstm, head = lstm.double().eval(), head.double().eval()

    def run(x_scaled: FloatArray) -> FloatArray:
        with torch.no_grad():
            out, _ = lstm(torch.from_numpy(np.ascontiguousarray(x_scaled)))
            return np.asarray(head(out[-1]).numpy(), dtype=np.float64)

    return f"torch {torch.__version__}", run

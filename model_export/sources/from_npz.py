"""NumPy ``.npz`` loader: PyTorch's parameter names, no dependency beyond NumPy.

The archive holds ``lstm.weight_ih_l{k}``, ``lstm.weight_hh_l{k}``, optional ``lstm.bias_ih_l{k}``
and ``lstm.bias_hh_l{k}`` for each layer k, ``head.weight`` and optional ``head.bias``, with
PyTorch's shapes and gate order (i, f, g, o). When torch happens to be installed, the export is
also checked against a real ``nn.LSTM`` holding the same arrays.
"""

from __future__ import annotations

import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..errors import MissingDependencyError, SourceError
from . import LoadedSource, LoadOptions, describe
from .torch_layout import to_canonical

__all__ = ["load"]


def load(path: Path, options: LoadOptions) -> LoadedSource:
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: np.asarray(archive[name], dtype=np.float64) for name in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise SourceError(f"{path.name} is not a readable .npz archive of arrays: {exc}") from exc
    weights = to_canonical(arrays, options.lstm_prefix, options.head_prefix, path.name)
    loaded = LoadedSource(
        weights=weights, format="npz", description=describe(f"npz {path.name}", weights)
    )
    try:
        from .from_torch import torch_check

        framework, check = torch_check(arrays, options)
    except MissingDependencyError:
        return replace(loaded, framework_skipped="torch is not installed")
    return replace(loaded, framework=framework, framework_check=check)

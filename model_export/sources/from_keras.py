"""Keras 3 loader: a ``.keras`` file holding a ``Sequential`` of LSTM layers and a Dense head.

A ``.keras`` file is a zip of ``config.json`` (the architecture) and ``model.weights.h5``; both
are read directly, so neither Keras nor TensorFlow is needed to export. When Keras *is*
importable, the export is additionally checked against the real Keras model.

Accepted: ``InputLayer`` and ``Dropout`` (skipped: dropout is the identity at inference), one or
more ``LSTM`` layers with the same ``units``, tanh/sigmoid activations, not backwards, then one
``Dense`` with a linear activation. Everything else is refused with a message naming it.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SourceError, UnsupportedModelError, WeightsError
from ..weights import ONNX_LSTM_GATES, FloatArray, LayerWeights, RecurrentWeights, reorder_gates
from . import LoadedSource, describe

__all__ = ["KERAS_LSTM_GATES", "load"]

# Keras stacks LSTM gate blocks as input, forget, cell candidate, output along the kernel's
# *last* axis (kernel [I, 4H], recurrent_kernel [H, 4H], one bias [4H]). ONNX wants i, o, f, c
# along the first axis, hence a transpose and a permutation.
KERAS_LSTM_GATES: tuple[str, ...] = ("i", "f", "c", "o")

_SKIPPED = {"InputLayer", "Dropout"}
_LINEAR = (None, "linear")


def _snake_case(name: str) -> str:
    # Keras names each layer's weight group after its class in snake case ("LSTM" -> "lstm",
    # "Dense" -> "dense"), numbering repeats "lstm_1", "lstm_2", ... in layer order.
    name = re.sub(r"\W+", "", name)
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


def _read(path: Path) -> tuple[dict[str, Any], bytes]:
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            if not {"config.json", "model.weights.h5"} <= names:
                raise SourceError(
                    f"{path.name} is a zip but not a Keras 3 .keras file "
                    "(config.json or model.weights.h5 is missing); save with model.save('x.keras')"
                )
            config = json.loads(archive.read("config.json"))
            return config, archive.read("model.weights.h5")
    except (zipfile.BadZipFile, OSError) as exc:
        raise SourceError(
            f"{path.name} is not a Keras 3 .keras file ({exc}); legacy .h5 and SavedModel "
            "formats are not supported: load the model in Keras 3 and save it as .keras"
        ) from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SourceError(f"{path.name}: config.json is not valid JSON ({exc})") from exc


def _check_lstm(name: str, cfg: dict[str, Any]) -> None:
    refusals = {
        "activation": ("tanh", cfg.get("activation")),
        "recurrent_activation": ("sigmoid", cfg.get("recurrent_activation")),
        "go_backwards": (False, cfg.get("go_backwards", False)),
    }
    for key, (wanted, got) in refusals.items():
        if got != wanted:
            raise UnsupportedModelError(
                f"LSTM layer {name!r} has {key}={got!r}; only {key}={wanted!r} is supported"
            )


def _layers(config: dict[str, Any], source: str) -> list[tuple[str, str, dict[str, Any]]]:
    """(class name, weight group, config) of each LSTM/Dense layer, in order."""
    if config.get("class_name") != "Sequential":
        raise UnsupportedModelError(
            f"{source} holds a {config.get('class_name')!r} model; only keras.Sequential "
            "(LSTM layers + a Dense head) is supported"
        )
    used: dict[str, int] = {}
    found = []
    for layer in config.get("config", {}).get("layers", []):
        cls, cfg = layer.get("class_name"), layer.get("config", {})
        if cls == "InputLayer":
            continue  # not in model.layers, so it has no weight group
        group = _snake_case(str(cls))
        if group in used:
            used[group] += 1
            group = f"{group}_{used[group] - 1}"
        else:
            used[group] = 1
        if cls in _SKIPPED:
            continue
        if cls not in ("LSTM", "Dense"):
            raise UnsupportedModelError(
                f"{source}: layer {cfg.get('name')!r} is a {cls}; only InputLayer, LSTM, Dropout "
                "and one final Dense are supported"
            )
        found.append((str(cls), group, cfg))
    kinds = [cls for cls, _, _ in found]
    if not kinds or kinds[-1] != "Dense" or "Dense" in kinds[:-1] or "LSTM" not in kinds:
        raise UnsupportedModelError(
            f"{source} has layers {kinds}; expected one or more LSTM layers followed by one Dense"
        )
    return found


def _vars(h5: Any, group: str, source: str) -> list[FloatArray]:
    for path in (f"layers/{group}/cell/vars", f"layers/{group}/vars"):
        if path in h5 and len(h5[path]):
            node = h5[path]
            return [np.asarray(node[str(k)], dtype=np.float64) for k in range(len(node))]
    raise SourceError(f"{source}: model.weights.h5 has no weights for layer group {group!r}")


def load(path: Path) -> LoadedSource:
    import h5py

    config, weights_h5 = _read(path)
    layers = _layers(config, path.name)
    lstm_units = {int(cfg.get("units", 0)) for cls, _, cfg in layers if cls == "LSTM"}
    if len(lstm_units) != 1:
        raise UnsupportedModelError(
            f"{path.name}: LSTM layers have different units {sorted(lstm_units)}; "
            "all layers must share one hidden size"
        )
    try:
        h5 = h5py.File(io.BytesIO(weights_h5), "r")
    except OSError as exc:
        raise SourceError(f"{path.name}: model.weights.h5 is not readable HDF5 ({exc})") from exc
    with h5:
        canonical = []
        head_weight = head_bias = None
        for n, (cls, group, cfg) in enumerate(layers):
            name = cfg.get("name", group)
            arrays = _vars(h5, group, path.name)
            use_bias = cfg.get("use_bias", True)
            if len(arrays) != (2 + use_bias if cls == "LSTM" else 1 + use_bias):
                raise WeightsError(
                    f"{path.name}: layer {name!r} has {len(arrays)} weight arrays, "
                    f"expected {'kernel, recurrent kernel' if cls == 'LSTM' else 'kernel'}"
                    f"{' and bias' if use_bias else ''}"
                )
            if cls == "Dense":
                if cfg.get("activation") not in _LINEAR:
                    raise UnsupportedModelError(
                        f"{path.name}: Dense layer {name!r} has activation "
                        f"{cfg.get('activation')!r}; the head must be linear"
                    )
                head_weight = arrays[0].T  # Keras kernel [H, O] -> [O, H]
                head_bias = arrays[1] if use_bias else np.zeros(arrays[0].shape[1])
                continue
            _check_lstm(name, cfg)

            def onnx_order(a: FloatArray) -> FloatArray:
                return reorder_gates(a, KERAS_LSTM_GATES, ONNX_LSTM_GATES)

            canonical.append(
                LayerWeights.create(
                    f"layer {n} ({name})",
                    onnx_order(arrays[0].T),
                    onnx_order(arrays[1].T),
                    onnx_order(arrays[2]) if use_bias else None,
                    None,  # Keras has one bias; ONNX adds Wb + Rb, so Rb is zero
                )
            )
    assert head_weight is not None and head_bias is not None  # _layers guarantees a Dense
    weights = RecurrentWeights("lstm", tuple(canonical), head_weight, head_bias)
    check, framework, skipped = _keras_check(path)
    return LoadedSource(
        weights=weights,
        format="keras",
        description=describe(f"keras {path.name}", weights),
        framework=framework,
        framework_check=check,
        framework_skipped=skipped,
    )


def _keras_check(
    path: Path,
) -> tuple[Callable[[FloatArray], FloatArray] | None, str | None, str | None]:
    """The real Keras model as a framework check, or why there is none."""
    try:
        import keras
    except Exception as exc:  # ImportError, or a backend that fails to initialise
        return None, None, f"keras is not importable ({type(exc).__name__}: {exc})"
    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as exc:
        return None, None, f"keras could not load the file ({exc})"

    # The last LSTM may or may not return sequences; a model that returns sequences is cut to
    # the last step, which is what the check compares.
    def run(x_scaled: FloatArray) -> FloatArray:
        batch_first = np.ascontiguousarray(np.transpose(x_scaled, (1, 0, 2)), dtype=np.float32)
        out = np.asarray(keras.ops.convert_to_numpy(model(batch_first, training=False)))
        return np.asarray(out[:, -1, :] if out.ndim == 3 else out, dtype=np.float64)

    return run, f"keras {keras.__version__} ({keras.backend.backend()} backend)", None

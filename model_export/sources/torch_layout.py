"""PyTorch ``nn.LSTM`` + ``nn.Linear`` parameter names → canonical weights.

Shared by the torch loader (a ``state_dict``) and the npz loader (the same names in a NumPy
archive), so both formats are read by one piece of code.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

from ..errors import SourceError, UnsupportedModelError, WeightsError
from ..weights import ONNX_LSTM_GATES, LayerWeights, RecurrentWeights, reorder_gates

__all__ = ["TORCH_LSTM_GATES", "to_canonical"]

# nn.LSTM stacks its four gate blocks as input, forget, cell ("g", the tanh candidate), output
# (torch.nn.LSTM documentation: W_ii|W_if|W_ig|W_io). ONNX wants i, o, f, c.
TORCH_LSTM_GATES: tuple[str, ...] = ("i", "f", "c", "o")

_LAYER_KEY = re.compile(r"^(weight_ih|weight_hh|bias_ih|bias_hh|weight_hr)_l(\d+)(_reverse)?$")


def to_canonical(
    arrays: Mapping[str, npt.ArrayLike], lstm_prefix: str, head_prefix: str, source: str
) -> RecurrentWeights:
    """Build canonical weights from PyTorch-named arrays; ``source`` names the file in errors."""
    layers: dict[int, dict[str, npt.ArrayLike]] = {}
    head: dict[str, npt.ArrayLike] = {}
    unexpected: list[str] = []
    for key, value in arrays.items():
        if key.startswith(lstm_prefix):
            m = _LAYER_KEY.match(key[len(lstm_prefix) :])
            if m is None:
                unexpected.append(key)
                continue
            kind, index, reverse = m.group(1), int(m.group(2)), m.group(3)
            if reverse:
                raise UnsupportedModelError(
                    f"{source} holds a bidirectional LSTM ({key}); only unidirectional LSTMs "
                    "can be served step by step"
                )
            if kind == "weight_hr":
                raise UnsupportedModelError(
                    f"{source} holds an LSTM with proj_size > 0 ({key}); projections are not "
                    "supported, export a model trained with proj_size=0"
                )
            layers.setdefault(index, {})[kind] = value
        elif key.startswith(head_prefix) and key[len(head_prefix) :] in ("weight", "bias"):
            head[key[len(head_prefix) :]] = value
        else:
            unexpected.append(key)
    if unexpected:
        shown = ", ".join(sorted(unexpected)[:5]) + (" ..." if len(unexpected) > 5 else "")
        raise SourceError(
            f"{source} has keys that are neither LSTM ({lstm_prefix}*) nor head ({head_prefix}*) "
            f"parameters: {shown}; set --lstm-prefix/--head-prefix to match your module names"
        )
    if not layers:
        raise SourceError(
            f"{source} has no LSTM weights named {lstm_prefix}weight_ih_l0; "
            "set --lstm-prefix to the nn.LSTM module's name followed by a dot"
        )
    if "weight" not in head:
        raise SourceError(
            f"{source} has no head weight {head_prefix}weight; set --head-prefix to the "
            "nn.Linear module's name followed by a dot"
        )
    if sorted(layers) != list(range(len(layers))):
        raise WeightsError(
            f"{source}: LSTM layer indices {sorted(layers)} are not 0..{len(layers) - 1}"
        )

    canonical = []
    for index in range(len(layers)):
        p = layers[index]
        label = f"layer {index} ({lstm_prefix}*_l{index})"
        for needed in ("weight_ih", "weight_hh"):
            if needed not in p:
                raise WeightsError(f"{source}: {label} lacks {lstm_prefix}{needed}_l{index}")
        if ("bias_ih" in p) != ("bias_hh" in p):
            raise WeightsError(f"{source}: {label} has only one of bias_ih / bias_hh")

        def onnx_order(a: npt.ArrayLike | None) -> npt.NDArray[np.float64] | None:
            return None if a is None else reorder_gates(a, TORCH_LSTM_GATES, ONNX_LSTM_GATES)

        canonical.append(
            LayerWeights.create(
                label,
                onnx_order(p["weight_ih"]),  # type: ignore[arg-type]
                onnx_order(p["weight_hh"]),  # type: ignore[arg-type]
                onnx_order(p.get("bias_ih")),
                onnx_order(p.get("bias_hh")),
            )
        )
    head_weight = np.asarray(head["weight"], dtype=np.float64)
    head_bias = head.get("bias", np.zeros(head_weight.shape[0] if head_weight.ndim else 0))
    return RecurrentWeights(
        "lstm", tuple(canonical), head_weight, np.asarray(head_bias, np.float64)
    )

"""The canonical weights form every loader produces and every graph is built from.

A recurrent stack is stored in ONNX's own layout so that the graph builder copies arrays without
reordering anything: per layer ``W [G*H, in]``, ``R [G*H, H]``, ``Wb [G*H]``, ``Rb [G*H]``, gate
blocks in ONNX order, plus a linear head ``[O, H]`` + ``[O]``. ``G`` is the number of gate blocks
of the cell type (4 for LSTM), so a GRU (3 blocks, ONNX order z, r, h) fits the same container:
it needs one loader and one graph branch, not a new form.

Loaders convert from their framework's gate order with :func:`reorder_gates`; the orders are
named constants (``ONNX_LSTM_GATES`` here, the framework's order in each loader) so that a
permutation is always written as "from this named order to that one", never as bare indices.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from .errors import WeightsError

__all__ = [
    "CELL_GATES",
    "ONNX_LSTM_GATES",
    "CellType",
    "FloatArray",
    "LayerWeights",
    "RecurrentWeights",
    "reorder_gates",
]

FloatArray = npt.NDArray[np.float64]
CellType = Literal["lstm"]

# ONNX's LSTM operator reads its W/R/B gate blocks as input, output, forget, cell ("c" is the
# tanh "new memory" candidate, PyTorch's "g"). The canonical form uses exactly this order.
ONNX_LSTM_GATES: tuple[str, ...] = ("i", "o", "f", "c")

# Gate names per cell type, in the canonical (ONNX) order; the length is the block count G.
CELL_GATES: dict[str, tuple[str, ...]] = {"lstm": ONNX_LSTM_GATES}


def reorder_gates(
    array: npt.ArrayLike, source_order: Sequence[str], target_order: Sequence[str]
) -> FloatArray:
    """Permute the gate blocks along axis 0 from ``source_order`` to ``target_order``.

    ``array`` has shape ``[G*H, ...]`` or ``[G*H]``; each order names the G blocks, top to bottom.
    """
    a = np.asarray(array, dtype=np.float64)
    if sorted(source_order) != sorted(target_order):
        raise ValueError(f"gate orders {source_order} and {target_order} name different gates")
    gates = len(source_order)
    if a.ndim == 0 or a.shape[0] % gates:
        raise WeightsError(
            f"a gate-stacked array has {a.shape[0] if a.ndim else 0} rows, "
            f"not a multiple of {gates} gate blocks"
        )
    blocks = dict(zip(source_order, np.split(a, gates, axis=0), strict=True))
    return np.concatenate([blocks[g] for g in target_order], axis=0)


def _frozen(name: str, value: npt.ArrayLike, ndim: int) -> FloatArray:
    a = np.array(value, dtype=np.float64)  # a copy: the caller's array stays theirs
    if a.ndim != ndim:
        raise WeightsError(f"{name} must have {ndim} dimension(s), got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise WeightsError(f"{name} contains NaN or infinite values")
    a.flags.writeable = False
    return a


@dataclass(frozen=True)
class LayerWeights:
    """One recurrent layer in ONNX layout (gate blocks in canonical order).

    ``W [G*H, in]`` input weights, ``R [G*H, H]`` recurrent weights, ``Wb``/``Rb [G*H]`` the
    input and recurrent biases (ONNX adds both; a framework with one bias puts zeros in ``Rb``).
    """

    W: FloatArray
    R: FloatArray
    Wb: FloatArray
    Rb: FloatArray

    @classmethod
    def create(
        cls,
        name: str,
        W: npt.ArrayLike,
        R: npt.ArrayLike,
        Wb: npt.ArrayLike | None,
        Rb: npt.ArrayLike | None,
    ) -> LayerWeights:
        """Validate and freeze one layer; a missing bias becomes zeros. ``name`` is for errors."""
        w = _frozen(f"{name} input weights", W, 2)
        r = _frozen(f"{name} recurrent weights", R, 2)
        rows = w.shape[0]
        if r.shape[0] != rows:
            raise WeightsError(
                f"{name}: recurrent weights {r.shape} do not match input weights {w.shape}"
            )
        zeros = np.zeros(rows)
        wb = _frozen(f"{name} input bias", zeros if Wb is None else Wb, 1)
        rb = _frozen(f"{name} recurrent bias", zeros if Rb is None else Rb, 1)
        for label, b in (("input bias", wb), ("recurrent bias", rb)):
            if b.shape != (rows,):
                raise WeightsError(f"{name}: {label} has shape {b.shape}, expected ({rows},)")
        return cls(W=w, R=r, Wb=wb, Rb=rb)


@dataclass(frozen=True)
class RecurrentWeights:
    """A stack of recurrent layers plus a linear head: the exporter's canonical form.

    Sizes: ``input_size`` I, ``hidden_size`` H, ``output_size`` O, ``num_layers`` L. Every layer
    has the same H; layer 0 reads I features, later layers read the previous layer's H.
    """

    cell: CellType
    layers: tuple[LayerWeights, ...]
    head_weight: FloatArray  # [O, H]
    head_bias: FloatArray  # [O]

    def __post_init__(self) -> None:
        if self.cell not in CELL_GATES:
            raise WeightsError(f"unknown cell type {self.cell!r}; known: {sorted(CELL_GATES)}")
        if not self.layers:
            raise WeightsError("the model has no recurrent layers")
        gates = len(CELL_GATES[self.cell])
        hidden = self.layers[0].R.shape[1]
        if hidden < 1 or self.layers[0].R.shape[0] != gates * hidden:
            raise WeightsError(
                f"layer 0 recurrent weights have shape {self.layers[0].R.shape}; an {self.cell} "
                f"layer needs [{gates}*hidden, hidden]"
            )
        for n, layer in enumerate(self.layers):
            expected_in = layer.W.shape[1] if n == 0 else hidden
            if layer.R.shape != (gates * hidden, hidden):
                raise WeightsError(
                    f"layer {n} recurrent weights have shape {layer.R.shape}, expected "
                    f"({gates * hidden}, {hidden}): every layer must have the same hidden size"
                )
            if layer.W.shape != (gates * hidden, expected_in):
                raise WeightsError(
                    f"layer {n} input weights have shape {layer.W.shape}, expected "
                    f"({gates * hidden}, {expected_in})"
                )
        hw = _frozen("head weight", self.head_weight, 2)
        hb = _frozen("head bias", self.head_bias, 1)
        if hw.shape[1] != hidden:
            raise WeightsError(
                f"head weight has shape {hw.shape}: it must read the hidden size {hidden}"
            )
        if hb.shape != (hw.shape[0],):
            raise WeightsError(f"head bias has shape {hb.shape}, expected ({hw.shape[0]},)")
        object.__setattr__(self, "head_weight", hw)
        object.__setattr__(self, "head_bias", hb)

    @property
    def gates(self) -> tuple[str, ...]:
        return CELL_GATES[self.cell]

    @property
    def input_size(self) -> int:
        return int(self.layers[0].W.shape[1])

    @property
    def hidden_size(self) -> int:
        return int(self.layers[0].R.shape[1])

    @property
    def output_size(self) -> int:
        return int(self.head_weight.shape[0])

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def arrays(self) -> Iterator[tuple[str, FloatArray]]:
        """Every array with a stable name, in a fixed order (for fingerprints and reports)."""
        for n, layer in enumerate(self.layers):
            yield f"layer{n}.W", layer.W
            yield f"layer{n}.R", layer.R
            yield f"layer{n}.Wb", layer.Wb
            yield f"layer{n}.Rb", layer.Rb
        yield "head.weight", self.head_weight
        yield "head.bias", self.head_bias

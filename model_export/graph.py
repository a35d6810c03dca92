"""Canonical weights → ONNX graph, with input scaling in front and the linear head behind.

``build_sequence_graph`` is the model contract's ``model.onnx``: the ONNX ``LSTM`` operator, one
per layer, so any ``T ≥ 1`` and ragged ``seq_lens`` work. ``build_step_graph`` is the same
network written as MatMul/Sigmoid/Tanh for exactly one step; it exists to be measured against the
operator form (``bench/bench_graph_form.py``) and ships only if it pays.

Both graphs take ``x [T, B, I]`` in raw units and return ``y [T, B, O]`` in raw units. Input
standardisation is an explicit ``Sub``/``Div`` (not folded into the first layer's weights: with a
large input mean, folding would subtract two large float32 numbers and lose precision). Output
de-standardisation is folded into the head, ``W' = diag(std) W`` and ``b' = std * b + mean``,
which costs no precision and saves two nodes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

from .scaling import Scaling
from .weights import RecurrentWeights

__all__ = [
    "C0",
    "CN",
    "H0",
    "HN",
    "IR_VERSION",
    "OPSET",
    "SEQ_LENS",
    "X",
    "Y",
    "build_sequence_graph",
    "build_step_graph",
]

# Opset 17 and IR 8 load in every onnxruntime since 1.13, so an export runs on older servers too.
OPSET = 17
IR_VERSION = 8

X, H0, C0, SEQ_LENS = "x", "h0", "c0", "seq_lens"
Y, HN, CN = "y", "hn", "cn"


class _Graph:
    """Collects nodes and float32/int constants; names are unique by construction."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0

    def const(self, name: str, value: npt.ArrayLike, dtype: type = np.float32) -> str:
        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(
        self, op_type: str, inputs: list[str], outputs: int | list[str] = 1, **attrs: Any
    ) -> list[str]:
        self._count += 1
        names = (
            outputs
            if isinstance(outputs, list)
            else [f"{op_type.lower()}{self._count}_{k}" for k in range(outputs)]
        )
        self.nodes.append(
            helper.make_node(op_type, inputs, names, name=f"{op_type}_{self._count}", **attrs)
        )
        return names

    def model(
        self,
        name: str,
        inputs: list[onnx.ValueInfoProto],
        outputs: list[onnx.ValueInfoProto],
        doc: str,
    ) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes, name, inputs, outputs, initializer=self.initializers, doc_string=doc
        )
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", OPSET)],
            producer_name="model_export",
            ir_version=IR_VERSION,
        )
        onnx.checker.check_model(model, full_check=True)
        return model


def _io(
    weights: RecurrentWeights, steps: int | str
) -> tuple[list[onnx.ValueInfoProto], list[onnx.ValueInfoProto]]:
    state: list[str | int] = [weights.num_layers, "B", weights.hidden_size]
    inputs = [
        helper.make_tensor_value_info(X, TensorProto.FLOAT, [steps, "B", weights.input_size]),
        helper.make_tensor_value_info(H0, TensorProto.FLOAT, state),
        helper.make_tensor_value_info(C0, TensorProto.FLOAT, state),
    ]
    outputs = [
        helper.make_tensor_value_info(Y, TensorProto.FLOAT, [steps, "B", weights.output_size]),
        helper.make_tensor_value_info(HN, TensorProto.FLOAT, state),
        helper.make_tensor_value_info(CN, TensorProto.FLOAT, state),
    ]
    return inputs, outputs


def _scaled_input(g: _Graph, scaling: Scaling) -> str:
    if not scaling.scales_input:
        return X
    (centred,) = g.op("Sub", [X, g.const("input_mean", scaling.input_mean)])
    (scaled,) = g.op("Div", [centred, g.const("input_std", scaling.input_std)])
    return scaled


def _head(g: _Graph, weights: RecurrentWeights, scaling: Scaling, hidden: str) -> None:
    """``hidden [..., H]`` → ``y [..., O]`` in raw units (de-standardisation folded in)."""
    std = scaling.output_std
    w = (weights.head_weight * std[:, None]).T  # [H, O]
    b = weights.head_bias * std + scaling.output_mean
    (projected,) = g.op("MatMul", [hidden, g.const("head_weight", w)])
    g.op("Add", [projected, g.const("head_bias", b)], [Y])


def _split_state(g: _Graph, name: str, layers: int) -> list[str]:
    """``[L, B, H]`` → L tensors ``[1, B, H]`` (no node at all for one layer)."""
    if layers == 1:
        return [name]
    return g.op("Split", [name, g.const(f"{name}_split", [1] * layers, np.int64)], layers, axis=0)


def _join_state(g: _Graph, parts: list[str], name: str) -> None:
    if len(parts) == 1:
        g.op("Identity", parts, [name])
    else:
        g.op("Concat", parts, [name], axis=0)


def build_sequence_graph(
    weights: RecurrentWeights, scaling: Scaling, *, name: str, seq_lens_required: bool = True
) -> onnx.ModelProto:
    """The contract graph: ONNX ``LSTM`` per layer; any ``T ≥ 1``; ``seq_lens [B]`` int32.

    With ``seq_lens_required=False`` the input may be omitted (it defaults to an empty tensor that
    the graph widens to ``T`` for every row); that costs a few shape nodes on every call, which
    ``bench/bench_graph_form.py`` measures.
    """
    g = _Graph()
    inputs, outputs = _io(weights, "T")
    hidden = weights.hidden_size
    if seq_lens_required:
        inputs.append(helper.make_tensor_value_info(SEQ_LENS, TensorProto.INT32, ["B"]))
        lens = SEQ_LENS
    else:
        inputs.append(helper.make_tensor_value_info(SEQ_LENS, TensorProto.INT32, ["N"]))
        g.const(SEQ_LENS, np.zeros(0), np.int32)
        (shape,) = g.op("Shape", [X])
        zero, one, two = (g.const(f"i64_{v}", [v], np.int64) for v in (0, 1, 2))
        (steps,) = g.op("Slice", [shape, zero, one])
        (batch,) = g.op("Slice", [shape, one, two])
        (steps32,) = g.op("Cast", [steps], to=TensorProto.INT32)
        (full,) = g.op("Expand", [steps32, batch])
        (joined,) = g.op("Concat", [SEQ_LENS, full], axis=0)
        (lens,) = g.op("Slice", [joined, zero, batch])

    layer_input = _scaled_input(g, scaling)
    h_parts, c_parts = (
        _split_state(g, H0, weights.num_layers),
        _split_state(g, C0, weights.num_layers),
    )
    squeeze_axis = g.const("axis1", [1], np.int64)
    h_out, c_out = [], []
    for n, layer in enumerate(weights.layers):
        w = g.const(f"W{n}", layer.W[None])
        r = g.const(f"R{n}", layer.R[None])
        b = g.const(f"B{n}", np.concatenate([layer.Wb, layer.Rb])[None])
        y_all, y_h, y_c = g.op(
            "LSTM", [layer_input, w, r, b, lens, h_parts[n], c_parts[n]], 3, hidden_size=hidden
        )
        (layer_input,) = g.op("Squeeze", [y_all, squeeze_axis])  # [T, 1, B, H] → [T, B, H]
        h_out.append(y_h)
        c_out.append(y_c)
    _join_state(g, h_out, HN)
    _join_state(g, c_out, CN)
    _head(g, weights, scaling, layer_input)
    doc = (
        f"{weights.num_layers}-layer LSTM ({weights.input_size}->{weights.hidden_size}) + linear "
        f"head ({weights.output_size}); x, y in raw units; any T >= 1; seq_lens >= 1 per row"
    )
    return g.model(name, inputs, outputs, doc)


def build_step_graph(weights: RecurrentWeights, scaling: Scaling, *, name: str) -> onnx.ModelProto:
    """One step (``T = 1``) as MatMul/Sigmoid/Tanh; same inputs and outputs, no ``seq_lens``."""
    g = _Graph()
    inputs, outputs = _io(weights, 1)
    hidden = weights.hidden_size
    layer_input = _scaled_input(g, scaling)  # [1, B, in]
    h_parts, c_parts = (
        _split_state(g, H0, weights.num_layers),
        _split_state(g, C0, weights.num_layers),
    )
    gate_split = g.const("gate_split", [3 * hidden, hidden], np.int64)
    sig_split = g.const("sig_split", [hidden] * 3, np.int64)
    h_out, c_out = [], []
    for n, layer in enumerate(weights.layers):
        # One MatMul over [x, h] with [W; R]^T; ONNX order puts the three sigmoid gates (i, o, f)
        # first and the tanh block (c) last, so two activations cover all four blocks.
        (xh,) = g.op("Concat", [layer_input, h_parts[n]], axis=2)
        wr = np.concatenate([layer.W, layer.R], axis=1).T  # [in + H, 4H]
        (z,) = g.op("MatMul", [xh, g.const(f"WR{n}", wr)])
        (z,) = g.op("Add", [z, g.const(f"b{n}", layer.Wb + layer.Rb)])
        sig_in, tanh_in = g.op("Split", [z, gate_split], 2, axis=2)
        (sig,) = g.op("Sigmoid", [sig_in])
        (new_memory,) = g.op("Tanh", [tanh_in])
        inp, out, forget = g.op("Split", [sig, sig_split], 3, axis=2)
        (kept,) = g.op("Mul", [forget, c_parts[n]])
        (added,) = g.op("Mul", [inp, new_memory])
        (c_new,) = g.op("Add", [kept, added])
        (squashed,) = g.op("Tanh", [c_new])
        (h_new,) = g.op("Mul", [out, squashed])
        h_out.append(h_new)
        c_out.append(c_new)
        layer_input = h_new
    _join_state(g, h_out, HN)
    _join_state(g, c_out, CN)
    _head(g, weights, scaling, layer_input)
    return g.model(name, inputs, outputs, "single-step LSTM (T = 1) as MatMul/Sigmoid/Tanh")

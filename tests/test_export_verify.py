"""Verification refuses exports that do not reproduce the reference, and writes nothing then."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import model_export.exporter as export_module
from model_export import RecurrentWeights, Scaling, VerificationError, export, fingerprint
from model_export.graph import build_sequence_graph
from model_export.sources import load, torch_layout
from model_export.verify import verify
from model_export.weights import LayerWeights, reorder_gates


def swap_forget_and_output(weights: RecurrentWeights) -> RecurrentWeights:
    """The classic exporter bug: two gate blocks swapped (ONNX i,o,f,c laid out as i,f,o,c)."""
    wrong = ("i", "f", "o", "c")
    right = weights.gates
    layers = tuple(
        LayerWeights.create(
            f"layer {n}",
            reorder_gates(layer.W, right, wrong),
            reorder_gates(layer.R, right, wrong),
            reorder_gates(layer.Wb, right, wrong),
            reorder_gates(layer.Rb, right, wrong),
        )
        for n, layer in enumerate(weights.layers)
    )
    return RecurrentWeights(weights.cell, layers, weights.head_weight, weights.head_bias)


def test_permuted_gate_block_in_the_graph_is_caught(saved_npz: Callable[..., Path]) -> None:
    weights = load(saved_npz(hidden=8, layers=2)).weights
    scaling = Scaling.identity(weights.input_size, weights.output_size)
    good = build_sequence_graph(weights, scaling, name="m").SerializeToString()
    assert verify(good, weights, scaling).passed
    bad = build_sequence_graph(
        swap_forget_and_output(weights), scaling, name="m"
    ).SerializeToString()
    with pytest.raises(VerificationError, match="does not match the float64 reference"):
        verify(bad, weights, scaling)


def test_export_with_a_permuting_graph_builder_writes_nothing(
    tmp_path: Path, saved_torch: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    real = export_module.build_sequence_graph
    monkeypatch.setattr(
        export_module,
        "build_sequence_graph",
        lambda w, s, **kw: real(swap_forget_and_output(w), s, **kw),
    )
    with pytest.raises(VerificationError, match="nothing was written"):
        export(saved_torch(), tmp_path / "out")
    assert list(tmp_path.iterdir()) == [tmp_path / "model.pt"]


def test_loader_that_misreads_the_gate_order_is_caught_by_the_real_framework(
    tmp_path: Path, saved_torch: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A loader bug makes the graph and our float64 reference agree with each other; only the
    # comparison with real torch can see it.
    monkeypatch.setattr(torch_layout, "TORCH_LSTM_GATES", ("i", "f", "o", "c"))
    with pytest.raises(
        VerificationError, match=r"torch .* disagrees .* the source layout was misread"
    ):
        export(saved_torch(hidden=6), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_wrong_scaling_in_the_graph_is_caught(saved_npz: Callable[..., Path]) -> None:
    weights = load(saved_npz()).weights
    scaling = Scaling.from_dict({"input_mean": [3.0, -1.0], "output_std": [2.5]}, 2, 1)
    unscaled = build_sequence_graph(weights, Scaling.identity(2, 1), name="m").SerializeToString()
    with pytest.raises(VerificationError):
        verify(unscaled, weights, scaling)


def test_tolerance_override_is_used_and_recorded(
    tmp_path: Path, saved_npz: Callable[..., Path]
) -> None:
    source = saved_npz()
    with pytest.raises(VerificationError, match=r"tolerance \[1.00e-12\]"):
        export(source, tmp_path / "strict", tolerance=1e-12)
    assert not (tmp_path / "strict").exists()
    export(source, tmp_path / "loose", tolerance=0.01)
    recorded = json.loads((tmp_path / "loose" / "model.json").read_text())["verification"]
    assert recorded["tolerance"] == [0.01]
    assert recorded["max_abs_error"][0] < 0.01


def test_stream_check_needs_at_least_1000_steps(saved_npz: Callable[..., Path]) -> None:
    weights = load(saved_npz()).weights
    scaling = Scaling.identity(2, 1)
    model = build_sequence_graph(weights, scaling, name="m").SerializeToString()
    with pytest.raises(ValueError, match="at least 1000"):
        verify(model, weights, scaling, stream_steps=999)
    assert verify(model, weights, scaling, stream_steps=1000).stream_steps == 1000


def test_fingerprint_follows_the_numbers_only(saved_npz: Callable[..., Path]) -> None:
    weights = load(saved_npz()).weights
    identity = Scaling.identity(2, 1)
    assert fingerprint(weights, identity) == fingerprint(
        load(saved_npz(name="again.npz")).weights, identity
    )
    nudged_head = weights.head_bias + np.array([1e-9])
    changed = RecurrentWeights(weights.cell, weights.layers, weights.head_weight, nudged_head)
    assert fingerprint(changed, identity) != fingerprint(weights, identity)
    rescaled = Scaling.from_dict({"output_mean": [0.5]}, 2, 1)
    assert fingerprint(weights, rescaled) != fingerprint(weights, identity)

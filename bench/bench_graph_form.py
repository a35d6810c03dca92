"""Interleaved A/B timing of the graph forms the exporter can produce, at T=1.

Variants (same random 2-layer x 64 LSTM, input 1, output 1, with input scaling):
  lstm-op          ONNX LSTM operator per layer, seq_lens a required input (model.onnx as shipped)
  lstm-op-optlens  the same with seq_lens optional (default widened in-graph), seq_lens fed
  lstm-op-nolens   the optional-seq_lens graph called without seq_lens
  matmul-step      single step as MatMul/Sigmoid/Tanh (T=1 only)

Each round runs every variant for --calls session.run calls in a fresh random order; the
machine is shared and noisy, so only ratios between variants within one run mean anything.

    python bench/bench_graph_form.py [--rounds 30] [--calls 2000] [--batch 1] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import onnxruntime as ort

from model_export.graph import build_sequence_graph, build_step_graph
from model_export.scaling import Scaling
from model_export.weights import ONNX_LSTM_GATES, LayerWeights, RecurrentWeights


def random_weights(
    inputs: int, hidden: int, layers: int, outputs: int, seed: int = 0
) -> RecurrentWeights:
    rng = np.random.default_rng(seed)
    g = len(ONNX_LSTM_GATES)
    stack = tuple(
        LayerWeights.create(
            f"layer {n}",
            rng.normal(0, 0.3, (g * hidden, inputs if n == 0 else hidden)),
            rng.normal(0, 0.3, (g * hidden, hidden)),
            rng.normal(0, 0.1, g * hidden),
            rng.normal(0, 0.1, g * hidden),
        )
        for n in range(layers)
    )
    return RecurrentWeights(
        "lstm", stack, rng.normal(0, 0.3, (outputs, hidden)), rng.normal(0, 0.1, outputs)
    )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    args = ap.parse_args()

    w = random_weights(1, args.hidden, args.layers, 1)
    scaling = Scaling.from_dict(
        {"input_mean": [20.0], "input_std": [3.0], "output_mean": [20.0], "output_std": [3.0]}, 1, 1
    )
    graphs = {
        "lstm-op": build_sequence_graph(w, scaling, name="a"),
        "lstm-op-optlens": build_sequence_graph(w, scaling, name="b", seq_lens_required=False),
        "lstm-op-nolens": build_sequence_graph(w, scaling, name="b", seq_lens_required=False),
        "matmul-step": build_step_graph(w, scaling, name="c"),
    }
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    sessions = {
        k: ort.InferenceSession(g.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        for k, g in graphs.items()
    }
    b = args.batch
    state = np.zeros((args.layers, b, args.hidden), np.float32)
    x = np.full((1, b, 1), 21.0, np.float32)
    feeds = {
        "lstm-op": {"x": x, "h0": state, "c0": state, "seq_lens": np.ones(b, np.int32)},
        "lstm-op-optlens": {"x": x, "h0": state, "c0": state, "seq_lens": np.ones(b, np.int32)},
        "lstm-op-nolens": {"x": x, "h0": state, "c0": state},
        "matmul-step": {"x": x, "h0": state, "c0": state},
    }
    # same numbers from every form (float32 rounding apart)
    outs = {k: sessions[k].run(None, feeds[k]) for k in sessions}
    for k, o in outs.items():
        for got, want in zip(o, outs["lstm-op"], strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=k)

    per_call: dict[str, list[float]] = {k: [] for k in sessions}
    rng = np.random.default_rng(1)
    for k in sessions:  # warm-up
        for _ in range(200):
            sessions[k].run(None, feeds[k])
    for _ in range(args.rounds):
        for k in rng.permutation(list(sessions)):
            run, feed = sessions[k].run, feeds[k]
            t0 = time.perf_counter()
            for _ in range(args.calls):
                run(None, feed)
            per_call[k].append((time.perf_counter() - t0) / args.calls * 1e6)
    base = statistics.median(per_call["lstm-op"])
    print(
        f"B={b} T=1 layers={args.layers} hidden={args.hidden} threads={args.threads} "
        f"rounds={args.rounds} calls/round={args.calls} onnxruntime {ort.__version__}"
    )
    print(f"{'variant':<18}{'median us/call':>15}{'p10':>8}{'p90':>8}{'vs lstm-op':>12}")
    for k, v in per_call.items():
        q = statistics.quantiles(v, n=10)
        print(
            f"{k:<18}{statistics.median(v):>15.1f}{q[0]:>8.1f}{q[-1]:>8.1f}"
            f"{statistics.median(v) / base:>11.2f}x"
        )


if __name__ == "__main__":
    main()

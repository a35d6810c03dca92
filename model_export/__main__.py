"""``lstm-export``: parse flags, call :func:`model_export.export`, print one line per outcome.

With no SOURCE it exports the bundled demo weights (an LSTM trained on monthly sea surface
temperatures, see ``demo/train_demo.py``). Any user error exits 1 with one line on stderr that
says what is wrong and what to do; usage errors exit 2.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from importlib import resources
from pathlib import Path

from .errors import ExportError
from .exporter import export
from .feedback import parse_pair
from .sources import LoadOptions

DEMO_DIR = "demo_weights"
DEMO_SOURCE = "elnino.npz"
DEMO_SCALING = "elnino.scaling.json"
DEMO_INFO = "elnino.info.json"  # name, features and outputs of the demo model


def _csv(text: str) -> list[str]:
    return text.split(",")


def _feedback_pair(text: str) -> tuple[str, str]:
    try:
        return parse_pair(text)
    except ExportError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lstm-export",
        description="Export trained LSTM weights (PyTorch, Keras 3 or .npz) to a verified "
        "one-step ONNX model directory (model.onnx + model.json).",
    )
    p.add_argument(
        "source",
        nargs="?",
        type=Path,
        help="weights file: .pt/.pth (torch state_dict), .keras, .npz; "
        "omit to export the bundled demo weights",
    )
    p.add_argument(
        "--out", type=Path, required=True, metavar="DIR", help="model directory to write"
    )
    p.add_argument("--name", help="model name (default: the source file's stem)")
    p.add_argument(
        "--format",
        dest="fmt",
        choices=["torch", "keras", "npz"],
        help="source format (default: from the extension)",
    )
    p.add_argument(
        "--scaling",
        type=Path,
        metavar="FILE",
        help='scaling.json: {"input_mean", "input_std", "output_mean", "output_std"}',
    )
    p.add_argument(
        "--features", type=_csv, metavar="A,B,...", help="comma-separated input feature names"
    )
    p.add_argument("--outputs", type=_csv, metavar="Y,...", help="comma-separated output names")
    p.add_argument(
        "--feedback",
        type=_feedback_pair,
        action="append",
        metavar="OUTPUT=FEATURE",
        help="in a forecast, OUTPUT's prediction is the next step's FEATURE (raw units); "
        "repeatable; features fed by no output are covariates the caller gives",
    )
    p.add_argument(
        "--tolerance",
        type=float,
        metavar="X",
        help="max abs error in raw output units (default 1e-4 * max(1, output_std))",
    )
    p.add_argument("--force", action="store_true", help="replace an existing model directory")
    p.add_argument("--lstm-prefix", default="lstm.", help="state_dict prefix of the nn.LSTM")
    p.add_argument("--head-prefix", default="head.", help="state_dict prefix of the nn.Linear")
    return p


def _demo_args(args: argparse.Namespace) -> None:
    """Fill in the bundled demo source, its scaling and names where the user gave none."""
    base = resources.files("model_export") / DEMO_DIR
    info = json.loads((base / DEMO_INFO).read_text(encoding="utf-8"))
    args.source = Path(str(base / DEMO_SOURCE))
    args.scaling = args.scaling or Path(str(base / DEMO_SCALING))
    args.name = args.name or info["name"]
    args.features = args.features or info["features"]
    args.outputs = args.outputs or info["outputs"]
    if args.feedback is None:
        args.feedback = list(info.get("feedback", {}).items())
    print(f"no SOURCE given: exporting the bundled demo weights ({info['description']})")


def _keras_backend() -> None:
    """Keras defaults to TensorFlow; where only torch is installed, use Keras's torch backend so
    that a .keras export can still be checked against real Keras. An explicit KERAS_BACKEND wins."""
    if "KERAS_BACKEND" in os.environ or importlib.util.find_spec("tensorflow") is not None:
        return
    if importlib.util.find_spec("torch") is not None:
        os.environ["KERAS_BACKEND"] = "torch"


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    _keras_backend()
    try:
        if args.source is None:
            _demo_args(args)
        result = export(
            args.source,
            args.out,
            fmt=args.fmt,
            name=args.name,
            scaling=args.scaling,
            features=args.features,
            outputs=args.outputs,
            tolerance=args.tolerance,
            force=args.force,
            options=LoadOptions(lstm_prefix=args.lstm_prefix, head_prefix=args.head_prefix),
            feedback=args.feedback,
        )
    except ExportError as exc:
        print(f"lstm-export: error: {exc}", file=sys.stderr)
        return 1
    report, meta = result.report, result.metadata
    print(f"loaded {result.source_description}")
    errors = ", ".join(f"{e:.1e}" for e in report.max_abs_error)
    tolerances = ", ".join(f"{t:.1e}" for t in report.tolerance)
    print(
        f"verified against the float64 reference: max |error| {errors} "
        f"(tolerance {tolerances}) over {report.stream_steps} streamed steps, batch and ragged"
    )
    if report.framework_max_abs_error is not None:
        agree = ", ".join(f"{e:.1e}" for e in report.framework_max_abs_error)
        print(f"verified against {report.framework}: max |error| {agree}")
    else:
        print(f"no framework check: {report.framework_skipped}")
    if meta["feedback"]:
        fed = ", ".join(f"{o} -> {f}" for o, f in meta["feedback"].items())
        print(f"forecast feedback: {fed}")
    print(f"wrote {result.out_dir} (model {meta['name']}, version {meta['version']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

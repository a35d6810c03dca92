"""export(): source file → canonical weights → graph → verification → model directory.

The directory is written only after verification passes, and atomically: files go to a hidden
sibling directory that is renamed into place, so a reader (or a crash) never sees half a model.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from .errors import ExportError, OutputExistsError
from .feedback import FeedbackPairs, feedback_mapping
from .graph import C0, CN, H0, HN, IR_VERSION, OPSET, SEQ_LENS, X, Y, build_sequence_graph
from .scaling import Scaling
from .sources import LoadOptions, load
from .verify import VerificationReport, verify
from .weights import RecurrentWeights

__all__ = ["METADATA_FILE", "MODEL_FILE", "NAME_PATTERN", "ExportResult", "export", "fingerprint"]

MODEL_FILE = "model.onnx"
METADATA_FILE = "model.json"
METADATA_FORMAT = 1
# Model names appear in URLs (/v1/models/{name}); keep them to URL-safe characters.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


@dataclass(frozen=True)
class ExportResult:
    out_dir: Path
    metadata: dict[str, Any]
    report: VerificationReport
    source_description: str


def fingerprint(weights: RecurrentWeights, scaling: Scaling) -> str:
    """A content hash of what determines the numbers: cell, sizes, every weight, the scaling.

    The graph's layout is deliberately left out, so re-exporting the same weights with a newer
    exporter keeps the version and the service keeps the streams' state. So are the names and
    the feedback mapping: they describe the numbers, they do not change them.
    """
    digest = hashlib.sha256()
    header = [
        weights.cell,
        weights.input_size,
        weights.hidden_size,
        weights.output_size,
        weights.num_layers,
    ]
    digest.update(json.dumps(header).encode())
    for name, array in weights.arrays():
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(array, dtype="<f8").tobytes())
    for name, values in scaling.to_dict().items():
        digest.update(name.encode())
        digest.update(np.asarray(values, dtype="<f8").tobytes())
    return digest.hexdigest()[:16]


def _names(given: Sequence[str] | None, size: int, prefix: str, flag: str) -> list[str]:
    if given is None:
        return [f"{prefix}{k}" for k in range(size)]
    names = [n.strip() for n in given]
    if len(names) != size:
        raise ExportError(f"{flag} names {len(names)} value(s); the model has {size}")
    if any(not n for n in names) or len(set(names)) != len(names):
        raise ExportError(f"{flag} names must be non-empty and distinct, got {names}")
    return names


def _check_out_dir(out_dir: Path, force: bool) -> None:
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise OutputExistsError(f"{out_dir} exists and is not a directory; choose another --out")
    if not force:
        raise OutputExistsError(f"{out_dir} already exists; pass --force to replace it")
    if any(out_dir.iterdir()) and not (out_dir / METADATA_FILE).exists():
        raise OutputExistsError(
            f"{out_dir} is a non-empty directory that is not a model directory; "
            "--force only replaces model directories, choose another --out"
        )


def _write(out_dir: Path, model_bytes: bytes, metadata: dict[str, Any], force: bool) -> None:
    """Write into a hidden sibling, then swap it into place; an old model goes only on success."""
    staging = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        (staging / MODEL_FILE).write_bytes(model_bytes)
        text = json.dumps(metadata, indent=2) + "\n"
        (staging / METADATA_FILE).write_text(text, encoding="utf-8")
        _check_out_dir(out_dir, force)  # again: it may have appeared while we verified
        replacing = out_dir.exists()
        if replacing:
            out_dir.rename(old)
        try:
            staging.rename(out_dir)
        except OSError:
            if replacing:
                old.rename(out_dir)  # put the previous model back
            raise
    except OSError as exc:
        raise ExportError(f"cannot write {out_dir}: {exc.strerror or exc}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)


def export(
    source: Path,
    out_dir: Path,
    *,
    fmt: str | None = None,
    name: str | None = None,
    scaling: Scaling | Path | None = None,
    features: Sequence[str] | None = None,
    outputs: Sequence[str] | None = None,
    tolerance: float | None = None,
    force: bool = False,
    options: LoadOptions | None = None,
    feedback: FeedbackPairs | None = None,
) -> ExportResult:
    """Export ``source`` into ``out_dir`` (``model.onnx`` + ``model.json``); see the README.

    ``feedback`` maps output names to the feature names they feed in a forecast (pairs, or a
    mapping from output to feature); see :mod:`model_export.feedback`.
    """
    source, out_dir = Path(source), Path(out_dir)
    _check_out_dir(out_dir, force)  # fail before the slow part
    name = name if name is not None else re.sub(r"[^A-Za-z0-9._-]", "-", source.stem)[:64]
    if not NAME_PATTERN.match(name):
        raise ExportError(f"model name {name!r} must match {NAME_PATTERN.pattern}; pass --name")
    if tolerance is not None and not (np.isfinite(tolerance) and tolerance > 0):
        raise ExportError(f"--tolerance must be a positive number, got {tolerance}")

    loaded = load(source, fmt, options)
    weights = loaded.weights
    if isinstance(scaling, Scaling):
        scale = Scaling.from_dict(scaling.to_dict(), weights.input_size, weights.output_size)
    elif scaling is not None:
        scale = Scaling.load(Path(scaling), weights.input_size, weights.output_size)
    else:
        scale = Scaling.identity(weights.input_size, weights.output_size)
    feature_names = _names(features, weights.input_size, "x", "--features")
    output_names = _names(outputs, weights.output_size, "y", "--outputs")
    feeds = feedback_mapping(feedback, feature_names, output_names)  # before the slow part

    model_bytes = build_sequence_graph(weights, scale, name=name).SerializeToString()
    report = verify(
        model_bytes,
        weights,
        scale,
        tolerance=tolerance,
        framework=loaded.framework,
        framework_check=loaded.framework_check,
        framework_skipped=loaded.framework_skipped,
    )
    metadata = {
        "format_version": METADATA_FORMAT,
        "name": name,
        "version": fingerprint(weights, scale),
        "cell": weights.cell,
        "input_size": weights.input_size,
        "hidden_size": weights.hidden_size,
        "output_size": weights.output_size,
        "num_layers": weights.num_layers,
        "features": feature_names,
        "outputs": output_names,
        "feedback": feeds,
        "scaling": scale.to_dict(),
        "source": {"format": loaded.format, "file": source.name},
        "graph": {
            "file": MODEL_FILE,
            "form": "onnx-lstm-op",
            "opset": OPSET,
            "ir_version": IR_VERSION,
            "inputs": {
                X: "float32 [T, B, input_size], raw units",
                H0: "float32 [num_layers, B, hidden_size]",
                C0: "float32 [num_layers, B, hidden_size]",
                SEQ_LENS: "int32 [B], each 1..T (required)",
            },
            "outputs": {
                Y: "float32 [T, B, output_size], raw units; rows past seq_lens are meaningless",
                HN: "float32 [num_layers, B, hidden_size] at each row's last valid step",
                CN: "float32 [num_layers, B, hidden_size] at each row's last valid step",
            },
        },
        "step_graph": None,
        "verification": report.to_dict(),
        "exporter": {"onnx": onnx.__version__, "onnxruntime": ort.__version__},
        "created_at": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
    }
    _write(out_dir, model_bytes, metadata, force)
    return ExportResult(out_dir, metadata, report, loaded.description)

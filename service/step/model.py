"""Served models: one onnxruntime session per exported model directory, and one step call.

A model directory is what ``lstm-export`` writes: ``model.onnx`` and ``model.json``. The graph takes
``x [T, B, input_size]`` in raw units, ``h0``/``c0 [layers, B, hidden]`` and ``seq_lens [B]``, and
returns ``y [T, B, output_size]`` in raw units and ``hn``/``cn`` at each row's last valid step.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from .feedback import FeedbackMap, parse_feedback

__all__ = ["DEMO_MODEL_DIR", "ModelLoadError", "ServedModel", "load_models"]

DEMO_MODEL_DIR = Path(__file__).resolve().parent.parent / "demo_model"

# Same rule as the exporter's model names: they appear in URLs and Redis keys.
_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")


class ModelLoadError(ValueError):
    """A model directory cannot be served; the message says which and why."""


@dataclass(frozen=True)
class ServedModel:
    name: str
    version: str
    input_size: int
    hidden_size: int
    output_size: int
    num_layers: int
    features: tuple[str, ...]
    outputs: tuple[str, ...]
    meta: dict[str, Any]
    session: ort.InferenceSession
    # which outputs feed which features in a forecast; None: the model declares no mapping
    feedback: FeedbackMap | None = None

    @property
    def state_shape(self) -> tuple[int, int]:
        """Shape of one stream's ``h`` (and ``c``): ``(layers, hidden)``."""
        return (self.num_layers, self.hidden_size)

    @functools.cached_property
    def zero_state(self) -> np.ndarray:
        """A new stream's ``h`` (and ``c``): zeros, read-only, shared by every new stream."""
        zeros = np.zeros(self.state_shape, np.float32)
        zeros.flags.writeable = False
        return zeros

    def describe(self) -> dict[str, Any]:
        """The public summary served by ``GET /v1/models``."""
        return {
            "name": self.name,
            "version": self.version,
            "cell": self.meta.get("cell", "lstm"),
            "input_size": self.input_size,
            "hidden_size": self.hidden_size,
            "output_size": self.output_size,
            "num_layers": self.num_layers,
            "features": list(self.features),
            "outputs": list(self.outputs),
        }

    def step(
        self, x: np.ndarray, h0: np.ndarray, c0: np.ndarray, seq_lens: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Advance B streams: ``x [T, B, I]``, state ``[L, B, H]``, ``seq_lens [B]`` (1..T).

        Returns ``y [T, B, O]`` (rows past a stream's length are padding), ``hn``, ``cn``.
        """
        y, hn, cn = self.session.run(
            ["y", "hn", "cn"], {"x": x, "h0": h0, "c0": c0, "seq_lens": seq_lens}
        )
        return y, hn, cn


def _load_one(directory: Path, threads: int) -> ServedModel:
    meta_path = directory / "model.json"
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise ModelLoadError(
            f"{directory}: no model.json here; point --model at a directory written by lstm-export"
        ) from None
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{meta_path}: cannot be read as JSON ({exc})") from None
    try:
        name = str(meta["name"])
        version = str(meta["version"])
        sizes = {k: int(meta[k]) for k in ("input_size", "hidden_size", "output_size")}
        layers = int(meta["num_layers"])
        graph_file = directory / str(meta["graph"]["file"])
        features = tuple(str(f) for f in meta["features"])
        outputs = tuple(str(o) for o in meta["outputs"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelLoadError(f"{meta_path}: missing or malformed field {exc}") from None
    try:
        feedback = parse_feedback(meta.get("feedback"), features, outputs)
    except ValueError as exc:
        raise ModelLoadError(f"{meta_path}: {exc}") from None
    if meta.get("cell", "lstm") != "lstm":
        raise ModelLoadError(f"{meta_path}: cell {meta.get('cell')!r} is not served (only lstm)")
    if not _NAME.fullmatch(name):
        raise ModelLoadError(f"{meta_path}: model name {name!r} must match {_NAME.pattern}")
    if not _NAME.fullmatch(version):  # stored in every stream's record, as up to 255 bytes
        raise ModelLoadError(f"{meta_path}: model version {version!r} must match {_NAME.pattern}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(
            str(graph_file), sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # onnxruntime raises its own untyped errors
        raise ModelLoadError(f"{graph_file}: onnxruntime cannot load it ({exc})") from None
    expected_inputs = {"x", "h0", "c0", "seq_lens"}
    got_inputs = {i.name for i in session.get_inputs()}
    if got_inputs != expected_inputs:
        raise ModelLoadError(
            f"{graph_file}: graph inputs {sorted(got_inputs)}, expected {sorted(expected_inputs)}"
        )
    return ServedModel(
        name=name,
        version=version,
        input_size=sizes["input_size"],
        hidden_size=sizes["hidden_size"],
        output_size=sizes["output_size"],
        num_layers=layers,
        features=features,
        outputs=outputs,
        meta=meta,
        session=session,
        feedback=feedback,
    )


def load_models(directories: tuple[Path, ...], threads: int) -> dict[str, ServedModel]:
    """Load every directory (the bundled demo if none); model names must be unique."""
    models: dict[str, ServedModel] = {}
    for directory in directories or (DEMO_MODEL_DIR,):
        model = _load_one(directory, threads)
        if model.name in models:
            raise ModelLoadError(f"{directory}: a model named {model.name!r} is already served")
        models[model.name] = model
    return models

"""onnxruntime vs the float64 reference (and the real framework, when available).

Every export passes through :func:`verify` before anything is written. Checks, all in raw units:

* **batch**: B=5 rows, T=50 steps in one call, random initial state;
* **stream**: one sequence of ``stream_steps`` (≥ 1000) readings fed one step at a time, the
  float32 ``hn``/``cn`` of each call fed back as the next ``h0``/``c0`` (exactly what the service
  does), compared at every step with one float64 run over the whole sequence;
* **ragged**: a batch with ``seq_lens`` of different lengths (≥ 1), random initial state;
* **framework**: the source framework's own model vs the float64 reference, on the stream and on
  a batch from zero state, so a loader that misreads a layout cannot pass.

The tolerance is DESIGN.md's ``1e-4 × max(1, output_std)`` per output, unless overridden.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from .errors import VerificationError
from .graph import C0, CN, H0, HN, SEQ_LENS, X, Y
from .reference import run as reference_run
from .scaling import Scaling
from .sources import FrameworkCheck
from .weights import FloatArray, RecurrentWeights

__all__ = ["MIN_STREAM_STEPS", "VerificationReport", "default_tolerance", "verify"]

MIN_STREAM_STEPS = 1000
# Hidden and cell states are compared relative to their own magnitude (|c| can exceed 1).
STATE_TOLERANCE = 1e-4


@dataclass(frozen=True)
class VerificationReport:
    passed: bool
    tolerance: list[float]  # per output, raw units
    max_abs_error: list[float]  # per output, worst over all checks, raw units
    max_state_error: float  # worst |Δh|, |Δc| relative to max(1, |reference|)
    stream_steps: int
    checks: list[str]
    framework: str | None
    framework_max_abs_error: list[float] | None
    framework_skipped: str | None
    onnxruntime_version: str

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def default_tolerance(scaling: Scaling) -> FloatArray:
    return 1e-4 * np.maximum(1.0, scaling.output_std)


def session(model_bytes: bytes) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def _feed(
    sess: ort.InferenceSession,
    x: npt.NDArray[np.floating[Any]],
    h0: npt.NDArray[np.floating[Any]],
    c0: npt.NDArray[np.floating[Any]],
    seq_lens: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    feed: dict[str, np.ndarray] = {
        X: x.astype(np.float32),
        H0: h0.astype(np.float32),
        C0: c0.astype(np.float32),
    }
    if any(i.name == SEQ_LENS for i in sess.get_inputs()):
        lens = np.full(x.shape[1], x.shape[0]) if seq_lens is None else seq_lens
        feed[SEQ_LENS] = np.asarray(lens, dtype=np.int32)
    return feed


def _state_error(got: np.ndarray, want: FloatArray) -> float:
    return float(np.max(np.abs(got - want)) / max(1.0, float(np.max(np.abs(want)))))


class _Worst:
    """Running maxima of output and state errors across checks."""

    def __init__(self, outputs: int) -> None:
        self.y = np.zeros(outputs)
        self.state = 0.0

    def output(self, got: np.ndarray, want: FloatArray) -> None:
        valid = ~np.isnan(want)
        diff = np.where(valid, np.abs(np.asarray(got, np.float64) - np.nan_to_num(want)), 0.0)
        self.y = np.maximum(self.y, diff.reshape(-1, diff.shape[-1]).max(axis=0))

    def states(
        self, got_h: np.ndarray, want_h: FloatArray, got_c: np.ndarray, want_c: FloatArray
    ) -> None:
        self.state = max(self.state, _state_error(got_h, want_h), _state_error(got_c, want_c))


def _random_state(rng: np.random.Generator, weights: RecurrentWeights, batch: int) -> FloatArray:
    return rng.normal(0.0, 0.5, (weights.num_layers, batch, weights.hidden_size))


def _random_input(rng: np.random.Generator, scaling: Scaling, steps: int, batch: int) -> FloatArray:
    # Realistic raw readings: around the training mean, a little wider than the training spread.
    z = rng.normal(0.0, 1.5, (steps, batch, scaling.input_mean.shape[0]))
    return np.asarray(scaling.input_mean + z * scaling.input_std, dtype=np.float64)


def verify(
    model_bytes: bytes,
    weights: RecurrentWeights,
    scaling: Scaling,
    *,
    tolerance: float | None = None,
    framework: str | None = None,
    framework_check: FrameworkCheck | None = None,
    framework_skipped: str | None = None,
    stream_steps: int = 1200,
    seed: int = 0,
) -> VerificationReport:
    """Run every check; raise :class:`VerificationError` on any mismatch, else return the report."""
    if stream_steps < MIN_STREAM_STEPS:
        raise ValueError(f"stream_steps must be at least {MIN_STREAM_STEPS}")
    tol = (
        default_tolerance(scaling) if tolerance is None else np.full(weights.output_size, tolerance)
    )
    rng = np.random.default_rng(seed)
    try:
        sess = session(model_bytes)
    except Exception as exc:  # onnxruntime raises its own exception types
        raise VerificationError(f"onnxruntime cannot load the exported graph: {exc}") from exc
    outputs = [Y, HN, CN]
    worst = _Worst(weights.output_size)
    checks = []

    # batch: T=50, B=5, random initial state
    x = _random_input(rng, scaling, 50, 5)
    h0, c0 = _random_state(rng, weights, 5), _random_state(rng, weights, 5)
    y, hn, cn = sess.run(outputs, _feed(sess, x, h0, c0))
    ry, rh, rc = reference_run(weights, scaling, x, h0, c0)
    worst.output(y, ry)
    worst.states(hn, rh, cn, rc)
    checks.append("batch T=50 B=5 from random state")

    # stream: one step per call, float32 state carried between calls
    stream = _random_input(rng, scaling, stream_steps, 1)
    ry, rh, rc = reference_run(weights, scaling, stream)
    zeros = np.zeros((weights.num_layers, 1, weights.hidden_size))
    h, c = zeros.astype(np.float32), zeros.astype(np.float32)
    streamed = np.empty((stream_steps, 1, weights.output_size), dtype=np.float32)
    for t in range(stream_steps):
        y, h, c = sess.run(outputs, _feed(sess, stream[t : t + 1], h, c))
        streamed[t] = y[0]
    worst.output(streamed, ry)
    worst.states(h, rh, c, rc)
    checks.append(f"stream of {stream_steps} steps, one call per step, from zero state")

    # ragged: lengths 1..T in one batch
    lens = np.array([7, 1, 4, 2])
    x = _random_input(rng, scaling, 7, 4)
    h0, c0 = _random_state(rng, weights, 4), _random_state(rng, weights, 4)
    if any(i.name == SEQ_LENS for i in sess.get_inputs()):
        y, hn, cn = sess.run(outputs, _feed(sess, x, h0, c0, lens))
        ry, rh, rc = reference_run(weights, scaling, x, h0, c0, lens)
        worst.output(y, ry)
        worst.states(hn, rh, cn, rc)
        checks.append("ragged batch seq_lens=[7, 1, 4, 2] from random state")

    framework_error: FloatArray | None = None
    if framework_check is not None:
        # zero-state sequences; the framework sees scaled input and returns scaled output
        batch = _random_input(rng, scaling, 50, 5)
        framework_error = np.zeros(weights.output_size)
        for seq in (stream, batch):
            ry, _, _ = reference_run(weights, scaling, seq)
            scaled = (seq - scaling.input_mean) / scaling.input_std
            got = framework_check(scaled) * scaling.output_std + scaling.output_mean
            framework_error = np.maximum(framework_error, np.max(np.abs(got - ry[-1]), axis=0))
        checks.append(f"{framework} vs float64 reference (stream and batch, last step)")

    passed = bool(np.all(worst.y <= tol) and worst.state <= STATE_TOLERANCE)
    framework_ok = framework_error is None or bool(np.all(framework_error <= tol))
    report = VerificationReport(
        passed=passed and framework_ok,
        tolerance=[float(v) for v in tol],
        max_abs_error=[float(v) for v in worst.y],
        max_state_error=worst.state,
        stream_steps=stream_steps,
        checks=checks,
        framework=framework,
        framework_max_abs_error=None
        if framework_error is None
        else [float(v) for v in framework_error],
        framework_skipped=framework_skipped,
        onnxruntime_version=ort.__version__,
    )
    if not passed:
        raise VerificationError(
            f"the exported graph does not match the float64 reference: max |error| "
            f"{_fmt(worst.y)} vs tolerance {_fmt(tol)}, state error {worst.state:.2e} "
            f"(limit {STATE_TOLERANCE:.0e}); nothing was written"
        )
    if not framework_ok:
        raise VerificationError(
            f"{framework} disagrees with the float64 reference built from the loaded weights: "
            f"max |error| {_fmt(framework_error)} vs tolerance {_fmt(tol)}; the source layout "
            "was misread, nothing was written"
        )
    return report


def _fmt(values: FloatArray | None) -> str:
    return "n/a" if values is None else "[" + ", ".join(f"{v:.2e}" for v in values) + "]"

"""One small loader per source format, all producing :class:`LoadedSource`.

A loader reads a file into the canonical :class:`~model_export.weights.RecurrentWeights` and,
when the source's own framework is importable, also offers a *framework check*: a function that
runs the real framework on scaled inputs, so the export is compared against the library the user
trained with and not only against our own reading of its layout.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import SourceError
from ..weights import FloatArray, RecurrentWeights

__all__ = [
    "FORMATS",
    "FrameworkCheck",
    "LoadOptions",
    "LoadedSource",
    "describe",
    "infer_format",
    "load",
]

# x_scaled [T, B, I] (float64) -> the head's output at the last step, [B, O], in scaled units,
# starting from zero state. The real framework computes it, in its own precision.
FrameworkCheck = Callable[[FloatArray], FloatArray]


@dataclass(frozen=True)
class LoadOptions:
    """Per-format knobs; loaders ignore the ones that do not apply to them."""

    lstm_prefix: str = "lstm."
    head_prefix: str = "head."


@dataclass(frozen=True)
class LoadedSource:
    weights: RecurrentWeights
    format: str
    description: (
        str  # one line for the CLI, e.g. "torch state_dict: 2-layer LSTM 1->64, head 64->1"
    )
    framework: str | None = None  # e.g. "torch 2.13.0"; None when no framework check is possible
    framework_check: FrameworkCheck | None = field(default=None, repr=False)
    framework_skipped: str | None = None  # why there is no framework check, if there is none


def describe(kind: str, weights: RecurrentWeights) -> str:
    """One line for the CLI: "<kind>: 2-layer LSTM 1->64, head 64->1"."""
    return (
        f"{kind}: {weights.num_layers}-layer {weights.cell.upper()} "
        f"{weights.input_size}->{weights.hidden_size}, "
        f"head {weights.hidden_size}->{weights.output_size}"
    )


# extension -> format name
FORMATS: dict[str, str] = {".pt": "torch", ".pth": "torch", ".keras": "keras", ".npz": "npz"}


def infer_format(path: Path) -> str:
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        known = ", ".join(sorted(FORMATS))
        raise SourceError(
            f"cannot tell the format of {path.name} from its extension (known: {known}); "
            "pass --format torch|keras|npz"
        )
    return fmt


def load(path: Path, fmt: str | None = None, options: LoadOptions | None = None) -> LoadedSource:
    """Read ``path`` as ``fmt`` (inferred from the extension when None)."""
    options = options or LoadOptions()
    if not path.exists():
        raise SourceError(f"source file {path} does not exist")
    if not path.is_file():
        raise SourceError(f"source {path} is not a file")
    fmt = fmt or infer_format(path)
    if fmt == "torch":
        from . import from_torch

        return from_torch.load(path, options)
    if fmt == "keras":
        from . import from_keras

        return from_keras.load(path)
    if fmt == "npz":
        from . import from_npz

        return from_npz.load(path, options)
    raise SourceError(f"unknown format {fmt!r}; use torch, keras or npz")

"""The exporter's error tree.

    ExportError                 anything the user can fix; the CLI prints it as one line
    ├── SourceError             the source file is missing, unreadable or not the format claimed
    │   └── UnsupportedModelError    the file is readable but describes something we refuse
    │                           (bidirectional, projections, other activations or layers, ...)
    ├── WeightsError            shapes or values of the weights are inconsistent (NaN, mismatch)
    ├── ScalingError            scaling.json is malformed, has the wrong lengths or a std <= 0
    ├── FeedbackError           a --feedback pair names an unknown output or feature, or feeds
    │                           a feature twice (or an output into two features)
    ├── OutputExistsError       the output directory exists and --force was not given
    ├── MissingDependencyError       an optional library (torch, ...) is needed; names the pip extra
    └── VerificationError       onnxruntime disagrees with the float64 reference; nothing written

Third-party exceptions are wrapped at the edge (``raise SourceError(...) from exc``) so that the
CLI only ever has to catch ``ExportError``.
"""

from __future__ import annotations

__all__ = [
    "ExportError",
    "FeedbackError",
    "MissingDependencyError",
    "OutputExistsError",
    "ScalingError",
    "SourceError",
    "UnsupportedModelError",
    "VerificationError",
    "WeightsError",
]


class ExportError(Exception):
    """Base class: a problem with the user's input that the message explains how to fix."""


class SourceError(ExportError):
    """The source file cannot be read as the format it claims to be."""


class UnsupportedModelError(SourceError):
    """The source is readable but describes a model this exporter refuses to convert."""


class WeightsError(ExportError):
    """Weight shapes disagree with each other, or values are not finite."""


class ScalingError(ExportError):
    """The scaling description is malformed or inconsistent with the model's sizes."""


class FeedbackError(ExportError):
    """The feedback mapping (output → feature) names something the model lacks, or is ambiguous."""


class OutputExistsError(ExportError):
    """The output directory already exists and overwriting was not requested."""


class MissingDependencyError(ExportError):
    """An optional third-party library is needed for this source format."""


class VerificationError(ExportError):
    """The exported graph does not reproduce the reference within tolerance."""

"""Offline exporter: trained LSTM weights → a verified one-step ONNX model directory.

Loaders (``sources/``) → canonical weights (``weights.py``, ONNX gate order) → graph
(``graph.py``) → verification against a float64 reference and the source framework
(``verify.py``) → ``model.onnx`` + ``model.json`` (``exporter.py``), with the feedback mapping
of forecasts (``feedback.py``) declared alongside.
"""

from .errors import (
    ExportError,
    FeedbackError,
    MissingDependencyError,
    OutputExistsError,
    ScalingError,
    SourceError,
    UnsupportedModelError,
    VerificationError,
    WeightsError,
)
from .exporter import ExportResult, export, fingerprint
from .feedback import feedback_mapping
from .scaling import Scaling
from .weights import LayerWeights, RecurrentWeights

__all__ = [
    "ExportError",
    "ExportResult",
    "FeedbackError",
    "LayerWeights",
    "MissingDependencyError",
    "OutputExistsError",
    "RecurrentWeights",
    "Scaling",
    "ScalingError",
    "SourceError",
    "UnsupportedModelError",
    "VerificationError",
    "WeightsError",
    "export",
    "feedback_mapping",
    "fingerprint",
]

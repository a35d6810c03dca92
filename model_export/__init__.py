"""Offline exporter: trained LSTM weights → a verified one-step ONNX model directory.

Loaders (``sources/``) → canonical weights (``weights.py``, ONNX gate order) → graph
(``graph.py``) → verification against a float64 reference and the source framework
(``verify.py``) → ``model.onnx`` + ``model.json`` (``export.py``).
"""

from .errors import (
    ExportError,
    MissingDependencyError,
    OutputExistsError,
    ScalingError,
    SourceError,
    UnsupportedModelError,
    VerificationError,
    WeightsError,
)
from .exporter import ExportResult, export, fingerprint
from .scaling import Scaling
from .weights import LayerWeights, RecurrentWeights

__all__ = [
    "ExportError",
    "ExportResult",
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
    "fingerprint",
]

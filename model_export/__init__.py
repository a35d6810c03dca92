"""Offline exporter: trained LSTM weights → a verified one-step ONNX model directory.

Loaders (``sources/``) → canonical weights (``weights.py``, ONNX gate order) → graph
(``graph.py``) → verification against a float64 reference and the source framework
(``verify.py``) → ``model.onnx`` + ``model.json`` (``export.py``).
"""

from .errors import (
    ExportError,
    MissingDependency,
    OutputExistsError,
    ScalingError,
    SourceError,
    UnsupportedModel,
    VerificationError,
    WeightsError,
)
from .export import ExportResult, export, fingerprint
from .scaling import Scaling
from .weights import LayerWeights, RecurrentWeights

__all__ = [
    "ExportError",
    "ExportResult",
    "LayerWeights",
    "MissingDependency",
    "OutputExistsError",
    "RecurrentWeights",
    "Scaling",
    "ScalingError",
    "SourceError",
    "UnsupportedModel",
    "VerificationError",
    "WeightsError",
    "export",
    "fingerprint",
]

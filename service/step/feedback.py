"""A served model's feedback mapping: which outputs feed which input features in a forecast.

``model.json`` declares it (``lstm-export --feedback OUTPUT=FEATURE``) as one object from output
name to feature name, both in raw units: ``"feedback": {"next_month_sst_c": "sst_c"}``. A missing
key, ``null`` or ``{}`` means no mapping: such a model can replay what-if readings but cannot
forecast. Parsed once when the model loads, into index arrays, so that a forecast step builds
its input with a constant number of array operations however many streams it covers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["FeedbackMap", "parse_feedback"]


def _indices(values: Sequence[int]) -> np.ndarray:
    array = np.array(values, np.intp)
    array.flags.writeable = False
    return array


@dataclass(frozen=True, eq=False)
class FeedbackMap:
    """Feature ``fed_features[k]`` of step t+1 is output ``from_outputs[k]`` of step t; the
    ``covariates`` (features at ``covariate_features``, in feature order) come from the caller."""

    pairs: tuple[tuple[str, str], ...]  # (output, feature), in feature order
    fed_features: np.ndarray  # intp [K], feature indices
    from_outputs: np.ndarray  # intp [K], output indices
    covariates: tuple[str, ...]  # names of the features no output feeds, in feature order
    covariate_features: np.ndarray  # intp [C], their indices

    def to_json(self) -> dict[str, str]:
        """The mapping as ``model.json`` writes it: ``{output: feature}``."""
        return dict(self.pairs)


def parse_feedback(raw: Any, features: Sequence[str], outputs: Sequence[str]) -> FeedbackMap | None:
    """``model.json``'s ``feedback`` value → :class:`FeedbackMap`, or None for no mapping.

    Raises ValueError naming the output or feature that the model does not have, or the
    feature that two outputs feed.
    """
    if raw is None or raw == {}:
        return None
    if not isinstance(raw, dict):
        raise ValueError(
            f"feedback must be an object from output name to feature name, got {raw!r:.80}"
        )
    fed_by: dict[str, str] = {}  # feature -> output
    for output, feature in raw.items():
        if not isinstance(feature, str):
            raise ValueError(
                f"feedback of output {output!r} must be a feature name, not {feature!r}"
            )
        if output not in outputs:
            raise ValueError(
                f"feedback names output {output!r}, which the model does not have "
                f"(its outputs: {', '.join(outputs)})"
            )
        if feature not in features:
            raise ValueError(
                f"feedback feeds feature {feature!r}, which the model does not have "
                f"(its features: {', '.join(features)})"
            )
        if feature in fed_by:
            raise ValueError(
                f"feedback feeds feature {feature!r} from both {fed_by[feature]!r} and "
                f"{output!r}; a feature is fed by at most one output"
            )
        fed_by[feature] = output
    fed = [k for k, name in enumerate(features) if name in fed_by]
    covariates = [k for k, name in enumerate(features) if name not in fed_by]
    return FeedbackMap(
        pairs=tuple((fed_by[features[k]], features[k]) for k in fed),
        fed_features=_indices(fed),
        from_outputs=_indices([outputs.index(fed_by[features[k]]) for k in fed]),
        covariates=tuple(features[k] for k in covariates),
        covariate_features=_indices(covariates),
    )

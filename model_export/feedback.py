"""The feedback mapping: which of a model's outputs feed which of its input features in a forecast.

A forecast runs a model ahead of its readings: each step's prediction becomes part of the next
step's input. Which output goes where belongs to the model, so it is declared at export time
(``--feedback OUTPUT=FEATURE``) and written into ``model.json`` as one object from output name to
feature name, in feature order::

    "feedback": {"next_month_sst_c": "sst_c"}

Both sides are in raw units (the graph scales its inputs and outputs itself). Features that no
output feeds are covariates: a forecast's caller gives them for every step. ``{}`` means the
model declares no mapping. The mapping is not part of the version fingerprint, which covers
the numbers (weights and scaling) only: declaring it changes no prediction.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from .errors import FeedbackError

__all__ = ["FeedbackPairs", "feedback_mapping", "parse_pair"]

# (output name, feature name) pairs as given, or a mapping from output to feature
FeedbackPairs = Mapping[str, str] | Iterable[tuple[str, str]]


def parse_pair(text: str) -> tuple[str, str]:
    """``"OUTPUT=FEATURE"`` → ``(output, feature)``; exactly one ``=`` between two names."""
    parts = [p.strip() for p in text.split("=")]
    if len(parts) != 2 or not all(parts):
        raise FeedbackError(f"--feedback {text!r} must be OUTPUT=FEATURE, e.g. y0=x0")
    return parts[0], parts[1]


def _listed(names: Sequence[str]) -> str:
    return ", ".join(names)


def feedback_mapping(
    pairs: FeedbackPairs | None, features: Sequence[str], outputs: Sequence[str]
) -> dict[str, str]:
    """Validate ``pairs`` against the model's names; return ``{output: feature}`` in feature
    order. Each name must exist, an output feeds at most one feature and a feature is fed by at
    most one output."""
    if pairs is None:
        return {}
    given = list(pairs.items()) if isinstance(pairs, Mapping) else list(pairs)
    feeds: dict[str, str] = {}  # output -> feature
    fed_by: dict[str, str] = {}  # feature -> output
    for output, feature in given:
        where = f"--feedback {output}={feature}"
        if output not in outputs:
            raise FeedbackError(
                f"{where}: the model has no output {output!r}; its outputs are "
                f"{_listed(outputs)} (name them with --outputs)"
            )
        if feature not in features:
            raise FeedbackError(
                f"{where}: the model has no feature {feature!r}; its features are "
                f"{_listed(features)} (name them with --features)"
            )
        if output in feeds and feeds[output] != feature:
            raise FeedbackError(
                f"{where}: output {output!r} already feeds feature {feeds[output]!r}; "
                "an output feeds at most one feature"
            )
        if feature in fed_by and fed_by[feature] != output:
            raise FeedbackError(
                f"{where}: feature {feature!r} is already fed by output {fed_by[feature]!r}; "
                "a feature is fed by at most one output"
            )
        feeds[output] = feature
        fed_by[feature] = output
    return {fed_by[f]: f for f in features if f in fed_by}

"""The OpenAPI document's forecast part: the forecast and what-if schemas, and the per-model
forecast paths (long form and the default model's short form)."""

from __future__ import annotations

from ...core.settings import Settings
from ...step.model import ServedModel
from .common import (
    ITEM_CODES,
    Schema,
    json_content,
    obj,
    operation,
    ref,
    resp,
)

_STEP_ONE = (
    "Step 1 feeds the stream's stored last prediction (or its last what-if reading's) back as "
    "the fed features, with covariates[0] as the others: it stands in for the stream's next "
    "reading, and predicts one step beyond the last prediction. Step k feeds step k-1's "
    "prediction with covariates[k-1]."
)


def forecast_schemas(settings: Settings, models: dict[str, ServedModel]) -> dict[str, Schema]:
    max_horizon = settings.forecast_max_horizon
    max_readings = settings.request_max_readings
    covariate_names = sorted(
        {name for m in models.values() if m.feedback for name in m.feedback.covariates}
    )
    covariates: Schema = {
        "type": "array",
        "maxItems": max_horizon,
        "items": {
            "type": "object",
            "additionalProperties": {"type": "number"},
            "description": "Every covariate feature of the model (its features that no output "
            "feeds) by name, each a finite number"
            + (f" (served covariates: {', '.join(covariate_names)})" if covariate_names else "")
            + ". Missing, extra or non-finite: 400 invalid_values naming them.",
        },
        "description": "One object per horizon step (exactly horizon of them); may be omitted "
        "when the model has no covariates or the horizon is 0.",
    }
    what_if: Schema = {
        "type": "array",
        "minItems": 1,
        "maxItems": max_readings,
        "items": ref("Reading"),
        "description": "Hypothetical readings applied first, in memory only, as posting would "
        "apply them; then the forecast runs from there. Nothing is stored; seqs are not checked.",
    }
    horizon: Schema = {
        "type": "integer",
        "minimum": 0,
        "description": f"Steps to run ahead, at most {max_horizon} (--forecast-max-horizon; "
        "413 beyond). 1 or more needs a model with a feedback mapping (else 400 "
        "forecast_unsupported); 0 with readings works on any model.",
    }
    forecast_fields: dict[str, Schema] = {
        "generation": {
            "type": ["integer", "null"],
            "description": "The stream's generation as read; null: the stream has no state and "
            "the forecast starts from zero state, with zeros as its last prediction.",
        },
        "seq": {
            "type": ["integer", "null"],
            "minimum": 1,
            "description": "The stream's last applied seq as read; null: no state.",
        },
        "forecast": {
            "type": "array",
            "items": ref("ForecastStep"),
            "description": "horizon entries. " + _STEP_ONE,
        },
        "results": {
            "type": "array",
            "items": ref("WhatIfResult"),
            "description": "Present when readings were given: one per hypothetical reading, in "
            "order.",
        },
    }
    return {
        "ForecastRequest": obj(
            ["horizon"],
            {"horizon": horizon, "covariates": covariates, "readings": what_if},
        ),
        "ForecastItem": obj(
            ["stream"],
            {"stream": ref("StreamId"), "covariates": covariates, "readings": what_if},
        ),
        "ForecastsRequest": obj(
            ["horizon", "items"],
            {
                "horizon": horizon,
                "items": {
                    "type": "array",
                    "minItems": 1,
                    "items": ref("ForecastItem"),
                    "description": "Streams to forecast (any stream may appear more than once), "
                    f"at most {max_readings} stream-steps in all: streams × (horizon + what-if "
                    "readings) (413 beyond).",
                },
            },
        ),
        "ForecastStep": obj(
            ["step", "prediction"],
            {"step": {"type": "integer", "minimum": 1}, "prediction": ref("Prediction")},
        ),
        "WhatIfResult": obj(
            ["prediction"],
            {
                "seq": {
                    **ref("Seq"),
                    "description": "The hypothetical reading's seq, when it gave one.",
                },
                "prediction": ref("Prediction"),
            },
        ),
        "ForecastResponse": obj(
            ["model", "model_version", "version", "stream", "generation", "seq", "forecast"],
            {
                "model": {"type": "string"},
                "model_version": {"type": "string"},
                "version": {
                    "type": "integer",
                    "minimum": 1,
                    "description": "The model version the forecast ran on.",
                },
                "stream": ref("StreamId"),
                **forecast_fields,
            },
        ),
        "ForecastItemResult": {
            "oneOf": [
                obj(
                    ["stream", "generation", "seq", "forecast"],
                    {"stream": ref("StreamId"), **forecast_fields},
                ),
                obj(
                    ["stream", "error"],
                    {
                        "stream": {"description": "The item's stream as sent (any JSON value)."},
                        "error": {
                            "allOf": [ref("ErrorDetail")],
                            "properties": {"code": {"enum": ITEM_CODES}},
                        },
                    },
                ),
            ]
        },
        "ForecastsResponse": obj(
            ["model", "model_version", "version", "horizon", "forecasts"],
            {
                "model": {"type": "string"},
                "model_version": {"type": "string"},
                "version": {"type": "integer", "minimum": 1},
                "horizon": {"type": "integer", "minimum": 0},
                "forecasts": {
                    "type": "array",
                    "items": ref("ForecastItemResult"),
                    "description": "One entry per item, in request order.",
                },
            },
        ),
    }


def forecast_paths(prefix: str, suffix: str, model_params: list[str]) -> dict[str, Schema]:
    """The forecast paths under ``prefix`` (long form, or the short form for the default)."""
    refused: dict[str, Schema] = {
        "400": resp("BadRequest"),
        "404": resp("NotFound"),
        "413": resp("PayloadTooLarge"),
        "503": resp("Unavailable"),
    }
    untouched = (
        " The streams' state, seq and events are untouched; the forecast reads each stream's "
        "state from Redis and runs on it in memory."
    )
    return {
        f"{prefix}/streams/{{stream}}/forecast": {
            "post": operation(
                f"forecastStream{suffix}",
                "Run the stream's model ahead of its state (and of what-if readings) without "
                "advancing it",
                [*model_params, "Stream"],
                {
                    "200": json_content(ref("ForecastResponse"), "The forecast." + untouched),
                    **refused,
                    "409": resp("Conflict"),
                },
                requestBody={
                    "required": True,
                    "description": "JSON whatever the Content-Type says. " + _STEP_ONE,
                    "content": {"application/json": {"schema": ref("ForecastRequest")}},
                },
                tags=["forecasts"],
            )
        },
        f"{prefix}/forecast": {
            "post": operation(
                f"forecastStreams{suffix}",
                "Forecast many streams; a failed item carries its own error",
                model_params,
                {
                    "200": json_content(
                        ref("ForecastsResponse"),
                        "One entry per item, in request order." + untouched,
                    ),
                    **refused,
                },
                requestBody={
                    "required": True,
                    "description": "JSON whatever the Content-Type says.",
                    "content": {"application/json": {"schema": ref("ForecastsRequest")}},
                },
                tags=["forecasts"],
            )
        },
    }

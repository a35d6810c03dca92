"""Forecasts and what-ifs under /v1: a model run ahead of streams' stored states, without
advancing them.

``POST .../streams/{stream}/forecast`` answers one stream, ``POST .../forecast`` many (per-item
errors, as bulk readings have). A handler validates the request, reads every stream's record in
one round trip, and runs every stream's forecast together in the forecast lane
(:mod:`..step.forecast_runner`), away from the step batcher. Nothing is written: a forecast
leaves the streams' state, seq and events as they were, and is not a reading (it is counted in
``lstm_forecasts_total``, not ``lstm_readings_total``).

Step 1 of a forecast feeds the stream's stored last prediction back (with ``covariates[0]``), so
it predicts one step beyond that last prediction (see :mod:`..step.forecast`). A stream with no
state forecasts from zero state with a last prediction of zeros, and answers ``generation`` and
``seq`` null.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from aiohttp import web

from ..core.errors import (
    ForecastUnsupported,
    InvalidRequest,
    InvalidStreamId,
    InvalidValues,
    ModelVersionMismatch,
    PayloadTooLarge,
    ServiceError,
)
from ..core.ids import check_stream_id
from ..core.settings import Settings
from ..step.forecast import (
    ForecastUnsupportedError,
    InvalidCovariatesError,
    check_forecast_supported,
    covariate_matrix,
    forecast,
)
from ..step.forecast_runner import ForecastRunner
from ..step.model import ServedModel
from ..step.plan import Reading
from ..step.record import StreamState
from .app_keys import BATCHER, METRICS, SETTINGS, STORE, tenant_of
from .routes_v1 import json_response, model_for, read_body
from .wire import error_json, kind, parse_body, parse_what_if_readings

__all__ = ["FORECASTS", "add_forecast_routes"]

FORECASTS = web.AppKey("forecasts", ForecastRunner)

# The version of a single served model. Model versions as integers come with the model
# repository; until then every served model is version 1.
SERVED_VERSION = 1

_STREAM_FIELDS = frozenset({"horizon", "covariates", "readings"})
_ITEM_FIELDS = frozenset({"stream", "covariates", "readings"})


@dataclass(frozen=True)
class _Ask:
    """One stream's forecast as asked: its what-if readings (None: none) and covariates
    ``[horizon, C]``."""

    stream: str
    readings: list[Reading] | None
    covariates: np.ndarray

    @property
    def steps(self) -> int:
        return len(self.covariates) + (len(self.readings) if self.readings else 0)


def _horizon(data: dict[str, Any], settings: Settings) -> int:
    horizon = data.get("horizon")
    if type(horizon) is not int or horizon < 0:
        raise InvalidRequest(
            f"horizon must be a whole number of steps from 0 to {settings.forecast_max_horizon}, "
            f"not {horizon!r:.40}"
        )
    if horizon > settings.forecast_max_horizon:
        raise PayloadTooLarge(
            f"horizon {horizon} is above the limit of {settings.forecast_max_horizon} steps "
            "(--forecast-max-horizon)"
        )
    return horizon


def _ask(stream: str, fields: dict[str, Any], where: str, model: ServedModel, horizon: int) -> _Ask:
    """One stream's ``covariates`` and ``readings``, checked; ``where`` prefixes messages."""
    readings = None
    if "readings" in fields:
        readings = parse_what_if_readings(fields["readings"], f"{where}readings", model)
    try:
        covariates = covariate_matrix(model, fields.get("covariates"), horizon)
    except ForecastUnsupportedError as exc:
        raise ForecastUnsupported(str(exc)) from None
    except InvalidCovariatesError as exc:
        raise InvalidValues(f"{where}{exc}" if where else str(exc)) from None
    return _Ask(stream, readings, covariates)


def _unknown(data: dict[str, Any], allowed: frozenset[str], where: str) -> None:
    unknown = set(data) - allowed
    if unknown:
        raise InvalidRequest(
            f"{where} has unknown field(s) {', '.join(sorted(map(repr, unknown)))}; it takes "
            f"{', '.join(map(repr, sorted(allowed)))}"
        )


def _check_size(asks: Sequence[_Ask], settings: Settings) -> None:
    total = sum(a.steps for a in asks)
    if total > settings.request_max_readings:
        raise PayloadTooLarge(
            f"the request asks for {total} stream-steps (streams × (horizon + what-if "
            f"readings)); the limit per request is {settings.request_max_readings}"
        )


def _start(request: web.Request, model: ServedModel) -> ForecastRunner:
    """Refuse early (before the body is read) when the service stops or forecasts are full."""
    request.app[BATCHER].check_room(0)
    runner = request.app[FORECASTS]
    runner.check_room(1)
    return runner


async def _run(
    request: web.Request, model: ServedModel, asks: Sequence[_Ask]
) -> list[dict[str, Any] | ServiceError]:
    """Every ask's answer (or its own error), in order: one Redis round trip for every record,
    then, in the forecast lane, one forecast over every stream that has a usable state."""
    store = request.app[STORE]
    tenant = tenant_of(request)
    raws = await store.load_many([store.state_key(tenant, model.name, a.stream) for a in asks])
    steps = sum(a.steps for a in asks)
    return await request.app[FORECASTS].run(steps, lambda: _answers(model, asks, raws))


def _answers(
    model: ServedModel, asks: Sequence[_Ask], raws: Sequence[bytes | ServiceError | None]
) -> list[dict[str, Any] | ServiceError]:
    """Decode the records, forecast every stream with a usable state at once, and answer. A
    record that could not be read (its cluster node failed) is that ask's own error."""
    answers: list[dict[str, Any] | ServiceError] = []
    rows: list[int] = []
    h, c, last = [], [], []
    for ask, raw in zip(asks, raws, strict=True):
        if isinstance(raw, ServiceError):
            answers.append(raw)
            continue
        head: dict[str, Any] = {"stream": ask.stream, "generation": None, "seq": None}
        state = (
            None
            if raw is None
            else StreamState.decode(raw, model.version, model.state_shape, model.output_size)
        )
        if state is None or state.ended:  # no state: zero state, and zeros as last prediction
            h.append(model.zero_state)
            c.append(model.zero_state)
            last.append(np.zeros(model.output_size, np.float32))
        elif state.h is None or state.c is None:
            answers.append(_version_mismatch(model, ask.stream, state))
            continue
        else:
            head.update(generation=state.generation, seq=state.seq)
            h.append(state.h)
            c.append(state.c)
            held = state.results.get(state.seq)
            last.append(np.zeros(model.output_size, np.float32) if held is None else held)
        rows.append(len(answers))
        answers.append(head)
    if not rows:
        return answers
    what_ifs = [asks[b].readings for b in rows]
    result = forecast(
        model,
        np.stack(h, axis=1),
        np.stack(c, axis=1),
        np.stack(last),
        [None if rs is None else np.array([r.values for r in rs]) for rs in what_ifs],
        [asks[b].covariates for b in rows],
    )
    for row, b in enumerate(rows):
        answer = answers[b]
        assert isinstance(answer, dict)  # rows index the answers that are heads
        what_if, ahead = result.row(row)
        answer["forecast"] = [
            {"step": k + 1, "prediction": p} for k, p in enumerate(ahead.tolist())
        ]
        readings = asks[b].readings
        if readings is not None:
            answer["results"] = [
                {"prediction": p} if r.seq is None else {"seq": r.seq, "prediction": p}
                for r, p in zip(readings, what_if.tolist(), strict=True)
            ]
    return answers


def _version_mismatch(model: ServedModel, stream: str, state: StreamState) -> ServiceError:
    return ModelVersionMismatch(
        f"stream {stream!r} holds state of model version {state.model_version}, but "
        f"{model.name} is now version {model.version}; end the stream (DELETE) to start it "
        "afresh",
        stream_version=state.model_version,
        model_version=model.version,
    )


def _head(model: ServedModel) -> dict[str, Any]:
    return {"model": model.name, "model_version": model.version, "version": SERVED_VERSION}


async def post_stream_forecast(request: web.Request) -> web.Response:
    metrics = request.app[METRICS]
    try:
        model = model_for(request)
        stream = check_stream_id(request.match_info["stream"])
        _start(request, model)
        data = parse_body(await read_body(request))
        settings = request.app[SETTINGS]
        _unknown(data, _STREAM_FIELDS, "the body")
        horizon = _horizon(data, settings)
        ask = _ask(stream, data, "", model, horizon)
        _check_size([ask], settings)
        (answer,) = await _run(request, model, [ask])
        if isinstance(answer, ServiceError):
            raise answer
    except ServiceError as exc:
        metrics.forecasts.labels(_outcome(exc)).inc()
        raise
    metrics.forecasts.labels("answered").inc()
    metrics.forecast_horizon_steps.observe(horizon)
    return json_response({**_head(model), **answer})


async def post_forecasts(request: web.Request) -> web.Response:
    metrics = request.app[METRICS]
    try:
        model = model_for(request)
        _start(request, model)
        data = parse_body(await read_body(request))
        settings = request.app[SETTINGS]
        _unknown(data, frozenset({"items", "horizon"}), "the body")
        items = data.get("items")
        if not isinstance(items, list) or not items:
            raise InvalidRequest(
                'the body must be {"horizon": H, "items": [{"stream": ..., "covariates"?: '
                '[...], "readings"?: [...]}, ...]}'
            )
        horizon = _horizon(data, settings)
        try:
            check_forecast_supported(model, horizon)
        except ForecastUnsupportedError as exc:
            raise ForecastUnsupported(str(exc)) from None
        slots: list[_Ask | ServiceError] = [
            _item(item, index, model, horizon) for index, item in enumerate(items)
        ]
        asks = [s for s in slots if isinstance(s, _Ask)]
        _check_size(asks, settings)
        answers = iter(await _run(request, model, asks) if asks else [])
    except ServiceError as exc:
        metrics.forecasts.labels(_outcome(exc)).inc()
        raise
    out: list[dict[str, Any]] = []
    for index, slot in enumerate(slots):
        answer = next(answers) if isinstance(slot, _Ask) else slot
        if isinstance(answer, ServiceError):
            metrics.forecasts.labels(_outcome(answer)).inc()
            stream = slot.stream if isinstance(slot, _Ask) else _item_stream(items[index])
            out.append({"stream": stream, **error_json(answer)})
        else:
            metrics.forecasts.labels("answered").inc()
            metrics.forecast_horizon_steps.observe(horizon)
            out.append(answer)
    return json_response({**_head(model), "horizon": horizon, "forecasts": out})


def _item(item: object, index: int, model: ServedModel, horizon: int) -> _Ask | ServiceError:
    where = f"items[{index}]"
    try:
        if not isinstance(item, dict):
            raise InvalidRequest(f"{where} must be an object with 'stream', not {kind(item)}")
        _unknown(item, _ITEM_FIELDS, where)
        stream = item.get("stream")
        if not isinstance(stream, str):
            raise InvalidStreamId(f"{where}.stream must be a string stream id")
        check_stream_id(stream)
        return _ask(stream, item, f"{where}.", model, horizon)
    except ServiceError as exc:
        return exc


def _item_stream(item: object) -> Any:
    return item.get("stream") if isinstance(item, dict) else None


def _outcome(error: ServiceError) -> str:
    return "failed" if error.status >= 500 else "rejected"


def add_forecast_routes(app: web.Application) -> None:
    """The forecast routes, and the forecast lane they run in (``FORECASTS``)."""
    app[FORECASTS] = ForecastRunner(app[SETTINGS].queue_max_readings)
    for prefix in ("/v1/models/{model}", "/v1"):
        app.router.add_post(prefix + "/streams/{stream}/forecast", post_stream_forecast)
        app.router.add_post(prefix + "/forecast", post_forecasts)

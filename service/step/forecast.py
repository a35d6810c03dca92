"""Forecasts and what-ifs: a model run ahead of streams' stored states, in memory only.

Given B rows (streams) with their states ``h``/``c [layers, B, hidden]``, this first replays each
row's what-if readings (``T_b ≥ 0`` of them, ragged: one model call over every row that has any,
with ``seq_lens``), then runs each row ``H_b`` steps ahead, autoregressively: one model call per
horizon step over every row still forecasting. At each step a row's previous prediction goes into
the features its model's feedback mapping names (:mod:`.feedback`), and the caller's covariates
into the others. Nothing is written anywhere: a forecast leaves the streams' state, seq and
events as they were.

Which step predicts what. A stream's last applied reading (or its last what-if reading) has
already produced a prediction, which the stream holds. Forecast step 1 takes that prediction as
its fed features, with ``covariates[0]`` as the rest: it stands in for the stream's next reading,
so ``covariates[0]`` describe that next reading (for a monthly model: next month's). Its output
is the prediction one step beyond, and so on: step k's input is step k-1's output with
``covariates[k-1]``.

Pure: no HTTP, no Redis. :class:`ForecastBatch` does no I/O either: it hands out each model call
(:meth:`~ForecastBatch.next_call`) and takes its results (:meth:`~ForecastBatch.take`), so that an
async caller can run the calls where it runs its other model calls; :func:`forecast` drives one
with ``model.step``. What a request may ask is checked by :func:`check_forecast_supported` and
:func:`covariate_matrix`, whose errors (:class:`ForecastRequestError`) carry their wire code.
"""

from __future__ import annotations

import math
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from .feedback import FeedbackMap
from .model import ServedModel

__all__ = [
    "ForecastBatch",
    "ForecastRequestError",
    "ForecastUnsupportedError",
    "Forecasts",
    "InvalidCovariatesError",
    "ModelCall",
    "check_forecast_supported",
    "covariate_matrix",
    "forecast",
]

# How many problems one covariates error lists before it says how many more there are.
_PROBLEMS_LISTED = 8


class ForecastRequestError(ValueError):
    """A forecast request this model cannot answer; the message says what to change. ``code`` is
    the wire code of its 400 answer."""

    code: ClassVar[str] = "invalid_request"


class ForecastUnsupportedError(ForecastRequestError):
    """A horizon of one or more on a model that declares no feedback mapping."""

    code = "forecast_unsupported"


class InvalidCovariatesError(ForecastRequestError):
    """Covariates missing, extra, not numbers or not finite; ``problems`` names each one."""

    code = "invalid_values"

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = tuple(problems)
        listed = "; ".join(self.problems[:_PROBLEMS_LISTED])
        more = len(self.problems) - _PROBLEMS_LISTED
        super().__init__(listed + (f"; and {more} more" if more > 0 else ""))


def check_forecast_supported(model: ServedModel, horizon: int) -> FeedbackMap | None:
    """Refuse a horizon ≥ 1 on a model without a feedback mapping (horizon 0, readings only,
    works on any model); return the mapping."""
    if horizon >= 1 and model.feedback is None:
        raise ForecastUnsupportedError(
            f"model {model.name!r} declares no feedback mapping (which outputs feed which "
            "features), so it cannot forecast; export it with lstm-export --feedback "
            "OUTPUT=FEATURE, or ask for horizon 0"
        )
    return model.feedback


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def covariate_matrix(model: ServedModel, covariates: Any, horizon: int) -> np.ndarray:
    """A request's covariates → float64 ``[horizon, C]``, C the model's covariate features in
    feature order (``model.feedback.covariates``).

    ``covariates`` is the decoded JSON: a list of ``horizon`` objects, each naming every
    covariate feature exactly once with a finite number. It may be omitted (None) when the model
    has no covariates, or when ``horizon`` is 0. Raises :class:`ForecastUnsupportedError` (see
    :func:`check_forecast_supported`) or :class:`InvalidCovariatesError` naming every problem.
    """
    feedback = check_forecast_supported(model, horizon)
    names = feedback.covariates if feedback is not None else ()
    if covariates is None and (horizon == 0 or not names):
        return np.zeros((horizon, len(names)))
    if covariates is None:
        raise InvalidCovariatesError(
            [f"covariates are missing: give {horizon} objects, each with {', '.join(names)}"]
        )
    if not isinstance(covariates, list) or len(covariates) != horizon:
        got = f"{len(covariates)} entries" if isinstance(covariates, list) else "not a list"
        raise InvalidCovariatesError(
            [f"covariates must be a list of {horizon} objects, one per step; got {got}"]
        )
    matrix = np.zeros((horizon, len(names)))
    problems: list[str] = []
    for k, entry in enumerate(covariates):
        if not isinstance(entry, dict):
            problems.append(f"covariates[{k}] is not an object of {', '.join(names) or 'none'}")
            continue
        missing = [n for n in names if n not in entry]
        extra = [n for n in entry if n not in names]
        if missing:
            problems.append(f"covariates[{k}] lacks {', '.join(missing)}")
        if extra:
            problems.append(
                f"covariates[{k}] has {', '.join(map(repr, extra))}, which "
                + ("is not a covariate" if len(extra) == 1 else "are not covariates")
                + f" of this model (its covariates: {', '.join(names) or 'none'})"
            )
        for c, name in enumerate(names):
            if name not in entry:
                continue
            value = entry[name]
            if not _is_number(value):
                problems.append(f"covariates[{k}].{name} is {value!r:.40}, not a number")
            elif not math.isfinite(value):
                problems.append(f"covariates[{k}].{name} is {value}, not a finite number")
            else:
                matrix[k, c] = value
    if problems:
        raise InvalidCovariatesError(problems)
    return matrix


@dataclass(frozen=True)
class ModelCall:
    """One call of ``ServedModel.step``: ``x [T, B', I]`` float32 raw units, ``h0``/``c0
    [layers, B', hidden]`` float32, ``seq_lens [B']`` int32 (each 1..T)."""

    x: np.ndarray
    h0: np.ndarray
    c0: np.ndarray
    seq_lens: np.ndarray


@dataclass(frozen=True)
class Forecasts:
    """Every row's what-if predictions and forecast, in raw units (float32).

    ``what_if [T_max, B, O]`` holds row b's predictions for its readings in ``[:what_if_steps[b],
    b]``; ``forecast [H_max, B, O]`` its forecast in ``[:horizons[b], b]``; NaN elsewhere.
    ``calls`` counts the model calls made.
    """

    what_if: np.ndarray
    what_if_steps: np.ndarray
    forecast: np.ndarray
    horizons: np.ndarray
    calls: int

    def row(self, b: int) -> tuple[np.ndarray, np.ndarray]:
        """Row b's what-if predictions ``[T_b, O]`` and forecast ``[H_b, O]``."""
        return (
            self.what_if[: self.what_if_steps[b], b],
            self.forecast[: self.horizons[b], b],
        )


# A model call's results: y [T, B', O], hn, cn [layers, B', hidden]
StepOutput = tuple[np.ndarray, np.ndarray, np.ndarray]


class ForecastBatch:
    """The model calls of one batch of forecasts, handed out one at a time::

        batch = ForecastBatch(model, h0, c0, last_prediction, readings, covariates)
        while (call := batch.next_call()) is not None:
            batch.take(*model.step(call.x, call.h0, call.c0, call.seq_lens))
        result = batch.result()

    Arguments, for B rows: ``h0``/``c0 [layers, B, hidden]``, each row's stored state (not
    modified); ``last_prediction [B, O]``, each row's last prediction in raw units (NaN where a
    row has none: then it needs what-if readings to forecast); ``readings``, per row None or
    ``[T_b, I]`` raw values applied first; ``covariates``, per row ``[H_b, C]`` as
    :func:`covariate_matrix` returns them, whose length is the row's horizon.

    At most 1 + max(H_b) calls: the what-if readings' (when any row has some), then one per
    horizon step over the rows whose horizon reaches it.
    """

    def __init__(
        self,
        model: ServedModel,
        h0: np.ndarray,
        c0: np.ndarray,
        last_prediction: np.ndarray,
        readings: Sequence[np.ndarray | None],
        covariates: Sequence[np.ndarray],
    ) -> None:
        rows = len(readings)
        state_shape = (model.num_layers, rows, model.hidden_size)
        if h0.shape != state_shape or c0.shape != state_shape:
            raise ValueError(f"h0 and c0 must be {state_shape}, got {h0.shape} and {c0.shape}")
        if np.shape(last_prediction) != (rows, model.output_size) or len(covariates) != rows:
            raise ValueError(
                f"last_prediction must be [{rows}, {model.output_size}] and covariates {rows} "
                f"arrays, got {np.shape(last_prediction)} and {len(covariates)}"
            )
        feedback = model.feedback
        n_cov = len(feedback.covariates) if feedback is not None else 0
        self._model = model
        self._feedback = feedback
        self._h = np.array(h0, np.float32)  # copies: the caller's arrays stay as they were
        self._c = np.array(c0, np.float32)
        self._prev = np.array(last_prediction, np.float32)
        self._readings = [
            np.zeros((0, model.input_size)) if r is None else np.asarray(r) for r in readings
        ]
        for b, r in enumerate(self._readings):
            if r.ndim != 2 or r.shape[1] != model.input_size:
                raise ValueError(f"readings[{b}] must be [T, {model.input_size}], got {r.shape}")
        for b, cov in enumerate(covariates):
            if cov.ndim != 2 or cov.shape[1] != n_cov:
                raise ValueError(f"covariates[{b}] must be [H, {n_cov}], got {cov.shape}")
        self._covariates = covariates
        self.what_if_steps = np.array([len(r) for r in self._readings], np.intp)
        self.horizons = np.array([len(cov) for cov in covariates], np.intp)
        if np.any(self.horizons > 0) and feedback is None:
            raise ForecastUnsupportedError(f"model {model.name!r} declares no feedback mapping")
        if feedback is not None:  # a row's first step needs a prediction to feed
            fed = self._prev[:, feedback.from_outputs]
            unknown = (self.horizons > 0) & (self.what_if_steps == 0) & ~np.isfinite(fed).all(1)
            if np.any(unknown):
                raise ValueError(
                    f"rows {np.flatnonzero(unknown).tolist()} have no last prediction to start "
                    "from: give them their stored prediction or what-if readings"
                )
        out = model.output_size
        self._what_if = np.full(
            (int(self.what_if_steps.max(initial=0)), rows, out), np.nan, np.float32
        )
        self._forecast = np.full((int(self.horizons.max(initial=0)), rows, out), np.nan, np.float32)
        self._calls_made = 0
        self._plan = self._run()
        self._call: ModelCall | None = next(self._plan, None)

    def next_call(self) -> ModelCall | None:
        """The model call to make next, or None when every call has been made."""
        return self._call

    def take(self, y: np.ndarray, hn: np.ndarray, cn: np.ndarray) -> None:
        """The results of the call :meth:`next_call` handed out."""
        if self._call is None:
            raise RuntimeError("no model call is outstanding")
        self._calls_made += 1
        try:
            self._call = self._plan.send((y, hn, cn))
        except StopIteration:
            self._call = None

    def result(self) -> Forecasts:
        if self._call is not None:
            raise RuntimeError("model calls remain: take() the results of every next_call()")
        return Forecasts(
            self._what_if, self.what_if_steps, self._forecast, self.horizons, self._calls_made
        )

    def _run(self) -> Generator[ModelCall, StepOutput, None]:
        yield from self._replay()
        yield from self._ahead()

    def _replay(self) -> Generator[ModelCall, StepOutput, None]:
        """Every row's what-if readings in one ragged call; rows without readings sit out (the
        graph cannot take a length of 0)."""
        active = np.flatnonzero(self.what_if_steps > 0)
        if active.size == 0:
            return
        lens = self.what_if_steps[active]
        longest = int(lens.max())
        # [B', T, I] filled row-major through a mask, which is the readings' concatenation order
        x_rows = np.zeros((active.size, longest, self._model.input_size), np.float32)
        valid = np.arange(longest) < lens[:, None]
        x_rows[valid] = np.concatenate([self._readings[b] for b in active])
        call = ModelCall(
            np.ascontiguousarray(x_rows.transpose(1, 0, 2)),
            np.ascontiguousarray(self._h[:, active]),
            np.ascontiguousarray(self._c[:, active]),
            lens.astype(np.int32),
        )
        y, hn, cn = yield call
        self._h[:, active] = hn
        self._c[:, active] = cn
        self._prev[active] = y[lens - 1, np.arange(active.size)]
        self._what_if[:, active] = np.where(valid.T[:, :, None], y, np.nan)

    def _ahead(self) -> Generator[ModelCall, StepOutput, None]:
        """One call per horizon step. Rows are ordered by horizon, longest first, so that the
        rows still forecasting at step k are a prefix: every step is a few whole-array
        operations, whatever B is."""
        longest = self._forecast.shape[0]
        if longest == 0 or self._feedback is None:
            return
        order = np.argsort(-self.horizons, kind="stable")
        rows = int(np.count_nonzero(self.horizons))
        order = order[:rows]  # rows with a horizon of 0 take no part
        fed, sources = self._feedback.fed_features, self._feedback.from_outputs
        others = self._feedback.covariate_features
        prev = self._prev[order]
        covariates = np.zeros((longest, rows, others.size), np.float32)
        for position, b in enumerate(order.tolist()):  # once per row, before the steps
            covariates[: self.horizons[b], position] = self._covariates[b]
        reaches = np.arange(longest)[:, None] < self.horizons[order][None, :]  # [H, rows]
        active = np.count_nonzero(reaches, axis=1)  # rows still forecasting at each step
        h, c = self._h[:, order], self._c[:, order]
        ahead = np.empty((longest, rows, self._model.output_size), np.float32)
        for k in range(longest):
            n = int(active[k])
            if n < len(prev):  # the shortest horizons ended at the last step
                h = np.ascontiguousarray(h[:, :n])
                c = np.ascontiguousarray(c[:, :n])
                prev = prev[:n]
            x = np.empty((1, n, self._model.input_size), np.float32)
            x[0][:, fed] = prev[:, sources]
            x[0][:, others] = covariates[k, :n]
            y, h, c = yield ModelCall(x, h, c, np.ones(n, np.int32))
            prev = y[0]
            ahead[k, :n] = prev
        self._forecast[:, order] = np.where(reaches[:, :, None], ahead, np.nan)


def forecast(
    model: ServedModel,
    h0: np.ndarray,
    c0: np.ndarray,
    last_prediction: np.ndarray,
    readings: Sequence[np.ndarray | None],
    covariates: Sequence[np.ndarray],
) -> Forecasts:
    """Run a :class:`ForecastBatch` to the end with ``model.step``; see there for arguments."""
    batch = ForecastBatch(model, h0, c0, last_prediction, readings, covariates)
    while (call := batch.next_call()) is not None:
        batch.take(*model.step(call.x, call.h0, call.c0, call.seq_lens))
    return batch.result()

"""Where forecasts run: their own bounded lane, beside the step batcher and never in its queue.

A forecast request becomes one :class:`~.forecast.ForecastBatch` (every stream of the request
shares each model call: one per horizon step). Its model calls run in a worker thread, one
request's forecast at a time, so that a long horizon over many streams never holds the event
loop, and so never delays the batcher's step answers (onnxruntime releases the GIL while it
computes). Admission is bounded in stream-steps (streams × (horizon + what-if readings)): the
forecasts waiting or running may hold at most ``--queue-max-readings`` of them; beyond,
``Overloaded`` (503).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import numpy as np

from ..core.errors import Overloaded
from .forecast import Forecasts, forecast
from .model import ServedModel

__all__ = ["ForecastRunner"]


class ForecastRunner:
    """Runs forecasts one at a time in a worker thread; ``max_pending_steps`` bounds the
    stream-steps admitted (waiting or running)."""

    def __init__(self, max_pending_steps: int) -> None:
        self.max_pending_steps = max_pending_steps
        self.pending_steps = 0
        self._lane = asyncio.Semaphore(1)

    def check_room(self, steps: int) -> None:
        """Raise Overloaded unless ``steps`` more stream-steps fit."""
        if self.pending_steps + steps > self.max_pending_steps:
            raise Overloaded(
                f"{self.pending_steps} forecast steps are waiting or running (limit "
                f"{self.max_pending_steps}); retry shortly"
            )

    async def run(
        self,
        model: ServedModel,
        h0: np.ndarray,
        c0: np.ndarray,
        last_prediction: np.ndarray,
        readings: Sequence[np.ndarray | None],
        covariates: Sequence[np.ndarray],
    ) -> Forecasts:
        """:func:`~.forecast.forecast` of these rows, in the forecast lane."""
        steps = sum(len(c) for c in covariates) + sum(0 if r is None else len(r) for r in readings)
        self.check_room(steps)
        self.pending_steps += steps
        try:
            async with self._lane:
                return await asyncio.to_thread(
                    forecast, model, h0, c0, last_prediction, readings, covariates
                )
        finally:
            self.pending_steps -= steps

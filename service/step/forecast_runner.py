"""Where forecasts run: their own bounded lane, beside the step batcher and never in its queue.

A forecast request becomes one :func:`~.forecast.forecast` over all its streams (they share
each model call: one per horizon step). It runs in a worker thread, one request's forecast at a
time, with the decoding of its states and the building of its answer, so that a long horizon over
many streams never holds the event loop for long, and so never delays the batcher's step answers
for long (onnxruntime releases the GIL while it computes; the Python parts yield it every switch
interval). Admission is bounded in stream-steps (streams × (horizon + what-if readings)): the
forecasts waiting or running may hold at most ``--queue-max-readings`` of them; beyond,
``Overloaded`` (503).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

from ..core.errors import Overloaded

__all__ = ["ForecastRunner"]

T = TypeVar("T")


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

    async def run(self, steps: int, job: Callable[[], T]) -> T:
        """``job()`` (a forecast of ``steps`` stream-steps: decoding its states, the model calls,
        building its answer) in the forecast lane's worker thread; its result."""
        self.check_room(steps)
        self.pending_steps += steps
        try:
            async with self._lane:
                return await asyncio.to_thread(job)
        finally:
            self.pending_steps -= steps

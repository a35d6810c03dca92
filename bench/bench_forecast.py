"""Forecast throughput beside step throughput, for the same streams on the same service.

The service (one worker, the bundled demo model) runs on a private redis-server; ``--streams``
streams get ``--history`` readings each. Then, one client request at a time, for ``--seconds``
each, interleaved over ``--rounds``:

- ``step``: bulk readings, one reading for every stream per request (what those streams cost to
  advance);
- ``forecast``: ``POST /v1/forecast`` for every stream at once, ``--horizon`` steps ahead.

And the isolation the forecast lane is for: the latency of single-reading posts (one stream, one
request at a time) alone, and while another client forecasts every stream back to back.

    python bench/bench_forecast.py --streams 1000 --horizon 12 --seconds 10 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

import aiohttp
from harness import http_process, markdown_table, redis_server, scratch, service_argv


async def _post(session: aiohttp.ClientSession, url: str, body: Any) -> Any:
    async with session.post(url, json=body) as answer:
        data = await answer.json()
        if answer.status != 200:
            raise RuntimeError(f"{url}: {answer.status} {data}")
        return data


async def _for(seconds: float, request: Any) -> tuple[int, float]:
    """Run ``request()`` back to back for ``seconds``: how many, and the time taken."""
    start = time.perf_counter()
    count = 0
    while time.perf_counter() - start < seconds:
        await request()
        count += 1
    return count, time.perf_counter() - start


async def _latencies(seconds: float, request: Any) -> list[float]:
    out: list[float] = []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        t = time.perf_counter()
        await request()
        out.append(time.perf_counter() - t)
    return out


def _percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


async def run(args: argparse.Namespace, base: str) -> list[dict[str, object]]:
    streams = [f"bench-{k}" for k in range(args.streams)]
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for _ in range(args.history):
            items = [{"stream": s, "values": [24.0]} for s in streams]
            await _post(session, base + "/v1/readings", {"readings": items})
        forecast_body = {"horizon": args.horizon, "items": [{"stream": s} for s in streams]}
        step_body = {"readings": [{"stream": s, "values": [24.0]} for s in streams]}

        async def step() -> None:
            await _post(session, base + "/v1/readings", step_body)

        async def forecast() -> None:
            await _post(session, base + "/v1/forecast", forecast_body)

        async def single() -> None:
            await _post(session, base + "/v1/streams/bench-single/readings", {"values": [24.0]})

        await step(), await forecast()  # warm up
        steps, forecasts = [], []
        for _ in range(args.rounds):
            n, took = await _for(args.seconds, step)
            steps.append(n * args.streams / took)
            n, took = await _for(args.seconds, forecast)
            forecasts.append(n * args.streams / took)
        alone = await _latencies(args.seconds, single)
        stop = asyncio.Event()

        async def forecast_load() -> int:
            count = 0
            while not stop.is_set():
                await forecast()
                count += 1
            return count

        load = asyncio.create_task(forecast_load())
        beside = await _latencies(args.seconds, single)
        stop.set()
        await load
    step_rate, forecast_rate = statistics.median(steps), statistics.median(forecasts)
    return [
        {
            "streams": args.streams,
            "horizon": args.horizon,
            "steps/s (bulk, 1 reading per stream)": step_rate,
            "stream forecasts/s": forecast_rate,
            "forecast stream-steps/s": forecast_rate * args.horizon,
            "single post p50 ms alone": 1000 * _percentile(alone, 50),
            "p99 alone": 1000 * _percentile(alone, 99),
            "p50 beside forecasts": 1000 * _percentile(beside, 50),
            "p99 beside forecasts": 1000 * _percentile(beside, 99),
        }
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--horizon", type=int, default=12)
    parser.add_argument("--history", type=int, default=3, help="readings per stream first")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    limit = str(max(2000, args.streams * args.horizon))
    argv = service_argv(
        1,
        "--request-max-readings", limit,
        "--queue-max-readings", str(4 * int(limit)),
        "--body-max-bytes", str(16 * 1024 * 1024),
    )  # fmt: skip
    with scratch("bench-forecast-") as work, redis_server(work) as redis:
        env = {"REDIS_URL": redis.url, "LSTM_LOG_LEVEL": "warning"}
        with http_process(argv, work, "service", env) as base:
            rows = asyncio.run(run(args, base))
    print(markdown_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

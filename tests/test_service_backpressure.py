"""Backpressure: offered far more than it can serve, the service refuses the excess with 503
``overloaded`` and ``Retry-After``, applies exactly what it answered 200, and its memory does not
grow with the offered load."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from service_harness import RedisServer, ServiceProcess, metric, scrape_metrics

STREAMS_PER_REQUEST = 250


def _rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def _offer(
    url: str, clients: int, seconds: float, pid: int, tag: str
) -> tuple[dict[int, int], int, int, int]:
    """``clients`` connections posting bulk requests back to back for ``seconds``. Returns the
    count of answers by status, readings answered 200, the service's peak RSS while loaded and
    the number of 503s that carried Retry-After and the overloaded code."""
    statuses: dict[int, int] = {}
    applied = 0
    refused_ok = 0
    peak = 0
    deadline = time.monotonic() + seconds

    async def client(session: aiohttp.ClientSession, k: int) -> None:
        nonlocal applied, refused_ok
        n = 0
        while time.monotonic() < deadline:
            n += 1
            body: dict[str, Any] = {
                "readings": [
                    {"stream": f"{tag}-{k}-{i}", "values": [20.0 + (n % 7)]}
                    for i in range(STREAMS_PER_REQUEST)
                ]
            }
            async with session.post(url, json=body) as answer:
                statuses[answer.status] = statuses.get(answer.status, 0) + 1
                reply = await answer.json()
                if answer.status == 200:
                    applied += sum(len(r["results"]) for r in reply["results"] if "results" in r)
                elif (
                    answer.status == 503
                    and answer.headers.get("Retry-After") == "1"
                    and reply["error"]["code"] == "overloaded"
                ):
                    refused_ok += 1

    async def sample() -> None:
        nonlocal peak
        while time.monotonic() < deadline:
            peak = max(peak, _rss_bytes(pid))
            await asyncio.sleep(0.02)

    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(sample(), *(client(session, k) for k in range(clients)))
    return statuses, applied, peak, refused_ok


@pytest.mark.slow
def test_overload_is_refused_with_503_and_memory_stays_flat(
    redis_server: RedisServer, service_factory: Callable[..., ServiceProcess], stream_id: str
) -> None:
    service = service_factory(
        "--queue-max-readings", "1000", "--batch-max-readings", "500",
        "--request-max-readings", "500",
        env={"REDIS_URL": redis_server.url},
    )  # fmt: skip
    assert service.process is not None
    pid = service.process.pid
    url = f"{service.url}/v1/readings"
    # Light: a few clients, which the queue mostly absorbs. Heavy: eight times as many.
    light = asyncio.run(_offer(url, 4, 3.0, pid, f"{stream_id}-light"))
    heavy = asyncio.run(_offer(url, 32, 3.0, pid, f"{stream_id}-heavy"))
    light_status, light_applied, light_peak, _ = light
    heavy_status, heavy_applied, heavy_peak, heavy_refused = heavy
    assert light_status.get(200, 0) > 0, light_status
    assert set(heavy_status) <= {200, 503}, heavy_status
    assert heavy_status.get(503, 0) > 0, heavy_status  # the excess was refused...
    assert heavy_refused == heavy_status[503]  # ...each with Retry-After and its code
    assert heavy_status.get(200, 0) > 0  # ...and the service kept serving
    # Flat: eight times the offered load costs well under the queue's worth of extra memory.
    assert heavy_peak - light_peak < 40 * 2**20, (light_peak, heavy_peak)
    # Exactly what was answered 200 was applied: nothing refused slipped in, nothing was lost.
    time.sleep(0.5)
    samples = scrape_metrics(service.url)
    answered = light_applied + heavy_applied
    assert metric(samples, "lstm_readings_total", outcome="applied") == answered
    assert metric(samples, "lstm_queue_readings") == 0
